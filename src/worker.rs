//! The embedded subscription's consumer: drains [`SqliteQueue`] through the same
//! [`Consumer`] that `POST /ingest-consume` uses.
//!
//! Semantics, as Service Bus gives them in Azure: at-least-once (a message leaves the queue
//! only after its document is committed), retries with exponential backoff on transient
//! failures — a store outage waited out without using up deliveries — and immediate parking of a
//! message that can never succeed.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::broker::{QueuedMessage, Settlement, SqliteQueue};
use crate::consume::{Consumer, Delivery, MessageBody, Outcome};
use crate::telemetry::metrics;

const BATCH: usize = 256;
/// Under load, batches start at most this often, so that they are larger and the store
/// syncs its file fewer times (each store commit is an fsync).
const BATCH_INTERVAL: Duration = Duration::from_millis(4);
/// How long the worker sleeps when nothing is visible and nobody publishes.
const IDLE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl WorkerConfig {
    /// The delay before delivery `n + 1` after `n` failed ones: base × 2^(n-1), capped.
    pub fn backoff(&self, failed_deliveries: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed_deliveries.saturating_sub(1).min(20));
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }
}

/// Runs the worker until `shutdown` fires, restarting it after a panic (a bug: logged and
/// counted; the batch it held was not settled, so it is delivered again, as after a crash).
/// Restarts back off from 1 s to a minute, so a message that keeps triggering the bug costs
/// a log line a minute rather than a hot loop, and the API keeps accepting meanwhile.
pub async fn supervise(
    queue: Arc<SqliteQueue>,
    consumer: Consumer,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        let task = tokio::spawn(run(queue.clone(), consumer.clone(), config.clone(), shutdown.clone()));
        match task.await {
            Err(e) if e.is_panic() && !shutdown.is_cancelled() => {
                metrics::registry().add(&metrics::PANICS, &["worker"], 1);
                tracing::error!(
                    restart_in_ms = delay.as_millis() as u64,
                    "the worker panicked; restarting it"
                );
                pause(delay, &shutdown).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
            _ => return,
        }
    }
}

/// Runs until `shutdown` fires, then returns after settling the batch in hand.
pub async fn run(
    queue: Arc<SqliteQueue>,
    consumer: Consumer,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    tracing::info!("worker started");
    let mut failures_in_a_row = 0u32;
    // Messages published from now on come in memory; what earlier workers held is released.
    while let Err(e) = queue.subscribe().await {
        failures_in_a_row += 1;
        tracing::error!(error = %e, "worker cannot subscribe to the queue");
        pause(config.backoff(failures_in_a_row), &shutdown).await;
        if shutdown.is_cancelled() {
            return;
        }
    }
    failures_in_a_row = 0;
    let mut last_batch: Option<std::time::Instant> = None;
    while !shutdown.is_cancelled() {
        if let Some(since) = last_batch.map(|at| at.elapsed()) {
            if since < BATCH_INTERVAL && queue.handed_over() < BATCH {
                pause(BATCH_INTERVAL - since, &shutdown).await;
            }
        }
        let batch = match queue.receive(BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                failures_in_a_row += 1;
                tracing::error!(error = %e, "worker cannot read the queue");
                pause(config.backoff(failures_in_a_row), &shutdown).await;
                continue;
            }
        };
        if batch.is_empty() {
            last_batch = None;
            wait_for_work(&queue, &shutdown).await;
            continue;
        }
        last_batch = Some(std::time::Instant::now());
        let deliveries: Vec<Delivery> = batch.into_iter().map(delivery).collect();
        let outcomes = consumer.process_batch(&deliveries).await;
        let mut transient = false;
        let settlements: Vec<Settlement> = deliveries
            .iter()
            .zip(outcomes)
            .map(|(d, outcome)| {
                let settlement = settle(&config, d, outcome, failures_in_a_row + 1);
                transient |= matches!(settlement, Settlement::Retry { .. });
                settlement
            })
            .collect();
        if let Err(e) = queue.settle(settlements).await {
            tracing::error!(error = %e, "worker cannot settle its batch; the messages will be delivered again");
            transient = true;
        }
        if transient {
            failures_in_a_row += 1;
            pause(config.backoff(failures_in_a_row), &shutdown).await;
        } else {
            failures_in_a_row = 0;
        }
    }
    tracing::info!("worker stopped");
}

fn delivery(message: QueuedMessage) -> Delivery {
    Delivery {
        message_id: message.message_id,
        body: MessageBody::Bytes(message.body),
        enqueued_at: message.enqueued_at,
        sequence: message.sequence,
        delivery_count: message.delivery_count,
        correlation_id: None,
        checked: message.checked,
    }
}

fn settle(
    config: &WorkerConfig,
    delivery: &Delivery,
    outcome: Outcome,
    failures_in_a_row: u32,
) -> Settlement {
    let sequence = delivery.sequence;
    match outcome {
        Outcome::Stored { id, stale } => {
            crate::telemetry::message_stored(None, &delivery.message_id, id.as_str(), stale);
            Settlement::Complete { sequence }
        }
        Outcome::Poison { reason } => {
            metrics::consumed("dead_lettered", 1);
            let why = crate::telemetry::loggable_reason(&reason);
            let message_id = crate::telemetry::loggable_id(&delivery.message_id);
            tracing::warn!(%message_id, reason = %why, "message dead-lettered");
            Settlement::DeadLetter { sequence, reason }
        }
        // The store is down, locked or throttled: not this message's fault. The worker backs
        // off (the caller pauses) and the message waits without using up its deliveries, so
        // an outage of any length ends with every message stored, none dead-lettered.
        Outcome::Transient(e) => {
            metrics::consumed("retried", 1);
            let delay = config.backoff(failures_in_a_row.max(1)).max(e.retry_after().min(config.retry_max));
            tracing::warn!(
                message_id = %crate::telemetry::loggable_id(&delivery.message_id), delivery_count = delivery.delivery_count,
                retry_in_ms = delay.as_millis() as u64, error = %e, "store unavailable; message will be retried"
            );
            Settlement::Retry {
                sequence,
                visible_at: OffsetDateTime::now_utc() + delay,
                error: e.to_string(),
                counted: false,
            }
        }
    }
}

async fn wait_for_work(queue: &SqliteQueue, shutdown: &CancellationToken) {
    let wait = match queue.next_visible_at().await {
        Ok(Some(at)) => {
            let ms =
                (at - OffsetDateTime::now_utc()).whole_milliseconds().clamp(1, IDLE_POLL.as_millis() as i128);
            Duration::from_millis(ms as u64)
        }
        _ => IDLE_POLL,
    };
    tokio::select! {
        _ = queue.published() => {}
        _ = tokio::time::sleep(wait) => {}
        _ = shutdown.cancelled() => {}
    }
}

async fn pause(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let c = WorkerConfig { retry_base: Duration::from_millis(100), retry_max: Duration::from_secs(1) };
        let delays: Vec<u64> = (1..=6).map(|n| c.backoff(n).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(1));
    }
}
