//! The service's metrics, defined once here and read by three views: Prometheus text at
//! `GET /metrics`, the live status page, and the Application Insights exporter (whose custom
//! metric names are these names, which the alerts in `infra/monitoring.tf` query).
//!
//! Labels carry identifiers of code paths only (route, method, status, reason, outcome),
//! never user data: their values come from small fixed sets, so no series can be made per
//! user or per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric: its name (the same in Prometheus and Application Insights), what it measures,
/// and the names of its labels.
#[derive(Debug)]
pub struct Def {
    index: usize,
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

pub static HTTP_REQUESTS: Def = Def {
    index: 0,
    name: "http_requests_total",
    help: "HTTP requests answered, by route pattern, method and status.",
    kind: Kind::Counter,
    labels: &["route", "method", "status"],
};
pub static HTTP_DURATION: Def = Def {
    index: 1,
    name: "http_request_duration_seconds",
    help: "Time from a request's arrival to its answer, by route pattern and method.",
    kind: Kind::Histogram,
    labels: &["route", "method"],
};
pub static RECORDS_ACCEPTED: Def = Def {
    index: 2,
    name: "ingest_records_accepted_total",
    help: "Records made durable in the topic and acknowledged (a replay under an Idempotency-Key is not counted again).",
    kind: Kind::Counter,
    labels: &[],
};
pub static RECORDS_REJECTED: Def = Def {
    index: 3,
    name: "ingest_records_rejected_total",
    help: "Records refused, by reason.",
    kind: Kind::Counter,
    labels: &["reason"],
};
pub static PUBLISH_DURATION: Def = Def {
    index: 4,
    name: "publish_duration_seconds",
    help: "Time to make a publish durable in the topic (fsync locally, Service Bus ack in Azure).",
    kind: Kind::Histogram,
    labels: &[],
};
pub static PUBLISH_FAILURES: Def = Def {
    index: 5,
    name: "publish_failures_total",
    help: "Publishes that failed (the client got 503), by reason.",
    kind: Kind::Counter,
    labels: &["reason"],
};
pub static PROCESSING_TIME: Def = Def {
    index: 6,
    name: "message_processing_seconds",
    help: "From a message's enqueued time to its document being stored; one sample per stored message.",
    kind: Kind::Histogram,
    labels: &[],
};
pub static MESSAGES_CONSUMED: Def = Def {
    index: 7,
    name: "messages_consumed_total",
    help:
        "Messages consumed, by outcome: stored, stale (a newer version was stored), retried, dead_lettered.",
    kind: Kind::Counter,
    labels: &["outcome"],
};
pub static STORE_DURATION: Def = Def {
    index: 8,
    name: "store_operation_duration_seconds",
    help: "Store operations (a batch upsert counts once), by operation and outcome.",
    kind: Kind::Histogram,
    labels: &["op", "outcome"],
};
pub static COSMOS_CHARGE: Def = Def {
    index: 9,
    name: "cosmos_request_charge_total",
    help: "Cosmos DB request units consumed, by operation.",
    kind: Kind::Counter,
    labels: &["op"],
};
pub static QUEUE_DEPTH: Def = Def {
    index: 10,
    name: "queue_depth",
    help: "Messages waiting in the embedded subscription.",
    kind: Kind::Gauge,
    labels: &[],
};
pub static DEAD_LETTERS: Def = Def {
    index: 11,
    name: "dead_letters",
    help: "Messages parked in the embedded dead-letter table.",
    kind: Kind::Gauge,
    labels: &[],
};

pub static PANICS: Def = Def {
    index: 12,
    name: "panics_total",
    help: "Bugs caught: a request handler (answered 500) or the worker (restarted) panicked.",
    kind: Kind::Counter,
    labels: &["where"],
};

pub static CONNECTIONS_REFUSED: Def = Def {
    index: 13,
    name: "connections_refused_total",
    help: "Connections refused beyond MAX_CONNECTIONS (answered 503 and closed).",
    kind: Kind::Counter,
    labels: &[],
};

/// Every metric, in `index` order.
pub static CATALOGUE: [&Def; 14] = [
    &HTTP_REQUESTS,
    &HTTP_DURATION,
    &RECORDS_ACCEPTED,
    &RECORDS_REJECTED,
    &PUBLISH_DURATION,
    &PUBLISH_FAILURES,
    &PROCESSING_TIME,
    &MESSAGES_CONSUMED,
    &STORE_DURATION,
    &COSMOS_CHARGE,
    &QUEUE_DEPTH,
    &DEAD_LETTERS,
    &PANICS,
    &CONNECTIONS_REFUSED,
];

/// Upper bounds of the histogram buckets, in seconds: from a cached point read (0.5 ms) to
/// a message that waited out a store outage (minutes). 5 s, the processing-time alert's
/// threshold, is a bound, so "slower than 5 s" is exact.
pub const BUCKETS: [f64; 17] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A histogram's cumulative state; sums in nanoseconds so they can be atomic integers.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
    /// Smallest and largest sample since the exporter last took them.
    min_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            min_ns: AtomicU64::new(u64::MAX),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let slot = BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(BUCKETS.len());
        let ns = (seconds * 1e9) as u64;
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        // Read first: a new extreme is rare, and a read leaves the line shared between cores.
        if ns < self.min_ns.load(Relaxed) {
            self.min_ns.fetch_min(ns, Relaxed);
        }
        if ns > self.max_ns.load(Relaxed) {
            self.max_ns.fetch_max(ns, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            count: self.count.load(Relaxed),
            sum: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }

    /// The smallest and largest samples since the last call (None when there were none).
    fn take_min_max(&self) -> Option<(f64, f64)> {
        let min = self.min_ns.swap(u64::MAX, Relaxed);
        let max = self.max_ns.swap(0, Relaxed);
        (min != u64::MAX).then(|| (min as f64 / 1e9, max as f64 / 1e9))
    }
}

/// A histogram at one moment: counts per bucket (not cumulative), total count and sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: [u64; BUCKETS.len() + 1],
    pub count: u64,
    pub sum: f64,
}

