//! The HTTP surface: one file per Functions function, and the router that serves them.
//!
//! Paths are those the Functions host forwards unchanged (route prefix `api`), plus
//! `/ingest-consume`, where the host POSTs each Service Bus message.

mod consume;
mod health;
mod ingest;
mod metrics;
mod openapi;
pub mod problem;
mod status;
mod users;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::routing::{get, post};
use axum::Router;
use futures::FutureExt;

use crate::broker::{DeadLetterStore, Publisher};
use crate::clock::Clock;
use crate::consume::Consumer;
use crate::store::UserStore;
pub use consume::BINDING as CONSUME_BINDING;
use problem::ApiError;

/// The route of each function, as its `function.json` declares it.
pub const CONSUME_PATH: &str = "/ingest-consume";

/// Headers read on every request, by their parsed names (a lookup by `&str` parses the name
/// each time).
static FUNCTIONS_KEY: http::HeaderName = http::HeaderName::from_static("x-functions-key");
static INVOCATION_ID: http::HeaderName = http::HeaderName::from_static("x-azure-functions-invocationid");
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The largest invocation payload the consume route reads: a 256 KB Service Bus message,
/// base64'd and wrapped in the host's JSON, with room to spare.
pub(crate) const MAX_INVOCATION_BYTES: usize = 4 * 1024 * 1024;

/// Everything the handlers share: one allocation, so the clone each extractor and middleware
/// makes per request is one reference count, not a dozen.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub publisher: Arc<dyn Publisher>,
    pub store: Arc<dyn UserStore>,
    pub dead_letters: Arc<dyn DeadLetterStore>,
    pub consumer: Consumer,
    pub clock: Arc<dyn Clock>,
    pub max_record_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    pub body_timeout: std::time::Duration,
    /// How long `/ingest-consume` waits out a store outage before failing the invocation.
    pub consume_retry_budget: std::time::Duration,
    /// The subscription's max delivery count: on the last delivery, a message that still
    /// cannot be stored is parked with its reason.
    pub max_delivery_count: u32,
    /// Permits for requests in flight: when none is left, a request gets 503 at once.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// When set, what every request but the probes must carry.
    pub api_key: Option<crate::config::Secret>,
    pub backend: &'static str,
    /// The latest health answer and when it was computed (see [`health::health`]).
    pub health: tokio::sync::Mutex<Option<health::Checked>>,
}

pub fn router(state: AppState) -> Router {
    status::started();
    Router::new()
        .route("/", get(root))
        .route("/api/health", get(health::health))
        .route("/metrics", get(metrics::metrics))
        .route("/status", get(status::page))
        .route("/status.json", get(status::snapshot))
        .route("/api/openapi.json", get(openapi::spec))
        .route("/api/users", post(ingest::create_user))
        .route("/api/users/{user_id}", get(users::get_user))
        .route(CONSUME_PATH, post(consume::consume))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Front::new(state.api_key.clone(), state.in_flight.clone()))
        .with_state(state)
}

/// Identifiers a handler puts on its response for the request's log line.
#[derive(Debug, Clone, Default)]
pub struct LogIds {
    pub user_id: Option<String>,
    pub message_id: Option<String>,
    /// The trace a consumed message belongs to: the correlation id it was published with.
    pub trace_id: Option<String>,
}

/// What wraps every route, as ONE hand-written layer (two `middleware::from_fn` layers boxed
/// a future and cloned the service they wrap each, per request):
/// - the gate every request but the probes (`GET /`, `GET /api/health`) passes: with
///   `INGEST_API_KEY` set, the key, carried as the Functions host's keys are (an
///   `x-functions-key` header or a `code` query parameter, compared in the same time wherever
///   it differs); past `MAX_IN_FLIGHT` requests being handled, 503 with Retry-After before any
///   work is done — a bounded amount of work and a clear signal to back off, instead of
///   latency that grows until everything times out;
/// - a panic in a handler is a bug, but still ends in an answer (problem+json 500, logged
///   and counted) rather than a reset connection, and never takes the process down;
/// - one JSON log line per request (method, route — the matched pattern, not the raw path —
///   status, latency, the host's invocation id and the ids the handler reported), with its
///   metrics and its Application Insights item.
#[derive(Clone)]
pub(crate) struct Front {
    api_key: Option<crate::config::Secret>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Front {
    pub(crate) fn new(
        api_key: Option<crate::config::Secret>,
        in_flight: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        Self { api_key, in_flight }
    }

    /// Lets the request in (with its in-flight permit; none for the probes), or answers it.
    fn admit(&self, request: &Request) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        let path = request.uri().path();
        if path == "/" || path == "/api/health" {
            return Ok(None);
        }
        if let Some(key) = &self.api_key {
            let from_header = request.headers().get(&FUNCTIONS_KEY).map(|v| v.as_bytes().to_vec());
            let from_query = request.uri().query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "code")
                    .map(|(_, v)| v.as_bytes().to_vec())
            });
            let given = from_header.or(from_query);
            if !given.as_deref().is_some_and(|g| same(g, key.expose().as_bytes())) {
                return Err(ApiError::Unauthorized { missing: given.is_none() });
            }
        }
        match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => Err(ApiError::Overloaded { retry_after: std::time::Duration::from_secs(1) }),
        }
    }
}

impl<S> tower::Layer<S> for Front {
    type Service = FrontService<S>;

    fn layer(&self, inner: S) -> FrontService<S> {
        FrontService { inner, front: self.clone() }
    }
}

/// A route wrapped in [`Front`].
#[derive(Clone)]
pub(crate) struct FrontService<S> {
    inner: S,
    front: Front,
}

type Response = axum::response::Response;

impl<S> tower::Service<Request> for FrontService<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let invocation_id = request.headers().get(&INVOCATION_ID).cloned();
        let traceparent = request.headers().get(&TRACEPARENT).cloned();
        let admitted = self.front.admit(&request).map(|permit| {
            let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.call(request)));
            (call, permit)
        });
        Box::pin(async move {
            let response = match admitted {
                Err(refused) => axum::response::IntoResponse::into_response(refused),
                Ok((call, permit)) => {
                    let answered = match call {
                        Ok(future) => std::panic::AssertUnwindSafe(future).catch_unwind().await,
                        Err(panic) => Err(panic),
                    };
                    drop(permit);
                    match answered {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(_) => {
                            tracing::error!(
                                route = route.as_ref().map_or("unmatched", |r| r.as_str()),
                                "a handler panicked; answering 500"
                            );
                            crate::telemetry::metrics::registry().add(
                                &crate::telemetry::metrics::PANICS,
                                &["http"],
                                1,
                            );
                            axum::response::IntoResponse::into_response(ApiError::Internal)
                        }
                    }
                }
            };
            let ids = response.extensions().get::<LogIds>();
            crate::telemetry::access(&crate::telemetry::Access {
                method: &method,
                route: route.as_ref().map_or("unmatched", |r| r.as_str()),
                status: response.status().as_u16(),
                elapsed: started.elapsed(),
                invocation_id: invocation_id.as_ref().and_then(|v| v.to_str().ok()),
                traceparent: traceparent.as_ref().and_then(|v| v.to_str().ok()),
                trace_id: ids.and_then(|i| i.trace_id.as_deref()),
                user_id: ids.and_then(|i| i.user_id.as_deref()),
                message_id: ids.and_then(|i| i.message_id.as_deref()),
            });
            Ok(response)
        })
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
