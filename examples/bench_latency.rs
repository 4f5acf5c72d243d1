//! Accept→readable latency under a steady load: POSTs records at a fixed rate (open loop,
//! so a slow server cannot slow the offered load down) and, for a sample of them, polls
//! `GET /api/users/{id}` from the moment the 202 arrives until the document is readable.
//! Prints one JSON object: offered rate, accepted, p50/p99 in ms.
//!
//! Like the Functions host in front of the custom handler (and wrk in the other phases), it
//! uses a bounded pool of CONNECTIONS: a request whose turn has come waits for a free one.
//! The POST's own latency is counted from when it was due, not from when it got a
//! connection, so that wait is in `post_p99_ms` (no coordinated omission) rather than hidden.
//! An unbounded client instead opens a new connection for every request that finds none
//! idle: behind a 100 ms stall that is a thousand connections at 10k/s, up to the server's
//! cap, and the run measures the reconnect storm more than the service.
//!
//! Usage: bench_latency BASE_URL RATE_PER_SEC SECONDS BODIES_FILE [SAMPLE_EVERY [CONNECTIONS]]
//! BODIES_FILE holds one JSON record per line with `__ID__` where the id goes. SAMPLE_EVERY 0
//! sends the POSTs alone and takes any 2xx: the same load against the baseline, whose POST
//! latency then shows how much of the service's is the machine's own stalls.

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
    let posts_only = sample_every == 0;
    let connections: usize = args.get(6).and_then(|s| s.parse().ok()).unwrap_or(64);

    let client =
        reqwest::Client::builder().pool_max_idle_per_host(connections).tcp_nodelay(true).build().unwrap();
    // One permit per connection, held for the length of one request.
    let pool = Arc::new(tokio::sync::Semaphore::new(connections));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let post_latencies = Arc::new(Mutex::new(Vec::new()));
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
        let (client, base, latencies, post_latencies, accepted, errors, pool) = (
            client.clone(),
            base.clone(),
            latencies.clone(),
            post_latencies.clone(),
            accepted.clone(),
            errors.clone(),
            pool.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = {
                let _connection = pool.acquire().await.expect("the pool is never closed");
                client
                    .post(format!("{base}/api/users"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
            };
            post_latencies.lock().await.push(due.elapsed().as_secs_f64() * 1000.0);
            match r {
                Ok(r) if r.status() == 202 || (posts_only && r.status().is_success()) => {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
            if posts_only || i % sample_every != 0 {
                return;
            }
            let acked = Instant::now();
            let url = format!("{base}/api/users/{id}");
            loop {
                let polled = {
                    let _connection = pool.acquire().await.expect("the pool is never closed");
                    client.get(&url).send().await
                };
                if let Ok(r) = polled {
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
    let mut posts = post_latencies.lock().await.clone();
    posts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let percentile = |l: &[f64], p: f64| {
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    let pct = |p: f64| percentile(&l, p);
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
            "connections": connections,
            "post_p50_ms": percentile(&posts, 0.50),
            "post_p99_ms": percentile(&posts, 0.99),
        })
    );
}

fn started_at_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
