//! The operator's access to parked messages (the `deadletters` command): list them, read one,
//! replay one as a new message, delete one.
//!
//! [`DeadLetterAdmin`] is implemented by [`SqliteDeadLetters`] here (the `dead_letters` table of
//! the embedded `queue.db`) and by `store::CosmosDeadLetterAdmin` (the Cosmos DB `deadletters`
//! container, replayed through Service Bus).
//!
//! A replay never loses a message: embedded, the new message is inserted into `messages` and the
//! dead letter deleted in ONE transaction (neither lost nor doubled); in Azure the message is
//! published first and the dead letter deleted after, so a crash in between leaves a duplicate
//! at worst, which the idempotent consumer absorbs.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use time::OffsetDateTime;

/// A parked message as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    /// The dead letter's own id: the row id (embedded) or the document id (Cosmos DB).
    pub id: String,
    /// The id of the message that was parked.
    pub message_id: String,
    /// When it was parked.
    pub parked_at: Option<OffsetDateTime>,
    /// When the message was first enqueued.
    pub enqueued_at: Option<OffsetDateTime>,
    pub delivery_count: u32,
    /// Which path parked it: `worker` or `ingest-consume`.
    pub source: String,
    pub reason: String,
    /// The message body. `None` in a listing: listing never reads a body (it holds personal
    /// data), only [`DeadLetterAdmin::get`] does.
    pub body: Option<Vec<u8>>,
}

/// The new message a replay publishes.
#[derive(Debug, Clone)]
pub struct Replay {
    /// A NEW message id: the parked message's id would be dropped by duplicate detection.
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub body: Vec<u8>,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// Published, and the dead letter is gone.
    Done,
    /// No such dead letter: nothing was published.
    NotFound,
    /// Published, but the dead letter had gone meanwhile (replayed or purged by someone
    /// else at the same time): the message may now be in the topic twice.
    DoneButAlreadyGone,
}

/// Listing, reading, replaying and deleting parked messages.
#[async_trait]
pub trait DeadLetterAdmin: Send + Sync {
    /// How many messages are parked, and the first `limit` of them (all when `None`) in the
    /// order they were parked, oldest first, WITHOUT their bodies.
    async fn list(&self, limit: Option<usize>) -> anyhow::Result<(u64, Vec<ParkedMessage>)>;
    /// One parked message with its body, or `None`.
    async fn get(&self, id: &str) -> anyhow::Result<Option<ParkedMessage>>;
    /// Publishes `replay` to the topic as a new message and removes the dead letter `id`.
    async fn replay(&self, id: &str, replay: Replay) -> anyhow::Result<Replayed>;
    /// Deletes the dead letter `id`; `false` when there was none.
    async fn delete(&self, id: &str) -> anyhow::Result<bool>;
}

/// The `dead_letters` table of an embedded `queue.db`, through a connection of its own, so
/// that it works beside a running service (SQLite serialises the writers; WAL lets the
/// service's readers carry on).
pub struct SqliteDeadLetters {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteDeadLetters {
    /// Opens an existing queue file; never creates one.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // A replay is acknowledged to the operator: on disk before the command says so.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let tables: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('messages', 'dead_letters')",
            [],
            |row| row.get(0),
        )?;
        anyhow::ensure!(
            tables == 2,
            "it is not the service's queue (no `messages` and `dead_letters` tables)"
        );
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn with<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .context("the queue task failed")?
        .context("cannot use the queue")
    }
}

/// The row id of an embedded dead letter; an id that is not one names no dead letter.
fn row_id(id: &str) -> Option<i64> {
    id.trim().parse().ok().filter(|n| *n > 0)
}

const COLUMNS: &str = "id, message_id, dead_lettered_at_ns, enqueued_at_ns, delivery_count, source, reason";

fn parked(row: &rusqlite::Row<'_>, with_body: bool) -> rusqlite::Result<ParkedMessage> {
    Ok(ParkedMessage {
        id: row.get::<_, i64>(0)?.to_string(),
        message_id: row.get(1)?,
        parked_at: Some(from_ns(row.get(2)?)),
        enqueued_at: Some(from_ns(row.get(3)?)),
        delivery_count: row.get(4)?,
        source: row.get(5)?,
        reason: row.get(6)?,
        body: if with_body { Some(row.get(7)?) } else { None },
    })
}

