//! Batches: `POST /api/users` with a JSON array. Each record is checked on its own, the valid
//! ones are published together and answered once durable, with one result per record in
//! order — on the embedded queue and through Service Bus batch sends.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::cosmos::CosmosServer;
use support::servicebus::{FakeServiceBus, Mode, MAX_SEND_BYTES};
use support::{blocking_client, wait_for_user, TestServer};

fn post(client: &reqwest::blocking::Client, server: &TestServer, body: &str) -> (u16, Value) {
    let r = client
        .post(server.url("/api/users"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn record(id: &str) -> Value {
    json!({"id": id, "name": "Batch Person", "email": format!("{id}@example.com"), "age": 30})
}

#[test]
fn a_batch_answers_each_record_in_order_and_stores_every_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let client = blocking_client();
    let mut records: Vec<Value> = (0..10).map(|i| record(&format!("b-{i}"))).collect();
    records.insert(3, json!({"name": "", "email": "not-an-email", "age": 200}));
    records.insert(7, json!("not an object"));
    records.push(json!({"name": "No Id", "email": "noid@example.com"}));
    let (status, body) = post(&client, &server, &Value::Array(records.clone()).to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 11);
    assert_eq!(body["rejected"], 2);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), records.len());
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i, "results are in request order");
    }
    // The invalid record names each bad field; the non-object says what it is.
    assert_eq!(results[3]["status"], 400);
    let fields: Vec<&str> =
        results[3]["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["name", "email", "age"], "{}", results[3]);
    assert_eq!(results[7]["status"], 400);
    assert!(results[7]["errors"][0]["message"].as_str().unwrap().contains("object"), "{}", results[7]);
    // Every valid record is readable under the id its result reports.
    for result in results.iter().filter(|r| r["status"] == 202) {
        let id = result["id"].as_str().unwrap();
        let doc = wait_for_user(&client, &server, id, Duration::from_secs(10));
        assert_eq!(doc["id"], id);
    }
    assert_eq!(results[0]["id"], "b-0");
    let assigned = results.last().unwrap()["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(assigned).is_ok(), "an id-less record gets a UUID: {assigned}");
    support::eventually("the queue is drained", Duration::from_secs(10), || support::queued(dir.path()) == 0);
    assert_eq!(support::stored(dir.path()), 11);
}

#[test]
fn a_batch_over_its_limits_is_refused_whole_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();

    let too_many: Vec<Value> = (0..501).map(|i| record(&format!("m-{i}"))).collect();
    let (status, body) = post(&client, &server, &Value::Array(too_many).to_string());
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["maxRecords"], 500);
    assert!(body["detail"].as_str().unwrap().contains("501"), "{body}");

    // 1 MiB is the batch limit: 300 records of ~4 KiB each is over it.
    let padding = "x".repeat(4000);
    let big: Vec<Value> = (0..300)
        .map(|i| json!({"name": "P", "email": format!("p{i}@example.com"), "attributes": {"pad": padding}}))
        .collect();
    let (status, body) = post(&client, &server, &Value::Array(big).to_string());
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["maxBytes"], 1_048_576);

    // A single record keeps its own limit (64 KiB), and so does each record of a batch.
    let huge = json!({"name": "H", "email": "h@example.com", "attributes": {"pad": "y".repeat(70_000)}});
    let (status, body) = post(&client, &server, &huge.to_string());
    assert_eq!(status, 413, "{body}");
    let (status, body) = post(&client, &server, &json!([record("ok-1"), huge]).to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], 202);
    assert_eq!(body["results"][1]["status"], 400);
    assert!(body["results"][1]["errors"][0]["message"].as_str().unwrap().contains("65536"), "{body}");

    let (status, body) = post(&client, &server, "[]");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "/problems/invalid-json");
    let (status, _) = post(&client, &server, "[{\"name\": \"x\"");
    assert_eq!(status, 400);
    // No valid record at all: the request is refused, naming each record's bad fields.
    let (status, body) = post(&client, &server, r#"[1, {"name": "x", "email": "bad"}]"#);
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> =
        body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["[0]", "[1].email"], "{body}");

    assert_eq!(support::queued(dir.path()), 1, "only ok-1 was accepted");
}