impl HistogramSnapshot {
    /// What was observed between `earlier` and this snapshot.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            count: self.count.saturating_sub(earlier.count),
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
    }

    /// The q-quantile (0..=1), interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does; None without samples. Past the last bound, the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BUCKETS.get(i) else { return Some(BUCKETS[BUCKETS.len() - 1]) };
                let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        Some(BUCKETS[BUCKETS.len() - 1])
    }
}

#[derive(Debug)]
enum Cell {
    /// Counters count whole events (or whole request units, rounded by the caller).
    Counter(AtomicU64),
    /// f64 bits.
    Gauge(AtomicU64),
    Histogram(Box<Histogram>),
}

/// One series: a metric with its label values.
#[derive(Debug)]
struct Series {
    labels: Vec<String>,
    cell: Cell,
}

/// The series of one metric, keyed by their label values joined with U+001F.
#[derive(Debug, Default)]
struct Family {
    series: RwLock<HashMap<String, Series, rustc_hash::FxBuildHasher>>,
}

/// All metrics of the process. One per process: [`registry`].
#[derive(Debug)]
pub struct Registry {
    families: Vec<Family>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The process's registry.
pub fn registry() -> &'static Registry {
    REGISTRY.get_or_init(Registry::new)
}

thread_local! {
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Registry {
    /// A registry where every metric without labels exists at zero, so a scrape shows it
    /// before its first event (a rate over a missing series is no rate at all).
    fn new() -> Self {
        let registry = Registry { families: CATALOGUE.iter().map(|_| Family::default()).collect() };
        for def in CATALOGUE.iter().filter(|d| d.labels.is_empty()) {
            registry.with_series(def, &[], |_| ());
        }
        registry
    }

    /// Runs `f` on the series of `def` with these label values, creating it at zero the first
    /// time. Under the family's read lock, without taking a reference count: this runs a few
    /// times per request, on every thread.
    fn with_series<R>(&self, def: &'static Def, labels: &[&str], f: impl FnOnce(&Series) -> R) -> R {
        debug_assert_eq!(labels.len(), def.labels.len(), "{}", def.name);
        let family = &self.families[def.index];
        KEY.with(|key| {
            let mut key = key.borrow_mut();
            key.clear();
            for (i, value) in labels.iter().enumerate() {
                if i > 0 {
                    key.push('\u{1f}');
                }
                key.push_str(value);
            }
            {
                let map = family.series.read().unwrap_or_else(|p| p.into_inner());
                if let Some(series) = map.get(key.as_str()) {
                    return f(series);
                }
            }
            let mut map = family.series.write().unwrap_or_else(|p| p.into_inner());
            let series = map.entry(key.clone()).or_insert_with(|| {
                let cell = match def.kind {
                    Kind::Counter => Cell::Counter(AtomicU64::new(0)),
                    Kind::Gauge => Cell::Gauge(AtomicU64::new(0f64.to_bits())),
                    Kind::Histogram => Cell::Histogram(Box::default()),
                };
                Series { labels: labels.iter().map(|l| l.to_string()).collect(), cell }
            });
            f(series)
        })
    }

    pub fn add(&self, def: &'static Def, labels: &[&str], n: u64) {
        self.with_series(def, labels, |series| {
            if let Cell::Counter(c) = &series.cell {
                c.fetch_add(n, Relaxed);
            }
        })
    }

    pub fn set(&self, def: &'static Def, labels: &[&str], value: f64) {
        self.with_series(def, labels, |series| {
            if let Cell::Gauge(g) = &series.cell {
                g.store(value.to_bits(), Relaxed);
            }
        })
    }

    pub fn observe(&self, def: &'static Def, labels: &[&str], seconds: f64) {
        self.with_series(def, labels, |series| {
            if let Cell::Histogram(h) = &series.cell {
                h.observe(seconds);
            }
        })
    }

    /// Every series of every metric, as it stands.
    pub fn snapshot(&self) -> Vec<FamilySnapshot> {
        CATALOGUE
            .iter()
            .zip(&self.families)
            .map(|(def, family)| {
                let map = family.series.read().unwrap_or_else(|p| p.into_inner());
                let mut series: Vec<SeriesSnapshot> = map
                    .values()
                    .map(|s| SeriesSnapshot {
                        labels: s.labels.clone(),
                        value: match &s.cell {
                            Cell::Counter(c) => Value::Counter(c.load(Relaxed)),
                            Cell::Gauge(g) => Value::Gauge(f64::from_bits(g.load(Relaxed))),
                            Cell::Histogram(h) => Value::Histogram(h.snapshot()),
                        },
                    })
                    .collect();
                series.sort_by(|a, b| a.labels.cmp(&b.labels));
                FamilySnapshot { def, series }
            })
            .collect()
    }

    /// The smallest and largest samples of a histogram series since the last call.
    pub fn take_min_max(&self, def: &'static Def, labels: &[String]) -> Option<(f64, f64)> {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.with_series(def, &labels, |series| match &series.cell {
            Cell::Histogram(h) => h.take_min_max(),
            _ => None,
        })
    }

    /// A counter's total over all its series whose labels match `filter`.
    pub fn counter_total(&self, def: &'static Def, filter: impl Fn(&[String]) -> bool) -> u64 {
        let map = self.families[def.index].series.read().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter(|s| filter(&s.labels))
            .map(|s| match &s.cell {
                Cell::Counter(c) => c.load(Relaxed),
                _ => 0,
            })
            .sum()
    }

    /// A histogram merged over all its series.
    pub fn histogram_total(&self, def: &'static Def) -> HistogramSnapshot {
        let map = self.families[def.index].series.read().unwrap_or_else(|p| p.into_inner());
        let mut total = HistogramSnapshot::default();
        for s in map.values() {
            if let Cell::Histogram(h) = &s.cell {
                total.merge(&h.snapshot());
            }
        }
        total
    }
}

