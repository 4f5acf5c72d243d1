//! Observability, black-box: traffic through the real binary moves the metrics at `/metrics`
//! and `/status.json` as it must, Application Insights receives requests correlated with the
//! host's trace and the metrics the alerts query, and no name or email of the 2,000 users
//! reaches any log line, metric or exported item.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::appinsights::FakeAppInsights;
use support::{blocking_client, eventually, post_user, wait_for_user, TestServer, BIN};

/// The value of the Prometheus sample `name` whose labels include every pair of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let all =
            labels.iter().all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

fn scrape(server: &TestServer) -> String {
    let response = blocking_client().get(server.url("/metrics")).send().unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    response.text().unwrap()
}

fn user(i: usize) -> String {
    json!({"id": format!("metrics-{i}"), "name": "Metric Person", "email": format!("m{i}@example.com")})
        .to_string()
}

/// POSTs a host invocation to `/ingest-consume`.
fn consume(
    client: &reqwest::blocking::Client,
    server: &TestServer,
    invocation: impl Into<reqwest::blocking::Body>,
) -> reqwest::blocking::Response {
    client
        .post(server.url("/ingest-consume"))
        .header("content-type", "application/json")
        .body(invocation)
        .send()
        .unwrap()
}

/// A host invocation of `/ingest-consume` for `record` (a JSON value).
fn invocation(record: &Value, message_id: &str) -> String {
    json!({
        "Data": {"message": record.to_string()},
        "Metadata": {
            "MessageId": message_id,
            "DeliveryCount": "1",
            "SequenceNumber": "1",
            "EnqueuedTimeUtc": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            "CorrelationId": "4bf92f3577b34da6a3ce929d0e0e4736",
        }
    })
    .to_string()
}

#[test]
fn metrics_count_requests_records_outcomes_and_one_processing_sample_per_stored_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let client = blocking_client();
    let before = scrape(&server);
    assert_eq!(sample(&before, "ingest_records_accepted_total", &[]), Some(0.0), "{before}");

    for i in 0..20 {
        assert_eq!(post_user(&client, &server, &user(i)).0, 202);
    }
    // One refusal of each kind the ingest route counts.
    assert_eq!(post_user(&client, &server, "{not json").0, 400);
    assert_eq!(post_user(&client, &server, r#"{"name": "", "email": "nope"}"#).0, 400);
    let r =
        client.post(server.url("/api/users")).header("content-type", "text/plain").body("x").send().unwrap();
    assert_eq!(r.status(), 415);
    for i in 0..20 {
        wait_for_user(&client, &server, &format!("metrics-{i}"), Duration::from_secs(10));
    }
    assert_eq!(client.get(server.url("/api/users/nobody-here")).send().unwrap().status(), 404);

    let mut text = String::new();
    eventually("the queue is drained and every message counted", Duration::from_secs(10), || {
        text = scrape(&server);
        sample(&text, "queue_depth", &[]) == Some(0.0)
            && sample(&text, "messages_consumed_total", &[("outcome", "stored")]) == Some(20.0)
    });
    let post202 = [("route", "/api/users"), ("method", "POST"), ("status", "202")];
    assert_eq!(sample(&text, "http_requests_total", &post202), Some(20.0), "{text}");
    assert_eq!(
        sample(&text, "http_request_duration_seconds_count", &[("route", "/api/users"), ("method", "POST")]),
        Some(23.0)
    );
    let get404 = [("route", "/api/users/{user_id}"), ("method", "GET"), ("status", "404")];
    assert_eq!(sample(&text, "http_requests_total", &get404), Some(1.0));
    assert_eq!(sample(&text, "ingest_records_accepted_total", &[]), Some(20.0));
    for reason in ["invalid_json", "invalid_record", "unsupported_media_type"] {
        assert_eq!(
            sample(&text, "ingest_records_rejected_total", &[("reason", reason)]),
            Some(1.0),
            "{reason}"
        );
    }
    assert_eq!(sample(&text, "publish_duration_seconds_count", &[]), Some(20.0));
    // Exactly one processing-time sample per stored message, all in the +Inf bucket's count.
    assert_eq!(sample(&text, "message_processing_seconds_count", &[]), Some(20.0));
    assert_eq!(sample(&text, "message_processing_seconds_bucket", &[("le", "+Inf")]), Some(20.0));
    assert!(sample(&text, "message_processing_seconds_sum", &[]).unwrap() > 0.0);
    assert!(
        sample(&text, "store_operation_duration_seconds_count", &[("op", "read"), ("outcome", "ok")])
            .unwrap()
            >= 21.0
    );
    assert!(
        sample(&text, "store_operation_duration_seconds_count", &[("op", "upsert"), ("outcome", "ok")])
            .unwrap()
            >= 1.0
    );
    assert_eq!(sample(&text, "dead_letters", &[]), Some(0.0));

    // A poison message through the host's route is parked and counted.
    let poison = json!({"name": "Poison", "email": "not-an-address"});
    let r = consume(&client, &server, invocation(&poison, "poison-1"));
    assert_eq!(r.status(), 200);
    let text = scrape(&server);
    assert_eq!(sample(&text, "dead_letters", &[]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "messages_consumed_total", &[("outcome", "dead_lettered")]), Some(1.0));
    assert_eq!(
        sample(&text, "message_processing_seconds_count", &[]),
        Some(20.0),
        "a parked message is not processed"
    );

    // The status page's numbers are the same registry's.
    let status: Value = client.get(server.url("/status.json")).send().unwrap().json().unwrap();
    assert_eq!(status["records"]["accepted"], 20);
    assert_eq!(status["records"]["rejected"], 3);
    assert_eq!(status["messages"]["stored"], 20);
    assert_eq!(status["messages"]["deadLettered"], 1);
    assert_eq!(status["processingTime"]["count"], 20);
    assert!(status["processingTime"]["p99Ms"].as_f64().unwrap() > 0.0);
    assert_eq!(status["queue"]["depth"], 0);
    assert_eq!(status["queue"]["deadLetters"], 1);
}

#[test]
fn queue_depth_counts_what_waits_while_the_worker_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    for i in 0..7 {
        assert_eq!(post_user(&client, &server, &user(i)).0, 202);
    }
    let text = scrape(&server);
    assert_eq!(sample(&text, "queue_depth", &[]), Some(7.0), "{text}");
    assert_eq!(
        sample(&text, "message_processing_seconds_count", &[]),
        Some(0.0),
        "nothing was processed: {text}"
    );
}

