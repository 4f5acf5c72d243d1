//! Hostile input at the HTTP level, against the real binary over raw sockets: slow headers
//! and slow bodies are cut off, oversized headers refused, connections and requests in
//! flight capped with 503 + Retry-After, deep JSON refused — and the service keeps serving.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{blocking_client, post_user, TestServer};

fn connect(server: &TestServer) -> TcpStream {
    let addr = server.base.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Everything the server sends until it closes the connection (or 10 s pass).
fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

fn still_serving(server: &TestServer) {
    let body = r#"{"name": "After", "email": "after@example.com"}"#;
    assert_eq!(post_user(&blocking_client(), server, body).0, 202, "the service stopped serving");
}

#[test]
fn a_client_that_sends_its_headers_too_slowly_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("HEADER_TIMEOUT_MS", "500")]);
    let mut stream = connect(&server);
    let started = Instant::now();
    stream.write_all(b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n").unwrap();
    // ... and never the blank line that ends the headers.
    let answer = read_all(&mut stream);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "the connection stayed open {waited:?}");
    assert!(answer.is_empty() || status_line(&answer).contains("408"), "{answer}");
    still_serving(&server);
}

#[test]
fn a_body_that_arrives_too_slowly_gets_408_and_nothing_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("BODY_TIMEOUT_MS", "500"), ("INGEST_WORKER", "off")]);
    let mut stream = connect(&server);
    stream
        .write_all(b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"name\": \"Slow\",")
        .unwrap();
    let answer = read_all(&mut stream);
    assert!(status_line(&answer).contains("408"), "{answer}");
    assert!(
        answer.contains("application/problem+json") && answer.contains("/problems/body-timeout"),
        "{answer}"
    );
    assert_eq!(support::queued(dir.path()), 0);
    still_serving(&server);
}

#[test]
fn the_consume_route_times_out_slow_bodies_and_refuses_huge_ones_as_problems() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("BODY_TIMEOUT_MS", "500"), ("INGEST_WORKER", "off")]);
    let mut stream = connect(&server);
    let started = Instant::now();
    stream
        .write_all(b"POST /ingest-consume HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"Data\":")
        .unwrap();
    let answer = read_all(&mut stream);
    assert!(started.elapsed() < Duration::from_secs(5), "the invocation held its slot");
    assert!(status_line(&answer).contains("408"), "{answer}");
    assert!(answer.contains("/problems/body-timeout"), "{answer}");

    // Over 4 MiB: 413 as problem+json, declared or not.
    let huge = format!(r#"{{"Data":{{"message":"{}"}}}}"#, "x".repeat(4 * 1024 * 1024 + 10));
    let client = blocking_client();
    let r = client
        .post(server.url("/ingest-consume"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.json::<serde_json::Value>().unwrap()["type"], "/problems/too-large");
    still_serving(&server);
}

#[test]
fn oversized_headers_are_refused_with_431() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut stream = connect(&server);
    let huge = "a".repeat(64 * 1024);
    let request = format!("GET /api/users/x HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let answer = read_all(&mut stream);
    assert!(status_line(&answer).contains("431"), "{}", status_line(&answer));
    still_serving(&server);
}

#[test]
fn connections_beyond_the_cap_get_503_with_retry_after_and_the_service_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("MAX_CONNECTIONS", "4"), ("HEADER_TIMEOUT_MS", "2000")]);
    // The test server's readiness probe has closed its connection by now; hold every slot.
    std::thread::sleep(Duration::from_millis(200));
    let held: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect(&server);
    let _ = extra.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = read_all(&mut extra);
    assert!(status_line(&answer).contains("503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("/problems/overloaded"), "{answer}");
    drop(held);
    support::eventually("a slot is free again", Duration::from_secs(5), || {
        blocking_client().get(server.url("/api/health")).send().is_ok_and(|r| r.status() == 200)
    });
    // Counted, so that an operator sees the refusals the access log never gets.
    let metrics = blocking_client().get(server.url("/metrics")).send().unwrap().text().unwrap();
    let refused = metrics.lines().find(|l| l.starts_with("connections_refused_total")).expect("the counter");
    assert!(refused.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 1, "{refused}");
}

#[test]
fn requests_beyond_the_in_flight_cap_get_503_while_health_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("MAX_IN_FLIGHT", "2"), ("BODY_TIMEOUT_MS", "3000")]);
    // Two POSTs whose bodies never finish hold both permits.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&server);
        stream
            .write_all(b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
            .unwrap();
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    let client = blocking_client();
    let r = client
        .post(server.url("/api/users"))
        .header("content-type", "application/json")
        .body(r#"{"name": "Third", "email": "third@example.com"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let problem: serde_json::Value = r.json().unwrap();
    assert_eq!(problem["type"], "/problems/overloaded");
    assert_eq!(
        client.get(server.url("/api/health")).send().unwrap().status(),
        200,
        "health is never refused"
    );
    // The held requests time out (408), their permits come back, and work is accepted again.
    for mut stream in held {
        assert!(status_line(&read_all(&mut stream)).contains("408"));
    }
    still_serving(&server);
}

#[test]
fn deeply_nested_json_is_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let client = blocking_client();
    for body in
        ["[".repeat(100_000) + &"]".repeat(100_000), "{\"a\":".repeat(50_000) + "1" + &"}".repeat(50_000)]
    {
        let r = client
            .post(server.url("/api/users"))
            .header("content-type", "application/json")
            .body(body)
            .send();
        let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
        assert!(status == 400 || status == 413, "got {status}");
    }
    let nested = format!(
        r#"{{"name": "N", "email": "n@example.com", "attributes": {}1{}}}"#,
        "{\"a\":".repeat(20),
        "}".repeat(20)
    );
    let (status, problem) = post_user(&client, &server, &nested);
    assert_eq!(status, 400);
    assert_eq!(problem["errors"][0]["field"], "attributes", "{problem}");
    still_serving(&server);
}
