//! Logs, metrics, traces — one instrumentation, several views:
//! - logs: JSON lines on stdout (the Functions host collects stdout), one per request and per
//!   message;
//! - [`metrics`]: one registry, served as Prometheus text at `GET /metrics`, drawn by the status
//!   page at `GET /status`, and exported by [`appinsights`] when Application Insights is set up.
//!
//! Only identifiers are recorded (user ids, message ids, invocation ids, route patterns),
//! never names or emails.

pub mod appinsights;
pub mod metrics;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Log lines are appended to this buffer and written to stdout in blocks: when it passes
/// [`FLUSH_AT`], and by a background thread every [`FLUSH_EVERY`]. Writing (or waking a
/// writer thread) per line costs a system call or a context switch per request, which on
/// two cores was a fifth of a point read. All lines share the one buffer, so their order
/// is kept. A line waits at most `FLUSH_EVERY`; a SIGKILL loses at most that much.
#[derive(Default)]
struct Sink {
    buffer: Mutex<Vec<u8>>,
}

const FLUSH_AT: usize = 64 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(100);

static SINK: OnceLock<Arc<Sink>> = OnceLock::new();

impl Sink {
    fn append(&self, line: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        buffer.extend_from_slice(line);
        if buffer.len() >= FLUSH_AT {
            write_out(&mut buffer);
        }
    }

    fn flush(&self) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        write_out(&mut buffer);
    }
}

/// Writes under the buffer's lock, so that blocks reach stdout in order.
fn write_out(buffer: &mut Vec<u8>) {
    if !buffer.is_empty() {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(buffer);
        let _ = stdout.flush();
        buffer.clear();
    }
}

/// The subscriber's writer: each event arrives formatted, in one `write`.
#[derive(Clone)]
struct SinkWriter(Arc<Sink>);

impl Write for SinkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Flushes what is buffered when dropped: keep it alive until the process exits.
pub struct LogGuard(Arc<Sink>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// Installs the JSON log subscriber on stdout.
pub fn init() -> LogGuard {
    let sink = SINK.get_or_init(Arc::default).clone();
    let flusher = sink.clone();
    let _ = std::thread::Builder::new().name("log-flush".into()).spawn(move || loop {
        std::thread::sleep(FLUSH_EVERY);
        flusher.flush();
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(SinkWriter(sink.clone()))
        .try_init();
    LogGuard(sink)
}

type GaugeRefresh = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

static GAUGES: OnceLock<GaugeRefresh> = OnceLock::new();

/// Names what sets the gauges (queue depth, dead letters) before they are read; the first
/// call wins. Gauges are read on demand rather than kept current, since counting the queue
/// is a query.
pub fn on_refresh_gauges(refresh: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static) {
    let _ = GAUGES.set(Box::new(refresh));
}

/// Brings the gauges up to date; done before every scrape and export.
pub async fn refresh_gauges() {
    if let Some(refresh) = GAUGES.get() {
        refresh().await;
    }
}

/// One request, as its access-log line, its metrics and its trace item report it.
/// An identifier as telemetry may carry it (a user id, a message id, a correlation id): as it
/// is, unless it holds an `@` (ids are the client's or another producer's choice, and some
/// choose an email address): then `sha256:` and the first 16 hex digits of its digest, the
/// same for the same id, so log lines still correlate.
pub fn loggable_id(id: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    if !id.contains('@') {
        return std::borrow::Cow::Borrowed(id);
    }
    let digest = sha2::Sha256::digest(id.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    std::borrow::Cow::Owned(format!("sha256:{hex}"))
}

/// Why a message was parked, as telemetry and the dead-letter list may carry it. The texts
/// are the service's own, but they name the fields the producer sent, and a producer may send
/// any key (even an address): fields of the record are named, any other key is "an unknown
/// field", a path inside `attributes` is cut after `attributes`, and quoted text (a key a
/// JSON error names) is blanked. The whole reason stays with the dead letter (`show`).
pub fn loggable_reason(reason: &str) -> std::borrow::Cow<'_, str> {
    const FIELDS: [&str; 7] = ["id", "name", "email", "age", "country", "attributes", "ingestedAt"];
    let Some(errors) = reason.strip_prefix("invalid user record: ") else {
        if !reason.contains('"') {
            return std::borrow::Cow::Borrowed(reason);
        }
        // Blank what is quoted: every other piece between quotes.
        let pieces: Vec<&str> =
            reason.split('"').enumerate().map(|(i, p)| if i % 2 == 1 { "…" } else { p }).collect();
        return std::borrow::Cow::Owned(pieces.join("\""));
    };
    let shown: Vec<String> = errors
        .split("; ")
        .map(|error| match error.split_once(": ") {
            Some((field, message)) => {
                let field = if FIELDS.contains(&field) {
                    field.to_owned()
                } else if field.starts_with("attributes.") || field.starts_with("attributes[") {
                    "attributes.…".to_owned()
                } else {
                    "(an unknown field)".to_owned()
                };
                format!("{field}: {message}")
            }
            None => error.to_owned(),
        })
        .collect();
    std::borrow::Cow::Owned(format!("invalid user record: {}", shown.join("; ")))
}

pub struct Access<'a> {
    pub method: &'a http::Method,
    pub route: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    pub invocation_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    /// The trace a consumed message belongs to (its correlation id), when the request has none.
    pub trace_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub message_id: Option<&'a str>,
}

/// Records a finished request: its metrics, its Application Insights item, and its log line.
pub fn access(a: &Access<'_>) {
    let method = metrics::method_label(a.method);
    metrics::request(a.route, method, a.status, a.elapsed);
    let trace_id = a.trace_id.map(loggable_id);
    let invocation_id = a.invocation_id.map(loggable_id);
    appinsights::request(&appinsights::RequestItem {
        method,
        route: a.route,
        status: a.status,
        duration: a.elapsed,
        traceparent: a.traceparent,
        invocation_id: invocation_id.as_deref(),
        fallback_trace_id: trace_id.as_deref(),
    });
    access_line(a, method);
}

/// Writes the access-log line of a request: the same JSON shape as the subscriber's lines,
/// formatted by hand because this runs once per request on the hot path (the generic JSON
/// formatter costs a third of a point read). Honours `RUST_LOG` like any INFO event.
fn access_line(a: &Access<'_>, method: &str) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let Some(sink) = SINK.get() else {
        tracing::info!(
            method,
            route = a.route,
            status = a.status,
            latency_us = a.elapsed.as_micros() as u64,
            "request"
        );
        return;
    };
    let mut line = String::with_capacity(320);
    line.push_str("{\"timestamp\":\"");
    push_timestamp(&mut line);
    line.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
    push_json_str(&mut line, method);
    line.push_str(",\"route\":");
    push_json_str(&mut line, a.route);
    line.push_str(",\"status\":");
    line.push_str(itoa::Buffer::new().format(a.status));
    line.push_str(",\"latency_us\":");
    line.push_str(itoa::Buffer::new().format(a.elapsed.as_micros() as u64));
    for (name, value) in [
        ("invocation_id", a.invocation_id.map(loggable_id).as_deref()),
        ("trace_id", a.trace_id.map(loggable_id).as_deref()),
        ("user_id", a.user_id.map(loggable_id).as_deref()),
        ("message_id", a.message_id.map(loggable_id).as_deref()),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            line.push_str(",\"");
            line.push_str(name);
            line.push_str("\":");
            push_json_str(&mut line, value);
        }
    }
    line.push_str("}\n");
    sink.append(line.as_bytes());
}