#[derive(Debug, Clone)]
pub struct FamilySnapshot {
    pub def: &'static Def,
    pub series: Vec<SeriesSnapshot>,
}

#[derive(Debug, Clone)]
pub struct SeriesSnapshot {
    pub labels: Vec<String>,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(HistogramSnapshot),
}

/// Renders a snapshot in the Prometheus text exposition format 0.0.4.
pub fn prometheus_text(families: &[FamilySnapshot]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for family in families {
        let def = family.def;
        let kind = match def.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", def.name, def.help);
        let _ = writeln!(out, "# TYPE {} {kind}", def.name);
        for series in &family.series {
            let labels = |extra: Option<(&str, &str)>| -> String {
                let mut pairs: Vec<String> = def
                    .labels
                    .iter()
                    .zip(&series.labels)
                    .map(|(name, value)| format!("{name}=\"{}\"", escape_label(value)))
                    .collect();
                if let Some((name, value)) = extra {
                    pairs.push(format!("{name}=\"{value}\""));
                }
                if pairs.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", pairs.join(","))
                }
            };
            match &series.value {
                Value::Counter(n) => {
                    let _ = writeln!(out, "{}{} {n}", def.name, labels(None));
                }
                Value::Gauge(v) => {
                    let _ = writeln!(out, "{}{} {v}", def.name, labels(None));
                }
                Value::Histogram(h) => {
                    let mut cumulative = 0u64;
                    for (i, bound) in BUCKETS.iter().enumerate() {
                        cumulative += h.buckets[i];
                        let le = bound.to_string();
                        let _ =
                            writeln!(out, "{}_bucket{} {cumulative}", def.name, labels(Some(("le", &le))));
                    }
                    let _ = writeln!(out, "{}_bucket{} {}", def.name, labels(Some(("le", "+Inf"))), h.count);
                    let _ = writeln!(out, "{}_sum{} {}", def.name, labels(None), h.sum);
                    let _ = writeln!(out, "{}_count{} {}", def.name, labels(None), h.count);
                }
            }
        }
    }
    out
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

