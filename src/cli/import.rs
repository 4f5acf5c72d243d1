//! `data-ingestion-api import FILE`: posts every record of an NDJSON file (one record per
//! line) or a JSON array to a running service, with bounded concurrency.
//!
//! 429 and 503 mean nothing was accepted, so they are retried with backoff, honouring
//! `Retry-After`. Other failures are retried only where a retry cannot duplicate a user:
//! before the request was sent, or for a record that carries its own id (the store upserts
//! by id). Everything else is reported, never dropped silently.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{header, StatusCode};
use serde_json::{json, Value};

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// NDJSON (one record per line) or a JSON array of records.
    pub file: PathBuf,
    /// Base URL of the service.
    #[arg(long, env = "INGEST_URL", default_value = "http://127.0.0.1:7071")]
    pub url: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Where to write the rejected records with their errors [default: FILE's name + .rejected.ndjson, in the current directory].
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Where to write the id of every accepted record [default: FILE's name + .accepted.ndjson, in the current directory].
    #[arg(long)]
    pub accepted: Option<PathBuf>,
    /// Function key, sent as `x-functions-key`.
    #[arg(long, env = "INGEST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Attempts per record for retryable answers (429, 503, connection failures).
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

/// One record of the input and where it was.
struct Record {
    /// 1-based line number (NDJSON) or element number (JSON array).
    position: usize,
    body: String,
    has_id: bool,
}

enum Outcome {
    Accepted { id: String },
    Rejected { status: u16, reason: String, problem: Value },
    Failed { reason: String },
}

pub fn main(args: ImportArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("import: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(summary) if summary.all_accepted() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("import: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Summary {
    pub total: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub failed: usize,
    pub by_reason: BTreeMap<String, usize>,
}

impl Summary {
    pub fn all_accepted(&self) -> bool {
        self.accepted == self.total
    }
}

pub async fn run(args: ImportArgs) -> anyhow::Result<Summary> {
    let records = read_records(&args.file)?;
    let base = args.url.trim_end_matches('/').to_owned();
    let endpoint = format!("{base}/api/users");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency as usize)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    preflight(&client, &base).await?;

    let stem = args.file.file_name().map_or("import".into(), |n| n.to_string_lossy().into_owned());
    let accepted_path =
        args.accepted.clone().unwrap_or_else(|| PathBuf::from(format!("{stem}.accepted.ndjson")));
    let rejects_path =
        args.rejects.clone().unwrap_or_else(|| PathBuf::from(format!("{stem}.rejected.ndjson")));
    let mut accepted_out = create(&accepted_path)?;
    let mut rejects_out = create(&rejects_path)?;

    let total = records.len();
    let progress = Progress::new(total, args.quiet);
    let started = Instant::now();
    let mut summary = Summary { total, ..Summary::default() };

    let api_key = args.api_key.clone();
    let max_attempts = args.max_attempts.max(1);
    let mut results = futures::stream::iter(records)
        .map(|record| {
            let client = client.clone();
            let endpoint = endpoint.clone();
            let api_key = api_key.clone();
            async move {
                let outcome = send(&client, &endpoint, api_key.as_deref(), &record, max_attempts).await;
                (record, outcome)
            }
        })
        .buffer_unordered(args.concurrency as usize);

    while let Some((record, outcome)) = results.next().await {
        match outcome {
            Outcome::Accepted { id } => {
                summary.accepted += 1;
                writeln!(accepted_out, "{}", json!({"line": record.position, "id": id}))?;
            }
            Outcome::Rejected { status, reason, problem } => {
                summary.rejected += 1;
                *summary.by_reason.entry(reason.clone()).or_default() += 1;
                let line = json!({"line": record.position, "status": status, "reason": reason, "problem": problem, "record": record.body});
                writeln!(rejects_out, "{line}")?;
            }
            Outcome::Failed { reason } => {
                summary.failed += 1;
                *summary.by_reason.entry(reason.clone()).or_default() += 1;
                let line =
                    json!({"line": record.position, "status": null, "reason": reason, "record": record.body});
                writeln!(rejects_out, "{line}")?;
            }
        }
        progress.tick(summary.accepted + summary.rejected + summary.failed);
    }
    progress.finish();
    accepted_out.flush()?;
    rejects_out.flush()?;
    drop(rejects_out);
    if summary.rejected + summary.failed == 0 {
        // No rejects: leave no empty file behind.
        let _ = std::fs::remove_file(&rejects_path);
    }

    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "imported {}: {} records, {} accepted, {} rejected, {} failed in {:.2} s ({:.0} records/s)",
        args.file.display(),
        total,
        summary.accepted,
        summary.rejected,
        summary.failed,
        elapsed,
        total as f64 / elapsed.max(1e-9)
    );
    println!("ids of accepted records (assigned ones included): {}", accepted_path.display());
    if !summary.by_reason.is_empty() {
        println!("not accepted, by reason:");
        for (reason, n) in &summary.by_reason {
            println!("  {n:>7}  {reason}");
        }
        println!("rejected records with their errors: {}", rejects_path.display());
    }
    Ok(summary)
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let file = File::create(path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(BufWriter::new(file))
}

/// NDJSON, or a JSON array when the first non-blank character is `[`.
fn read_records(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let has_id = |v: &Value| v.get("id").is_some_and(|id| !id.is_null());
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{} starts with '[' but is not a JSON array: {e}", path.display())
        })?;
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, v)| Record { position: i + 1, has_id: has_id(&v), body: v.to_string() })
            .collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let id = serde_json::from_str::<Value>(line).map(|v| has_id(&v)).unwrap_or(false);
            Record { position: i + 1, body: line.to_owned(), has_id: id }
        })
        .collect())
}