#[test]
fn a_locked_store_counts_retries_then_one_processing_sample_when_the_message_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();
    assert_eq!(post_user(&client, &server, &user(1)).0, 202);
    server.stop();
    // Another writer holds the store: every write of the worker times out and is retried.
    let conn = rusqlite::Connection::open(dir.path().join("users.db")).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut text = String::new();
    eventually("the worker has retried", Duration::from_secs(30), || {
        text = scrape(&server);
        sample(&text, "messages_consumed_total", &[("outcome", "retried")]).is_some_and(|n| n >= 1.0)
    });
    assert_eq!(
        sample(&text, "message_processing_seconds_count", &[]),
        Some(0.0),
        "nothing is stored yet: {text}"
    );
    assert!(
        sample(&text, "store_operation_duration_seconds_count", &[("op", "upsert"), ("outcome", "error")])
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    conn.execute_batch("ROLLBACK;").unwrap();
    drop(conn);
    eventually("the message is stored once the store is free", Duration::from_secs(30), || {
        text = scrape(&server);
        sample(&text, "messages_consumed_total", &[("outcome", "stored")]) == Some(1.0)
    });
    assert_eq!(sample(&text, "message_processing_seconds_count", &[]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "messages_consumed_total", &[("outcome", "dead_lettered")]), None);
    assert_eq!(sample(&text, "queue_depth", &[]), Some(0.0));
}

