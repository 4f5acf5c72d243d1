//! The HTTP contract, black-box: against the binary started here on the embedded default,
//! or — after a deployment — against the deployed service (`INGEST_BASE_URL`, with its
//! function key in `INGEST_API_KEY`). Behaviour that only the binary itself can show (its
//! own 404/405 answers, configuration, logs) is in `contract.rs`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{blocking_client, post_user, wait_for_user, TestServer};

#[test]
fn every_bad_input_gets_its_expected_status_as_problem_json_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_or_remote(dir.path());
    let client = blocking_client();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(support::data_file("bad-inputs.json")).unwrap())
            .unwrap();
    assert!(cases.len() >= 25, "the bad-input table shrank");

    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let method = reqwest::Method::from_bytes(case["method"].as_str().unwrap().as_bytes()).unwrap();
        let mut request = client.request(method, server.url(case["path"].as_str().unwrap()));
        if let Some(ct) = case["content_type"].as_str() {
            request = request.header("content-type", ct);
        }
        if let Some(body) = case["body"].as_str() {
            request = request.body(body.to_owned());
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let body: Value = response.json().unwrap_or(Value::Null);
        let expected: Vec<u16> =
            case["expect"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as u16).collect();
        if !expected.contains(&status) {
            failures.push(format!("{name}: got {status}, expected {expected:?}: {body}"));
            continue;
        }
        if content_type.as_deref() != Some("application/problem+json") {
            failures.push(format!("{name}: content type {content_type:?}"));
        }
        if body["status"] != status
            || body["title"].as_str().is_none_or(str::is_empty)
            || body["type"].is_null()
        {
            failures.push(format!("{name}: not a problem document: {body}"));
        }
        if status == 400
            && case["path"] == "/api/users"
            && case["body"].as_str().is_some_and(|b| b.starts_with('{'))
        {
            // A record that is JSON but invalid must name its bad fields.
            let errors = body["errors"].as_array().map(Vec::len).unwrap_or(0);
            if errors == 0 {
                failures.push(format!("{name}: no field errors: {body}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    if !server.is_remote() {
        // Nothing bad was queued or stored, and nothing went to the dead letters.
        let health = support::health(&client, &server);
        assert_eq!(health["checks"]["topic"]["depth"], 0);
        assert_eq!(health["checks"]["store"]["documents"], 0);
        assert_eq!(health["checks"]["topic"]["deadLetters"], 0);
        assert!(!server.flushed_logs().contains("\"status\":5"), "a 5xx was logged:\n{}", server.logs());
    }
}

/// A fresh id per run, so that runs against a deployed service do not meet old data.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[test]
fn each_bad_field_is_named_in_one_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_or_remote(dir.path());
    let (status, body) = post_user(
        &blocking_client(),
        &server,
        r#"{"id":"a/b","name":"","email":"nope","age":151,"country":"Germany","attributes":[],"nickname":"x"}"#,
    );
    assert_eq!(status, 400);
    let mut fields: Vec<&str> =
        body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    fields.sort();
    assert_eq!(fields, ["age", "attributes", "country", "email", "id", "name", "nickname"]);
    assert!(body["errors"].as_array().unwrap().iter().all(|e| !e["message"].as_str().unwrap().is_empty()));
}

#[test]
fn an_accepted_record_is_answered_202_with_its_location_and_then_readable_with_an_etag() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_or_remote(dir.path());
    let client = blocking_client();
    let id = unique("usr-ada");
    let record = json!({"id": id, "name": "Ada Lovelace", "email": "ada@example.com", "age": 36,
                        "country": "GB", "attributes": {"plan": "pro", "tags": ["math"]}});
    let r = client
        .post(server.url("/api/users"))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(record.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202, "the media type is compared case-insensitively, parameters allowed");
    assert_eq!(r.headers()["location"], format!("/api/users/{id}").as_str());
    let body: Value = r.json().unwrap();
    assert_eq!(body, json!({"id": id, "status": "accepted"}));

    let doc = wait_for_user(&client, &server, &id, Duration::from_secs(30));
    let ingested_at = doc["ingestedAt"].as_str().expect("ingestedAt").to_owned();
    let mut without_time = doc.clone();
    without_time.as_object_mut().unwrap().remove("ingestedAt");
    assert_eq!(without_time, record);
    assert!(time::OffsetDateTime::parse(&ingested_at, &time::format_description::well_known::Rfc3339).is_ok());
    assert!(ingested_at.ends_with('Z'), "{ingested_at}");

    let url = server.url(&format!("/api/users/{id}"));
    let r = client.get(&url).send().unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'));
    let r = client.get(&url).header("if-none-match", &etag).send().unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = client.get(&url).header("if-none-match", "\"stale\"").send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_record_without_id_gets_a_uuid_that_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_or_remote(dir.path());
    let client = blocking_client();
    let (status, body) =
        post_user(&client, &server, r#"{"name":"Grace Hopper","email":"grace@example.com"}"#);
    assert_eq!(status, 202);
    let id = body["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let doc = wait_for_user(&client, &server, id, Duration::from_secs(30));
    assert_eq!(doc["name"], "Grace Hopper");
    assert_eq!(doc["id"], id);
}

#[test]
fn the_readiness_probe_and_health_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_or_remote(dir.path());
    let client = blocking_client();
    assert_eq!(client.get(server.url("/")).send().unwrap().status(), 200);
    let health = support::health(&client, &server);
    assert_eq!(health["status"], "ok");
    let expected_backend = if server.is_remote() { "azure" } else { "embedded" };
    assert_eq!(health["backend"], expected_backend);
    assert_eq!(health["checks"]["topic"]["up"], true);
    assert_eq!(health["checks"]["store"]["up"], true);
}

#[test]
fn a_body_in_another_charset_or_compressed_gets_415_naming_what_to_send() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    let record = json!({"name": "Zoë", "email": "zoe@example.com"}).to_string();
    for (content_type, encoding) in [
        ("application/json; charset=iso-8859-1", None),
        ("application/json;charset=\"UTF-16\"", None),
        ("application/json", Some("gzip")),
        ("application/json; charset=utf-8", Some("br")),
    ] {
        let mut request = client.post(server.url("/api/users")).header("content-type", content_type);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        let r = request.body(record.clone()).send().unwrap();
        assert_eq!(r.status(), 415, "{content_type} {encoding:?}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let problem: Value = r.json().unwrap();
        assert_eq!(problem["type"], "/problems/unsupported-media-type");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(if encoding.is_some() { "uncompressed" } else { "utf-8" }), "{detail}");
    }
    for (content_type, encoding) in
        [("application/json; charset=UTF-8", None), ("application/json; charset=\"utf-8\"", Some("identity"))]
    {
        let mut request = client.post(server.url("/api/users")).header("content-type", content_type);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        assert_eq!(request.body(record.clone()).send().unwrap().status(), 202, "{content_type}");
    }
    assert_eq!(support::queued(dir.path()), 2, "only the UTF-8, uncompressed ones");
}

#[test]
fn a_key_twice_in_one_object_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    for body in [
        r#"{"id":"dup1","name":"First","name":"Second","email":"a@example.com"}"#,
        r#"{"id":"dupA","id":"dupB","name":"X","email":"a@example.com"}"#,
        r#"{"name":"X","email":"a@example.com","attributes":{"k":1,"k":2}}"#,
        r#"[{"name":"X","email":"a@example.com","email":"b@example.com"}]"#,
    ] {
        let r = client
            .post(server.url("/api/users"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let problem: Value = r.json().unwrap();
        assert_eq!(problem["type"], "/problems/invalid-json");
        assert!(problem["detail"].as_str().unwrap().contains("appears twice"), "{problem}");
    }
    assert_eq!(support::queued(dir.path()), 0);
}