#[async_trait]
impl DeadLetterAdmin for SqliteDeadLetters {
    async fn list(&self, limit: Option<usize>) -> anyhow::Result<(u64, Vec<ParkedMessage>)> {
        let limit = limit.map_or(-1, |n| n.min(i64::MAX as usize) as i64);
        self.with(move |conn| {
            // One read transaction: the count and the rows agree.
            let tx = conn.transaction()?;
            let total: i64 = tx.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?;
            let letters = tx
                .prepare(&format!("SELECT {COLUMNS} FROM dead_letters ORDER BY id LIMIT ?1"))?
                .query_map([limit], |row| parked(row, false))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((total as u64, letters))
        })
        .await
    }

    async fn get(&self, id: &str) -> anyhow::Result<Option<ParkedMessage>> {
        let Some(id) = row_id(id) else { return Ok(None) };
        self.with(move |conn| {
            conn.query_row(&format!("SELECT {COLUMNS}, body FROM dead_letters WHERE id = ?1"), [id], |row| {
                parked(row, true)
            })
            .optional()
        })
        .await
    }

    async fn replay(&self, id: &str, replay: Replay) -> anyhow::Result<Replayed> {
        let Some(id) = row_id(id) else { return Ok(Replayed::NotFound) };
        self.with(move |conn| {
            // IMMEDIATE: take the write lock first, so a concurrent replay of the same dead
            // letter waits for this one and then finds it gone.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])? == 0 {
                return Ok(Replayed::NotFound);
            }
            tx.execute(
                "INSERT INTO messages (message_id, correlation_id, body, enqueued_at_ns) VALUES (?1, ?2, ?3, ?4)",
                params![replay.message_id, replay.correlation_id, replay.body, now_ns()],
            )?;
            tx.commit()?;
            Ok(Replayed::Done)
        })
        .await
    }

    async fn delete(&self, id: &str) -> anyhow::Result<bool> {
        let Some(id) = row_id(id) else { return Ok(false) };
        self.with(move |conn| Ok(conn.execute("DELETE FROM dead_letters WHERE id = ?1", [id])? == 1)).await
    }
}

fn now_ns() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

fn from_ns(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ns as i128).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{DeadLetter, DeadLetterStore, SqliteQueue};

    fn letter(message_id: &str, body: &str) -> DeadLetter {
        DeadLetter {
            message_id: message_id.into(),
            body: body.as_bytes().to_vec(),
            enqueued_at: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1),
            delivery_count: 2,
            reason: format!("reason of {message_id}"),
            source: "worker",
        }
    }

    #[tokio::test]
    async fn a_replay_moves_the_body_into_the_queue_and_removes_the_letter_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let queue = SqliteQueue::open(&path).unwrap();
        queue.park(letter("m-1", "{\"a\":1}")).await.unwrap();
        queue.park(letter("m-2", "secret body")).await.unwrap();
        let admin = SqliteDeadLetters::open(&path).unwrap();

        let (total, listed) = admin.list(Some(1)).await.unwrap();
        assert_eq!(total, 2);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].message_id, "m-1");
        assert_eq!(listed[0].delivery_count, 2);
        assert_eq!(listed[0].body, None, "a listing never reads bodies");
        let first = listed[0].id.clone();
        let full = admin.get(&first).await.unwrap().unwrap();
        assert_eq!(full.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(full.enqueued_at, Some(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1)));

        let replay = Replay { message_id: "new-1".into(), correlation_id: None, body: b"{\"b\":2}".to_vec() };
        assert_eq!(admin.replay(&first, replay.clone()).await.unwrap(), Replayed::Done);
        assert_eq!(admin.replay(&first, replay).await.unwrap(), Replayed::NotFound, "never twice");
        let queued = queue.receive(10).await.unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!((queued[0].message_id.as_str(), queued[0].body.as_slice()), ("new-1", &b"{\"b\":2}"[..]));
        assert_eq!(admin.list(None).await.unwrap().0, 1);

        assert!(admin.get("not-a-number").await.unwrap().is_none());
        let (_, rest) = admin.list(None).await.unwrap();
        assert!(admin.delete(&rest[0].id).await.unwrap());
        assert!(!admin.delete(&rest[0].id).await.unwrap());
        assert_eq!(admin.list(None).await.unwrap().0, 0);
    }

    #[test]
    fn a_missing_queue_file_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SqliteDeadLetters::open(&dir.path().join("queue.db")).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
