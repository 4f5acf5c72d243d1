//! The document store behind the topic: upsert on consume, point read on GET, and a paged
//! read of every user for the operator's `export`.

mod cosmos;
mod embedded;

pub use cosmos::{CosmosDeadLetterAdmin, CosmosDeadLetters, CosmosKeyLedger, CosmosStores, CosmosUserStore};
pub use embedded::SqliteUserStore;

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::broker::BackendHealth;
use crate::domain::{UserDocument, UserId};

/// A document as the store returns it: the JSON the API serves, untouched, and its version.
/// The JSON is shared bytes: a cached document is served without a copy.
#[derive(Debug, Clone)]
pub struct StoredUser {
    pub json: bytes::Bytes,
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

/// Every stored user, one page at a time: each item is a page of documents exactly as GET
/// serves them (compact JSON, no store bookkeeping).
pub type ExportPages<'a> = BoxStream<'a, Result<Vec<String>, StoreError>>;

/// The page size of an export unless told otherwise: big enough that round trips do not
/// dominate, small enough that one page (~1 MB of typical users) is all the memory it holds.
pub const EXPORT_PAGE_SIZE: NonZeroU32 = NonZeroU32::new(1000).unwrap();

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
    /// Every stored user, at most `page_size` per page, fetched one page at a time as the
    /// stream is polled, so memory stays bounded by a page whatever the store holds. Not a
    /// point-in-time snapshot: the store keeps taking writes meanwhile. Each user appears at
    /// most once, in the version its page read; a user stored for the whole export appears.
    fn export(&self, page_size: NonZeroU32) -> ExportPages<'_>;
    /// How many users an export will yield, when the store can tell cheaply (for a progress
    /// bar); `None` when counting would cost a scan the export is about to do anyway.
    async fn export_total(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}
