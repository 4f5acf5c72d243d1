//! Builds the service from its configuration in ONE place and runs it until told to stop.
//!
//! Order matters: the listener is bound first, because the Functions host polls `GET /` for
//! readiness while the backends are still being opened.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::SqliteQueue;
use crate::clock::SystemClock;
use crate::config::{Backend, Config};
use crate::consume::Consumer;
use crate::routes::{self, AppState};
use crate::store::SqliteUserStore;
use crate::worker::{self, WorkerConfig};

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
    let state = AppState {
        publisher: queue.clone(),
        store: store.clone(),
        dead_letters: queue.clone(),
        consumer: Consumer::new(store),
        clock: Arc::new(SystemClock),
        max_record_bytes: config.max_record_bytes,
        backend: "embedded",
    };
    Ok(Embedded { state, queue })
}

/// Binds, opens the backends, serves until `shutdown` resolves, then drains: in-flight
/// requests finish (up to the grace period) and the worker settles the batch in hand.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "listening");

    let Backend::Embedded = config.backend;
    let Embedded { state, queue } = open_embedded(&config)?;
    tracing::info!(backend = state.backend, data_dir = %config.data_dir.display(), "backends ready");

    let stop = CancellationToken::new();
    let worker = config.worker.then(|| {
        let worker_config = WorkerConfig {
            max_delivery_count: config.max_delivery_count,
            retry_base: config.retry_base,
            retry_max: config.retry_max,
        };
        tokio::spawn(worker::run(queue.clone(), state.consumer.clone(), worker_config, stop.clone()))
    });

    let signalled = stop.clone();
    let server = axum::serve(listener, routes::router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        signalled.cancel();
    });
    let grace = config.shutdown_grace;
    let expired = stop.clone();
    tokio::select! {
        result = server => result.context("the HTTP server failed")?,
        _ = async move { expired.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the grace period");
        }
    }
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    tracing::info!("stopped");
    Ok(())
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
