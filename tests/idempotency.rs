//! `Idempotency-Key`: a retried POST makes one message and gets the same answer; the same key
//! with another body is refused; different updates of one user are never dropped — on the
//! embedded queue and through Service Bus (whose duplicate detection the local endpoint plays).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::cosmos::CosmosServer;
use support::servicebus::FakeServiceBus;
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
fn through_service_bus_a_retry_reuses_the_message_id_so_duplicate_detection_drops_it() {
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
    assert_eq!(servicebus.duplicates(), 1, "the retry was sent with the same MessageId and dropped");
    // Without a key, every POST is a message of its own (a second update is never dropped).
    assert_eq!(post(&server, None, &record).0, 202);
    assert_eq!(post(&server, None, &record).0, 202);
    assert_eq!(servicebus.captured().len(), 3);
}
