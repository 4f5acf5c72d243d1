//! `data-ingestion-api import FILE`: sends every record of an NDJSON, JSON-array or CSV file
//! to a running service, in batches (`POST /api/users` with a JSON array) with bounded
//! concurrency, and resumes from a checkpoint after an interruption.
//!
//! No duplicates, ever: a record without an id gets one here, a UUID derived from the
//! record's content, so sending it again — a retry, a resumed run, the same file imported
//! twice, or again after fixing other lines — upserts the same user instead of creating
//! another (two identical id-less lines are one user). Versions of one user are sent in file
//! order: a batch waits while an earlier one with one of its ids is in flight, and is held
//! back for the next run when an earlier line for one of its ids failed. That makes every
//! retry safe: 429 and 503 (nothing accepted) and transport failures are retried with
//! backoff, honouring `Retry-After`; records a batch answers 503 for are sent again.
//! Field errors are final and reported with the record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use futures::{FutureExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{header, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Examples:
  data-ingestion-api import users.ndjson
  data-ingestion-api import --url https://myapp.azurewebsites.net --api-key $KEY users.csv
  data-ingestion-api import --restart users.json      # ignore the checkpoint, start over

Formats: NDJSON (one record per line), a JSON array, or CSV with a header row naming the
fields (id,name,email,age,country,attributes; attributes as JSON text; empty cells are left
out). Records from `export` are accepted as they are (their ingestedAt is dropped: the service
sets it). Exit status: 0 all accepted, 1 some not accepted (see the rejects file), 2 the
service or the file could not be used.")]
pub struct ImportArgs {
    /// The records: NDJSON, a JSON array, or CSV (by extension, or `--format`).
    pub file: PathBuf,
    /// Base URL of the service.
    #[arg(long, env = "INGEST_URL", default_value = "http://127.0.0.1:7071")]
    pub url: String,
    /// Input format [default: csv for *.csv, json when the file starts with '[', else ndjson].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Records per request; 1 sends each record on its own.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub batch_size: u16,
    /// Largest request body of a batch, in bytes (the service's MAX_BATCH_BYTES).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub batch_bytes: usize,
    /// Requests in flight at once [default: 4 with batches, 32 record by record].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: Option<u16>,
    /// Where progress is saved to resume from [default: FILE's name + .checkpoint, in the current directory].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Ignore an existing checkpoint and send every record again.
    #[arg(long)]
    pub restart: bool,
    /// Where to write the rejected records with their errors [default: FILE's name + .rejected.ndjson, in the current directory].
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Where to write the id of every accepted record [default: FILE's name + .accepted.ndjson, in the current directory].
    #[arg(long)]
    pub accepted: Option<PathBuf>,
    /// Function key, sent as `x-functions-key`.
    #[arg(long, env = "INGEST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Attempts per request for retryable answers (429, 503, connection failures).
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Json,
    Csv,
}

/// One record of the input and where it was.
#[derive(Debug, Clone)]
struct Record {
    /// 1-based line number (NDJSON, CSV data rows counted from the header's line) or element number (JSON array).
    position: usize,
    /// The record as read, with an id when it had none; `Null` for a line sent as written
    /// (not parsed into a tree: see [`read_records`]).
    body: Value,
    /// Its id, when it is a string: no two records of one id are in flight at once.
    id: Option<String>,
    /// What is sent: the line as written when the record needed no change (NDJSON), else
    /// `body` as JSON; shared, so a retry sends it again without a copy.
    text: bytes::Bytes,
    /// The input, for the rejects file, when it could not be read as a record.
    raw: Option<String>,
    /// The line as written (NDJSON), for the rejects file.
    line: Option<String>,
}

enum Outcome {
    Accepted { id: String },
    Rejected { status: u16, reason: String, problem: Value },
    Failed { reason: String },
}

pub fn main(args: ImportArgs) -> ExitCode {
    // One thread: the import is one loop over its requests and their connections, and on one
    // thread waking a connection costs no futex or eventfd write (on a multi-threaded runtime
    // those were half its system calls); the cores are left to the service.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
    /// Records of batches a checkpoint showed as done, not sent again.
    pub skipped: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub failed: usize,
    pub by_reason: BTreeMap<String, usize>,
}

impl Summary {
    pub fn all_accepted(&self) -> bool {
        self.rejected == 0 && self.failed == 0
    }
}

/// The batches done so far, saved after each one (written aside, then renamed).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Which input this is about: a checkpoint of another file (or another batch size) is not used.
    file: String,
    batch_size: usize,
    /// Every batch below this number is done...
    done_below: usize,
    /// ... and these above it (batches finish out of order).
    done: BTreeSet<usize>,
    accepted: usize,
    rejected: usize,
}

