//! `GET /metrics` — the registry in the Prometheus text format, for the local service (in
//! Azure the same metrics go to Application Insights; the host forwards only declared
//! function routes, so this route is not reachable there).

use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::telemetry::{self, metrics};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics() -> Response {
    telemetry::refresh_gauges().await;
    let text = metrics::prometheus_text(&metrics::registry().snapshot());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}
