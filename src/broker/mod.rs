//! The topic between acceptance and storage.
//!
//! [`Publisher`] is what `POST /api/users` needs: a message is durable once `publish` returns
//! `Ok`, and only then may the API answer 202. The embedded [`SqliteQueue`] also plays the
//! subscription for the in-process worker; in Azure the Functions host plays it.
//! [`DeadLetterAdmin`] is the operator's access to the parked messages (the `deadletters`
//! command): [`SqliteDeadLetters`] here, `store::CosmosDeadLetterAdmin` in Azure.

mod dead_letters;
mod embedded;
mod servicebus;

pub use dead_letters::{DeadLetterAdmin, ParkedMessage, Replay, Replayed, SqliteDeadLetters};
pub use embedded::{QueueStats, Settlement, SqliteQueue};
pub use servicebus::{ServiceBusPublisher, SCHEMA_VERSION};

use std::time::Duration;

use async_trait::async_trait;

/// A record on its way to the topic.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// Unique per accepted record (never the user id alone: a topic with duplicate detection
    /// would silently drop a second update of the same user).
    pub message_id: String,
    pub correlation_id: Option<String>,
    /// The user document as compact JSON.
    pub body: String,
    /// For a request with an Idempotency-Key: a digest of the request, kept with the message
    /// id so that a repeat is dropped (and one with another body recognised).
    pub request_hash: Option<String>,
}

/// A message read back from the embedded subscription.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub sequence: i64,
    pub message_id: String,
    pub body: Vec<u8>,
    pub enqueued_at: time::OffsetDateTime,
    /// 1 on the first delivery.
    pub delivery_count: u32,
}

/// Why a message could not be made durable. Every variant is retryable by the client.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the topic is unavailable: {reason}")]
    Unavailable { reason: String, retry_after: Duration },
    #[error("the topic is overloaded: too many messages are waiting to be written")]
    Overloaded { retry_after: Duration },
}

impl PublishError {
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Unavailable { retry_after, .. } | Self::Overloaded { retry_after } => *retry_after,
        }
    }
}

/// The state of a backend, as `GET /api/health` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendHealth {
    pub up: bool,
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Sends accepted records to the topic.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Returns once every message is durable, or fails without any being acknowledged.
    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError>;
    /// Publishes in order, in as few requests as the topic allows. Returns how many of the
    /// leading messages are durable, and the error that stopped the rest (None: all are).
    /// By default all or nothing, through [`Publisher::publish`].
    async fn publish_batch(&self, messages: Vec<OutgoingMessage>) -> (usize, Option<PublishError>) {
        let count = messages.len();
        match self.publish(messages).await {
            Ok(()) => (count, None),
            Err(e) => (0, Some(e)),
        }
    }
    /// The request digest recorded with a message id published under an Idempotency-Key, if
    /// the topic keeps one (the embedded queue does; Service Bus only drops duplicates).
    async fn recorded_request(&self, _message_id: &str) -> Result<Option<String>, PublishError> {
        Ok(None)
    }
    async fn health(&self) -> BackendHealth;
}

/// A message that can never be stored, kept with its reason for an operator to repair and
/// replay.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: Vec<u8>,
    pub enqueued_at: time::OffsetDateTime,
    pub delivery_count: u32,
    pub reason: String,
    /// Which path parked it: `worker` or `ingest-consume`.
    pub source: &'static str,
}

/// Where the consume route parks messages that can never succeed.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    async fn park(&self, letter: DeadLetter) -> Result<(), PublishError>;
}
