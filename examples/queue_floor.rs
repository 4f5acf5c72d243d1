//! What the embedded queue alone costs per record, without HTTP: publishes groups of records
//! through `SqliteQueue` (one fsync'd commit each, as under load), has them handed over to a
//! subscriber and settles them one group behind, and prints the process's CPU time per
//! record for each group size. docs/performance.md compares it with the CPU a POST may take
//! for the throughput target.
//!
//! Usage: queue_floor [RECORDS]   (in a scratch directory under the system's temp dir)

use std::sync::Arc;
use std::time::Instant;

use data_ingestion_api::broker::{OutgoingMessage, Publisher, Settlement, SqliteQueue};
use data_ingestion_api::domain::NewUser;

/// CPU seconds of this process so far (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let records: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(40_000);
    let users: Vec<serde_json::Value> = include_str!("../tests/data/users.ndjson")
        .lines()
        .map(|line| serde_json::from_str(line).expect("users.ndjson"))
        .collect();
    println!("| records per commit | µs CPU per record | µs wall per record |");
    println!("|---:|---:|---:|");
    for group in [8usize, 16, 32, 64] {
        let dir = tempfile_dir();
        let queue = SqliteQueue::open(&dir.join("queue.db")).expect("open the queue");
        queue.subscribe().await.expect("subscribe");
        // The messages are made before the clock starts: this measures the queue, not them.
        let groups: Vec<Vec<OutgoingMessage>> = (0..records)
            .step_by(group)
            .map(|start| (start..(start + group).min(records)).map(|i| message(&users, i)).collect())
            .collect();
        let (cpu, wall) = (cpu_seconds(), Instant::now());
        let mut held: Vec<i64> = Vec::new();
        for messages in groups {
            queue.publish(messages).await.expect("publish");
            // Settle the group before this one, as the worker does a batch behind.
            let settled = std::mem::take(&mut held);
            held = queue.receive(group).await.expect("receive").iter().map(|m| m.sequence).collect();
            queue
                .settle(settled.into_iter().map(|sequence| Settlement::Complete { sequence }).collect())
                .await
                .expect("settle");
        }
        let (cpu, wall) = (cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
        println!("| {group} | {:.1} | {:.1} |", cpu / records as f64 * 1e6, wall / records as f64 * 1e6);
        drop(queue);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Record `i` as the API would publish it: a checked document, its JSON, a time-ordered id.
fn message(users: &[serde_json::Value], i: usize) -> OutgoingMessage {
    let mut user = users[i % users.len()].clone();
    user["id"] = format!("floor-{i}").into();
    let doc = NewUser::parse(user).expect("a valid user").into_document(time::OffsetDateTime::now_utc());
    OutgoingMessage {
        message_id: uuid::Uuid::now_v7().to_string(),
        correlation_id: Some(uuid::Uuid::new_v4().simple().to_string()),
        body: doc.to_json(),
        checked: Some(Arc::new(doc)),
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "queue-floor-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
