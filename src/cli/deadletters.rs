//! `data-ingestion-api deadletters list|show|replay|purge`: the operator's tools for the
//! messages the pipeline parked: the `dead_letters` table of the embedded `DATA_DIR/queue.db`,
//! or the Cosmos DB dead-letter container when `INGEST_BACKEND=azure`, with the configuration
//! `serve` reads.
//!
//! `list` never prints a body (it holds personal data); `show` prints one dead letter whole.
//! `replay` checks each body as the consumer will, republishes it as a NEW message and removes
//! the dead letter (see [`crate::broker::DeadLetterAdmin`] for why that never loses one);
//! `purge` deletes dead letters.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use super::{command_config, connect_cosmos, settings_help, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NOT_FOUND};
use crate::app::QUEUE_FILE;
use crate::broker::{
    DeadLetterAdmin, ParkedMessage, Publisher, Replay, Replayed, ServiceBusPublisher, SqliteDeadLetters,
};
use crate::config::Backend;
use crate::consume::MessageBody;
use crate::domain::UserId;
use crate::store::CosmosDeadLetterAdmin;

pub const AFTER_HELP: &str = "\
Examples:
  data-ingestion-api deadletters list
  data-ingestion-api deadletters show 7
  data-ingestion-api deadletters show 7 --body > user.json     # repair user.json, then:
  data-ingestion-api deadletters replay 7 --edit user.json
  data-ingestion-api deadletters replay --all
  data-ingestion-api deadletters purge 9 12
  INGEST_BACKEND=azure COSMOS_ENDPOINT=https://acct.documents.azure.com:443/ COSMOS_KEY=… \\
      data-ingestion-api deadletters list

Exit status: 0 done, 1 an ID was not found (the other IDs are still processed), 2 configuration
or connection error (or a replay refused, see `replay --help`), 130 interrupted.";

const LIST_HELP: &str = "\
One line per dead letter, in the order they were parked (oldest first): its id (the row id of
DATA_DIR/queue.db, or the Cosmos DB document id: what `show`, `replay` and `purge` take), when it
was parked (UTC), the parked message's id, its deliveries, which path parked it (`worker` or
`ingest-consume`) and the reason, cut to fit. The total goes to stderr. Never the body: it holds
personal data (`show ID` prints one).

Examples:
  data-ingestion-api deadletters list
  data-ingestion-api deadletters list --limit 20
  data-ingestion-api deadletters list --json | jq -r 'select(.source == \"worker\") | .id'";

const SHOW_HELP: &str = "\
Prints the dead letter as indented JSON: its id, messageId, parkedAt, enqueuedAt,
deliveryCount, source, reason, and its body (as JSON when it is JSON, with bodyFormat \"json\";
else as a string, with bodyFormat \"text\"). The body holds personal data: keep the output safe.

Examples:
  data-ingestion-api deadletters show 7
  data-ingestion-api deadletters show 7 --body > user.json     # the body alone, to repair and
  data-ingestion-api deadletters replay 7 --edit user.json     # replay

Exit status: 0 shown, 1 no such dead letter, 2 configuration or connection error.";

const REPLAY_HELP: &str = "\
A replay publishes the body to the topic as a NEW message (a new MessageId: the old one would be
dropped by duplicate detection) and then the dead letter is gone:
  embedded  the message is inserted into DATA_DIR/queue.db and the dead letter deleted in ONE
            transaction: a replay is never lost and never doubled. A running service's worker
            picks it up within a second; otherwise the next `serve` does.
  azure     the message is published to SERVICEBUS_TOPIC first, and the dead-letter document
            deleted only once Service Bus has acknowledged it: a crash in between leaves the
            message published AND still parked, so it may be duplicated (harmless: the consumer
            upserts by id and an older version never wins), but it is never lost.

Each body is checked first as the consumer will check it. A body that is not a valid user record
would be parked again: then nothing is replayed (exit 2) and the reasons are printed, unless
--force (replay it anyway; it is parked again with its reason) or --skip-invalid (replay only
the valid ones). Repair a body with `show ID --body > FILE`, edit FILE, then `replay ID --edit FILE`.

