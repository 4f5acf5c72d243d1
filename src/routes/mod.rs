//! The HTTP surface: one file per Functions function, and the router that serves them.
//!
//! Paths are those the Functions host forwards unchanged (route prefix `api`), plus
//! `/ingest-consume`, where the host POSTs each Service Bus message.

mod consume;
mod health;
mod ingest;
pub mod problem;
mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::broker::{DeadLetterStore, Publisher};
use crate::clock::Clock;
use crate::consume::Consumer;
use crate::store::UserStore;
pub use consume::BINDING as CONSUME_BINDING;
use problem::ApiError;

/// The route of each function, as its `function.json` declares it.
pub const CONSUME_PATH: &str = "/ingest-consume";
/// The largest invocation payload the consume route reads: a 256 KB Service Bus message,
/// base64'd and wrapped in the host's JSON, with room to spare.
const MAX_INVOCATION_BYTES: usize = 4 * 1024 * 1024;

/// Everything the handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub publisher: Arc<dyn Publisher>,
    pub store: Arc<dyn UserStore>,
    pub dead_letters: Arc<dyn DeadLetterStore>,
    pub consumer: Consumer,
    pub clock: Arc<dyn Clock>,
    pub max_record_bytes: usize,
    pub backend: &'static str,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/api/health", get(health::health))
        .route("/api/users", post(ingest::create_user))
        .route("/api/users/{user_id}", get(users::get_user))
        .route(CONSUME_PATH, post(consume::consume).layer(DefaultBodyLimit::max(MAX_INVOCATION_BYTES)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
                    let invocation_id = request
                        .headers()
                        .get("x-azure-functions-invocationid")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", method = %request.method(), route, invocation_id)
                })
                .on_request(())
                .on_response(|response: &Response<_>, latency: Duration, _span: &Span| {
                    tracing::info!(
                        status = response.status().as_u16(),
                        latency_us = latency.as_micros() as u64,
                        "request"
                    );
                })
                .on_failure(()),
        )
        .with_state(state)
}

/// The host's readiness probe: any answer counts, so answer at once.
async fn root() -> &'static str {
    "data-ingestion-api\n"
}

async fn not_found() -> ApiError {
    ApiError::NotFound("This resource".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