/// Fails fast, with the URL in the message, when nothing answers there.
async fn preflight(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..10 {
        match client.get(format!("{base}/")).send().await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(anyhow::anyhow!("no service answers at {base}: {}", last.map(|e| e.to_string()).unwrap_or_default()))
}

async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    api_key: Option<&str>,
    record: &Record,
    max_attempts: u32,
) -> Outcome {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request =
            client.post(endpoint).header(header::CONTENT_TYPE, "application/json").body(record.body.clone());
        if let Some(key) = api_key {
            request = request.header("x-functions-key", key);
        }
        let (retryable, reason, wait) = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status == StatusCode::ACCEPTED {
                    match body.get("id").and_then(Value::as_str) {
                        Some(id) => return Outcome::Accepted { id: id.to_owned() },
                        None => return Outcome::Failed { reason: "202 without an id".into() },
                    }
                }
                if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
                    (true, format!("HTTP {}", status.as_u16()), retry_after)
                } else if status.is_client_error() {
                    return Outcome::Rejected {
                        status: status.as_u16(),
                        reason: reason_of(status, &body),
                        problem: body,
                    };
                } else {
                    // 5xx other than 503: the record may or may not have been accepted.
                    (record.has_id, format!("HTTP {}", status.as_u16()), retry_after)
                }
            }
            Err(e) if e.is_connect() => (true, format!("cannot connect: {e}"), None),
            Err(e) => (record.has_id, format!("transport error: {e}"), None),
        };
        if !retryable || attempt >= max_attempts {
            return Outcome::Failed { reason: format!("{reason} (after {attempt} attempt(s))") };
        }
        let backoff = Duration::from_millis(100u64 << attempt.min(7)).min(Duration::from_secs(10));
        tokio::time::sleep(wait.unwrap_or(backoff).min(Duration::from_secs(60))).await;
    }
}

/// A stable grouping key: status, problem title and the fields named.
fn reason_of(status: StatusCode, problem: &Value) -> String {
    let title = problem
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
    let fields: Vec<&str> = problem
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| errors.iter().filter_map(|e| e.get("field").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    if fields.is_empty() {
        format!("{} {title}", status.as_u16())
    } else {
        format!("{} {title}: {}", status.as_u16(), fields.join(", "))
    }
}

/// A progress bar on a terminal; plain lines every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: usize,
    started: Instant,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(total: usize, quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {rate} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} records/s", state.per_sec());
                    }),
            );
            bar
        });
        let now = Instant::now();
        Self { bar, plain: !quiet && !terminal, total, started: now, last_line: std::cell::Cell::new(now) }
    }

    fn tick(&self, done: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
        } else if self.plain && self.last_line.get().elapsed() >= Duration::from_secs(2) {
            self.last_line.set(Instant::now());
            let elapsed = self.started.elapsed().as_secs_f64();
            let rate = done as f64 / elapsed.max(1e-9);
            let eta = (self.total - done) as f64 / rate.max(1e-9);
            eprintln!(
                "progress: {done}/{} ({:.0}%), {rate:.0} records/s, ETA {eta:.0} s",
                self.total,
                100.0 * done as f64 / self.total.max(1) as f64
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
