//! The consume step: the Functions host's invocations of `/ingest-consume`, and the embedded
//! worker's retries and dead-lettering, against the real binary.

mod support;

use std::time::Duration;

use base64::Engine;
use data_ingestion_api::broker::{OutgoingMessage, Publisher, SqliteQueue};
use serde_json::{json, Value};
use support::{blocking_client, dead_letters, eventually, stored, wait_for_user, TestServer};

fn invoke(client: &reqwest::blocking::Client, server: &TestServer, payload: &Value) -> (u16, Value) {
    let r = client
        .post(server.url("/ingest-consume"))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "inv-0001")
        .body(payload.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn host_payload(message: Value, message_id: &str, enqueued: &str) -> Value {
    json!({
        "Data": {"message": message},
        "Metadata": {
            "MessageId": message_id, "DeliveryCount": "1", "EnqueuedTimeUtc": enqueued,
            "SequenceNumber": "42", "ContentType": "application/json",
            "UserProperties": {"schemaVersion": "1"}, "sys": {"MethodName": "ingest-consume"}
        }
    })
}

#[test]
fn a_message_in_every_host_encoding_is_stored_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    let record =
        |id: &str| json!({"id": id, "name": "Chidi Anagonye", "email": "chidi@example.com", "age": 33});
    let b64 = |v: &Value| base64::engine::general_purpose::STANDARD.encode(v.to_string());
    let cases = [
        ("object", record("enc-object"), "2023-10-12T20:13:49"),
        ("once", Value::String(record("enc-once").to_string()), "2023-10-12T20:13:49Z"),
        (
            "twice",
            Value::String(Value::String(record("enc-twice").to_string()).to_string()),
            "2023-10-12T20:13:49+00:00",
        ),
        ("base64", Value::String(b64(&record("enc-base64"))), "2023-10-12T20:13:49.000"),
    ];
    for (name, message, enqueued) in cases {
        let (status, answer) =
            invoke(&client, &server, &host_payload(message, &format!("msg-{name}"), enqueued));
        assert_eq!(status, 200, "{name}: {answer}");
        assert!(answer["Logs"][0].as_str().unwrap().contains("stored"), "{name}: {answer}");
        assert!(answer.get("Outputs").is_some() && answer.get("ReturnValue").is_some());
        let doc = wait_for_user(&client, &server, &format!("enc-{name}"), Duration::from_secs(5));
        assert_eq!(doc["name"], "Chidi Anagonye");
        // The record had no ingestedAt: the enqueue time stands in, read as UTC whatever its form.
        assert_eq!(doc["ingestedAt"], "2023-10-12T20:13:49Z", "{name}");
    }
}

#[test]
fn the_same_message_delivered_twice_makes_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    // No id in the message: the id is derived from the MessageId, so a redelivery lands on
    // the same document instead of creating a second one.
    let payload = host_payload(
        json!({"name": "Eleanor Shellstrop", "email": "el@example.com"}),
        "dup-1",
        "2024-01-01T00:00:00Z",
    );
    let (s1, a1) = invoke(&client, &server, &payload);
    let (s2, a2) = invoke(&client, &server, &payload);
    assert_eq!((s1, s2), (200, 200), "{a1} {a2}");
    assert_eq!(stored(dir.path()), 1);
    let etag = |id: &str| {
        client.get(server.url(&format!("/api/users/{id}"))).send().unwrap().headers()["etag"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let id = a1["Logs"][0].as_str().unwrap().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(etag(&id), "\"dup-1\"");
}

#[test]
fn an_older_message_never_overwrites_a_newer_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    let version = |name: &str, at: &str| json!({"id": "ooo-1", "name": name, "email": "o@example.com", "ingestedAt": at});
    let newer = host_payload(version("Newer", "2024-05-01T10:00:00Z"), "m-new", "2024-05-01T10:00:00Z");
    let older = host_payload(version("Older", "2024-05-01T09:00:00Z"), "m-old", "2024-05-01T09:00:00Z");
    assert_eq!(invoke(&client, &server, &newer).0, 200);
    let (status, answer) = invoke(&client, &server, &older);
    assert_eq!(status, 200, "a stale message is settled, not retried: {answer}");
    assert_eq!(wait_for_user(&client, &server, "ooo-1", Duration::from_secs(5))["name"], "Newer");
}