impl Checkpoint {
    fn load(path: &Path, file: &str, batch_size: usize) -> anyhow::Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("cannot read the checkpoint {}: {e}", path.display())),
        };
        let checkpoint: Checkpoint = serde_json::from_str(&text)
            .with_context(|| format!("the checkpoint {} is damaged; use --restart", path.display()))?;
        if checkpoint.file != file || checkpoint.batch_size != batch_size {
            anyhow::bail!(
                "the checkpoint {} belongs to another file or batch size; use --restart or --checkpoint",
                path.display()
            );
        }
        Ok(Some(checkpoint))
    }

    fn is_done(&self, batch: usize) -> bool {
        batch < self.done_below || self.done.contains(&batch)
    }

    /// Records a finished batch, folding the set into `done_below` as the prefix grows, so the
    /// checkpoint stays small however long the file.
    fn finish(&mut self, batch: usize) {
        self.done.insert(batch);
        while self.done.remove(&self.done_below) {
            self.done_below += 1;
        }
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let aside = path.with_extension("checkpoint.tmp");
        let mut file = File::create(&aside).with_context(|| format!("cannot write {}", aside.display()))?;
        file.write_all(serde_json::to_string(self)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&aside, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

pub async fn run(args: ImportArgs) -> anyhow::Result<Summary> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    // Identifies the input: the checkpoint's owner.
    let file_id = uuid::Uuid::new_v5(&IMPORT_NAMESPACE, &bytes);
    let format = args.format.unwrap_or_else(|| detect(&args.file, &bytes));
    let records =
        read_records(&bytes, format).with_context(|| format!("cannot read {}", args.file.display()))?;
    drop(bytes);
    let base = args.url.trim_end_matches('/').to_owned();
    let batch_size = args.batch_size as usize;
    let concurrency = args.concurrency.map_or(if batch_size > 1 { 4 } else { 32 }, usize::from);
    let client = Transport::new(&base, concurrency)?;
    preflight(&client, &base).await?;

    let stem = args.file.file_name().map_or("import".into(), |n| n.to_string_lossy().into_owned());
    let output = |given: &Option<PathBuf>, suffix: &str| {
        given.clone().unwrap_or_else(|| PathBuf::from(format!("{stem}.{suffix}")))
    };
    let accepted_path = output(&args.accepted, "accepted.ndjson");
    let rejects_path = output(&args.rejects, "rejected.ndjson");
    let checkpoint_path = output(&args.checkpoint, "checkpoint");

    let batches = cut(records, batch_size, args.batch_bytes);
    let total: usize = batches.iter().map(Vec::len).sum();
    let file_key = file_id.to_string();
    let resumed =
        if args.restart { None } else { Checkpoint::load(&checkpoint_path, &file_key, batch_size)? };
    let resuming = resumed.is_some();
    let mut checkpoint =
        resumed.unwrap_or(Checkpoint { file: file_key, batch_size, ..Checkpoint::default() });
    // A resumed run appends to what the interrupted one wrote.
    let mut accepted_out = open(&accepted_path, resuming)?;
    let mut rejects_out = open(&rejects_path, resuming)?;

    let mut summary = Summary { total, ..Summary::default() };
    let pending: Vec<(usize, Vec<Record>)> = batches
        .into_iter()
        .enumerate()
        .filter(|(n, batch)| {
            let done = checkpoint.is_done(*n);
            if done {
                summary.skipped += batch.len();
            }
            !done
        })
        .collect();
    if resuming {
        eprintln!(
            "import: resuming from {}: {} records already done, {} to send",
            checkpoint_path.display(),
            summary.skipped,
            total - summary.skipped
        );
    }
    let progress = Progress::new(total, args.quiet);
    progress.tick(summary.skipped);
    let started = Instant::now();
    let sent = total - summary.skipped;

    let api_key = args.api_key.clone();
    let max_attempts = args.max_attempts.max(1);
    let send = |number: usize, batch: Vec<Record>, ids: Vec<String>| {
        let client = client.clone();
        let api_key = api_key.clone();
        async move {
            let outcomes = if batch_size == 1 {
                vec![send_one(&client, api_key.as_deref(), &batch[0], max_attempts).await]
            } else {
                send_batch(&client, api_key.as_deref(), &batch, max_attempts).await
            };
            (number, batch, outcomes, ids)
        }
        .boxed()
    };
    // Batches start in file order, up to `concurrency` at a time, but never while an earlier
    // one still in flight holds one of their ids: the service orders the versions of a user by
    // when it accepted them, so a later line of the file must not overtake an earlier one.
    // Nor after an earlier line for one of their ids FAILED (not sent, or no answer): a
    // resumed run sends that line again, and it would then overwrite the later one. Such a
    // batch is held back (failed, "held back") for the resumed run, which sends both in order.
    let mut pending = pending.into_iter().peekable();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut in_flight: HashMap<String, usize> = HashMap::new();
    let mut failed_ids: std::collections::HashSet<String> = std::collections::HashSet::new();

    let mut done = summary.skipped;
    let mut last_saved = Instant::now();
    loop {
        while running.len() < concurrency {
            let Some((_, next)) = pending.peek() else { break };
            let ids: Vec<String> = next.iter().filter_map(|r| r.id.clone()).collect();
            if ids.iter().any(|id| in_flight.contains_key(id)) {
                break;
            }
            let (number, batch) = pending.next().expect("peeked");
            for id in &ids {
                *in_flight.entry(id.clone()).or_default() += 1;
            }
            if ids.iter().any(|id| failed_ids.contains(id)) {
                let reason =
                    "held back: an earlier line for the same id failed; run the import again to resume";
                let outcomes = batch.iter().map(|_| Outcome::Failed { reason: reason.into() }).collect();
                running.push(futures::future::ready((number, batch, outcomes, ids)).boxed());
                continue;
            }
            running.push(send(number, batch, ids));
        }
        let Some((number, batch, outcomes, ids)) = running.next().await else { break };
        for id in ids {
            if let std::collections::hash_map::Entry::Occupied(mut slot) = in_flight.entry(id) {
                *slot.get_mut() -= 1;
                if *slot.get() == 0 {
                    slot.remove();
                }
            }
        }
        let mut complete = true;
        for (record, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Outcome::Accepted { id } => {
                    summary.accepted += 1;
                    // `{"line": …, "id": …}`, written directly: no JSON tree per record.
                    write!(accepted_out, "{{\"line\":{},\"id\":", record.position)?;
                    serde_json::to_writer(&mut accepted_out, &id)?;
                    accepted_out.write_all(b"}\n")?;
                }
                Outcome::Rejected { status, reason, problem } => {
                    summary.rejected += 1;
                    *summary.by_reason.entry(reason.clone()).or_default() += 1;
                    let input = record.line.clone().map_or(record.body.clone(), Value::String);
                    let line = json!({"line": record.position, "status": status, "reason": reason, "problem": problem, "record": input});
                    writeln!(rejects_out, "{line}")?;
                }
                Outcome::Failed { reason } => {
                    complete = false;
                    if let Some(id) = &record.id {
                        failed_ids.insert(id.clone());
                    }
                    summary.failed += 1;
                    *summary.by_reason.entry(reason.clone()).or_default() += 1;
                    let input = record.line.clone().map_or(record.body.clone(), Value::String);
                    let line =
                        json!({"line": record.position, "status": null, "reason": reason, "record": input});
                    writeln!(rejects_out, "{line}")?;
                }
            }
        }
        if complete {
            checkpoint.finish(number);
            checkpoint.accepted = summary.accepted;
            checkpoint.rejected = summary.rejected;
            // Saved (and synced) at most every CHECKPOINT_EVERY: one fsync per batch would cap
            // a record-by-record import at the disk's sync rate. What an interruption loses is
            // sent again, which the ids given above make harmless.
            if last_saved.elapsed() >= CHECKPOINT_EVERY {
                // Written before the checkpoint says so: a batch marked done has its results
                // on disk. (Not flushed per batch: a write per record, for no promise.)
                accepted_out.flush()?;
                rejects_out.flush()?;
                checkpoint.save(&checkpoint_path)?;
                last_saved = Instant::now();
            }
        }
        done += batch.len();
        progress.tick(done);
    }
    progress.finish();
    accepted_out.flush()?;
    rejects_out.flush()?;
    drop(rejects_out);
    checkpoint.save(&checkpoint_path)?;
    if summary.failed == 0 {
        // Everything was answered: nothing to resume.
        let _ = std::fs::remove_file(&checkpoint_path);
    }
    if summary.rejected + summary.failed == 0 && !resuming {
        // No rejects: leave no empty file behind.
        let _ = std::fs::remove_file(&rejects_path);
    }

    let elapsed = started.elapsed().as_secs_f64();
    let skipped = if summary.skipped > 0 {
        format!(" ({} done before, skipped)", summary.skipped)
    } else {
        String::new()
    };
    // The report goes to stdout in one write; a reader that stops early (`import … | head`)
    // does not change what the import did, nor its exit status.
    let mut report = String::new();
    macro_rules! w {
        ($($arg:tt)*) => {{
            use std::fmt::Write as _;
            let _ = writeln!(report, $($arg)*);
        }};
    }
    w!(
        "imported {}: {} records{skipped}, {} accepted, {} rejected, {} failed in {:.2} s ({:.0} records/s)",
        args.file.display(),
        total,
        summary.accepted,
        summary.rejected,
        summary.failed,
        elapsed,
        sent as f64 / elapsed.max(1e-9)
    );
    w!("ids of accepted records (assigned ones included): {}", accepted_path.display());
    if !summary.by_reason.is_empty() {
        w!("not accepted, by reason:");
        for (reason, n) in &summary.by_reason {
            w!("  {n:>7}  {reason}");
        }
        w!("rejected records with their errors: {}", rejects_path.display());
    }
    if summary.failed > 0 {
        w!(
            "{} records could not be sent; run the same command again to resume from {}",
            summary.failed,
            checkpoint_path.display()
        );
    }
    let _ = std::io::stdout().lock().write_all(report.as_bytes());
    Ok(summary)
}

