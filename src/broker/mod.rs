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

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::UserDocument;

/// A record on its way to the topic.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// Unique per accepted record (never the user id alone: a topic with duplicate detection
    /// would silently drop a second update of the same user).
    pub message_id: String,
    pub correlation_id: Option<String>,
    /// The user document as compact JSON.
    pub body: String,
    /// The document the body holds, as the API checked it, when this process made the
    /// message. Never sent anywhere: the embedded subscription hands it to the in-process
    /// consumer with its message, which need not parse and check the body again.
    pub checked: Option<Arc<UserDocument>>,
}

/// A request made under an `Idempotency-Key`: the key, and a digest of the request that
/// tells a retry of it (same digest) from another request reusing the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub key: String,
    pub request_hash: String,
}

/// How long an `Idempotency-Key` is remembered, in both backends.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What became of a publish.
#[derive(Debug)]
pub enum Publication {
    /// The leading `durable` messages are durable; `error` is what stopped the rest (None: all
    /// are).
    Sent { durable: usize, error: Option<PublishError> },
    /// The key was used before for this very request, whose messages are durable: nothing
    /// was sent again.
    Replayed,
    /// The key was used before for another request: nothing was sent.
    KeyReused,
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
    /// The document as this process checked it before publishing, when the message was
    /// handed over in memory (see [`OutgoingMessage::checked`]).
    pub checked: Option<Arc<UserDocument>>,
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
    /// Publishes the messages of one request in order, in as few requests as the topic
    /// allows. Under an Idempotency-Key the key is claimed for this request first, atomically:
    /// of two concurrent requests with one key, exactly one publishes, and the other is a
    /// replay (same digest) or refused (another digest).
    async fn publish_request(&self, messages: Vec<OutgoingMessage>, key: Option<&RequestKey>) -> Publication;
    async fn health(&self) -> BackendHealth;
}

/// Where Service Bus's publisher records Idempotency-Keys (Service Bus only drops repeated
/// message ids; it cannot tell a retry from another request reusing a key, nor answer which
/// it was). In Azure: a Cosmos container ([`crate::store::CosmosKeyLedger`]).
#[async_trait]
pub trait KeyLedger: Send + Sync {
    /// Claims the key for this request, atomically (a create that fails when the key exists).
    async fn claim(&self, key: &RequestKey) -> Result<Claim, PublishError>;
    /// Records that the request's messages are all durable, so a retry publishes nothing.
    async fn mark_published(&self, key: &RequestKey) -> Result<(), PublishError>;
}

/// The state of a key when a request claims it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Free (or expired): this request holds it now.
    New,
    /// Held by this very request, not (yet) all published: an earlier try failed part way,
    /// or one is in flight. Publishing again is safe: the message ids are the same, so
    /// Service Bus drops what did land.
    Pending,
    /// Held by this very request, all published.
    Published,
    /// Held by another request.
    Conflict,
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
