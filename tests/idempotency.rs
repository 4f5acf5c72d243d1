//! `Idempotency-Key`: a retried POST makes one message and gets the same answer; the same key
//! with another request is refused (even when the two race); different updates of one user
//! are never dropped — on the embedded queue, and in azure mode, where the key is claimed in
//! the Cosmos idempotency container (a real Cosmos-protocol server) and Service Bus (the local
//! endpoint plays it, with duplicate detection) drops a re-send.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::cosmos::CosmosServer;
use support::servicebus::{FakeServiceBus, Mode};
use support::{blocking_client, wait_for_user, TestServer};

fn post(server: &TestServer, key: Option<&str>, body: &Value) -> (u16, Value, bool) {
    let mut request =
        blocking_client().post(server.url("/api/users")).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.body(body.to_string()).send().unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    (status, r.json().unwrap_or(Value::Null), replayed)
}

#[test]
fn a_retried_post_with_the_same_key_makes_one_message_and_the_same_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let record = json!({"name": "Once Only", "email": "once@example.com"});

    let (status, first, replayed) = post(&server, Some("order-7f3a"), &record);
    assert_eq!((status, replayed), (202, false), "{first}");
    let (status, again, replayed) = post(&server, Some("order-7f3a"), &record);
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(first, again, "the same answer, the same id");
    assert_eq!(support::queued(dir.path()), 1, "one message");

    // The same key with another body is refused, and nothing is queued.
    let (status, problem, _) =
        post(&server, Some("order-7f3a"), &json!({"name": "Other", "email": "o@example.com"}));
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    assert_eq!(support::queued(dir.path()), 1);

    // Updates of one user under different keys (or none) are all kept.
    let v1 = json!({"id": "u-upd", "name": "Version One", "email": "v@example.com"});
    let v2 = json!({"id": "u-upd", "name": "Version Two", "email": "v@example.com"});
    assert_eq!(post(&server, Some("upd-1"), &v1).0, 202);
    assert_eq!(post(&server, Some("upd-2"), &v2).0, 202);
    assert_eq!(post(&server, None, &v1).0, 202);
    assert_eq!(post(&server, None, &v1).0, 202);
    assert_eq!(support::queued(dir.path()), 5);

    // A batch under a key, twice: one set of messages, the same results.
    let batch = json!([{"name": "B1", "email": "b1@example.com"}, {"name": "", "email": "x"}, {"id": "b-3", "name": "B3", "email": "b3@example.com"}]);
    let (status, first, _) = post(&server, Some("batch-1"), &batch);
    assert_eq!(status, 200, "{first}");
    let (status, again, _) = post(&server, Some("batch-1"), &batch);
    assert_eq!(status, 200);
    assert_eq!(first, again);
    assert_eq!(support::queued(dir.path()), 7);

    let (status, _, _) = post(&server, Some("bad key with spaces"), &record);
    assert_eq!(status, 400);
    drop(server);

    // With the worker on, the user is stored once, under the id of the first answer.
    let server = TestServer::start(dir.path(), &[]);
    let id = first["results"][0]["id"].as_str().unwrap().to_owned();
    wait_for_user(&blocking_client(), &server, &id, Duration::from_secs(10));
    support::eventually("the queue is drained", Duration::from_secs(10), || support::queued(dir.path()) == 0);
    let doc = wait_for_user(&blocking_client(), &server, "u-upd", Duration::from_secs(10));
    assert_eq!(doc["name"], "Version One", "the last update wins");
}

