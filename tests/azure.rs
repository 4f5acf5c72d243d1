//! The binary in azure mode, proven without Azure: Service Bus played by a local endpoint
//! that checks signatures, Cosmos DB by `@vercel/cosmosdb-server`, and the Functions host by
//! this test, which turns each captured message into the invocation the host would send.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cosmos::CosmosServer;
use support::servicebus::{FakeServiceBus, Mode};
use support::{blocking_client, post_user, TestServer};

fn start_azure(
    cosmos: &CosmosServer,
    servicebus: &FakeServiceBus,
    extra: &[(&str, &str)],
) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let env = cosmos.azure_env(servicebus);
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend_from_slice(extra);
    let server = TestServer::start(dir.path(), &vars);
    (dir, server)
}

fn invoke(client: &reqwest::blocking::Client, server: &TestServer, payload: &Value) -> (u16, Value) {
    let r = client
        .post(server.url("/ingest-consume"))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "7d0b1a2c-0000-4000-8000-000000000001")
        .body(payload.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

#[test]
fn a_record_goes_from_post_through_the_topic_and_the_host_trigger_to_cosmos_and_back() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let (_dir, server) = start_azure(&cosmos, &servicebus, &[]);
    let client = blocking_client();
    let record = json!({"id": "az-1", "name": "Ngozi Okonjo", "email": "ngozi@example.com", "age": 41, "country": "NG",
                        "attributes": {"plan": "pro", "tags": ["a", "b"]}});
    let r = client
        .post(server.url("/api/users"))
        .header("content-type", "application/json")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .body(record.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["location"], "/api/users/az-1");

    // The message in the topic: unique MessageId, the caller's trace id, JSON, schema version.
    let captured = servicebus.captured();
    assert_eq!(captured.len(), 1, "rejections: {:?}", servicebus.rejections());
    let message = &captured[0];
    let message_id = message.broker_properties["MessageId"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(message_id).is_ok(), "{message_id}");
    assert_ne!(message_id, "az-1", "a MessageId derived from the user id would be dropped as a duplicate");
    assert_eq!(message.broker_properties["CorrelationId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
    assert_eq!(message.custom_properties["schemaversion"], "1");

    // Nothing is stored until the host delivers the message.
    assert_eq!(client.get(server.url("/api/users/az-1")).send().unwrap().status(), 404);
    let before = cosmos.document_requests().len();
    let (status, answer) = invoke(&client, &server, &FakeServiceBus::host_invocation(message, 1));
    assert_eq!(status, 200, "{answer}");
    assert!(answer["Logs"][0].as_str().unwrap().contains("stored user az-1"), "{answer}");
    let writes: Vec<Value> = cosmos.document_requests().into_iter().skip(before).collect();
    assert_eq!(writes.len(), 1, "a consumed new user costs one document request: {writes:?}");

    let before = cosmos.document_requests().len();
    let r = client.get(server.url("/api/users/az-1")).send().unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let mut doc: Value = r.json().unwrap();
    let reads: Vec<Value> = cosmos.document_requests().into_iter().skip(before).collect();
    assert_eq!(reads.len(), 1, "a GET is one point read: {reads:?}");
    assert_eq!(reads[0]["op"], "read");
    assert!(doc.as_object_mut().unwrap().remove("ingestedAt").is_some());
    assert_eq!(doc, record, "GET returns the user's fields and ingestedAt, never the store's");
    let r = client.get(server.url("/api/users/az-1")).header("if-none-match", &etag).send().unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(client.get(server.url("/api/users/nobody-here")).send().unwrap().status(), 404);
}

#[test]
fn a_redelivered_message_makes_no_second_document_and_an_older_one_never_wins() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let (_dir, server) = start_azure(&cosmos, &servicebus, &[]);
    let client = blocking_client();
    for name in ["First Version", "Second Version"] {
        let (status, _) = post_user(
            &client,
            &server,
            &json!({"id": "az-2", "name": name, "email": "v@example.com"}).to_string(),
        );
        assert_eq!(status, 202);
        std::thread::sleep(Duration::from_millis(5));
    }
    let captured = servicebus.captured();
    assert_eq!(captured.len(), 2, "two updates of one user are two messages");
    assert_ne!(captured[0].broker_properties["MessageId"], captured[1].broker_properties["MessageId"]);

    // Delivered out of order, the newer first, and the older one twice.
    for (message, count) in [(&captured[1], 1), (&captured[0], 1), (&captured[0], 2), (&captured[1], 2)] {
        let (status, answer) = invoke(&client, &server, &FakeServiceBus::host_invocation(message, count));
        assert_eq!(status, 200, "{answer}");
    }
    let doc: Value = client.get(server.url("/api/users/az-2")).send().unwrap().json().unwrap();
    assert_eq!(doc["name"], "Second Version");
    let creates =
        cosmos.document_requests().into_iter().filter(|r| r["op"] == "create" && r["status"] == 201).count();
    assert_eq!(creates, 1, "one document for the user");
}

#[test]
fn a_poison_message_is_parked_in_the_dead_letter_container_and_answered_2xx() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let (_dir, server) = start_azure(&cosmos, &servicebus, &[]);
    let client = blocking_client();
    let payload = json!({
        "Data": {"message": "{\"name\": \"\", \"email\": \"nope\"}"},
        "Metadata": {"MessageId": "poison-az-1", "DeliveryCount": "1", "EnqueuedTimeUtc": "2023-10-12T20:13:49"}
    });
    let (status, answer) = invoke(&client, &server, &payload);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["Logs"][0].as_str().unwrap().contains("dead-lettered"));
    let parked: Vec<Value> = cosmos
        .document_requests()
        .into_iter()
        .filter(|r| r["op"] == "create" && r["path"].as_str().unwrap().contains("/colls/deadletters/"))
        .collect();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["status"], 201);
    assert!(server.flushed_logs().contains("poison-az-1"));
}