/// How often progress is saved to the checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The namespace of a file's identity (the checkpoint's owner).
const IMPORT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5d1c_3f7e_8a2b_4c6d_9e0f_1a2b_3c4d_5e6f);

fn open(path: &Path, append: bool) -> anyhow::Result<BufWriter<File>> {
    let file =
        if append { OpenOptions::new().create(true).append(true).open(path) } else { File::create(path) };
    let file = file.map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(BufWriter::new(file))
}

fn detect(path: &Path, bytes: &[u8]) -> Format {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
        Format::Csv
    } else if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        Format::Json
    } else {
        Format::Ndjson
    }
}

/// The namespace of the ids given to records without one (from their content).
const RECORD_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3c6d_2f8a_91b4_4e07_8d5c_a1f2_e3b4_c5d6);

/// Reads every record, gives an id to those without one, and drops `ingestedAt` (the service
/// sets it; an export carries it).
fn read_records(bytes: &[u8], format: Format) -> anyhow::Result<Vec<Record>> {
    let text = std::str::from_utf8(bytes).context("the file is not UTF-8")?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records: Vec<Record> = match format {
        Format::Json => {
            let items: Vec<Value> = match crate::domain::json::parse_str(text)
                .context("it is read as a JSON array, but is not one")?
            {
                Value::Array(items) => items,
                _ => anyhow::bail!("it is read as a JSON array, but is not one"),
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| Record {
                    position: i + 1,
                    body: v,
                    id: None,
                    text: Default::default(),
                    raw: None,
                    line: None,
                })
                .collect()
        }
        Format::Ndjson => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                let record = |body, raw| Record {
                    position: i + 1,
                    body,
                    id: None,
                    text: Default::default(),
                    raw,
                    line: Some(line.to_owned()),
                };
                // Most lines are sent as written: reading their id (and checking the rest is
                // JSON the service reads) is enough, and a fifth of what building the tree costs.
                match crate::domain::json::object_fields(line, ["id", "ingestedAt"]) {
                    Ok(Some([Some(Value::String(id)), None])) => {
                        Record { id: Some(id), text: line.to_owned().into(), ..record(Value::Null, None) }
                    }
                    Ok(Some([Some(id), None])) if !id.is_null() => {
                        Record { text: line.to_owned().into(), ..record(Value::Null, None) }
                    }
                    // No id, or an ingestedAt to drop: the record is rewritten.
                    Ok(_) => record(crate::domain::json::parse_str(line).expect("checked above"), None),
                    // Refused as the service would: not JSON.
                    Err(_) => record(Value::Null, Some(line.to_owned())),
                }
            })
            .collect(),
        Format::Csv => read_csv(text)?,
    };
    for record in records.iter_mut().filter(|r| r.text.is_empty()) {
        let mut changed = false;
        if let Value::Object(fields) = &mut record.body {
            changed |= fields.remove("ingestedAt").is_some();
            if fields.get("id").is_none_or(Value::is_null) {
                changed = true;
                // A digest of the record's content, so the same record gets the same id on
                // every run — a resume, or a rerun after fixing other lines — and never
                // becomes a second user.
                fields.remove("id");
                let content = crate::domain::json::canonical_object(fields);
                let id = uuid::Uuid::new_v5(&RECORD_NAMESPACE, &content);
                fields.insert("id".into(), Value::String(id.to_string()));
            }
        }
        record.text = match (&record.raw, &record.line) {
            (Some(raw), _) => raw.clone().into(),
            (None, Some(line)) if !changed => line.clone().into(),
            _ => record.body.to_string().into(),
        };
        record.id = record.body.get("id").and_then(Value::as_str).map(str::to_owned);
    }
    Ok(records)
}