Examples:
  data-ingestion-api deadletters replay 7
  data-ingestion-api deadletters replay 7 --edit user.json
  data-ingestion-api deadletters replay --all --skip-invalid
  INGEST_BACKEND=azure COSMOS_ENDPOINT=… COSMOS_KEY=… SERVICEBUS_CONNECTION_STRING=… \\
      SERVICEBUS_TOPIC=users data-ingestion-api deadletters replay 3f2c9a4e-…

Exit status: 0 replayed, 1 an ID was not found (the others are replayed), 2 configuration or
connection error, or a replay refused (an invalid body without --force), 130 interrupted.";

const PURGE_HELP: &str = "\
Deletes dead letters for good, bodies included: purge only what can never be stored and whose
data is safe elsewhere (`show ID` prints it). `--all` deletes every one listed at the start, and
needs --yes.

Examples:
  data-ingestion-api deadletters purge 9 12
  data-ingestion-api deadletters purge --all --yes

Exit status: 0 purged, 1 an ID was not found (the others are purged), 2 configuration or
connection error (or --all without --yes: nothing is deleted), 130 interrupted.";

/// The settings the `deadletters` command reads, named in its `--help`.
const SETTINGS: [&str; 12] = [
    "INGEST_BACKEND",
    "DATA_DIR",
    "COSMOS_ENDPOINT",
    "COSMOS_KEY",
    "COSMOS_DATABASE",
    "COSMOS_DEADLETTER_CONTAINER",
    "COSMOS_TIMEOUT_MS",
    "SERVICEBUS_CONNECTION_STRING",
    "SERVICEBUS_TOPIC",
    "SERVICEBUS_ENDPOINT",
    "SERVICEBUS_TIMEOUT_MS",
    "SERVICEBUS_MAX_ATTEMPTS",
];

/// The environment section of the command's `--help`.
pub fn settings() -> String {
    settings_help(
        &SETTINGS,
        "  COSMOS_CONTAINER must exist too (the service's connection opens it). Only `replay` in\n  \
         azure mode reads the SERVICEBUS_* settings (it publishes); the other commands need none.",
    )
}

