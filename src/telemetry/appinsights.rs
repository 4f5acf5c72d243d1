//! Export to Application Insights, when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set: one
//! `Request` item per HTTP request (correlated with the Functions host's W3C `traceparent`
//! and carrying its invocation id) and, every interval, the registry's metrics as
//! pre-aggregated `Metric` items named as in [`super::metrics`] — the names the alerts query.
//!
//! Items go to the ingestion endpoint's `v2.1/track` API (the one the Application Insights
//! SDKs and the OpenTelemetry exporter use) in batches, from one background task. Telemetry
//! never slows or fails a request: when the buffer is full, items are dropped and counted.
//! Nothing here carries user data: routes are patterns, not paths.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::{self, Kind, Value as MetricValue};
use crate::config::AppInsightsConfig;

/// The cloud role of every item: what the alerts and the workbook filter on.
pub const ROLE: &str = "data-ingestion-api";
/// Requests buffered between two sends; beyond it they are dropped (and counted).
const BUFFER: usize = 20_000;
/// Items per POST.
const BATCH: usize = 1_000;

struct Exporter {
    requests: mpsc::Sender<Value>,
    dropped: AtomicU64,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// A finished request, as the exporter reports it.
pub struct RequestItem<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub traceparent: Option<&'a str>,
    pub invocation_id: Option<&'a str>,
    /// A trace id to use when the request carries no traceparent (a message's correlation id).
    pub fallback_trace_id: Option<&'a str>,
}

/// Starts the exporter; returns the task, which sends what is left when `stop` fires.
pub fn start(config: AppInsightsConfig, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel(BUFFER);
    if EXPORTER.set(Exporter { requests: tx, dropped: AtomicU64::new(0) }).is_err() {
        return None;
    }
    Some(tokio::spawn(run(config, rx, stop)))
}

/// Queues a request item; free when the exporter is off.
pub fn request(item: &RequestItem<'_>) {
    let Some(exporter) = EXPORTER.get() else { return };
    let value = request_envelope(item, time::OffsetDateTime::now_utc());
    if exporter.requests.try_send(value).is_err() {
        exporter.dropped.fetch_add(1, Relaxed);
    }
}

/// The W3C trace context of a request: `00-{trace id}-{parent span id}-{flags}`.
fn parse_traceparent(header: &str) -> Option<(&str, &str)> {
    let mut parts = header.trim().split('-');
    let (version, trace, parent) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2) && hex(trace, 32) && hex(parent, 16) && trace.bytes().any(|b| b != b'0'))
        .then_some((trace, parent))
}

fn new_span_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// `d.hh:mm:ss.fffffff`, the duration format of the track API.
fn duration_text(d: Duration) -> String {
    let total = d.as_secs();
    let ticks = d.subsec_nanos() / 100;
    format!(
        "{}.{:02}:{:02}:{:02}.{:07}",
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
        ticks
    )
}

fn tags(operation_id: Option<&str>, parent: Option<&str>, name: Option<&str>) -> Value {
    let mut tags = Map::new();
    tags.insert("ai.cloud.role".into(), ROLE.into());
    if let Some(instance) = role_instance() {
        tags.insert("ai.cloud.roleInstance".into(), instance.into());
    }
    tags.insert(
        "ai.internal.sdkVersion".into(),
        concat!("rust:data-ingestion-api-", env!("CARGO_PKG_VERSION")).into(),
    );
    if let Some(id) = operation_id {
        tags.insert("ai.operation.id".into(), id.into());
    }
    if let Some(parent) = parent {
        tags.insert("ai.operation.parentId".into(), parent.into());
    }
    if let Some(name) = name {
        tags.insert("ai.operation.name".into(), name.into());
    }
    Value::Object(tags)
}

/// The instance name the Functions host gives the worker (none locally).
fn role_instance() -> Option<&'static str> {
    static INSTANCE: OnceLock<Option<String>> = OnceLock::new();
    INSTANCE
        .get_or_init(|| std::env::var("WEBSITE_INSTANCE_ID").ok().or_else(|| std::env::var("HOSTNAME").ok()))
        .as_deref()
}

fn request_envelope(item: &RequestItem<'_>, now: time::OffsetDateTime) -> Value {
    let started = now - item.duration;
    let (trace_id, parent) = match item.traceparent.and_then(parse_traceparent) {
        Some((trace, parent)) => (trace.to_owned(), Some(parent)),
        None => (
            item.fallback_trace_id
                .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            None,
        ),
    };
    let name = format!("{} {}", item.method, item.route);
    let mut properties = Map::new();
    properties.insert("route".into(), item.route.into());
    if let Some(invocation) = item.invocation_id.filter(|i| !i.is_empty()) {
        properties.insert("InvocationId".into(), invocation.into());
    }
    json!({
        "name": "Microsoft.ApplicationInsights.Request",
        "time": started.format(&Rfc3339).unwrap_or_default(),
        "tags": tags(Some(&trace_id), parent, Some(&name)),
        "data": {
            "baseType": "RequestData",
            "baseData": {
                "ver": 2,
                "id": new_span_id(),
                "name": name,
                "duration": duration_text(item.duration),
                "responseCode": item.status.to_string(),
                // As the host counts them: a 5xx is the service's failure, a 4xx the client's.
                "success": item.status < 500,
                "properties": properties,
            }
        }
    })
}

