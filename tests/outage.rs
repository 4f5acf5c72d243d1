//! Faults in azure mode: the network to the Cosmos-protocol server is cut for 30 s while
//! 100 messages arrive through `/ingest-consume`, delivered the way the Functions host does
//! it (16 at a time, a failed invocation redelivered at once with DeliveryCount + 1, and
//! dead-lettered by Service Bus after 10). Afterwards every message is stored once and none
//! is dead-lettered. And a throttled store (Cosmos 429 with x-ms-retry-after-ms, injected by
//! the driver) takes a burst of 2,000 messages without a crash or a lost document.

mod support;

use std::collections::VecDeque;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cosmos::CosmosServer;
use support::proxy::Proxy;
use support::servicebus::FakeServiceBus;
use support::{TestServer, BIN};

/// What the host would send for message `i`.
fn invocation(i: usize, delivery_count: u32) -> String {
    let record =
        json!({"id": format!("out-{i}"), "name": "Outage Person", "email": format!("o{i}@example.com")});
    json!({
        "Data": {"message": record.to_string()},
        "Metadata": {
            "MessageId": format!("msg-out-{i}"),
            "DeliveryCount": delivery_count.to_string(),
            "SequenceNumber": (i + 1).to_string(),
            "EnqueuedTimeUtc": "2026-12-03T10:00:00Z",
        }
    })
    .to_string()
}

/// Delivers messages `0..count` as the host does; returns (deliveries made, messages Service
/// Bus dead-lettered after `max_deliveries`).
fn deliver_like_the_host(server: &TestServer, count: usize, max_deliveries: u32) -> (usize, Vec<usize>) {
    let queue: Mutex<VecDeque<(usize, u32)>> = Mutex::new((0..count).map(|i| (i, 1)).collect());
    let deliveries = AtomicUsize::new(0);
    let dead: Mutex<Vec<usize>> = Mutex::default();
    let remaining = AtomicUsize::new(count);
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                let client =
                    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
                while remaining.load(Ordering::SeqCst) > 0 {
                    let next = queue.lock().unwrap().pop_front();
                    let Some((i, delivery)) = next else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    deliveries.fetch_add(1, Ordering::SeqCst);
                    let ok = client
                        .post(server.url("/ingest-consume"))
                        .header("content-type", "application/json")
                        .body(invocation(i, delivery))
                        .send()
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        remaining.fetch_sub(1, Ordering::SeqCst);
                    } else if delivery >= max_deliveries {
                        dead.lock().unwrap().push(i);
                        remaining.fetch_sub(1, Ordering::SeqCst);
                    } else {
                        queue.lock().unwrap().push_back((i, delivery + 1));
                    }
                }
            });
        }
    });
    (deliveries.into_inner(), dead.into_inner().unwrap())
}

fn export(env: &[(String, String)]) -> Vec<Value> {
    let output = Command::new(BIN)
        .args(["export", "--quiet"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_30_second_store_outage_under_host_redelivery_ends_with_every_message_stored_once() {
    let proxy = Proxy::start();
    let cosmos = CosmosServer::start_advertising(Some(&proxy.endpoint));
    proxy.forward_to(&cosmos.endpoint);
    let servicebus = FakeServiceBus::start("users");
    let mut env = cosmos.azure_env(&servicebus);
    for (k, v) in &mut env {
        if k == "COSMOS_ENDPOINT" {
            *v = proxy.endpoint.clone();
        }
    }
    env.push(("COSMOS_TIMEOUT_MS".into(), "2000".into()));
    env.push(("CONSUME_RETRY_BUDGET_MS".into(), "8000".into()));
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &vars);

    proxy.set_up(false);
    let cut = Instant::now();
    let (deliveries, dead) = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(30));
            proxy.set_up(true);
        });
        deliver_like_the_host(&server, 100, 10)
    });
    assert!(cut.elapsed() >= Duration::from_secs(30));
    assert!(dead.is_empty(), "Service Bus would have dead-lettered {dead:?}");
    assert!(deliveries > 100, "the outage was not felt: {deliveries} deliveries");
    assert!(deliveries < 100 * 5, "deliveries were burnt: {deliveries}");

    // Every user once, none in the dead-letter container.
    let mut users = export(&env);
    users.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    assert_eq!(users.len(), 100);
    users.dedup_by(|a, b| a["id"] == b["id"]);
    assert_eq!(users.len(), 100, "a document was stored twice");
    let logs = server.logs();
    assert!(!logs.contains("message dead-lettered"), "a message was parked");
    assert!(logs.contains("store unavailable; retrying within the invocation"));
}