#[derive(Args, Debug, Clone)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub command: DeadLettersCommand,
    /// Directory of the embedded queue, `DIR/queue.db` [env: DATA_DIR] [default: ./data].
    /// Unused when INGEST_BACKEND=azure.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DeadLettersCommand {
    /// List the parked messages (never their bodies) and say how many there are.
    #[command(after_help = LIST_HELP, after_long_help = format!("{LIST_HELP}\n\n{}", settings()))]
    List(ListArgs),
    /// Print one dead letter whole, its body included.
    #[command(after_help = SHOW_HELP, after_long_help = format!("{SHOW_HELP}\n\n{}", settings()))]
    Show(ShowArgs),
    /// Publish dead letters to the topic again as new messages, repaired or as they are.
    #[command(after_help = REPLAY_HELP, after_long_help = format!("{REPLAY_HELP}\n\n{}", settings()))]
    Replay(ReplayArgs),
    /// Delete dead letters for good.
    #[command(after_help = PURGE_HELP, after_long_help = format!("{PURGE_HELP}\n\n{}", settings()))]
    Purge(PurgeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// List the first N only (the oldest); the total still counts them all.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// One JSON object per line (NDJSON) with the full reason, instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    /// The dead letter's id, as `list` prints it.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print the body alone (indented when it is JSON): the file to repair for `replay --edit`.
    #[arg(long)]
    pub body: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The dead letters to replay, by the id `list` prints.
    #[arg(value_name = "ID", required_unless_present = "all", conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Replay every dead letter.
    #[arg(long)]
    pub all: bool,
    /// Replay the content of FILE (the repaired record) instead of the parked body; one ID only.
    #[arg(long, value_name = "FILE", conflicts_with = "all")]
    pub edit: Option<PathBuf>,
    /// Replay bodies that are not valid user records too: they will be parked again.
    #[arg(long, conflicts_with = "skip_invalid")]
    pub force: bool,
    /// Replay only the bodies that are valid user records; leave the others parked.
    #[arg(long)]
    pub skip_invalid: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PurgeArgs {
    /// The dead letters to delete, by the id `list` prints.
    #[arg(value_name = "ID", required_unless_present = "all", conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Delete every dead letter (needs --yes).
    #[arg(long)]
    pub all: bool,
    /// Confirm `--all`.
    #[arg(long)]
    pub yes: bool,
}

pub fn main(args: DeadLettersArgs) -> ExitCode {
    let Some(runtime) = super::runtime("deadletters") else {
        return ExitCode::from(EXIT_ERROR);
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            code = run(&args) => Some(code),
            () = crate::app::shutdown_signal() => None,
        }
    });
    match outcome {
        Some(code) => ExitCode::from(code),
        None => {
            eprintln!(
                "deadletters: interrupted; what was reported done is done (each replay or purge is \
                 whole or not at all): run `deadletters list` to see what is left"
            );
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}

/// Runs a subcommand; returns its exit status, having said what went wrong on stderr.
pub async fn run(args: &DeadLettersArgs) -> u8 {
    let (name, result) = match &args.command {
        DeadLettersCommand::List(list_args) => ("list", list(args, list_args).await),
        DeadLettersCommand::Show(show_args) => ("show", show(args, show_args).await),
        DeadLettersCommand::Replay(replay_args) => ("replay", replay(args, replay_args).await),
        DeadLettersCommand::Purge(purge_args) => ("purge", purge(args, purge_args).await),
    };
    result.unwrap_or_else(|e| {
        eprintln!("deadletters {name}: {e:#}");
        EXIT_ERROR
    })
}

/// Opens the dead letters `serve` would park into: the embedded queue (it must exist) or the
/// Cosmos DB dead-letter container, with a Service Bus publisher when the command `publishes`.
async fn open(args: &DeadLettersArgs, publishes: bool) -> anyhow::Result<Box<dyn DeadLetterAdmin>> {
    let config = command_config(args.data_dir.clone(), publishes)?;
    match config.backend {
        Backend::Embedded => {
            let path = config.data_dir.join(QUEUE_FILE);
            let letters = SqliteDeadLetters::open(&path)
                .with_context(|| format!("cannot open the queue {}", path.display()))?;
            Ok(Box::new(letters))
        }
        Backend::Azure(Err(why)) => Err(anyhow::anyhow!("invalid Azure configuration: {why}")),
        Backend::Azure(Ok(azure)) => {
            let publisher = if publishes {
                let publisher = ServiceBusPublisher::new(&azure.servicebus)?;
                Some(Arc::new(publisher) as Arc<dyn Publisher>)
            } else {
                None
            };
            let stores = connect_cosmos(&azure.cosmos).await?;
            Ok(Box::new(CosmosDeadLetterAdmin::new(stores.dead_letters, publisher)))
        }
    }
}

/// How a dead letter is listed (`list --json`) and heads `show`, fields in this order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed<'a> {
    id: &'a str,
    message_id: &'a str,
    parked_at: Option<String>,
    enqueued_at: Option<String>,
    delivery_count: u32,
    source: &'a str,
    reason: &'a str,
}

impl<'a> From<&'a ParkedMessage> for Listed<'a> {
    fn from(letter: &'a ParkedMessage) -> Self {
        let rfc3339 = |t: Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
        Self {
            id: &letter.id,
            message_id: &letter.message_id,
            parked_at: rfc3339(letter.parked_at),
            enqueued_at: rfc3339(letter.enqueued_at),
            delivery_count: letter.delivery_count,
            source: &letter.source,
            reason: &letter.reason,
        }
    }
}

async fn list(args: &DeadLettersArgs, list_args: &ListArgs) -> anyhow::Result<u8> {
    let admin = open(args, false).await?;
    let (total, letters) = admin.list(list_args.limit).await?;
    let mut out = String::new();
    if list_args.json {
        for letter in &letters {
            out.push_str(&serde_json::to_string(&Listed::from(letter))?);
            out.push('\n');
        }
    } else if !letters.is_empty() {
        out = table(&letters);
    }
    write_stdout(out.as_bytes())?;
    let shown = letters.len() as u64;
    match total {
        0 => eprintln!("no dead letters"),
        _ if shown < total => eprintln!("{shown} of {total} dead letters listed (--limit)"),
        1 => eprintln!("1 dead letter"),
        _ => eprintln!("{total} dead letters"),
    }
    Ok(0)
}

/// The most characters of a reason the table shows.
const REASON_WIDTH: usize = 72;

