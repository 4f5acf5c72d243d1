//! Builds the service from its configuration in ONE place and runs it until told to stop.
//!
//! Order matters: the listener is bound first, because the Functions host polls `GET /` for
//! readiness while the backends are still being opened.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use tower::ServiceExt;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::{DeadLetterStore, Publisher, ServiceBusPublisher, SqliteQueue};
use crate::clock::SystemClock;
use crate::config::{Backend, Config, CosmosConfig};
use crate::consume::Consumer;
use crate::routes::{self, AppState, Shared};
use crate::store::{CosmosStores, SqliteUserStore, UserStore};
use crate::telemetry::metrics;
use crate::worker::{self, WorkerConfig};

/// The request line and headers must fit in this; larger ones get 431.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The file names of the embedded backend under `DATA_DIR`.
pub const QUEUE_FILE: &str = "queue.db";
pub const STORE_FILE: &str = "users.db";

/// What the embedded backend opened: the state for the router and the queue for the worker.
pub struct Embedded {
    pub state: AppState,
    pub queue: Arc<SqliteQueue>,
}

/// Opens the embedded queue and store under `config.data_dir`.
pub fn open_embedded(config: &Config) -> anyhow::Result<Embedded> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create DATA_DIR {}", config.data_dir.display()))?;
    let queue_path = config.data_dir.join(QUEUE_FILE);
    let queue = Arc::new(
        SqliteQueue::open(&queue_path)
            .with_context(|| format!("cannot open the queue {}", queue_path.display()))?,
    );
    let store_path = config.data_dir.join(STORE_FILE);
    let store = Arc::new(
        SqliteUserStore::open(&store_path)
            .with_context(|| format!("cannot open the store {}", store_path.display()))?,
    );
    let state = app_state(config, queue.clone(), store.clone(), queue.clone(), "embedded");
    Ok(Embedded { state, queue })
}

/// The router's state over the given adapters, with the limits of `config`.
fn app_state(
    config: &Config,
    publisher: Arc<dyn Publisher>,
    store: Arc<dyn UserStore>,
    dead_letters: Arc<dyn DeadLetterStore>,
    backend: &'static str,
) -> AppState {
    AppState::new(Shared {
        publisher,
        consumer: Consumer::new(store.clone()),
        store,
        dead_letters,
        clock: Arc::new(SystemClock),
        max_record_bytes: config.max_record_bytes,
        max_batch_bytes: config.max_batch_bytes,
        max_batch_records: config.max_batch_records,
        body_timeout: config.body_timeout,
        consume_retry_budget: config.consume_retry_budget,
        max_delivery_count: config.max_delivery_count,
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
        api_key: config.api_key.clone(),
        backend,
        health: tokio::sync::Mutex::new(None),
    })
}

/// What `build` opened: the state for the router, and the embedded queue for the worker.
pub struct Backends {
    pub state: AppState,
    pub queue: Option<Arc<SqliteQueue>>,
}

/// Builds the backends the configuration names. Errors name the setting at fault. A store
/// that cannot be reached yet is retried with backoff until `stop` fires: the process stays
/// up (answering `GET /`, and 503 elsewhere) instead of crash-looping under the host.
pub async fn build(config: &Config, stop: &CancellationToken) -> anyhow::Result<Backends> {
    match &config.backend {
        Backend::Embedded => {
            let Embedded { state, queue } = open_embedded(config)?;
            Ok(Backends { state, queue: Some(queue) })
        }
        Backend::Azure(Err(why)) => Err(anyhow::anyhow!("invalid Azure configuration: {why}")),
        Backend::Azure(Ok(azure)) => {
            let cosmos = connect_cosmos(&azure.cosmos, stop).await?;
            let publisher =
                Arc::new(ServiceBusPublisher::new(&azure.servicebus)?.with_ledger(cosmos.keys.clone()));
            let state = app_state(config, publisher, cosmos.users, cosmos.dead_letters, "azure");
            Ok(Backends { state, queue: None })
        }
    }
}

async fn connect_cosmos(config: &CosmosConfig, stop: &CancellationToken) -> anyhow::Result<CosmosStores> {
    let mut delay = Duration::from_millis(500);
    loop {
        match CosmosStores::connect(config).await {
            Ok(stores) => return Ok(stores),
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot reach Cosmos DB; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Err(e.context("stopped before Cosmos DB could be reached")),
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Binds, serves `GET /` at once (the host's readiness probe) while the backends open,
/// then serves the API until `shutdown` resolves, then drains: in-flight requests finish
/// (up to the grace period) and the worker settles the batch in hand.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "listening");

    let stop = CancellationToken::new();
    let api: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let limits = crate::server::Limits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        max_header_bytes: MAX_HEADER_BYTES,
    };
    let server = tokio::spawn(crate::server::run(listener, gate(api.clone()), limits, stop.clone()));
    let signalled = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        signalled.cancel();
    });

    // Stopped last, so that it sends what the drain adds.
    let exporter_stop = CancellationToken::new();
    let exporter = config
        .app_insights
        .clone()
        .and_then(|insights| crate::telemetry::appinsights::start(insights, exporter_stop.clone()));

    let backends = match build(&config, &stop).await {
        Ok(backends) => backends,
        Err(e) => {
            stop.cancel();
            let _ = server.await;
            return Err(e);
        }
    };
    tracing::info!(backend = backends.state.backend, "backends ready");
    if let Some(queue) = &backends.queue {
        let queue = queue.clone();
        crate::telemetry::on_refresh_gauges(move || {
            let queue = queue.clone();
            Box::pin(async move {
                if let Ok(stats) = queue.stats().await {
                    let registry = metrics::registry();
                    registry.set(&metrics::QUEUE_DEPTH, &[], stats.depth as f64);
                    registry.set(&metrics::DEAD_LETTERS, &[], stats.dead_letters as f64);
                }
            })
        });
    }
    let worker = match (&backends.queue, config.worker) {
        (Some(queue), true) => {
            let worker_config = WorkerConfig { retry_base: config.retry_base, retry_max: config.retry_max };
            Some(tokio::spawn(worker::supervise(
                queue.clone(),
                backends.state.consumer.clone(),
                worker_config,
                stop.clone(),
            )))
        }
        _ => None,
    };
    let _ = api.set(routes::router(backends.state));

    stop.cancelled().await;
    let grace = config.shutdown_grace;
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
        Err(_) => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the grace period")
        }
    }
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    exporter_stop.cancel();
    if let Some(exporter) = exporter {
        let _ = tokio::time::timeout(Duration::from_secs(5), exporter).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Until the API is ready, `GET /` answers 200 (the host's readiness probe: the process is
/// up) and everything else 503 with Retry-After.
fn gate(api: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let api = api.clone();
        async move {
            match api.get() {
                Some(router) => router.clone().oneshot(request).await,
                None if request.uri().path() == "/" => Ok("data-ingestion-api starting\n".into_response()),
                None => Ok(routes::problem::ApiError::Unavailable {
                    what: "service (still starting)",
                    retry_after: Duration::from_secs(1),
                }
                .into_response()),
            }
        }
    }))
}

/// Resolves on SIGTERM (what the host and systemd send) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