/// What the previous export saw, to send increases rather than totals.
#[derive(Default)]
struct Previous {
    counters: HashMap<(&'static str, Vec<String>), u64>,
    histograms: HashMap<(&'static str, Vec<String>), metrics::HistogramSnapshot>,
}

/// The metric items for what changed since `previous`; updates `previous`.
fn metric_envelopes(previous: &mut Previous, now: time::OffsetDateTime) -> Vec<Value> {
    let registry = metrics::registry();
    let time = now.format(&Rfc3339).unwrap_or_default();
    let mut items = Vec::new();
    let metric = |name: &str,
                  labels: Map<String, Value>,
                  value: f64,
                  count: u64,
                  min_max: Option<(f64, f64)>| {
        let mut point = json!({"name": name, "kind": if count > 1 || min_max.is_some() { 1 } else { 0 }, "value": value, "count": count});
        if let Some((min, max)) = min_max {
            point["min"] = min.into();
            point["max"] = max.into();
        }
        json!({
            "name": "Microsoft.ApplicationInsights.Metric",
            "time": time,
            "tags": tags(None, None, None),
            "data": {"baseType": "MetricData", "baseData": {"ver": 2, "metrics": [point], "properties": labels}}
        })
    };
    for family in registry.snapshot() {
        let def = family.def;
        for series in family.series {
            let labels: Map<String, Value> = def
                .labels
                .iter()
                .zip(&series.labels)
                .map(|(k, v)| (k.to_string(), Value::from(v.as_str())))
                .collect();
            let key = (def.name, series.labels.clone());
            match (def.kind, series.value) {
                (Kind::Counter, MetricValue::Counter(total)) => {
                    let before = previous.counters.insert(key, total).unwrap_or(0);
                    let increase = total.saturating_sub(before);
                    if increase > 0 {
                        items.push(metric(def.name, labels, increase as f64 / metrics::scale(def), 1, None));
                    }
                }
                (Kind::Gauge, MetricValue::Gauge(value)) => {
                    items.push(metric(def.name, labels, value, 1, None))
                }
                (Kind::Histogram, MetricValue::Histogram(snapshot)) => {
                    let before = previous.histograms.insert(key, snapshot.clone()).unwrap_or_default();
                    let delta = snapshot.since(&before);
                    let min_max = registry.take_min_max(def, &series.labels);
                    if delta.count > 0 {
                        let (min, max) = min_max.unwrap_or((0.0, 0.0));
                        items.push(metric(def.name, labels, delta.sum, delta.count, Some((min, max))));
                    }
                }
                _ => {}
            }
        }
    }
    items
}

async fn run(config: AppInsightsConfig, mut rx: mpsc::Receiver<Value>, stop: CancellationToken) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Application Insights client; telemetry is not exported");
            return;
        }
    };
    tracing::info!(
        interval_ms = config.interval.as_millis() as u64,
        "exporting telemetry to Application Insights"
    );
    let mut previous = Previous::default();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut pending: Vec<Value> = Vec::new();
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        while let Ok(item) = rx.try_recv() {
            pending.push(item);
        }
        super::refresh_gauges().await;
        pending.extend(metric_envelopes(&mut previous, time::OffsetDateTime::now_utc()));
        if let Some(exporter) = EXPORTER.get() {
            let dropped = exporter.dropped.swap(0, Relaxed);
            if dropped > 0 {
                tracing::warn!(dropped, "telemetry buffer full: request items were dropped");
            }
        }
        for chunk in pending.chunks(BATCH) {
            send(&client, &config, chunk).await;
        }
        pending.clear();
        if stopping {
            return;
        }
    }
}

async fn send(client: &reqwest::Client, config: &AppInsightsConfig, items: &[Value]) {
    let key = config.instrumentation_key.expose();
    let body: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut item = item.clone();
            item["iKey"] = key.into();
            item
        })
        .collect();
    match client.post(config.track_url.clone()).json(&body).send().await {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => {
            tracing::warn!(
                status = response.status().as_u16(),
                items = items.len(),
                "Application Insights refused telemetry"
            )
        }
        // The error names the host, never the key (which travels in the body).
        Err(e) => {
            tracing::warn!(error = %e.without_url(), items = items.len(), "cannot send telemetry to Application Insights")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_joins_the_hosts_trace_as_a_child_of_its_span() {
        let item = RequestItem {
            method: "POST",
            route: "/api/users",
            status: 202,
            duration: Duration::from_micros(1_500),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            invocation_id: Some("inv-1"),
            fallback_trace_id: None,
        };
        let v = request_envelope(&item, time::OffsetDateTime::now_utc());
        assert_eq!(v["tags"]["ai.operation.id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v["tags"]["ai.operation.parentId"], "b7ad6b7169203331");
        assert_eq!(v["tags"]["ai.cloud.role"], ROLE);
        assert_eq!(v["data"]["baseData"]["name"], "POST /api/users");
        assert_eq!(v["data"]["baseData"]["duration"], "0.00:00:00.0015000");
        assert_eq!(v["data"]["baseData"]["responseCode"], "202");
        assert_eq!(v["data"]["baseData"]["success"], true);
        assert_eq!(v["data"]["baseData"]["properties"]["InvocationId"], "inv-1");
    }

    #[test]
    fn without_a_valid_traceparent_the_fallback_or_a_new_trace_is_used() {
        let mut item = RequestItem {
            method: "POST",
            route: "/ingest-consume",
            status: 503,
            duration: Duration::ZERO,
            traceparent: Some("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            invocation_id: None,
            fallback_trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        };
        let v = request_envelope(&item, time::OffsetDateTime::now_utc());
        assert_eq!(v["tags"]["ai.operation.id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(v["tags"].get("ai.operation.parentId").is_none());
        assert_eq!(v["data"]["baseData"]["success"], false);
        item.fallback_trace_id = None;
        let v = request_envelope(&item, time::OffsetDateTime::now_utc());
        assert_eq!(v["tags"]["ai.operation.id"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn durations_use_the_track_apis_format() {
        assert_eq!(
            duration_text(Duration::from_secs(90_061) + Duration::from_nanos(1_234_500)),
            "1.01:01:01.0012345"
        );
    }
}