/// The table `list` prints: aligned columns, control characters blanked, reasons cut.
fn table(letters: &[ParkedMessage]) -> String {
    let stamp = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|l| {
            [
                one_line(&l.id),
                l.parked_at.and_then(|t| t.format(&stamp).ok()).unwrap_or_else(|| "-".into()),
                one_line(&l.message_id),
                l.delivery_count.to_string(),
                one_line(&l.source),
                // Field errors name the fields the body had (any key, even an address): the
                // list shows their count; `show` has the whole reason, with the body.
                cut(&one_line(&crate::telemetry::loggable_reason(&l.reason)), REASON_WIDTH),
            ]
        })
        .collect();
    let header = ["ID", "PARKED AT", "MESSAGE ID", "DELIVERIES", "SOURCE", "REASON"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `text` on one line: control characters (newlines included) become spaces.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// At most `width` characters, the last one `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

async fn show(args: &DeadLettersArgs, show_args: &ShowArgs) -> anyhow::Result<u8> {
    let admin = open(args, false).await?;
    let Some(letter) = admin.get(&show_args.id).await? else {
        eprintln!("deadletters show: no dead letter with id {}", show_args.id);
        return Ok(EXIT_NOT_FOUND);
    };
    let body = letter.body.as_deref().unwrap_or_default();
    let printed = if show_args.body {
        match pretty_json(body) {
            Some(pretty) => format!("{pretty}\n").into_bytes(),
            None => {
                let mut raw = body.to_vec();
                if !raw.ends_with(b"\n") {
                    raw.push(b'\n');
                }
                raw
            }
        }
    } else {
        format!("{}\n", describe(&letter)?).into_bytes()
    };
    write_stdout(&printed)?;
    Ok(0)
}

/// The whole dead letter as indented JSON, the body last: as JSON (in its own key order)
/// when it is JSON, else as a string.
fn describe(letter: &ParkedMessage) -> anyhow::Result<String> {
    let mut doc = serde_json::to_string(&Listed::from(letter))?;
    doc.pop(); // the closing brace
    let body = letter.body.as_deref().unwrap_or_default();
    match std::str::from_utf8(body).ok().filter(|text| is_json(text)) {
        Some(text) => doc.push_str(&format!(",\"bodyFormat\":\"json\",\"body\":{}}}", text.trim())),
        None => {
            let text = serde_json::to_string(&String::from_utf8_lossy(body))?;
            doc.push_str(&format!(",\"bodyFormat\":\"text\",\"body\":{text}}}"));
        }
    }
    pretty_json(doc.as_bytes()).context("cannot format the dead letter")
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Indents JSON text by two spaces, keeping its key order and the spelling of its numbers and
/// strings (a round trip through `serde_json::Value` would sort the keys). `None` when the text
/// is not JSON.
fn pretty_json(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok().filter(|text| is_json(text))?;
    let mut out = String::with_capacity(text.len() * 2);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
                match chars.next_if(|c| matches!(c, '}' | ']')) {
                    Some(close) => out.push(close),
                    None => {
                        depth += 1;
                        newline(&mut out, depth);
                    }
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// The user the consumer will store from `body` delivered as message `message_id`, or why it
/// will park it again: the consumer's own decoding and checks.
fn check(body: &[u8], message_id: &str) -> Result<UserId, String> {
    crate::consume::check_message(&MessageBody::Bytes(body.to_vec()), message_id, OffsetDateTime::now_utc())
        .map(|doc| doc.id)
}

/// The ids given, each once, in order.
fn unique(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter().filter(|id| seen.insert(id.as_str())).cloned().collect()
}

/// A dead letter about to be replayed: its id, the new message and what the check said.
struct Planned {
    id: String,
    replay: Replay,
    checked: Result<UserId, String>,
}

async fn replay(args: &DeadLettersArgs, replay_args: &ReplayArgs) -> anyhow::Result<u8> {
    // Everything the command line can get wrong is refused before anything is touched.
    let edited = match &replay_args.edit {
        Some(_) if replay_args.ids.len() != 1 => {
            anyhow::bail!("--edit replaces the body of ONE dead letter: give exactly one ID")
        }
        Some(path) => Some(read_edit(path)?),
        None => None,
    };
    let admin = open(args, true).await?;
    let ids = if replay_args.all {
        admin.list(None).await?.1.into_iter().map(|letter| letter.id).collect()
    } else {
        unique(&replay_args.ids)
    };
    if ids.is_empty() {
        eprintln!("deadletters replay: no dead letters to replay");
        return Ok(0);
    }

    // Read and check every body first: a refused replay changes nothing.
    let mut missing = 0usize;
    let mut plan = Vec::new();
    for id in &ids {
        let Some(letter) = admin.get(id).await? else {
            eprintln!("deadletters replay: no dead letter with id {id}");
            missing += 1;
            continue;
        };
        let body = edited.clone().or(letter.body).unwrap_or_default();
        let message_id = uuid::Uuid::new_v4().to_string();
        let checked = check(&body, &message_id);
        let correlation_id = Some(uuid::Uuid::new_v4().simple().to_string());
        plan.push(Planned { id: id.clone(), replay: Replay { message_id, correlation_id, body }, checked });
    }
    let invalid: Vec<&Planned> = plan.iter().filter(|p| p.checked.is_err()).collect();
    for planned in &invalid {
        let why = planned.checked.as_ref().err().map_or("", String::as_str);
        let what = match (replay_args.force, replay_args.skip_invalid) {
            (true, _) => "is replayed anyway (--force) and will be parked again",
            (_, true) => "is left parked (--skip-invalid)",
            _ => "would be parked again",
        };
        eprintln!("deadletters replay: dead letter {} {what}: {why}", planned.id);
    }
    if !invalid.is_empty() && !replay_args.force && !replay_args.skip_invalid {
        eprintln!(
            "deadletters replay: nothing was replayed. Repair the body (`deadletters show ID --body > FILE`, \
             edit FILE, `deadletters replay ID --edit FILE`), or pass --force to replay it as it is \
             (it is parked again) or --skip-invalid to replay only the valid ones"
        );
        return Ok(EXIT_ERROR);
    }
    if replay_args.skip_invalid {
        plan.retain(|p| p.checked.is_ok());
    }

    let mut replayed = 0usize;
    for planned in plan {
        let message_id = planned.replay.message_id.clone();
        let outcome = match admin.replay(&planned.id, planned.replay).await {
            Ok(outcome) => outcome,
            Err(e) => {
                eprintln!("deadletters replay: {e:#}");
                eprintln!("deadletters replay: stopped after replaying {replayed}");
                return Ok(EXIT_ERROR);
            }
        };
        let what = match &planned.checked {
            Ok(user) => format!("user {user}"),
            Err(_) => "not a valid record: it will be parked again".to_owned(),
        };
        match outcome {
            Replayed::Done => {
                println!("replayed dead letter {} as message {message_id} ({what})", planned.id)
            }
            Replayed::DoneButAlreadyGone => {
                println!("replayed dead letter {} as message {message_id} ({what})", planned.id);
                eprintln!(
                    "deadletters replay: dead letter {} was removed by someone else meanwhile: \
                     it may have been replayed twice (harmless: the consumer upserts by id)",
                    planned.id
                );
            }
            Replayed::NotFound => {
                eprintln!("deadletters replay: no dead letter with id {} (removed meanwhile)", planned.id);
                missing += 1;
                continue;
            }
        }
        replayed += 1;
    }
    let _ = std::io::stdout().flush();
    eprintln!("replayed {replayed} dead letter{}", if replayed == 1 { "" } else { "s" });
    Ok(if missing > 0 { EXIT_NOT_FOUND } else { 0 })
}

/// The repaired body, without the whitespace an editor leaves around it.
fn read_edit(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read --edit {}", path.display()))?;
    let body = raw.trim_ascii().to_vec();
    anyhow::ensure!(!body.is_empty(), "--edit {} is empty", path.display());
    Ok(body)
}

async fn purge(args: &DeadLettersArgs, purge_args: &PurgeArgs) -> anyhow::Result<u8> {
    let admin = open(args, false).await?;
    let ids = if purge_args.all {
        let (total, letters) = admin.list(None).await?;
        if !purge_args.yes {
            eprintln!(
                "deadletters purge: --all deletes all {total} dead letters for good, bodies included; \
                 nothing was deleted: add --yes to do it"
            );
            return Ok(EXIT_ERROR);
        }
        letters.into_iter().map(|letter| letter.id).collect()
    } else {
        unique(&purge_args.ids)
    };
    let (mut purged, mut missing) = (0usize, 0usize);
    for id in &ids {
        match admin.delete(id).await {
            Ok(true) => {
                println!("purged dead letter {id}");
                purged += 1;
            }
            Ok(false) => {
                eprintln!("deadletters purge: no dead letter with id {id}");
                missing += 1;
            }
            Err(e) => {
                eprintln!("deadletters purge: {e:#}");
                eprintln!("deadletters purge: stopped after purging {purged}");
                return Ok(EXIT_ERROR);
            }
        }
    }
    let _ = std::io::stdout().flush();
    eprintln!("purged {purged} dead letter{}", if purged == 1 { "" } else { "s" });
    Ok(if missing > 0 { EXIT_NOT_FOUND } else { 0 })
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).and_then(|()| stdout.flush()).context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_json_indents_and_keeps_key_order_numbers_and_strings() {
        let text = br#" {"z":1.50,"a":[],"m":{"s":"a,b:{c}\"d","e":{}},"l":[1, {"x":null}]} "#;
        let pretty = pretty_json(text).unwrap();
        assert_eq!(
            pretty,
            "{\n  \"z\": 1.50,\n  \"a\": [],\n  \"m\": {\n    \"s\": \"a,b:{c}\\\"d\",\n    \"e\": {}\n  },\n  \
             \"l\": [\n    1,\n    {\n      \"x\": null\n    }\n  ]\n}"
        );
        let reparsed: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(reparsed, serde_json::from_slice::<serde_json::Value>(text).unwrap());
        assert_eq!(pretty_json(b"not json"), None);
        assert_eq!(pretty_json(b"\"a string\"").as_deref(), Some("\"a string\""));
    }

    fn letter(body: &[u8]) -> ParkedMessage {
        ParkedMessage {
            id: "7".into(),
            message_id: "m-7".into(),
            parked_at: Some(OffsetDateTime::UNIX_EPOCH),
            enqueued_at: None,
            delivery_count: 1,
            source: "worker".into(),
            reason: "invalid user record: name: is required".into(),
            body: Some(body.to_vec()),
        }
    }

    #[test]
    fn show_describes_a_json_body_as_json_and_anything_else_as_text() {
        let json: serde_json::Value =
            serde_json::from_str(&describe(&letter(br#"{"email":"x@example.com"}"#)).unwrap()).unwrap();
        assert_eq!(json["bodyFormat"], "json");
        assert_eq!(json["body"]["email"], "x@example.com");
        assert_eq!(json["parkedAt"], "1970-01-01T00:00:00Z");
        let text: serde_json::Value =
            serde_json::from_str(&describe(&letter(b"\x01binary{")).unwrap()).unwrap();
        assert_eq!(text["bodyFormat"], "text");
        assert_eq!(text["body"], "\u{1}binary{");
    }

    #[test]
    fn the_table_aligns_its_columns_and_cuts_long_reasons_but_never_shows_a_body() {
        let mut long = letter(b"{\"email\":\"hidden@example.com\"}");
        long.reason = format!("line one\nline two {}", "x".repeat(200));
        let out = table(&[letter(b"{}"), long]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("ID  PARKED AT             MESSAGE ID  DELIVERIES  SOURCE  REASON"),
            "{out}"
        );
        assert!(lines[2].contains("line one line two xxx") && lines[2].ends_with('…'), "{out}");
        assert!(lines[2].chars().count() < 160, "{out}");
        assert!(!out.contains("hidden@example.com"));
    }

    #[test]
    fn the_check_is_the_consumers() {
        let valid =
            br#"{"id":"u-1","name":"Ada","email":"ada@example.com","ingestedAt":"2024-01-01T00:00:00Z"}"#;
        assert_eq!(check(valid, "m").unwrap().as_str(), "u-1");
        let without_id = br#"{"name":"Ada","email":"ada@example.com"}"#;
        assert_eq!(check(without_id, "m").unwrap(), UserId::for_message("m"));
        let invalid = check(br#"{"name":"","email":"nope"}"#, "m").unwrap_err();
        assert!(invalid.starts_with("invalid user record: ") && invalid.contains("email"), "{invalid}");
        assert!(check(b"not json", "m").unwrap_err().contains("not JSON"));
    }
}