/// CSV with a header row of field names. Cells become JSON by field: `age` a number when it
/// reads as one, `attributes` parsed JSON, everything else a string; empty cells are left out.
fn read_csv(text: &str) -> anyhow::Result<Vec<Record>> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let header: Vec<String> =
        reader.headers().context("no header row")?.iter().map(|h| h.trim().to_owned()).collect();
    if header.iter().all(String::is_empty) {
        anyhow::bail!("the header row names no fields");
    }
    let mut records = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("CSV row {}", i + 2))?;
        // Rows are counted as lines would be without quoted newlines: the header is row 1.
        let position = i + 2;
        let mut fields = Map::new();
        for (name, cell) in header.iter().zip(row.iter()) {
            if cell.is_empty() || name.is_empty() {
                continue;
            }
            let value = match name.as_str() {
                "age" => {
                    cell.trim().parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(cell.into()))
                }
                "attributes" => serde_json::from_str(cell).unwrap_or_else(|_| Value::String(cell.into())),
                _ => Value::String(cell.into()),
            };
            fields.insert(name.clone(), value);
        }
        if row.len() > header.len() {
            fields.insert(format!("column {}", header.len() + 1), Value::String(row[header.len()].into()));
        }
        records.push(Record {
            position,
            body: Value::Object(fields),
            id: None,
            text: Default::default(),
            raw: None,
            line: None,
        });
    }
    Ok(records)
}