#[test]
fn application_insights_gets_requests_in_the_hosts_trace_and_the_metrics_the_alerts_query() {
    let insights = FakeAppInsights::start();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &[
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", &insights.connection_string()),
            ("TELEMETRY_EXPORT_INTERVAL_MS", "200"),
        ],
    );
    let client = blocking_client();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = client
        .post(server.url("/api/users"))
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .header("x-azure-functions-invocationid", "invocation-42")
        .body(user(1))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_for_user(&client, &server, "metrics-1", Duration::from_secs(10));
    let r = client
        .post(server.url("/ingest-consume"))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "invocation-43")
        .body(invocation(
            &json!({"id": "via-host", "name": "Host Person", "email": "h@example.com"}),
            "m-host",
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    eventually(
        "the POST's request item and the processing-time metric arrive",
        Duration::from_secs(10),
        || {
            insights.requests().iter().any(|r| r["tags"]["ai.operation.name"] == "POST /api/users")
                && !insights.metric_points("message_processing_seconds").is_empty()
                && insights
                    .requests()
                    .iter()
                    .any(|r| r["tags"]["ai.operation.name"] == "POST /ingest-consume")
        },
    );
    assert!(insights.refused().is_empty(), "{:?}", insights.refused());
    let requests = insights.requests();
    let post = requests.iter().find(|r| r["tags"]["ai.operation.name"] == "POST /api/users").unwrap();
    assert_eq!(post["tags"]["ai.operation.id"], "0af7651916cd43dd8448eb211c80319c", "{post}");
    assert_eq!(post["tags"]["ai.operation.parentId"], "b7ad6b7169203331");
    assert_eq!(post["tags"]["ai.cloud.role"], "data-ingestion-api");
    assert_eq!(post["data"]["baseData"]["responseCode"], "202");
    assert_eq!(post["data"]["baseData"]["properties"]["InvocationId"], "invocation-42");
    // The consumed message joins the trace it was published in (its correlation id).
    let consume = requests.iter().find(|r| r["tags"]["ai.operation.name"] == "POST /ingest-consume").unwrap();
    assert_eq!(consume["tags"]["ai.operation.id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{consume}");
    assert_eq!(consume["data"]["baseData"]["properties"]["InvocationId"], "invocation-43");

    let processing = insights.metric_points("message_processing_seconds");
    let count: u64 = processing.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(count, 2, "one sample per stored message: {processing:?}");
    assert!(processing.iter().all(|p| p["max"].as_f64().unwrap() >= p["min"].as_f64().unwrap()));
    let accepted: f64 = insights
        .metric_points("http_requests_total")
        .iter()
        .filter(|p| p["properties"]["route"] == "/api/users" && p["properties"]["status"] == "202")
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert_eq!(accepted, 1.0, "counters are sent as increases, once");
    let stored: f64 = insights
        .metric_points("messages_consumed_total")
        .iter()
        .filter(|p| p["properties"]["outcome"] == "stored")
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert_eq!(stored, 2.0);
    let logs = server.stop();
    assert!(!logs.contains(support::appinsights::IKEY), "the instrumentation key was logged");
    // One JSON line per message as well as per request, with the ids that find it.
    let lines: Vec<Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let stored: Vec<&Value> = lines.iter().filter(|l| l["message"] == "message stored").collect();
    assert_eq!(stored.len(), 2, "{logs}");
    let by_host = stored.iter().find(|l| l["user_id"] == "via-host").expect("the host's message");
    assert_eq!(by_host["invocation_id"], "invocation-43");
    assert_eq!((by_host["message_id"].as_str(), by_host["level"].as_str()), (Some("m-host"), Some("INFO")));
    assert_eq!(by_host["stale"], false);
    let by_worker = stored.iter().find(|l| l["user_id"] == "metrics-1").expect("the worker's message");
    assert!(by_worker["message_id"].is_string() && by_worker["timestamp"].is_string(), "{by_worker}");
}

#[test]
fn no_name_or_email_of_the_2000_users_reaches_logs_metrics_status_or_exported_telemetry() {
    let insights = FakeAppInsights::start();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &dir.path().join("data"),
        &[
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", &insights.connection_string()),
            ("TELEMETRY_EXPORT_INTERVAL_MS", "300"),
            ("RUST_LOG", "debug"),
        ],
    );
    let client = blocking_client();
    let import = Command::new(BIN)
        .args(["import", "--url", &server.base])
        .arg(support::data_file("users.ndjson"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let users = support::users();
    // Through the host's route too, and as poison (a valid name and email, a bad age), so
    // that rejection reasons and dead-letter logs are searched as well.
    for (i, u) in users.iter().enumerate().take(50) {
        let mut record = u.clone();
        if i % 2 == 0 {
            record["age"] = json!(-1);
        }
        let r = consume(&client, &server, invocation(&record, &format!("pii-{i}")));
        assert_eq!(r.status(), 200);
        let mut bad = u.clone();
        bad["age"] = json!("old");
        assert_eq!(post_user(&client, &server, &bad.to_string()).0, 400);
    }
    // Ids are the client's choice: some use the email address. And a producer's poison
    // message may carry one as a field NAME, which the reason names.
    let mut email_ids = Vec::new();
    for (i, u) in users.iter().enumerate().skip(50).take(20) {
        let email = u["email"].as_str().unwrap().trim().to_owned();
        let mut record = u.clone();
        record["id"] = json!(email);
        if i % 2 == 0 {
            assert_eq!(post_user(&client, &server, &record.to_string()).0, 202, "{record}");
        } else {
            let r = consume(&client, &server, invocation(&record, &format!("pii-id-{i}")));
            assert_eq!(r.status(), 200);
        }
        email_ids.push(email.clone());
        let mut poison = u.clone();
        poison[email.as_str()] = json!(true);
        let r = consume(&client, &server, invocation(&poison, &format!("pii-key-{i}")));
        assert_eq!(r.status(), 200);
        assert!(!r.text().unwrap().contains(&email), "the host logs the answer");
        // Another producer's metadata may hold an address too: as MessageId and CorrelationId
        // of a stored message and of a poison one, and as an unreadable EnqueuedTimeUtc.
        for message in [u.clone(), poison.clone()] {
            let mut host: Value = serde_json::from_str(&invocation(&message, &email)).unwrap();
            host["Metadata"]["CorrelationId"] = json!(email);
            let r = consume(&client, &server, host.to_string());
            assert_eq!(r.status(), 200);
            assert!(!r.text().unwrap().contains(&email), "the host logs the answer");
        }
        let mut host: Value = serde_json::from_str(&invocation(u, &format!("pii-time-{i}"))).unwrap();
        host["Metadata"]["EnqueuedTimeUtc"] = json!(format!("{email} {}", u["name"].as_str().unwrap()));
        let r = consume(&client, &server, host.to_string());
        assert_eq!(r.status(), 400);
        assert!(!r.text().unwrap().contains(&email));
    }
    for u in users.iter().filter_map(|u| u["id"].as_str()).take(100) {
        wait_for_user(&client, &server, u, Duration::from_secs(30));
    }
    for id in &email_ids {
        wait_for_user(&client, &server, id, Duration::from_secs(30));
    }
    eventually("the queue is drained", Duration::from_secs(30), || support::queued(&server.data_dir) == 0);
    let metrics = scrape(&server);
    let status = client.get(server.url("/status.json")).send().unwrap().text().unwrap();
    let health = client.get(server.url("/api/health")).send().unwrap().text().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let logs = server.stop();
    let exported = insights.bodies();
    assert!(exported.contains("message_processing_seconds"), "nothing was exported");
    assert!(logs.lines().count() > 2000, "expected a log line per request: {} lines", logs.lines().count());

    let outputs = [
        ("logs", logs.as_str()),
        ("/metrics", metrics.as_str()),
        ("/status.json", status.as_str()),
        ("/api/health", health.as_str()),
        ("Application Insights", exported.as_str()),
        ("import stdout", &String::from_utf8_lossy(&import.stdout)),
        ("import stderr", &String::from_utf8_lossy(&import.stderr)),
    ];
    let mut needles = Vec::new();
    for u in &users {
        for field in ["name", "email"] {
            let Some(value) = u[field].as_str().map(str::trim).filter(|v| !v.is_empty()) else { continue };
            // As written, and as JSON would escape it.
            let escaped: String = value
                .chars()
                .map(|c| if c.is_ascii() { c.to_string() } else { format!("\\u{:04x}", c as u32) })
                .collect();
            needles.push((field, value.to_owned()));
            if escaped != value {
                needles.push((field, escaped));
            }
        }
    }
    let searched = needles.len();
    let finder = aho_corasick::AhoCorasick::new(needles.iter().map(|(_, v)| v)).unwrap();
    let mut leaks = Vec::new();
    for (what, text) in &outputs {
        for found in finder.find_overlapping_iter(*text) {
            let (field, value) = &needles[found.pattern().as_usize()];
            leaks.push(format!("{field} {value:?} in {what}"));
        }
    }
    assert!(searched >= 3990, "searched only {searched} values");
    assert!(
        leaks.is_empty(),
        "{} personal values leaked, e.g. {:?}",
        leaks.len(),
        &leaks[..leaks.len().min(10)]
    );
}