// --- what the code records, named for what happened -------------------------------------------

/// Methods outside this set are counted as `other`: the label must not take arbitrary values.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

pub fn request(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    let r = registry();
    r.add(&HTTP_REQUESTS, &[route, method, itoa::Buffer::new().format(status)], 1);
    r.observe(&HTTP_DURATION, &[route, method], elapsed.as_secs_f64());
}

/// One message's outcome at the consumer: `stored`, `stale`, `retried` or `dead_lettered`.
pub fn consumed(outcome: &'static str, n: u64) {
    registry().add(&MESSAGES_CONSUMED, &[outcome], n);
}

/// A stored message: how long it took from the topic to the store.
pub fn processed(enqueued_at: time::OffsetDateTime, stored_at: time::OffsetDateTime) {
    let seconds = (stored_at - enqueued_at).as_seconds_f64();
    registry().observe(&PROCESSING_TIME, &[], seconds);
}

pub fn store_operation(op: &'static str, ok: bool, elapsed: Duration) {
    registry().observe(&STORE_DURATION, &[op, if ok { "ok" } else { "error" }], elapsed.as_secs_f64());
}

/// Request units are fractional; they are accumulated in thousandths and exported as units.
pub fn request_charge(op: &'static str, units: f64) {
    if units.is_finite() && units > 0.0 {
        registry().add(&COSMOS_CHARGE, &[op], (units * 1000.0).round() as u64);
    }
}

/// Counters whose unit is not a whole event: their exported value is divided by this.
pub fn scale(def: &Def) -> f64 {
    if def.name == COSMOS_CHARGE.name {
        1000.0
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_is_in_index_order_with_unique_names() {
        for (i, def) in CATALOGUE.iter().enumerate() {
            assert_eq!(def.index, i, "{}", def.name);
        }
        let mut names: Vec<&str> = CATALOGUE.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_that_holds_the_rank() {
        let h = Histogram::default();
        for _ in 0..90 {
            h.observe(0.003); // (0.0025, 0.005]
        }
        for _ in 0..10 {
            h.observe(7.0); // (5, 10]
        }
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        let p50 = s.quantile(0.5).unwrap();
        assert!(p50 > 0.0025 && p50 <= 0.005, "{p50}");
        let p99 = s.quantile(0.99).unwrap();
        assert!(p99 > 5.0 && p99 <= 10.0, "{p99}");
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
        assert!((s.sum - (90.0 * 0.003 + 70.0)).abs() < 1e-6);
        assert_eq!(h.take_min_max(), Some((0.003, 7.0)));
        assert_eq!(h.take_min_max(), None, "min and max restart after they are taken");
    }

    #[test]
    fn prometheus_text_has_cumulative_buckets_and_escaped_labels() {
        let registry = Registry::new();
        registry.add(&HTTP_REQUESTS, &["/a\"b", "GET", "200"], 2);
        registry.observe(&HTTP_DURATION, &["/a", "GET"], 0.002);
        registry.observe(&HTTP_DURATION, &["/a", "GET"], 0.02);
        let text = prometheus_text(&registry.snapshot());
        assert!(
            text.contains("http_requests_total{route=\"/a\\\"b\",method=\"GET\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text
            .contains("http_request_duration_seconds_bucket{route=\"/a\",method=\"GET\",le=\"0.0025\"} 1\n"));
        assert!(text
            .contains("http_request_duration_seconds_bucket{route=\"/a\",method=\"GET\",le=\"0.025\"} 2\n"));
        assert!(text
            .contains("http_request_duration_seconds_bucket{route=\"/a\",method=\"GET\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("http_request_duration_seconds_count{route=\"/a\",method=\"GET\"} 2\n"));
        assert!(text.contains("# TYPE queue_depth gauge\n"));
    }
}
