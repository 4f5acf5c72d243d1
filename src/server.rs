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
use hyper_util::rt::TokioIo;
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
    // Late by at most a tenth of the timeout (and never more than a second).
    let timer = SweptTimer::new(
        (limits.header_timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1)),
    );
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
            .timer(timer.clone())
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

/// hyper's timer, used for the header-read timeout only: each connection's deadline is an
/// atomic that hyper moves forward on every request, and ONE sweeper thread wakes the
/// connections whose deadline has passed, a few times a second. The runtime's timer wheel
/// would insert and remove an entry on every request instead: measurable at tens of
/// thousands of requests a second, for a timeout that needs no better than a tenth of its
/// length.
#[derive(Clone)]
pub(crate) struct SweptTimer {
    sweeper: Arc<Sweeper>,
    origin: std::time::Instant,
}

struct Sweeper {
    deadlines: std::sync::Mutex<Vec<std::sync::Weak<Deadline>>>,
}

/// One connection's deadline, in nanoseconds since the timer's origin.
struct Deadline {
    at: std::sync::atomic::AtomicU64,
    waker: futures::task::AtomicWaker,
}

impl SweptTimer {
    /// A timer whose deadlines fire at most `resolution` late.
    pub(crate) fn new(resolution: Duration) -> Self {
        let sweeper = Arc::new(Sweeper { deadlines: std::sync::Mutex::new(Vec::new()) });
        let timer = Self { sweeper: sweeper.clone(), origin: std::time::Instant::now() };
        let origin = timer.origin;
        let weak = Arc::downgrade(&sweeper);
        let _ = std::thread::Builder::new().name("header-timer".into()).spawn(move || loop {
            std::thread::sleep(resolution);
            let Some(sweeper) = weak.upgrade() else { return };
            let now = origin.elapsed().as_nanos() as u64;
            let mut deadlines = sweeper.deadlines.lock().unwrap_or_else(|p| p.into_inner());
            deadlines.retain(|deadline| match deadline.upgrade() {
                Some(deadline) => {
                    if deadline.at.load(std::sync::atomic::Ordering::Acquire) <= now {
                        deadline.waker.wake();
                    }
                    true
                }
                None => false,
            });
        });
        timer
    }

    fn nanos(&self, deadline: std::time::Instant) -> u64 {
        deadline.saturating_duration_since(self.origin).as_nanos() as u64
    }
}

impl hyper::rt::Timer for SweptTimer {
    fn sleep(&self, duration: Duration) -> std::pin::Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> std::pin::Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = Arc::new(Deadline {
            at: std::sync::atomic::AtomicU64::new(self.nanos(deadline)),
            waker: futures::task::AtomicWaker::new(),
        });
        self.sweeper.deadlines.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&deadline));
        Box::pin(SweptSleep { deadline, origin: self.origin })
    }

    fn reset(&self, sleep: &mut std::pin::Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<SweptSleep>() {
            Some(swept) => {
                swept.deadline.at.store(self.nanos(new_deadline), std::sync::atomic::Ordering::Release)
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

struct SweptSleep {
    deadline: Arc<Deadline>,
    origin: std::time::Instant,
}

impl std::future::Future for SweptSleep {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let passed = || {
            self.deadline.at.load(std::sync::atomic::Ordering::Acquire)
                <= self.origin.elapsed().as_nanos() as u64
        };
        if passed() {
            return std::task::Poll::Ready(());
        }
        self.deadline.waker.register(cx.waker());
        // The sweeper may have looked between the check and the registration.
        if passed() {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }
}

impl hyper::rt::Sleep for SweptSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[tokio::test]
    async fn a_swept_sleep_fires_after_its_deadline_and_a_reset_moves_it() {
        let timer = SweptTimer::new(Duration::from_millis(10));
        let started = std::time::Instant::now();
        let mut sleep = timer.sleep(Duration::from_millis(50));
        timer.reset(&mut sleep, std::time::Instant::now() + Duration::from_millis(150));
        sleep.as_mut().await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150), "fired early: {waited:?}");
        assert!(waited < Duration::from_secs(2), "fired far too late: {waited:?}");
        // A dropped sleep leaves the sweeper's list.
        drop(sleep);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(timer.sweeper.deadlines.lock().unwrap().is_empty());
    }
}
