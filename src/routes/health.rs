//! `GET /api/health` — liveness and readiness, with the state of each backend.
//!
//! Probes call it often, from many places, and it is exempt from the in-flight cap (so that
//! an overloaded service still answers its probes). The store's check (which counts the
//! stored documents: a scan of the table) runs at most once a second: concurrent callers
//! wait for the one in progress, later ones within the second get its result. The topic's
//! check (its depth, which tests and the benchmark poll to see it drain) is taken each time.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::broker::BackendHealth;

/// How long one check of the store answers for.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The store's latest check, and when it was made.
pub struct Checked {
    at: Instant,
    store: BackendHealth,
}

pub async fn health(State(state): State<AppState>) -> Response {
    let store = async {
        let mut cached = state.health.lock().await;
        match cached.as_ref().filter(|c| c.at.elapsed() < FRESH_FOR) {
            Some(c) => c.store.clone(),
            None => {
                let store = state.store.health().await;
                *cached = Some(Checked { at: Instant::now(), store: store.clone() });
                store
            }
        }
    };
    let (topic, store) = tokio::join!(state.publisher.health(), store);
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
