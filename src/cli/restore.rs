//! `data-ingestion-api restore FILE`: writes the users of an `export` back into a store,
//! directly, exactly as they were — `ingestedAt` included, which the API (rightly) sets itself
//! and a client cannot. For moving a store, or rebuilding one from a backup.
//!
//! Each line is checked as the API checks a record. Writes are the consumer's conditional
//! upserts: a user the store holds in a newer version is left as it is (counted as newer), so
//! restoring an old backup over a live store never rolls anyone back.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{command_config, connect_cosmos, StoreArgs, EXIT_ERROR, EXIT_NOT_FOUND};
use crate::app::STORE_FILE;
use crate::config::Backend;
use crate::domain::{NewUser, UserDocument};
use crate::store::{SqliteUserStore, UpsertOutcome, UserStore, WriteVersion};

pub const AFTER_HELP: &str = "\
Examples:
  data-ingestion-api export --data-dir old-data -o users.ndjson
  data-ingestion-api restore users.ndjson --data-dir new-data

Stop a service that uses the embedded store first: it caches what it wrote and does not see
another process's writes. Exit status: 0 every line restored (or already newer), 1 some lines
were not valid users (each is named on stderr), 2 the file or the store could not be used.";

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// An export: NDJSON, one user per line as GET serves it (ingestedAt included).
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Users written per store operation.
const BATCH: usize = 500;

pub fn main(args: RestoreArgs) -> ExitCode {
    let Some(runtime) = super::runtime("restore") else {
        return ExitCode::from(EXIT_ERROR);
    };
    match runtime.block_on(run(&args)) {
        Ok(summary) => {
            eprintln!(
                "restored {} users ({} already newer in the store, left as they were), {} invalid lines, in {:.2} s",
                summary.written,
                summary.newer,
                summary.invalid,
                summary.started.elapsed().as_secs_f64()
            );
            if summary.invalid > 0 {
                ExitCode::from(EXIT_NOT_FOUND)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("restore: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

struct Summary {
    written: u64,
    newer: u64,
    invalid: u64,
    started: Instant,
}

async fn open(args: &StoreArgs) -> anyhow::Result<Arc<dyn UserStore>> {
    let config = command_config(args.data_dir.clone(), false)?;
    match config.backend {
        Backend::Embedded => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
            let path = config.data_dir.join(STORE_FILE);
            let store = SqliteUserStore::open(&path)
                .with_context(|| format!("cannot open the store {}", path.display()))?;
            Ok(Arc::new(store))
        }
        Backend::Azure(Err(why)) => Err(anyhow::anyhow!("invalid Azure configuration: {why}")),
        Backend::Azure(Ok(azure)) => Ok(connect_cosmos(&azure.cosmos).await?.users),
    }
}

/// One exported line as the document it was: the record checked as the API checks it, with
/// its `ingestedAt`.
fn document(line: &str) -> Result<UserDocument, String> {
    let mut value: Value = crate::domain::json::parse_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let ingested = value
        .as_object_mut()
        .and_then(|o| o.remove("ingestedAt"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .ok_or("no ingestedAt: not a line of an export")?;
    let ingested_at = OffsetDateTime::parse(&ingested, &Rfc3339)
        .map_err(|_| format!("ingestedAt {ingested:?} is not RFC 3339"))?;
    crate::domain::check_ingested_at(ingested_at).map_err(|why| format!("ingestedAt {ingested:?} {why}"))?;
    crate::domain::check_not_ahead(ingested_at, OffsetDateTime::now_utc())
        .map_err(|why| format!("ingestedAt {ingested:?} {why}"))?;
    if value.get("id").is_none_or(Value::is_null) {
        return Err("no id: not a line of an export".into());
    }
    let user = NewUser::parse(value).map_err(|errors| {
        let fields: Vec<String> = errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect();
        format!("invalid user: {}", fields.join("; "))
    })?;
    Ok(user.into_document(ingested_at))
}

async fn run(args: &RestoreArgs) -> anyhow::Result<Summary> {
    let file =
        std::fs::File::open(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let store = open(&args.store).await?;
    let mut summary = Summary { written: 0, newer: 0, invalid: 0, started: Instant::now() };
    let mut pending: Vec<(UserDocument, WriteVersion)> = Vec::with_capacity(BATCH);
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", args.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match document(&line) {
            Ok(doc) => {
                // A restored document is its own version: ties with what the store holds go
                // to the store (sequence 0 is older than any message's).
                let version =
                    WriteVersion { message_id: format!("restore-{}-{}", doc.id, number + 1), sequence: 0 };
                pending.push((doc, version));
            }
            Err(why) => {
                summary.invalid += 1;
                eprintln!("restore: line {}: {why}", number + 1);
            }
        }
        if pending.len() == BATCH {
            write(&*store, &mut pending, &mut summary).await?;
        }
    }
    write(&*store, &mut pending, &mut summary).await?;
    Ok(summary)
}

async fn write(
    store: &dyn UserStore,
    pending: &mut Vec<(UserDocument, WriteVersion)>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let outcomes =
        store.upsert_batch(std::mem::take(pending)).await.context("the store refused the write")?;
    for outcome in outcomes {
        match outcome {
            UpsertOutcome::Written => summary.written += 1,
            UpsertOutcome::Stale => summary.newer += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exported_line_becomes_the_document_it_was() {
        let line = r#"{"id":"u1","name":"Ada","email":"ada@example.com","age":36,"ingestedAt":"2026-12-03T16:25:01.176345Z"}"#;
        let doc = document(line).unwrap();
        assert_eq!(doc.to_json(), line, "byte for byte");
        assert!(document(r#"{"id":"u1","name":"Ada","email":"ada@example.com"}"#)
            .unwrap_err()
            .contains("ingestedAt"));
        assert!(document(r#"{"name":"Ada","email":"ada@example.com","ingestedAt":"2026-12-03T16:25:01Z"}"#)
            .unwrap_err()
            .contains("no id"));
        assert!(document(r#"{"id":"u1","name":"","email":"x","ingestedAt":"2026-12-03T16:25:01Z"}"#)
            .unwrap_err()
            .contains("name"));
    }
}
