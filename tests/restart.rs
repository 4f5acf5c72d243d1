//! Durability across restarts: stored users and queued messages survive a stop, a SIGTERM
//! in the middle of traffic, and a SIGKILL.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{blocking_client, post_user, queued, stored, wait_for_user, TestServer};

#[test]
fn stopping_and_restarting_keeps_every_stored_user_and_every_queued_message() {
    let dir = tempfile::tempdir().unwrap();
    let client = blocking_client();

    // First run: 20 users stored.
    let server = TestServer::start(dir.path(), &[]);
    for i in 0..20 {
        let (status, _) = post_user(
            &client,
            &server,
            &json!({"id": format!("kept-{i}"), "name": "K", "email": "k@example.com"}).to_string(),
        );
        assert_eq!(status, 202);
    }
    for i in 0..20 {
        wait_for_user(&client, &server, &format!("kept-{i}"), Duration::from_secs(10));
    }
    server.stop();

    // Second run, worker off: 30 messages accepted and left queued.
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    for i in 0..30 {
        let (status, _) = post_user(
            &client,
            &server,
            &json!({"id": format!("queued-{i}"), "name": "Q", "email": "q@example.com"}).to_string(),
        );
        assert_eq!(status, 202);
    }
    let logs = server.stop();
    assert!(logs.contains("\"message\":\"stopped\""), "{logs}");
    assert_eq!(queued(dir.path()), 30);
    assert_eq!(stored(dir.path()), 20);

    // Third run: everything is there and the queue drains.
    let server = TestServer::start(dir.path(), &[]);
    for i in 0..20 {
        assert_eq!(
            wait_for_user(&client, &server, &format!("kept-{i}"), Duration::from_secs(1))["id"],
            format!("kept-{i}")
        );
    }
    for i in 0..30 {
        wait_for_user(&client, &server, &format!("queued-{i}"), Duration::from_secs(10));
    }
    support::eventually("the queue drains", Duration::from_secs(5), || queued(dir.path()) == 0);
    assert_eq!(stored(dir.path()), 50);
}

#[test]
fn every_202_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let client = blocking_client();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let mut acknowledged = Vec::new();
    for i in 0..100 {
        let (status, body) = post_user(
            &client,
            &server,
            &json!({"name": "S", "email": format!("s{i}@example.com")}).to_string(),
        );
        assert_eq!(status, 202);
        acknowledged.push(body["id"].as_str().unwrap().to_owned());
    }
    server.kill9();
    assert_eq!(queued(dir.path()), 100, "a 202 was answered before its message was durable");

    let server = TestServer::start(dir.path(), &[]);
    for id in &acknowledged {
        wait_for_user(&client, &server, id, Duration::from_secs(10));
    }
}

#[test]
fn sigterm_during_traffic_answers_in_flight_requests_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let base = server.base.clone();
    let poster = std::thread::spawn(move || {
        let client = blocking_client();
        let mut acknowledged = Vec::new();
        for i in 0.. {
            let r = client
                .post(format!("{base}/api/users"))
                .header("content-type", "application/json")
                .body(json!({"id": format!("term-{i}"), "name": "T", "email": "t@example.com"}).to_string())
                .send();
            match r {
                Ok(r) if r.status() == 202 => acknowledged.push(format!("term-{i}")),
                Ok(r) => panic!("unexpected status {} during shutdown", r.status()),
                Err(_) => break, // the listener is gone
            }
        }
        acknowledged
    });
    std::thread::sleep(Duration::from_millis(700));
    server.stop();
    let acknowledged = poster.join().unwrap();
    assert!(!acknowledged.is_empty());

    let server = TestServer::start(dir.path(), &[]);
    let client = blocking_client();
    for id in &acknowledged {
        wait_for_user(&client, &server, id, Duration::from_secs(10));
    }
}
