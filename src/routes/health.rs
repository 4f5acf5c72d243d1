//! `GET /api/health` — liveness and readiness, with the state of each backend.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

pub async fn health(State(state): State<AppState>) -> Response {
    let (topic, store) = tokio::join!(state.publisher.health(), state.store.health());
    let up = topic.up && store.up;
    let body = json!({
        "status": if up { "ok" } else { "degraded" },
        "backend": state.backend,
        "version": env!("CARGO_PKG_VERSION"),
        "checks": { "topic": topic, "store": store },
    });
    if up {
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], axum::Json(body)).into_response()
    }
}
