//! Security, black-box: the API key as the Functions host carries it, no public listener
//! without one, and no secret from the configuration in any log line, error body, metric,
//! status document or exported telemetry item.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::appinsights::{FakeAppInsights, IKEY};
use support::cosmos::CosmosServer;
use support::servicebus::{FakeServiceBus, Mode};
use support::{TestServer, BIN};

const API_KEY: &str = "k3y-0f-th3-t3st-s3rv1c3-5c8a1e";

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

fn post(server: &TestServer, key: Option<&str>, body: &Value) -> reqwest::blocking::Response {
    let mut request = client().post(server.url("/api/users")).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("x-functions-key", key);
    }
    request.body(body.to_string()).send().unwrap()
}

#[test]
fn with_an_api_key_every_route_but_the_probes_requires_it_by_header_or_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_API_KEY", API_KEY)]);
    let c = client();
    assert_eq!(c.get(server.url("/")).send().unwrap().status(), 200);
    assert_eq!(c.get(server.url("/api/health")).send().unwrap().status(), 200);

    let user = json!({"id": "keyed-1", "name": "Keyed", "email": "keyed@example.com"});
    let r = post(&server, None, &user);
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().unwrap();
    assert_eq!(problem["type"], "/problems/unauthorized");
    assert!(problem["detail"].as_str().unwrap().contains("x-functions-key"), "{problem}");
    assert_eq!(post(&server, Some("wrong"), &user).status(), 401);
    assert_eq!(
        post(&server, Some(&API_KEY[..API_KEY.len() - 1]), &user).status(),
        401,
        "a prefix is not the key"
    );
    assert_eq!(post(&server, Some(API_KEY), &user).status(), 202);

    for path in ["/api/users/keyed-1", "/metrics", "/status", "/status.json"] {
        assert_eq!(c.get(server.url(path)).send().unwrap().status(), 401, "{path} without the key");
        let with_code = server.url(&format!("{path}?code={API_KEY}"));
        support::eventually(&format!("{path} answers with the key"), Duration::from_secs(10), || {
            c.get(&with_code).send().unwrap().status() == 200
        });
    }
    let r = c
        .post(server.url("/ingest-consume"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "the consume route is not open to anyone either");
    let logs = server.stop();
    assert!(!logs.contains(API_KEY), "the API key was logged");
}

#[test]
fn a_non_loopback_address_without_a_key_is_refused_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--port", "0", "--host", "0.0.0.0", "--data-dir"])
        .arg(dir.path())
        .env_remove("INGEST_API_KEY")
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("INGEST_API_KEY") && stderr.contains("0.0.0.0"), "{stderr}");

    // With a key it starts (and is reachable on loopback too).
    let server = TestServer::start(dir.path(), &[("BIND_ADDRESS", "0.0.0.0"), ("INGEST_API_KEY", API_KEY)]);
    assert_eq!(client().get(server.url("/api/health")).send().unwrap().status(), 200);
}

#[test]
fn no_secret_from_the_configuration_appears_in_any_output() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let insights = FakeAppInsights::start();
    let dir = tempfile::tempdir().unwrap();
    let env = cosmos.azure_env(&servicebus);
    let cosmos_key = env.iter().find(|(k, _)| k == "COSMOS_KEY").unwrap().1.clone();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let insights_connection = insights.connection_string();
    vars.extend([
        ("INGEST_API_KEY", API_KEY),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", insights_connection.as_str()),
        ("TELEMETRY_EXPORT_INTERVAL_MS", "200"),
        ("SERVICEBUS_MAX_ATTEMPTS", "1"),
        ("RUST_LOG", "debug"),
    ]);
    let server = TestServer::start(dir.path(), &vars);
    let c = client();
    let mut answers = Vec::new();
    let user = json!({"id": "sec-1", "name": "Secret Keeper", "email": "keeper@example.com"});
    // Accepted, refused for the key, and failing on the topic (401 and 503 from Service Bus).
    answers.push(post(&server, Some(API_KEY), &user).text().unwrap());
    answers.push(post(&server, Some("not-the-key"), &user).text().unwrap());
    servicebus.set_mode(Mode::Fail { status: 401, retry_after: None });
    answers.push(post(&server, Some(API_KEY), &user).text().unwrap());
    servicebus.set_mode(Mode::Fail { status: 503, retry_after: Some(1) });
    answers.push(post(&server, Some(API_KEY), &user).text().unwrap());
    servicebus.set_mode(Mode::Accept);
    let captured = servicebus.captured();
    let r = c
        .post(server.url(&format!("/ingest-consume?code={API_KEY}")))
        .header("content-type", "application/json")
        .body(FakeServiceBus::host_invocation(&captured[0], 1).to_string())
        .send()
        .unwrap();
    answers.push(r.text().unwrap());
    for path in
        ["/api/users/sec-1", "/api/users/nobody", "/metrics", "/status.json", "/api/health", "/nowhere"]
    {
        let r = c.get(server.url(path)).header("x-functions-key", API_KEY).send().unwrap();
        answers.push(r.text().unwrap());
    }
    support::eventually("telemetry is exported", Duration::from_secs(10), || !insights.requests().is_empty());
    let logs = server.stop();

    // A start-up that fails on a malformed setting names the setting, not its value.
    let secret_in_a_bad_setting = "Zm9vYmFyLXNlY3JldC1rZXktdmFsdWU9";
    let bad = Command::new(BIN)
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .env("INGEST_BACKEND", "azure")
        .env(
            "SERVICEBUS_CONNECTION_STRING",
            format!("Endpoint=nope;SharedAccessKey={secret_in_a_bad_setting}"),
        )
        .env("COSMOS_ENDPOINT", "http://127.0.0.1:9/")
        .env("COSMOS_KEY", &cosmos_key)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let bad_output =
        format!("{}{}", String::from_utf8_lossy(&bad.stdout), String::from_utf8_lossy(&bad.stderr));
    assert!(bad_output.contains("SERVICEBUS_CONNECTION_STRING"), "{bad_output}");

    let secrets = [
        ("the API key", API_KEY),
        ("the Service Bus key", support::servicebus::KEY),
        ("the Cosmos DB key", cosmos_key.as_str()),
        ("the malformed connection string's key", secret_in_a_bad_setting),
    ];
    let outputs = [
        ("logs", logs.as_str()),
        ("answers", &answers.join("\n")),
        ("a failed start-up", bad_output.as_str()),
        ("Application Insights", &insights.bodies()),
    ];
    let mut leaks = Vec::new();
    for (what, secret) in secrets {
        for (where_, text) in &outputs {
            if text.contains(secret) {
                leaks.push(format!("{what} in {where_}"));
            }
        }
    }
    // The instrumentation key goes to Application Insights (it addresses the resource), nowhere else.
    for (where_, text) in &outputs[..3] {
        if text.contains(IKEY) {
            leaks.push(format!("the instrumentation key in {where_}"));
        }
    }
    assert!(leaks.is_empty(), "{leaks:?}");
    assert!(logs.lines().count() > 10, "the service logged almost nothing: {logs}");
}