fn post_raw(server: &TestServer, key: &str, body: &str) -> (u16, Value, bool) {
    let r = blocking_client()
        .post(server.url("/api/users"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    (status, r.json().unwrap_or(Value::Null), replayed)
}

/// The same key: a record, the same record spelled differently (a replay), a batch, another
/// record (both refused); a batch replay says so.
fn same_key_other_requests(server: &TestServer, messages: &dyn Fn() -> usize) {
    let (status, first, replayed) =
        post_raw(server, "k-spell", r#"{"name":"Spelled","email":"s@example.com"}"#);
    assert_eq!((status, replayed), (202, false), "{first}");
    let respelled = "{ \"email\" : \"s@example.com\",\n \"name\": \"Spelled\" }";
    let (status, again, replayed) = post_raw(server, "k-spell", respelled);
    assert_eq!((status, replayed), (202, true), "the same JSON, keys reordered: a replay {again}");
    assert_eq!(first, again);
    let (status, problem, _) = post_raw(server, "k-spell", r#"[{"name":"Spelled","email":"s@example.com"}]"#);
    assert_eq!(status, 422, "a batch under a record's key: {problem}");
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    let (status, _, _) = post_raw(server, "k-spell", r#"{"name":"Spelled","email":"other@example.com"}"#);
    assert_eq!(status, 422);
    assert_eq!(messages(), 1, "one message for all of it");

    let batch =
        r#"[{"name":"Bat One","email":"b1@example.com"},{"name":"Bat Two","email":"b2@example.com"}]"#;
    let (status, first, replayed) = post_raw(server, "k-batch", batch);
    assert_eq!((status, replayed), (200, false), "{first}");
    let (status, again, replayed) = post_raw(server, "k-batch", batch);
    assert_eq!((status, replayed), (200, true), "a batch replay is marked too");
    assert_eq!(first, again);
    let (status, _, _) = post_raw(server, "k-batch", r#"{"name":"Bat One","email":"b1@example.com"}"#);
    assert_eq!(status, 422, "a record under a batch's key");
    assert_eq!(messages(), 3);
}

/// Concurrent requests with one key and DIFFERENT bodies: exactly one is accepted, the rest
/// refused, one message. Then concurrent retries of one body: one message, every answer the
/// same. With `one_first`, exactly one answer is not marked a replay (the embedded queue
/// claims and publishes in one transaction; in Azure a retry racing the first send sends
/// again, and duplicate detection drops it).
fn racing_requests_under_one_key(server: &TestServer, messages: &dyn Fn() -> usize, one_first: bool) {
    let before = messages();
    let answers: Vec<(u16, Value, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                scope.spawn(move || {
                    let body = json!({"id": format!("race-{i}"), "name": "Racer", "email": "r@example.com"});
                    post(server, Some("race-different"), &body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: Vec<_> = answers.iter().filter(|(status, ..)| *status == 202).collect();
    assert_eq!(accepted.len(), 1, "exactly one body wins the key: {answers:?}");
    assert_eq!(answers.iter().filter(|(status, ..)| *status == 422).count(), 11, "{answers:?}");
    assert_eq!(messages(), before + 1, "one message, the accepted one");

    let record = json!({"name": "Racing", "email": "race@example.com"});
    let answers: Vec<(u16, Value, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..12).map(|_| scope.spawn(|| post(server, Some("race-same"), &record))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(status, body, _)| *status == 202 && body == &answers[0].1), "{answers:?}");
    if one_first {
        assert_eq!(
            answers.iter().filter(|(.., replayed)| !replayed).count(),
            1,
            "one first answer: {answers:?}"
        );
    }
    assert_eq!(messages(), before + 2);
}

#[test]
fn the_same_key_for_another_request_is_refused_however_it_is_spelled_or_raced() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let queued = || support::queued(dir.path()) as usize;
    same_key_other_requests(&server, &queued);
    racing_requests_under_one_key(&server, &queued, true);
    // Replays are not counted as accepted records again.
    let metrics = blocking_client().get(server.url("/metrics")).send().unwrap().text().unwrap();
    let accepted = metrics.lines().find(|l| l.starts_with("ingest_records_accepted_total")).unwrap();
    assert_eq!(accepted.rsplit(' ').next().unwrap(), "5", "{accepted}");
}

#[test]
fn in_azure_mode_the_key_is_claimed_in_cosmos_and_another_request_is_refused() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let dir = tempfile::tempdir().unwrap();
    let server = cosmos.start_service(&servicebus, dir.path(), &[]);
    let bus = servicebus.clone();
    let messages = move || bus.captured().len();
    same_key_other_requests(&server, &messages);
    let duplicates = servicebus.duplicates();
    racing_requests_under_one_key(&server, &messages, false);
    assert_eq!(duplicates, 0, "a replay of a published request sends nothing at all");
}

#[test]
fn in_azure_mode_a_retry_after_a_failed_send_publishes_it_once() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let dir = tempfile::tempdir().unwrap();
    let server = cosmos.start_service(&servicebus, dir.path(), &[("SERVICEBUS_MAX_ATTEMPTS", "1")]);
    let batch = json!([{"name": "Part One", "email": "p1@example.com"}, {"name": "Part Two", "email": "p2@example.com"}]);
    // Service Bus fails: the key is claimed, nothing is durable, the client is told to retry.
    servicebus.set_mode(Mode::Fail { status: 503, retry_after: None });
    let (status, problem, _) = post(&server, Some("sb-retry"), &batch);
    assert_eq!(status, 503, "{problem}");
    assert!(servicebus.captured().is_empty());
    // The retry with the same key publishes (the claim is pending, not published), once.
    servicebus.set_mode(Mode::Accept);
    let (status, first, _) = post(&server, Some("sb-retry"), &batch);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["accepted"], 2);
    assert_eq!(servicebus.captured().len(), 2);
    let (status, again, replayed) = post(&server, Some("sb-retry"), &batch);
    assert_eq!((status, replayed), (200, true));
    assert_eq!(first, again);
    assert_eq!(servicebus.captured().len(), 2, "nothing sent for the replay");
    // The key lives in the idempotency container, not under the user's id.
    let claims = cosmos
        .document_requests()
        .into_iter()
        .filter(|r| {
            r["op"] == "create" && r["path"].as_str().is_some_and(|p| p.contains("/colls/idempotency/"))
        })
        .count();
    assert!(claims >= 1, "{:?}", cosmos.document_requests());
}

#[test]
fn concurrent_retries_with_one_key_make_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let record = json!({"name": "Racing", "email": "race@example.com"});
    let answers: Vec<(u16, Value, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..16).map(|_| scope.spawn(|| post(&server, Some("race-1"), &record))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(status, body, _)| *status == 202 && body == &answers[0].1), "{answers:?}");
    assert_eq!(support::queued(dir.path()), 1);
}

#[test]
fn through_service_bus_a_retry_sends_nothing_again() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let dir = tempfile::tempdir().unwrap();
    let server = cosmos.start_service(&servicebus, dir.path(), &[]);
    let record = json!({"name": "Bus Once", "email": "bus@example.com"});
    let (status, first, _) = post(&server, Some("sb-key-1"), &record);
    assert_eq!(status, 202);
    let (status, again, _) = post(&server, Some("sb-key-1"), &record);
    assert_eq!(status, 202);
    assert_eq!(first, again, "the same answer");
    assert_eq!(servicebus.captured().len(), 1, "one message in the topic");
    // Without a key, every POST is a message of its own (a second update is never dropped).
    assert_eq!(post(&server, None, &record).0, 202);
    assert_eq!(post(&server, None, &record).0, 202);
    assert_eq!(servicebus.captured().len(), 3);
}

#[test]
fn distinct_keys_never_share_an_id_and_a_key_is_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    // A batch's record 0 under `abcX` and a single record under `0:abcX`: two users.
    let (status, batch, _) =
        post(&server, Some("abcX"), &json!([{"name": "Batch Person", "email": "batch@example.com"}]));
    assert_eq!(status, 200, "{batch}");
    let (status, single, _) =
        post(&server, Some("0:abcX"), &json!({"name": "Single Person", "email": "single@example.com"}));
    assert_eq!(status, 202);
    let batch_id = batch["results"][0]["id"].as_str().unwrap().to_owned();
    let single_id = single["id"].as_str().unwrap().to_owned();
    assert_ne!(batch_id, single_id);
    assert_eq!(
        wait_for_user(&blocking_client(), &server, &batch_id, Duration::from_secs(10))["name"],
        "Batch Person"
    );
    assert_eq!(
        wait_for_user(&blocking_client(), &server, &single_id, Duration::from_secs(10))["name"],
        "Single Person"
    );

    let r = blocking_client()
        .post(server.url("/api/users"))
        .header("content-type", "application/json")
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .body(json!({"name": "Two Keys", "email": "k@example.com"}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("once"), "{problem}");
}
