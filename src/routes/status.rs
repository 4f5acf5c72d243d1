//! `GET /status` — a page for people who would rather look than read: throughput,
//! processing-time percentiles, queue depth and dead letters, refreshed every second from
//! `GET /status.json` (the same registry `/metrics` serves). Self-contained: no external
//! scripts, styles or fonts, so it works offline and under a strict CSP.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    let (recent, window) = {
        static HISTORY: Mutex<VecDeque<(Instant, metrics::HistogramSnapshot)>> = Mutex::new(VecDeque::new());
        let mut history = HISTORY.lock().unwrap_or_else(|p| p.into_inner());
        windowed(&mut history, Instant::now(), &processing)
    };
    let ms = |q: f64| recent.quantile(q).map(|s| (s * 1e5).round() / 100.0);
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
            "windowSeconds": (window.as_secs_f64() * 10.0).round() / 10.0,
            "windowCount": recent.count,
            "p50Ms": ms(0.5),
            "p95Ms": ms(0.95),
            "p99Ms": ms(0.99),
        },
        "queue": {"depth": gauge(&metrics::QUEUE_DEPTH), "deadLetters": gauge(&metrics::DEAD_LETTERS)},
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The window the page's percentiles cover: a lifetime's percentiles would stop moving after
/// an hour, hiding a slowdown that is happening now.
const WINDOW: Duration = Duration::from_secs(60);

/// What was observed in about the last [`WINDOW`], and how long that really is. `history`
/// holds earlier totals, one a second at most, from the calls of this page; the base is the
/// newest that is at least [`WINDOW`] old (older ones are dropped), or the start of the
/// process while none is. With calls further apart than the window, the window is the time
/// since the previous call.
fn windowed(
    history: &mut VecDeque<(Instant, metrics::HistogramSnapshot)>,
    now: Instant,
    current: &metrics::HistogramSnapshot,
) -> (metrics::HistogramSnapshot, Duration) {
    while history.len() >= 2 && now.duration_since(history[1].0) >= WINDOW {
        history.pop_front();
    }
    let (base_at, base) = match history.front() {
        Some((at, snapshot)) if now.duration_since(*at) >= WINDOW => (*at, snapshot.clone()),
        _ => (started(), metrics::HistogramSnapshot::default()),
    };
    if history.back().is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1)) {
        history.push_back((now, current.clone()));
    }
    (current.since(&base), now.duration_since(base_at.min(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(count: u64, seconds_each: f64) -> metrics::HistogramSnapshot {
        let mut h = metrics::HistogramSnapshot::default();
        let bucket = metrics::BUCKETS.iter().position(|b| seconds_each <= *b).unwrap();
        h.buckets[bucket] = count;
        h.count = count;
        h.sum = count as f64 * seconds_each;
        h
    }

    #[test]
    fn the_percentiles_cover_the_last_minute_not_the_lifetime() {
        let mut history = VecDeque::new();
        let t0 = started() + Duration::from_secs(1);
        // A slow first minute: 1000 messages of 2 s.
        let slow = with(1000, 2.0);
        let (recent, _) = windowed(&mut history, t0, &slow);
        assert_eq!(recent.count, 1000);
        // Then a fast minute: 1000 more of 3 ms. A lifetime p50 would still say seconds.
        let mut both = slow.clone();
        both.merge(&with(1000, 0.003));
        let (recent, window) = windowed(&mut history, t0 + Duration::from_secs(61), &both);
        assert_eq!(recent.count, 1000, "only the last minute's messages");
        assert!(recent.quantile(0.99).unwrap() <= 0.005, "{:?}", recent.quantile(0.99));
        assert!(both.quantile(0.5).unwrap() >= 0.003 && both.quantile(0.99).unwrap() >= 1.0);
        assert!((61.0..=62.0).contains(&window.as_secs_f64()), "{window:?}");
        // A minute later with nothing new: an empty window, no percentiles.
        let (recent, _) = windowed(&mut history, t0 + Duration::from_secs(122), &both);
        assert_eq!(recent.count, 0);
        assert_eq!(recent.quantile(0.5), None);
    }
}
