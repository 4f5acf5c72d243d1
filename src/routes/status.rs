//! `GET /status` — a page for people who would rather look than read: throughput,
//! processing-time percentiles, queue depth and dead letters, refreshed every second from
//! `GET /status.json` (the same registry `/metrics` serves). Self-contained: no external
//! scripts, styles or fonts, so it works offline and under a strict CSP.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde_json::{json, Value};

use super::AppState;
use crate::telemetry::{self, metrics};

const PAGE: &str = include_str!("status.html");

pub async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// When the process started, for uptime and average rates.
pub fn started() -> Instant {
    static STARTED: OnceLock<Instant> = OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

pub async fn snapshot(State(state): State<AppState>) -> Response {
    telemetry::refresh_gauges().await;
    let registry = metrics::registry();
    let outcome = |name: &'static str| {
        registry
            .counter_total(&metrics::MESSAGES_CONSUMED, |labels| labels.first().is_some_and(|l| l == name))
    };
    let processing = registry.histogram_total(&metrics::PROCESSING_TIME);
    let ms = |q: f64| processing.quantile(q).map(|s| (s * 1e5).round() / 100.0);
    let gauge = |def: &'static metrics::Def| -> Value {
        registry
            .snapshot()
            .into_iter()
            .find(|f| std::ptr::eq(f.def, def))
            .and_then(|f| f.series.into_iter().next())
            .and_then(|s| match s.value {
                metrics::Value::Gauge(v) => Some(json!(v as u64)),
                _ => None,
            })
            .unwrap_or(Value::Null)
    };
    let requests = registry.counter_total(&metrics::HTTP_REQUESTS, |_| true);
    let server_errors = registry
        .counter_total(&metrics::HTTP_REQUESTS, |labels| labels.get(2).is_some_and(|s| s.starts_with('5')));
    let body = json!({
        "backend": state.backend,
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": started().elapsed().as_secs_f64(),
        "records": {
            "accepted": registry.counter_total(&metrics::RECORDS_ACCEPTED, |_| true),
            "rejected": registry.counter_total(&metrics::RECORDS_REJECTED, |_| true),
        },
        "messages": {
            "stored": outcome("stored"),
            "stale": outcome("stale"),
            "retried": outcome("retried"),
            "deadLettered": outcome("dead_lettered"),
        },
        "requests": {"total": requests, "serverErrors": server_errors},
        "processingTime": {
            "count": processing.count,
            "p50Ms": ms(0.5),
            "p95Ms": ms(0.95),
            "p99Ms": ms(0.99),
        },
        "queue": {"depth": gauge(&metrics::QUEUE_DEPTH), "deadLetters": gauge(&metrics::DEAD_LETTERS)},
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}