#[test]
fn a_poison_message_is_parked_with_its_reason_and_answered_2xx() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    let cases = [
        ("p-notjson", json!("this is not json")),
        ("p-invalid", json!({"name": "", "email": "bad"})),
        ("p-array", json!([1, 2, 3])),
    ];
    for (id, message) in &cases {
        let (status, answer) =
            invoke(&client, &server, &host_payload(message.clone(), id, "2024-01-01T00:00:00Z"));
        assert_eq!(status, 200, "{id}: {answer}");
        assert!(answer["Logs"][0].as_str().unwrap().contains("dead-lettered"), "{answer}");
    }
    let letters = dead_letters(dir.path());
    assert_eq!(
        letters.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(),
        ["p-notjson", "p-invalid", "p-array"]
    );
    assert!(letters[1].1.contains("name") && letters[1].1.contains("email"), "{:?}", letters[1]);
    assert!(letters.iter().all(|l| l.3 == "ingest-consume"));
    assert_eq!(stored(dir.path()), 0);

    // A malformed invocation (not a message problem) fails so the host retries it.
    let (status, body) = invoke(&client, &server, &json!({"Metadata": {}}));
    assert_eq!(status, 400, "{body}");
}

#[test]
fn the_worker_parks_a_poison_message_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let client = blocking_client();
    // Another producer puts garbage on the topic, then a good record behind it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let queue = SqliteQueue::open(&dir.path().join("queue.db")).unwrap();
        let message = |id: &str, body: &str| OutgoingMessage {
            message_id: id.into(),
            correlation_id: None,
            body: body.into(),
            checked: None,
        };
        queue
            .publish(vec![
                message("poison-1", "{\"name\": 42}"),
                message("poison-2", "\u{1}binary"),
                message("good-1", r#"{"id":"after-poison","name":"Tahani","email":"t@example.com"}"#),
            ])
            .await
            .unwrap();
    });
    wait_for_user(&client, &server, "after-poison", Duration::from_secs(10));
    let letters = dead_letters(dir.path());
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters.iter().all(|l| l.3 == "worker" && l.2 == 1),
        "poison is parked on its first delivery: {letters:?}"
    );
    assert!(letters[0].1.contains("name"), "{letters:?}");
    eventually("the queue is empty", Duration::from_secs(5), || support::queued(dir.path()) == 0);
}

/// Holds the store's write lock, as another process or a stuck writer would.
fn lock_store(dir: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("users.db")).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    conn
}

#[test]
fn the_worker_retries_a_transient_failure_and_stores_once_the_store_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("MAX_DELIVERY_COUNT", "10")]);
    let client = blocking_client();
    let lock = lock_store(dir.path());
    let (status, _) =
        post_user(&client, &server, r#"{"id":"while-locked","name":"Jason","email":"j@example.com"}"#);
    assert_eq!(status, 202, "the topic accepts while the store is down");
    eventually("a retry is logged", Duration::from_secs(10), || {
        server.logs().contains("message will be retried")
    });
    assert_eq!(client.get(server.url("/api/users/while-locked")).send().unwrap().status(), 404);
    drop(lock);
    wait_for_user(&client, &server, "while-locked", Duration::from_secs(15));
    assert!(dead_letters(dir.path()).is_empty());
}

