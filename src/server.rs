//! The HTTP/1.1 server: hyper, with the limits a service facing the internet needs, which
//! `axum::serve` does not set. A client that sends its headers slowly is cut off after
//! `header_timeout` (slow-loris); headers larger than `max_header_bytes` get `431`; beyond
//! `max_connections` open connections, a new one is answered `503` with `Retry-After` and
//! closed at once, instead of queuing without bound. On shutdown, the listener closes, idle
//! connections close, and requests in flight finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// hyper's read buffer, which the request line and headers must fit in (at least 8 KiB).
    pub max_header_bytes: usize,
}

/// Serves `app` on `listener` until `shutdown` fires, then until the connections are done.
pub async fn run(listener: TcpListener, app: Router, limits: Limits, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused = 0u64;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on accepting.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            crate::telemetry::metrics::registry().add(
                &crate::telemetry::metrics::CONNECTIONS_REFUSED,
                &[],
                1,
            );
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    max_connections = limits.max_connections,
                    "connection limit reached; refusing"
                );
            }
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The answer to a connection over the limit: a complete HTTP response, then close.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"type":"/problems/overloaded","title":"Service overloaded","status":503,"detail":"Too many connections are open; nothing was accepted. Retry after 1 s."}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}
