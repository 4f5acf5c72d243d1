//! Logs: JSON lines on stdout (the Functions host collects stdout), one per request and per
//! message. Only identifiers are logged (user ids, message ids, invocation ids), never names
//! or emails.

use std::io::Write;
use std::sync::OnceLock;

use time::format_description::well_known::Rfc3339;
use tracing_appender::non_blocking::NonBlocking;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The writer the access log shares with the subscriber, so lines stay in one ordered stream.
static WRITER: OnceLock<NonBlocking> = OnceLock::new();

/// Installs the JSON log subscriber. Lines are formatted on the calling thread but written by
/// a background thread through a buffer, so a request never waits on stdout. Keep the guard
/// alive until exit: dropping it flushes what is left.
pub fn init() -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Never drop a line: under a flood, callers wait for the writer instead.
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let _ = WRITER.set(writer.clone());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
    guard
}

/// One request, as its access-log line reports it.
pub struct Access<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub latency_us: u64,
    pub invocation_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub message_id: Option<&'a str>,
}

/// Writes the access-log line of a request: the same JSON shape as the subscriber's lines,
/// formatted by hand because this runs once per request on the hot path (the generic JSON
/// formatter costs a third of a point read). Honours `RUST_LOG` like any INFO event.
pub fn access(a: &Access<'_>) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let Some(writer) = WRITER.get() else {
        tracing::info!(
            method = a.method,
            route = a.route,
            status = a.status,
            latency_us = a.latency_us,
            "request"
        );
        return;
    };
    let mut line = String::with_capacity(320);
    line.push_str("{\"timestamp\":\"");
    line.push_str(&time::OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default());
    line.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
    push_json_str(&mut line, a.method);
    line.push_str(",\"route\":");
    push_json_str(&mut line, a.route);
    line.push_str(",\"status\":");
    line.push_str(itoa::Buffer::new().format(a.status));
    line.push_str(",\"latency_us\":");
    line.push_str(itoa::Buffer::new().format(a.latency_us));
    for (name, value) in
        [("invocation_id", a.invocation_id), ("user_id", a.user_id), ("message_id", a.message_id)]
    {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            line.push_str(",\"");
            line.push_str(name);
            line.push_str("\":");
            push_json_str(&mut line, value);
        }
    }
    line.push_str("}\n");
    let _ = writer.make_writer().write_all(line.as_bytes());
}

fn push_json_str(out: &mut String, value: &str) {
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f) {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "\"\"".into()));
    }
}
