//! What only the binary itself can show: its own 404 and 405 answers (in Azure the host
//! answers for methods and paths no function declares), configurable limits, and its logs.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{blocking_client, post_user, wait_for_user, TestServer};

#[test]
fn wrong_methods_get_405_and_unknown_paths_404_as_problem_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let client = blocking_client();
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/api/users/x", "GET"),
        (reqwest::Method::PUT, "/api/users", "POST"),
        (reqwest::Method::GET, "/api/users", "POST"),
        (reqwest::Method::GET, "/ingest-consume", "POST"),
        (reqwest::Method::POST, "/api/health", "GET"),
    ] {
        let r = client.request(method.clone(), server.url(path)).send().unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert!(r.headers()["allow"].to_str().unwrap().contains(allow), "{method} {path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let r = client.get(server.url("/api/nothing-here")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[test]
fn the_record_limit_is_configurable_and_stated_in_the_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("MAX_RECORD_BYTES", "2048")]);
    let client = blocking_client();
    let big =
        json!({"name": "A", "email": "a@example.com", "attributes": {"blob": "x".repeat(3000)}}).to_string();
    let (status, body) = post_user(&client, &server, &big);
    assert_eq!(status, 413);
    assert_eq!(body["maxBytes"], 2048);
    assert!(body["detail"].as_str().unwrap().contains("2048"));

    // A chunked body with no Content-Length is cut off while it is read.
    // reqwest's blocking Body from a reader sends chunked transfer encoding.
    let chunks = std::io::Cursor::new(big.into_bytes());
    let r = client
        .post(server.url("/api/users"))
        .header("content-type", "application/json")
        .body(reqwest::blocking::Body::new(chunks))
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[test]
fn logs_carry_ids_but_never_names_or_emails() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let client = blocking_client();
    let (status, body) = post_user(
        &client,
        &server,
        r#"{"id":"pii-1","name":"Zebulon Quarrington","email":"zq@secret.example"}"#,
    );
    assert_eq!(status, 202, "{body}");
    wait_for_user(&client, &server, "pii-1", Duration::from_secs(10));
    let (status, _) = post_user(&client, &server, r#"{"name":"Zebulon Quarrington","email":"zq@"}"#);
    assert_eq!(status, 400);
    let logs = server.stop();
    assert!(logs.contains("pii-1"), "the user id should be logged");
    assert!(!logs.contains("Zebulon") && !logs.contains("zq@"), "personal data in logs:\n{logs}");
}