/// The log line of a stored message (`message stored`, INFO), formatted by hand as the access
/// line is: the worker writes one per message, tens of thousands a second under load, where the
/// generic JSON formatter cost more than the rest of the line's work. The user id goes through
/// [`loggable_id`].
pub fn message_stored(invocation_id: Option<&str>, message_id: &str, user_id: &str, stale: bool) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let user_id = loggable_id(user_id);
    let message_id = loggable_id(message_id);
    let invocation_id = invocation_id.map(loggable_id);
    let invocation_id = invocation_id.as_deref();
    let Some(sink) = SINK.get() else {
        tracing::info!(invocation_id, message_id = %message_id, user_id = %user_id, stale, "message stored");
        return;
    };
    let mut line = String::with_capacity(200);
    line.push_str("{\"timestamp\":\"");
    push_timestamp(&mut line);
    line.push_str("\",\"level\":\"INFO\",\"message\":\"message stored\"");
    for (name, value) in
        [("invocation_id", invocation_id), ("message_id", Some(&message_id)), ("user_id", Some(&user_id))]
    {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            line.push_str(",\"");
            line.push_str(name);
            line.push_str("\":");
            push_json_str(&mut line, value);
        }
    }
    line.push_str(if stale { ",\"stale\":true}\n" } else { ",\"stale\":false}\n" });
    sink.append(line.as_bytes());
}

/// The time now as the subscriber writes it (RFC 3339, UTC, microseconds): the date and time
/// of day are formatted once a second per thread, the microseconds every time.
fn push_timestamp(out: &mut String) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != now.as_secs() {
            let at = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
            let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            *second = (now.as_secs(), at.format(&format).unwrap_or_default());
        }
        out.push_str(&second.1);
    });
    let micros = now.subsec_micros();
    out.push('.');
    let digits = itoa::Buffer::new().format(micros).len();
    out.extend(std::iter::repeat_n('0', 6 - digits));
    out.push_str(itoa::Buffer::new().format(micros));
    out.push('Z');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds_like_the_subscriber_s() {
        use time::format_description::well_known::Rfc3339;
        for _ in 0..3 {
            let before = time::OffsetDateTime::now_utc();
            let mut line = String::new();
            push_timestamp(&mut line);
            let after = time::OffsetDateTime::now_utc();
            assert_eq!(line.len(), "2026-12-04T12:41:02.783037Z".len(), "{line}");
            let parsed = time::OffsetDateTime::parse(&line, &Rfc3339).unwrap();
            let micro = time::Duration::microseconds(1);
            assert!(parsed + micro >= before && parsed <= after, "{before} <= {line} <= {after}");
        }
    }

    #[test]
    fn a_parked_reason_names_the_record_fields_but_no_key_the_producer_chose() {
        let reason = "invalid user record: name: must not be empty; jane.roe@corp.example: is not a field of a user record; attributes.Jane Roe home: is a whole number beyond 64 bits";
        let shown = loggable_reason(reason);
        assert_eq!(
            shown,
            "invalid user record: name: must not be empty; (an unknown field): is not a field of a user record; attributes.…: is a whole number beyond 64 bits"
        );
        let json = r#"the message is not JSON: the key "mary@example.com" appears twice in one object at line 1 column 9"#;
        assert_eq!(
            loggable_reason(json),
            r#"the message is not JSON: the key "…" appears twice in one object at line 1 column 9"#
        );
        assert_eq!(loggable_reason("the message is not JSON: EOF"), "the message is not JSON: EOF");
    }
}