#[test]
fn a_batch_goes_to_service_bus_in_batch_sends_under_the_size_limit_and_on_to_cosmos() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let dir = tempfile::tempdir().unwrap();
    let server = cosmos.start_service(&servicebus, dir.path(), &[]);
    let client = blocking_client();

    // 400 records of ~2 KiB: ~800 KiB, more than three sends' worth.
    let padding = "z".repeat(2000);
    let records: Vec<Value> = (0..400)
        .map(|i| json!({"id": format!("sb-{i}"), "name": "Bus Person", "email": format!("sb{i}@example.com"), "attributes": {"pad": padding}}))
        .collect();
    let (status, body) = post(&client, &server, &Value::Array(records).to_string());
    assert_eq!(status, 200, "{body} {:?}", servicebus.rejections());
    assert_eq!(body["accepted"], 400);
    let captured = servicebus.captured();
    assert_eq!(captured.len(), 400);
    let sends = servicebus.batches();
    assert!((4..=8).contains(&sends), "{sends} batch sends for ~800 KiB");
    assert_eq!(
        servicebus.attempts(),
        sends,
        "every send was a batch send under 256 KB (limit {MAX_SEND_BYTES})"
    );
    // In order, each message with its own id, correlation and properties.
    for (i, message) in captured.iter().enumerate() {
        let doc: Value = serde_json::from_str(&message.body).unwrap();
        assert_eq!(doc["id"], format!("sb-{i}"));
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        assert_eq!(message.custom_properties["schemaversion"], "1");
    }
    let ids: std::collections::HashSet<&str> =
        captured.iter().map(|m| m.broker_properties["MessageId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 400, "every message has its own MessageId");

    // The host delivers a few; they land in Cosmos.
    for message in captured.iter().take(3) {
        let r = client
            .post(server.url("/ingest-consume"))
            .header("content-type", "application/json")
            .body(FakeServiceBus::host_invocation(message, 1).to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let doc = wait_for_user(&client, &server, "sb-2", Duration::from_secs(10));
    assert_eq!(doc["attributes"]["pad"], padding);
}

#[test]
fn when_service_bus_fails_midway_only_the_records_not_yet_durable_are_reported_for_retry() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let dir = tempfile::tempdir().unwrap();
    let server = cosmos.start_service(&servicebus, dir.path(), &[("SERVICEBUS_MAX_ATTEMPTS", "1")]);
    let client = blocking_client();
    let padding = "w".repeat(2000);
    let records: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("half-{i}"), "name": "Half", "email": format!("h{i}@example.com"), "attributes": {"pad": padding}}))
        .collect();

    servicebus.set_mode(Mode::AcceptThenFail { n: 1, status: 503 });
    let (status, body) = post(&client, &server, &Value::Array(records.clone()).to_string());
    assert_eq!(status, 200, "{body}");
    let durable = servicebus.captured().len();
    assert!(durable > 0 && durable < 300, "{durable}");
    assert_eq!(body["accepted"], durable);
    let results = body["results"].as_array().unwrap();
    for (i, result) in results.iter().enumerate() {
        let expected = if i < durable { 202 } else { 503 };
        assert_eq!(result["status"], expected, "record {i}: {result}");
    }

    // Nothing durable at all: the whole request is a 503 with Retry-After.
    servicebus.set_mode(Mode::Fail { status: 503, retry_after: Some(2) });
    let r = client
        .post(server.url("/api/users"))
        .header("content-type", "application/json")
        .body(Value::Array(records).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(servicebus.captured().len(), durable, "no further message was taken");
}
