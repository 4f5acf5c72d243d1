//! Accept→readable latency under a steady load: POSTs records at a fixed rate (open loop,
//! so a slow server cannot slow the offered load down) and, for a sample of them, polls
//! `GET /api/users/{id}` from the moment the 202 arrives until the document is readable.
//! Prints one JSON object: offered rate, accepted, p50/p99 in ms.
//!
//! Usage: bench_latency BASE_URL RATE_PER_SEC SECONDS BODIES_FILE [SAMPLE_EVERY]
//! BODIES_FILE holds one JSON record per line with `__ID__` where the id goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: bench_latency BASE_URL RATE_PER_SEC SECONDS BODIES_FILE [SAMPLE_EVERY]");
        std::process::exit(2);
    }
    let base = args[1].trim_end_matches('/').to_owned();
    let rate: f64 = args[2].parse().expect("rate");
    let seconds: f64 = args[3].parse().expect("seconds");
    let bodies: Vec<String> =
        std::fs::read_to_string(&args[4]).expect("bodies").lines().map(str::to_owned).collect();
    let sample_every: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(10);

    let client = reqwest::Client::builder().pool_max_idle_per_host(256).tcp_nodelay(true).build().unwrap();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    // Ids of this run only: a document left by an earlier run would be "readable" at once.
    let run = format!("lat{}-{}", std::process::id(), started_at_ms());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let id = format!("{run}-{i}");
        let body = bodies[i % bodies.len()].replace("__ID__", &id);
        let (client, base, latencies, accepted, errors) =
            (client.clone(), base.clone(), latencies.clone(), accepted.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}/api/users"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 202 => {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
            if i % sample_every != 0 {
                return;
            }
            let acked = Instant::now();
            let url = format!("{base}/api/users/{id}");
            loop {
                if let Ok(r) = client.get(&url).send().await {
                    if r.status() == 200 {
                        latencies.lock().await.push(acked.elapsed().as_secs_f64() * 1000.0);
                        return;
                    }
                }
                if acked.elapsed() > Duration::from_secs(30) {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = latencies.lock().await.clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| if l.is_empty() { f64::NAN } else { l[((l.len() as f64 - 1.0) * p).round() as usize] };
    println!(
        "{}",
        serde_json::json!({
            "offered_rate": rate,
            "sent": total,
            "accepted": accepted.load(std::sync::atomic::Ordering::Relaxed),
            "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
            "samples": l.len(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": l.last().copied().unwrap_or(f64::NAN),
        })
    );
}

fn started_at_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
