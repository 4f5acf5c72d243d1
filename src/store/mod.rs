//! The document store behind the topic: upsert on consume, point read on GET.

mod cosmos;
mod embedded;

pub use cosmos::{CosmosDeadLetters, CosmosStores, CosmosUserStore};
pub use embedded::SqliteUserStore;

use std::time::Duration;

use async_trait::async_trait;

use crate::broker::BackendHealth;
use crate::domain::{UserDocument, UserId};

/// A document as the store returns it: the JSON the API serves, untouched, and its version.
#[derive(Debug, Clone)]
pub struct StoredUser {
    pub json: String,
    pub etag: String,
}

/// Where a write comes from, so that an old message never overwrites a newer version.
#[derive(Debug, Clone)]
pub struct WriteVersion {
    /// Unique per accepted record; also the document's ETag.
    pub message_id: String,
    /// The topic's order of the message, to break ties between equal ingestion times.
    pub sequence: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    Written,
    /// The store already holds a newer version of the user; nothing was changed.
    Stale,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Down, locked, throttled or timed out: worth trying again later.
    #[error("the store is unavailable: {reason}")]
    Unavailable { reason: String, retry_after: Duration },
}

impl StoreError {
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
        }
    }
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts or replaces the user, unless the store holds a newer version already.
    /// Idempotent: the same document and version written twice leave one document.
    async fn upsert(&self, doc: &UserDocument, version: &WriteVersion) -> Result<UpsertOutcome, StoreError>;
    /// Upserts many users; all or nothing where the store can, one outcome per write in order.
    async fn upsert_batch(
        &self,
        writes: Vec<(UserDocument, WriteVersion)>,
    ) -> Result<Vec<UpsertOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(writes.len());
        for (doc, version) in &writes {
            outcomes.push(self.upsert(doc, version).await?);
        }
        Ok(outcomes)
    }
    /// A point read by id.
    async fn get(&self, id: &UserId) -> Result<Option<StoredUser>, StoreError>;
    async fn health(&self) -> BackendHealth;
}