/// Cuts records, in order, into batches of at most `size` records and `max_bytes` of JSON.
fn cut(records: Vec<Record>, size: usize, max_bytes: usize) -> Vec<Vec<Record>> {
    let mut batches: Vec<Vec<Record>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 2;
    for record in records {
        let len = record.text.len() + 1;
        if !current.is_empty() && (current.len() >= size || bytes + len > max_bytes) {
            batches.push(std::mem::take(&mut current));
            bytes = 2;
        }
        bytes += len;
        current.push(record);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Fails fast, with the URL in the message, when nothing answers there.
async fn preflight(client: &Transport, base: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..10 {
        match client.probe().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(anyhow::anyhow!("no service answers at {base}: {last}"))
}

/// How long one request may take, its answer read in full.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// How requests reach the service. Plain HTTP (the local service, CI) goes through hyper's own
/// pooled client: reqwest parses every request's URL twice for its redirect handling, which was
/// a fifth of a record-by-record import. HTTPS (a Functions app) goes through reqwest and rustls.
#[derive(Clone)]
enum Transport {
    Plain { client: Box<PlainClient>, users: http::Uri, root: http::Uri },
    Tls { client: reqwest::Client, users: reqwest::Url, root: reqwest::Url },
}

impl Transport {
    fn new(base: &str, connections: usize) -> anyhow::Result<Self> {
        let url = |path: &str| {
            reqwest::Url::parse(&format!("{base}{path}")).with_context(|| format!("{base} is not a URL"))
        };
        let (users, root) = (url("/api/users")?, url("/")?);
        match users.scheme() {
            "http" => {
                let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
                connector.set_nodelay(true);
                let client =
                    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                        .pool_max_idle_per_host(connections)
                        .build(connector);
                let uri = |url: reqwest::Url| {
                    url.as_str().parse::<http::Uri>().with_context(|| format!("{base} is not a URL"))
                };
                Ok(Self::Plain { client: Box::new(client), users: uri(users)?, root: uri(root)? })
            }
            "https" => {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(connections)
                    .tcp_nodelay(true)
                    .timeout(REQUEST_TIMEOUT)
                    .build()?;
                Ok(Self::Tls { client, users, root })
            }
            other => anyhow::bail!("{base}: the URL must be http:// or https://, not {other}://"),
        }
    }

    /// Whether anything answers at the service's root.
    async fn probe(&self) -> Result<(), String> {
        match self {
            Self::Plain { client, root, .. } => {
                let request =
                    http::Request::get(root.clone()).body(Default::default()).map_err(|e| e.to_string())?;
                match tokio::time::timeout(REQUEST_TIMEOUT, client.request(request)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(plain_error(&e)),
                    Err(_) => Err("no answer in time".into()),
                }
            }
            Self::Tls { client, root, .. } => {
                client.get(root.clone()).send().await.map(drop).map_err(|e| e.to_string())
            }
        }
    }

    /// POSTs JSON to `/api/users`.
    async fn post(&self, api_key: Option<&str>, body: bytes::Bytes) -> Result<Answer, String> {
        match self {
            Self::Plain { client, users, .. } => {
                let mut request =
                    http::Request::post(users.clone()).header(header::CONTENT_TYPE, "application/json");
                if let Some(key) = api_key {
                    request = request.header("x-functions-key", key);
                }
                let request = request
                    .body(http_body_util::Full::new(body))
                    .map_err(|e| format!("transport error: {e}"))?;
                let exchange = async {
                    let response = client.request(request).await.map_err(|e| {
                        if e.is_connect() {
                            format!("cannot connect: {}", plain_error(&e))
                        } else {
                            format!("transport error: {}", plain_error(&e))
                        }
                    })?;
                    let (parts, body) = response.into_parts();
                    let body = http_body_util::BodyExt::collect(body)
                        .await
                        .map_err(|e| format!("transport error: {e}"))?
                        .to_bytes();
                    Ok(answer(parts.status, &parts.headers, &body))
                };
                tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                    .await
                    .unwrap_or_else(|_| Err("transport error: no answer in time".into()))
            }
            Self::Tls { client, users, .. } => {
                let mut request =
                    client.post(users.clone()).header(header::CONTENT_TYPE, "application/json").body(body);
                if let Some(key) = api_key {
                    request = request.header("x-functions-key", key);
                }
                match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let headers = response.headers().clone();
                        let body = response.bytes().await.unwrap_or_default();
                        Ok(answer(status, &headers, &body))
                    }
                    Err(e) if e.is_connect() => Err(format!("cannot connect: {e}")),
                    Err(e) => Err(format!("transport error: {e}")),
                }
            }
        }
    }
}

/// A hyper client error with what caused it ("client error (Connect)" alone says little).
fn plain_error(e: &hyper_util::client::legacy::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

fn answer(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Answer {
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    Answer { status, body, retry_after }
}

/// A response, or why there was none; whether to try again and after how long.
struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<Duration>,
}

fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = Duration::from_millis(100u64 << attempt.min(7)).min(Duration::from_secs(10));
    retry_after.unwrap_or(backoff).min(Duration::from_secs(60))
}

/// One record on its own: `202`, a final `4xx`, or retried (every record has an id, so a
/// retry can never duplicate a user).
async fn send_one(client: &Transport, api_key: Option<&str>, record: &Record, max_attempts: u32) -> Outcome {
    if record.body.is_array() {
        // Sent on its own, the service would take it for a batch of records: refused here, as
        // the service refuses it inside a batch.
        let problem = json!({"title": "Invalid user record", "status": 400, "errors": [
            {"field": "", "message": "the record must be a JSON object, not an array"}
        ]});
        return Outcome::Rejected {
            status: 400,
            reason: reason_of(StatusCode::BAD_REQUEST, &problem),
            problem,
        };
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (reason, wait) = match client.post(api_key, record.text.clone()).await {
            Ok(answer) if answer.status == StatusCode::ACCEPTED => {
                return match answer.body.get("id").and_then(Value::as_str) {
                    Some(id) => Outcome::Accepted { id: id.to_owned() },
                    None => Outcome::Failed { reason: "202 without an id".into() },
                };
            }
            Ok(answer)
                if answer.status.is_client_error() && answer.status != StatusCode::TOO_MANY_REQUESTS =>
            {
                return Outcome::Rejected {
                    status: answer.status.as_u16(),
                    reason: reason_of(answer.status, &answer.body),
                    problem: answer.body,
                };
            }
            Ok(answer) => (format!("HTTP {}", answer.status.as_u16()), answer.retry_after),
            Err(reason) => (reason, None),
        };
        if attempt >= max_attempts {
            return Outcome::Failed { reason: format!("{reason} (after {attempt} attempt(s))") };
        }
        tokio::time::sleep(backoff(attempt, wait)).await;
    }
}

/// A batch: one outcome per record, in order. Records answered 503 inside the batch, and
/// whole-request 429/503/5xx/transport failures, are sent again; a `413` for the whole batch
/// (a service with smaller limits) splits it in two.
async fn send_batch(
    client: &Transport,
    api_key: Option<&str>,
    batch: &[Record],
    max_attempts: u32,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
    // A line that is not JSON would make the whole array unreadable: it is refused here, as
    // the service refuses it on its own.
    for (i, record) in batch.iter().enumerate() {
        if let Some(raw) = &record.raw {
            let detail = serde_json::from_str::<Value>(raw).err().map(|e| e.to_string()).unwrap_or_default();
            let problem = json!({"title": "Malformed JSON", "status": 400, "detail": detail});
            outcomes[i] = Some(Outcome::Rejected {
                status: 400,
                reason: reason_of(StatusCode::BAD_REQUEST, &problem),
                problem,
            });
        }
    }
    let mut todo: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].raw.is_none()).collect();
    let mut attempt = 0;
    while !todo.is_empty() {
        attempt += 1;
        let mut body = Vec::with_capacity(todo.iter().map(|&i| batch[i].text.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (n, &i) in todo.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&batch[i].text);
        }
        body.push(b']');
        let body = bytes::Bytes::from(body);
        let (reason, wait) = match client.post(api_key, body).await {
            Ok(answer) if answer.status == StatusCode::OK => {
                let results =
                    answer.body.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
                if results.len() != todo.len() {
                    let reason =
                        format!("the service answered {} results for {} records", results.len(), todo.len());
                    for &i in &todo {
                        outcomes[i] = Some(Outcome::Failed { reason: reason.clone() });
                    }
                    break;
                }
                let mut again = Vec::new();
                for (&i, result) in todo.iter().zip(&results) {
                    let status = result.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
                    match status {
                        202 => {
                            let id = result.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                            outcomes[i] = Some(Outcome::Accepted { id });
                        }
                        400..=499 => {
                            let problem = json!({"title": "Invalid user record", "status": status, "errors": result.get("errors")});
                            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                            outcomes[i] = Some(Outcome::Rejected {
                                status: status.as_u16(),
                                reason: reason_of(status, &problem),
                                problem,
                            });
                        }
                        _ => again.push(i),
                    }
                }
                todo = again;
                if todo.is_empty() {
                    break;
                }
                (format!("HTTP 503 for {} record(s) of the batch", todo.len()), None)
            }
            // Smaller limits than ours (413), or the array as a whole refused as JSON although
            // every record in it was read as JSON here (one nested just under the parser's
            // depth limit is over it inside the array): halve and send each half on its own,
            // so that what the service refuses is refused alone.
            Ok(answer)
                if todo.len() > 1
                    && (answer.status == StatusCode::PAYLOAD_TOO_LARGE
                        || (answer.status == StatusCode::BAD_REQUEST
                            && answer.body.get("errors").is_none())) =>
            {
                let (left, right) = todo.split_at(todo.len() / 2);
                for half in [left, right] {
                    let records: Vec<Record> = half.iter().map(|&i| batch[i].clone()).collect();
                    let results = Box::pin(send_batch(client, api_key, &records, max_attempts)).await;
                    for (&i, outcome) in half.iter().zip(results) {
                        outcomes[i] = Some(outcome);
                    }
                }
                break;
            }
            Ok(answer) if answer.status == StatusCode::BAD_REQUEST && answer.body.get("errors").is_some() => {
                // No record of the batch is valid: the errors name them `[index].field`.
                for (position, &i) in todo.iter().enumerate() {
                    let prefix = format!("[{position}]");
                    let errors: Vec<Value> = answer.body["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|e| {
                            e["field"]
                                .as_str()
                                .is_some_and(|f| f == prefix || f.starts_with(&format!("{prefix}.")))
                        })
                        .map(|e| {
                            let field = e["field"].as_str().unwrap_or("");
                            let field = field.strip_prefix(&prefix).unwrap_or(field).trim_start_matches('.');
                            json!({"field": field, "message": e["message"]})
                        })
                        .collect();
                    let problem = json!({"title": "Invalid user record", "status": 400, "errors": errors});
                    outcomes[i] = Some(Outcome::Rejected {
                        status: 400,
                        reason: reason_of(StatusCode::BAD_REQUEST, &problem),
                        problem,
                    });
                }
                break;
            }
            Ok(answer)
                if answer.status.is_client_error() && answer.status != StatusCode::TOO_MANY_REQUESTS =>
            {
                let reason = reason_of(answer.status, &answer.body);
                for &i in &todo {
                    outcomes[i] = Some(Outcome::Rejected {
                        status: answer.status.as_u16(),
                        reason: reason.clone(),
                        problem: answer.body.clone(),
                    });
                }
                break;
            }
            Ok(answer) => (format!("HTTP {}", answer.status.as_u16()), answer.retry_after),
            Err(reason) => (reason, None),
        };
        if attempt >= max_attempts {
            for &i in &todo {
                outcomes[i] =
                    Some(Outcome::Failed { reason: format!("{reason} (after {attempt} attempt(s))") });
            }
            break;
        }
        tokio::time::sleep(backoff(attempt, wait)).await;
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Failed { reason: "no answer for this record".into() }))
        .collect()
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
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e.get("field").and_then(Value::as_str))
                .filter(|f| !f.is_empty())
                .collect()
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_become_typed_fields_and_empty_cells_are_left_out() {
        let text = "id,name,email,age,country,attributes\n\
                    u1,\"Doe, Jane\",jane@example.com,42,DE,\"{\"\"plan\"\":\"\"pro\"\"}\"\n\
                    ,Li Wei,li@example.com,,,\n";
        let records = read_csv(text).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].body,
            json!({"id": "u1", "name": "Doe, Jane", "email": "jane@example.com", "age": 42, "country": "DE", "attributes": {"plan": "pro"}})
        );
        assert_eq!(records[0].position, 2);
        assert_eq!(records[1].body, json!({"name": "Li Wei", "email": "li@example.com"}));
    }

    #[test]
    fn an_id_less_record_gets_the_same_id_whatever_else_the_file_holds() {
        let file =
            b"{\"name\": \"A\", \"email\": \"a@example.com\", \"ingestedAt\": \"2026-01-01T00:00:00Z\"}\n{\"name\": \"B\", \"email\": \"bad\"}\n";
        let first = read_records(file, Format::Ndjson).unwrap();
        let again = read_records(file, Format::Ndjson).unwrap();
        assert_eq!(first[0].body["id"], again[0].body["id"]);
        assert!(first[0].body.get("ingestedAt").is_none(), "the service sets ingestedAt");
        // The other line fixed, a line added before it, keys reordered: A keeps its id.
        let edited = b"{\"name\": \"C\", \"email\": \"c@example.com\"}\n{\"email\": \"a@example.com\", \"name\": \"A\"}\n{\"name\": \"B\", \"email\": \"b@example.com\"}\n";
        let later = read_records(edited, Format::Ndjson).unwrap();
        assert_eq!(later[1].body["id"], first[0].body["id"]);
        assert_ne!(later[0].body["id"], first[0].body["id"]);
        assert_ne!(later[2].body["id"], first[1].body["id"], "B's content changed");
    }

    #[test]
    fn a_line_is_sent_as_written_unless_it_must_change_and_a_line_the_service_refuses_stays_raw() {
        let lines = [
            r#"{"id": "u1", "name": "A", "attributes": {"tags": ["x"]}}"#,
            r#"{"id": 7, "name": "A"}"#,
            r#"{"id": "u2", "name": "B", "ingestedAt": "2026-01-01T00:00:00Z"}"#,
            r#"{"id": null, "name": "C"}"#,
            r#"{"id": "u3", "attributes": {"k": 1, "k": 2}}"#,
            r#"{"id": "u4", "name": "D""#,
            r#"["not", "a", "record"]"#,
        ];
        let records = read_records(lines.join("\n").as_bytes(), Format::Ndjson).unwrap();
        let sent: Vec<&str> = records.iter().map(|r| std::str::from_utf8(&r.text).unwrap()).collect();
        let ids: Vec<Option<&str>> = records.iter().map(|r| r.id.as_deref()).collect();
        let raw: Vec<bool> = records.iter().map(|r| r.raw.is_some()).collect();
        assert_eq!(sent[..2], lines[..2], "unchanged lines go out byte for byte");
        assert_eq!(crate::domain::json::parse_str(sent[2]).unwrap(), json!({"id": "u2", "name": "B"}));
        let filled = crate::domain::json::parse_str(sent[3]).unwrap();
        assert!(filled["id"].as_str().is_some_and(|id| !id.is_empty()), "{filled}");
        assert_eq!(sent[4..], lines[4..]);
        assert_eq!(ids[..3], [Some("u1"), None, Some("u2")]);
        assert_eq!(ids[3], filled["id"].as_str());
        assert_eq!(ids[4..], [None, None, None]);
        // What the service would refuse as JSON (a key twice, at any depth; cut off) is kept
        // raw, so that a batch refuses it alone instead of the whole array failing.
        assert_eq!(raw, [false, false, false, false, true, true, false]);
        assert_eq!(records.iter().map(|r| r.position).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_checkpoint_folds_finished_batches_into_a_prefix() {
        let mut c = Checkpoint::default();
        for batch in [2, 0, 3, 1, 7] {
            c.finish(batch);
        }
        assert_eq!((c.done_below, c.done.iter().copied().collect::<Vec<_>>()), (4, vec![7]));
        assert!(c.is_done(3) && c.is_done(7) && !c.is_done(4) && !c.is_done(8));
    }

    #[test]
    fn batches_respect_both_the_record_count_and_the_byte_limit() {
        let records: Vec<Record> = (0..10)
            .map(|i| {
                let body = json!({"pad": "x".repeat(100)});
                Record { position: i, text: body.to_string().into(), body, id: None, raw: None, line: None }
            })
            .collect();
        let sizes: Vec<usize> = cut(records.clone(), 4, usize::MAX).iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let sizes: Vec<usize> = cut(records, 500, 350).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
    }
}