#[test]
fn a_store_outage_is_waited_out_with_backoff_without_using_up_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    // Three deliveries would be spent in a fraction of a second if the outage counted.
    let server = TestServer::start(dir.path(), &[("MAX_DELIVERY_COUNT", "3")]);
    let client = blocking_client();
    let lock = lock_store(dir.path());
    let (status, _) =
        post_user(&client, &server, r#"{"id":"outlasts-it","name":"Michael","email":"m@example.com"}"#);
    assert_eq!(status, 202);
    std::thread::sleep(Duration::from_secs(5));
    let retries = server.logs().matches("store unavailable; message will be retried").count();
    assert!(retries >= 2, "the worker kept trying: {retries}");
    // Backoff (50 ms doubling to 500 ms here, each try waiting out the store's 1 s lock timeout):
    // a few tries, not a busy loop.
    assert!(retries <= 12, "the worker did not back off: {retries} tries in 5 s");
    assert!(dead_letters(dir.path()).is_empty(), "an outage must not dead-letter good data");
    let attempts: i64 = rusqlite::Connection::open(dir.path().join("queue.db"))
        .unwrap()
        .query_row("SELECT attempts FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(attempts, 0, "an outage uses up no deliveries");
    drop(lock);
    wait_for_user(&client, &server, "outlasts-it", Duration::from_secs(15));
    assert!(dead_letters(dir.path()).is_empty());
    // The acknowledgement commits just after the document: wait for it rather than race it.
    eventually("the queue is drained", Duration::from_secs(5), || support::queued(dir.path()) == 0);
}

use support::post_user;

#[test]
fn odd_message_ids_and_times_from_other_producers_never_break_reads_or_ordering() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    // A MessageId no header can carry becomes the version's tag: the GET still answers.
    for (i, message_id) in ["a\nb", "a\u{7f}b", "a\"b"].into_iter().enumerate() {
        let id = format!("odd-etag-{i}");
        let message = json!({"id": id, "name": "Odd Tag", "email": "odd@example.com"});
        let (status, _) =
            invoke(&client, &server, &host_payload(message, message_id, "2026-01-01T00:00:00Z"));
        assert_eq!(status, 200);
        let r = client.get(server.url(&format!("/api/users/{id}"))).send().unwrap();
        assert_eq!(r.status(), 200, "{message_id:?}");
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        let again = client
            .get(server.url(&format!("/api/users/{id}")))
            .header("if-none-match", &etag)
            .send()
            .unwrap();
        assert_eq!(again.status(), 304, "{message_id:?} {etag}");
    }
    // Versions beyond what the store can order (it would wrap) are parked, not stored over a
    // newer one; so is one from the future, which would win over every update until then.
    let current = json!({"id": "ts-order", "name": "Current", "email": "t@example.com", "ingestedAt": "2026-01-01T00:00:00Z"});
    assert_eq!(invoke(&client, &server, &host_payload(current, "m-now", "2026-01-01T00:00:00Z")).0, 200);
    for (n, t) in
        ["2263-01-01T00:00:00Z", "1969-12-31T00:00:00Z", "2200-01-01T00:00:00Z"].into_iter().enumerate()
    {
        let odd = json!({"id": "ts-order", "name": "Odd Time", "email": "t@example.com", "ingestedAt": t});
        let (status, _) =
            invoke(&client, &server, &host_payload(odd, &format!("m-odd-{n}"), "2026-01-01T00:00:01Z"));
        assert_eq!(status, 200, "{t}: parked and answered 2xx");
    }
    let doc = wait_for_user(&client, &server, "ts-order", Duration::from_secs(5));
    assert_eq!(doc["name"], "Current");
    assert_eq!(dead_letters(dir.path()).len(), 3);
    // An EnqueuedTimeUtc out of that range is a malformed invocation.
    let message = json!({"id": "ts-enq", "name": "Enqueued", "email": "t@example.com"});
    assert_eq!(invoke(&client, &server, &host_payload(message, "m-enq", "2263-01-01T00:00:00Z")).0, 400);
}

#[test]
fn a_duplicated_key_is_poison_and_an_empty_message_id_is_no_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    // As an object would lose it, so as text: the message with `name` twice.
    let text = r#"{"id":"cdup","name":"First","email":"c@example.com","name":"Second"}"#;
    let (status, _) = invoke(&client, &server, &host_payload(json!(text), "m-dup", "2026-01-01T00:00:00Z"));
    assert_eq!(status, 200);
    assert_eq!(client.get(server.url("/api/users/cdup")).send().unwrap().status(), 404, "parked, not stored");
    let parked = dead_letters(dir.path());
    assert_eq!(parked.len(), 1);
    assert!(parked[0].1.contains("appears twice"), "{parked:?}");
    // Two id-less messages with an empty MessageId: two users, not one overwriting the other.
    for name in ["Anna", "Bert"] {
        let message = json!({"name": name, "email": "e@example.com"});
        assert_eq!(invoke(&client, &server, &host_payload(message, "", "2026-01-01T00:00:00Z")).0, 200);
    }
    assert_eq!(stored(dir.path()), 2);
}