#[test]
fn an_unavailable_topic_answers_503_with_retry_after_and_never_202() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let (_dir, server) = start_azure(&cosmos, &servicebus, &[("SERVICEBUS_MAX_ATTEMPTS", "2")]);
    let client = blocking_client();
    for (mode, retry_after) in [
        (Mode::Fail { status: 401, retry_after: None }, None),
        (Mode::Fail { status: 429, retry_after: Some(2) }, Some("2")),
        (Mode::Fail { status: 503, retry_after: None }, None),
        (Mode::Hang, None),
    ] {
        servicebus.set_mode(mode.clone());
        let started = Instant::now();
        let r = client
            .post(server.url("/api/users"))
            .header("content-type", "application/json")
            .body(r#"{"name":"Ada","email":"ada@example.com"}"#)
            .send()
            .unwrap();
        assert_eq!(r.status(), 503, "{mode:?}");
        let header = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        assert!(header.is_some(), "{mode:?}: no Retry-After");
        if let Some(expected) = retry_after {
            assert_eq!(header.as_deref(), Some(expected), "{mode:?}");
        }
        let body: Value = r.json().unwrap();
        assert_eq!(body["status"], 503);
        assert!(started.elapsed() < Duration::from_secs(10), "{mode:?} took {:?}", started.elapsed());
    }
    assert!(servicebus.captured().is_empty());
    assert!(!server.flushed_logs().contains("\"status\":500"));
}

#[test]
fn a_store_outage_fails_the_invocation_so_the_host_retries() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let (_dir, server) = start_azure(&cosmos, &servicebus, &[("CONSUME_RETRY_BUDGET_MS", "1500")]);
    let client = blocking_client();
    let (status, _) = post_user(&client, &server, r#"{"id":"az-3","name":"Outage","email":"o@example.com"}"#);
    assert_eq!(status, 202);
    drop(cosmos);
    // The outage is waited out for the retry budget, then the invocation fails.
    let started = Instant::now();
    let (status, body) =
        invoke(&client, &server, &FakeServiceBus::host_invocation(&servicebus.captured()[0], 1));
    assert_eq!(status, 503, "{body}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(700) && waited < Duration::from_secs(10), "{waited:?}");
    // On the subscription's last delivery it is parked instead (here the dead-letter
    // container is down too, so the host must retry: still 503, never a 2xx that loses it).
    let (status, _) =
        invoke(&client, &server, &FakeServiceBus::host_invocation(&servicebus.captured()[0], 10));
    assert_eq!(status, 503);
    let r = client.get(server.url("/api/users/az-3")).send().unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
}

#[test]
fn a_missing_azure_setting_stops_start_up_naming_it_after_the_listener_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(support::BIN)
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .env("INGEST_BACKEND", "azure")
        .env(
            "SERVICEBUS_CONNECTION_STRING",
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=SECRETVALUE",
        )
        .env("SERVICEBUS_TOPIC", "users")
        .env_remove("COSMOS_ENDPOINT")
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("COSMOS_ENDPOINT"), "{stderr}");
    let listening = stdout.find("\"listening\"").expect("the listener is bound first");
    let error = stdout.find("COSMOS_ENDPOINT").expect("the error is logged too");
    assert!(listening < error, "{stdout}");
    assert!(!stdout.contains("SECRETVALUE") && !stderr.contains("SECRETVALUE"), "a secret leaked");
}

#[test]
fn the_import_command_retries_503_honouring_retry_after_until_every_record_is_accepted() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let (dir, server) = start_azure(&cosmos, &servicebus, &[("SERVICEBUS_MAX_ATTEMPTS", "1")]);
    // The topic refuses the first five sends with 503 and Retry-After: 1, so the API answers
    // those POSTs 503 with Retry-After: 1, and the importer must wait and retry them.
    servicebus.set_mode(Mode::FailTimes { n: 5, status: 503, retry_after: Some(1) });
    let input = dir.path().join("twenty.ndjson");
    let lines: Vec<String> = support::users().into_iter().take(20).map(|u| u.to_string()).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let started = Instant::now();
    let output = std::process::Command::new(support::BIN)
        .args(["import", "--url", &server.base, "--concurrency", "4", "--batch-size", "1"])
        .arg(&input)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("20 records, 20 accepted, 0 rejected, 0 failed"), "{stdout}");
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured");
    assert_eq!(servicebus.attempts(), 25);
    assert_eq!(servicebus.captured().len(), 20, "each record is in the topic once");

    // In batches: the one batch send is refused twice, then taken whole.
    servicebus.set_mode(Mode::FailTimes { n: 2, status: 503, retry_after: Some(1) });
    let started = Instant::now();
    let output = std::process::Command::new(support::BIN)
        .args(["import", "--url", &server.base, "--restart", "--accepted", "again.ndjson"])
        .arg(&input)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("20 records, 20 accepted, 0 rejected, 0 failed"), "{stdout}");
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After was not honoured");
    assert_eq!(servicebus.attempts(), 25 + 3);
    assert_eq!(servicebus.captured().len(), 40, "the batch is in the topic once more");
}
