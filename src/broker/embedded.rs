//! `SqliteQueue`: the embedded topic and subscription, one SQLite file in WAL mode.
//!
//! Durability: every commit is fsync'd (`synchronous = FULL`). All writes go through ONE
//! writer thread that takes whatever commands are waiting and commits them together (group
//! commit), then answers each caller: many accepted records share one fsync, and none is
//! answered before its commit. Reads use their own connection, which WAL lets run beside the
//! writer.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{
    BackendHealth, DeadLetter, DeadLetterStore, OutgoingMessage, Publication, PublishError, Publisher,
    QueuedMessage, RequestKey, IDEMPOTENCY_WINDOW,
};

/// Commands waiting beyond this are refused with 503 rather than queued in memory.
const MAX_PENDING_COMMANDS: usize = 8192;
/// The most commands one commit takes.
const MAX_GROUP: usize = 1024;
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often the writer forgets Idempotency-Keys older than [`IDEMPOTENCY_WINDOW`].
const PRUNE_EVERY: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    sequence        INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT NOT NULL UNIQUE,
    correlation_id  TEXT,
    body            BLOB NOT NULL,
    enqueued_at_ns  INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    visible_at_ms   INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible_at_ms, sequence);
-- Idempotency-Keys, each with the digest of the request that claimed it. A key is claimed in
-- the transaction that inserts its request's messages: a retry (same digest) publishes
-- nothing, another request under the key (another digest) is refused.
DROP TABLE IF EXISTS idempotency_keys;
CREATE TABLE IF NOT EXISTS idempotency_requests (
    key           TEXT PRIMARY KEY,
    request_hash  TEXT NOT NULL,
    created_ns    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id          TEXT NOT NULL,
    body                BLOB NOT NULL,
    enqueued_at_ns      INTEGER NOT NULL,
    delivery_count      INTEGER NOT NULL,
    reason              TEXT NOT NULL,
    source              TEXT NOT NULL,
    dead_lettered_at_ns INTEGER NOT NULL
);
";

/// What the worker decided about a delivered message.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Stored: remove it.
    Complete { sequence: i64 },
    /// Failed for now: deliver again no earlier than `visible_at`. `counted`: whether this
    /// delivery counts towards the max delivery count (a store outage does not: the message
    /// is not at fault, and burning its deliveries would dead-letter good data).
    Retry { sequence: i64, visible_at: OffsetDateTime, error: String, counted: bool },
    /// Can never succeed: move it to the dead letters, in the same transaction.
    DeadLetter { sequence: i64, reason: String },
}

/// Counts for health and metrics.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    pub depth: u64,
    pub dead_letters: u64,
}

enum Command {
    Publish(Vec<OutgoingMessage>, Option<RequestKey>),
    Settle(Vec<Settlement>),
    Park(DeadLetter),
}

/// What a committed command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Applied,
    /// A publish under a key already claimed by this very request: nothing inserted.
    Replayed,
    /// A publish under a key claimed by another request: nothing inserted.
    KeyReused,
}

struct Job {
    command: Command,
    done: oneshot::Sender<Result<Done, String>>,
}

/// The embedded topic + subscription.
pub struct SqliteQueue {
    jobs: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    published: Arc<Notify>,
}

impl SqliteQueue {
    /// Opens (or creates) the queue file and starts its writer thread.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let writer = open_connection(path)?;
        writer.execute_batch(SCHEMA)?;
        prune_keys(&writer)?;
        crate::wal::on_commit(&writer)?;
        let reader = open_connection(path)?;
        let (jobs, receiver) = mpsc::channel(MAX_PENDING_COMMANDS);
        let published = Arc::new(Notify::new());
        let notify = published.clone();
        std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || write_loop(writer, receiver, notify))?;
        Ok(Self { jobs, reader: Arc::new(Mutex::new(reader)), published })
    }

    /// Resolves when a publish has committed since the last call (or already had).
    pub async fn published(&self) {
        self.published.notified().await
    }

    /// Up to `limit` messages whose visibility time has come, oldest first.
    pub async fn receive(&self, limit: usize) -> Result<Vec<QueuedMessage>, PublishError> {
        let now_ms = now_ms();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT sequence, message_id, body, enqueued_at_ns, attempts FROM messages
                 WHERE visible_at_ms <= ?1 ORDER BY sequence LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_ms, limit as i64], |row| {
                Ok(QueuedMessage {
                    sequence: row.get(0)?,
                    message_id: row.get(1)?,
                    body: row.get(2)?,
                    enqueued_at: from_ns(row.get::<_, i64>(3)? as i128),
                    delivery_count: row.get::<_, u32>(4)? + 1,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// When the next message that is waiting out a retry delay becomes visible.
    pub async fn next_visible_at(&self) -> Result<Option<OffsetDateTime>, PublishError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT MIN(visible_at_ms) FROM messages")?
                .query_row([], |row| row.get::<_, Option<i64>>(0))
                .map(|ms| ms.map(|ms| from_ns(ms as i128 * 1_000_000)))
        })
        .await
    }

    pub async fn stats(&self) -> Result<QueueStats, PublishError> {
        self.read(|conn| {
            let depth: i64 =
                conn.prepare_cached("SELECT COUNT(*) FROM messages")?.query_row([], |r| r.get(0))?;
            let dead: i64 =
                conn.prepare_cached("SELECT COUNT(*) FROM dead_letters")?.query_row([], |r| r.get(0))?;
            Ok(QueueStats { depth: depth as u64, dead_letters: dead as u64 })
        })
        .await
    }

    /// Applies the worker's decisions in one transaction.
    pub async fn settle(&self, settlements: Vec<Settlement>) -> Result<(), PublishError> {
        if settlements.is_empty() {
            return Ok(());
        }
        self.submit(Command::Settle(settlements)).await.map(drop)
    }

    async fn submit(&self, command: Command) -> Result<Done, PublishError> {
        let (done, answer) = oneshot::channel();
        self.jobs.try_send(Job { command, done }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PublishError::Overloaded { retry_after: RETRY_AFTER },
            mpsc::error::TrySendError::Closed(_) => unavailable("the queue is shutting down".into()),
        })?;
        match answer.await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(reason)) => Err(unavailable(reason)),
            Err(_) => Err(unavailable("the queue writer stopped".into())),
        }
    }

    async fn read<T, F>(&self, f: F) -> Result<T, PublishError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn).map_err(|e| unavailable(e.to_string()))
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?
    }
}

#[async_trait]
impl Publisher for SqliteQueue {
    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        self.submit(Command::Publish(messages, None)).await.map(drop)
    }

    /// All or nothing: one transaction claims the key and inserts the messages.
    async fn publish_request(&self, messages: Vec<OutgoingMessage>, key: Option<&RequestKey>) -> Publication {
        let count = messages.len();
        match self.submit(Command::Publish(messages, key.cloned())).await {
            Ok(Done::Applied) => Publication::Sent { durable: count, error: None },
            Ok(Done::Replayed) => Publication::Replayed,
            Ok(Done::KeyReused) => Publication::KeyReused,
            Err(e) => Publication::Sent { durable: 0, error: Some(e) },
        }
    }

    async fn health(&self) -> BackendHealth {
        let mut details = serde_json::Map::new();
        details.insert("kind".into(), "sqlite".into());
        match self.stats().await {
            Ok(stats) => {
                details.insert("depth".into(), stats.depth.into());
                details.insert("deadLetters".into(), stats.dead_letters.into());
                BackendHealth { up: !self.jobs.is_closed(), details }
            }
            Err(e) => {
                details.insert("error".into(), e.to_string().into());
                BackendHealth { up: false, details }
            }
        }
    }
}

#[async_trait]
impl DeadLetterStore for SqliteQueue {
    async fn park(&self, letter: DeadLetter) -> Result<(), PublishError> {
        self.submit(Command::Park(letter)).await.map(drop)
    }
}

fn unavailable(reason: String) -> PublishError {
    PublishError::Unavailable { reason, retry_after: RETRY_AFTER }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // WAL: readers never wait for the writer. FULL: a commit is on disk before it returns,
    // which is what lets the API answer 202.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn write_loop(mut conn: Connection, mut jobs: mpsc::Receiver<Job>, published: Arc<Notify>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut synced = true;
    let mut pruned = std::time::Instant::now();
    // Ends when every sender is gone: all accepted work has been committed and answered.
    while let Some(first) = jobs.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // A publish (or a parked letter) is acknowledged to a client: it must be on disk before
        // the answer, so its commit is fsync'd. A group of settlements alone need not be: a
        // lost ack only means a redelivery, which the idempotent consumer absorbs, and the
        // next synced commit makes it durable anyway (WAL is sequential).
        let must_sync = group.iter().any(|job| !matches!(job.command, Command::Settle(_)));
        if must_sync != synced {
            let mode = if must_sync { "FULL" } else { "NORMAL" };
            if let Err(e) = conn.pragma_update(None, "synchronous", mode) {
                tracing::error!(error = %e, "cannot set the queue's synchronous mode");
            } else {
                synced = must_sync;
            }
        }
        let result = if must_sync && !synced {
            Err("the queue cannot sync its commits".to_owned())
        } else {
            commit_group(&mut conn, &group).map_err(|e| e.to_string())
        };
        // The worker is woken when a message was inserted (not for a replayed key).
        let any_publish = match &result {
            Ok(done) => group
                .iter()
                .zip(done)
                .any(|(job, done)| matches!(job.command, Command::Publish(..)) && *done == Done::Applied),
            Err(e) => {
                tracing::error!(error = %e, commands = group.len(), "queue commit failed");
                false
            }
        };
        match result {
            Ok(done) => {
                for (job, done) in group.drain(..).zip(done) {
                    let _ = job.done.send(Ok(done));
                }
            }
            Err(e) => {
                for job in group.drain(..) {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
        }
        if any_publish {
            published.notify_one();
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = std::time::Instant::now();
            if let Err(e) = prune_keys(&conn) {
                tracing::warn!(error = %e, "cannot forget expired idempotency keys");
            }
        }
    }
}

/// Forgets Idempotency-Keys older than [`IDEMPOTENCY_WINDOW`] (Service Bus keeps message ids
/// for its duplicate-detection window; the Cosmos ledger for the same day).
fn prune_keys(conn: &Connection) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM idempotency_requests WHERE created_ns < ?1")?
        .execute([now_ns() as i64 - IDEMPOTENCY_WINDOW.as_nanos() as i64])
}

/// Claims `key` for its request inside `tx`: `Applied` when it was free (or expired).
fn claim_key(tx: &rusqlite::Transaction<'_>, key: &RequestKey, now: i128) -> rusqlite::Result<Done> {
    let expired = now as i64 - IDEMPOTENCY_WINDOW.as_nanos() as i64;
    let claimed = tx
        .prepare_cached(
            "INSERT INTO idempotency_requests (key, request_hash, created_ns) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET request_hash = excluded.request_hash, created_ns = excluded.created_ns
             WHERE idempotency_requests.created_ns < ?4",
        )?
        .execute(params![key.key, key.request_hash, now as i64, expired])?;
    if claimed == 1 {
        return Ok(Done::Applied);
    }
    let recorded: String = tx
        .prepare_cached("SELECT request_hash FROM idempotency_requests WHERE key = ?1")?
        .query_row([&key.key], |row| row.get(0))?;
    Ok(if recorded == key.request_hash { Done::Replayed } else { Done::KeyReused })
}

/// Commits the group in one transaction; returns what each command did, in order.
fn commit_group(conn: &mut Connection, group: &[Job]) -> rusqlite::Result<Vec<Done>> {
    let tx = conn.transaction()?;
    let now = now_ns();
    let mut outcomes = Vec::with_capacity(group.len());
    for job in group {
        let mut done = Done::Applied;
        match &job.command {
            Command::Publish(messages, key) => {
                if let Some(key) = key {
                    done = claim_key(&tx, key, now)?;
                    if done != Done::Applied {
                        outcomes.push(done);
                        continue;
                    }
                }
                // A reused message id is dropped, as Service Bus duplicate detection does.
                let mut insert = tx.prepare_cached(
                    "INSERT INTO messages (message_id, correlation_id, body, enqueued_at_ns)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (message_id) DO NOTHING",
                )?;
                for m in messages {
                    insert.execute(params![m.message_id, m.correlation_id, m.body.as_bytes(), now as i64])?;
                }
            }
            Command::Settle(settlements) => {
                for s in settlements {
                    settle_one(&tx, s, now)?;
                }
            }
            Command::Park(letter) => {
                tx.prepare_cached(
                    "INSERT INTO dead_letters (message_id, body, enqueued_at_ns, delivery_count, reason, source, dead_lettered_at_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    letter.message_id,
                    letter.body,
                    to_ns(letter.enqueued_at),
                    letter.delivery_count,
                    letter.reason,
                    letter.source,
                    now as i64
                ])?;
            }
        }
        outcomes.push(done);
    }
    tx.commit()?;
    Ok(outcomes)
}

fn settle_one(tx: &rusqlite::Transaction<'_>, settlement: &Settlement, now: i128) -> rusqlite::Result<()> {
    match settlement {
        Settlement::Complete { sequence } => {
            tx.prepare_cached("DELETE FROM messages WHERE sequence = ?1")?.execute([sequence])?;
        }
        Settlement::Retry { sequence, visible_at, error, counted } => {
            tx.prepare_cached(
                "UPDATE messages SET attempts = attempts + ?4, visible_at_ms = ?2, last_error = ?3 WHERE sequence = ?1",
            )?
            .execute(params![sequence, (to_ns(*visible_at) / 1_000_000), error, i64::from(*counted)])?;
        }
        Settlement::DeadLetter { sequence, reason } => {
            let moved = tx
                .prepare_cached(
                    "INSERT INTO dead_letters (message_id, body, enqueued_at_ns, delivery_count, reason, source, dead_lettered_at_ns)
                     SELECT message_id, body, enqueued_at_ns, attempts + 1, ?2, 'worker', ?3 FROM messages WHERE sequence = ?1",
                )?
                .execute(params![sequence, reason, now as i64])?;
            if moved == 1 {
                tx.prepare_cached("DELETE FROM messages WHERE sequence = ?1")?.execute([sequence])?;
            }
        }
    }
    Ok(())
}

fn now_ns() -> i128 {
    OffsetDateTime::now_utc().unix_timestamp_nanos()
}

fn now_ms() -> i64 {
    (now_ns() / 1_000_000) as i64
}

fn to_ns(t: OffsetDateTime) -> i64 {
    t.unix_timestamp_nanos() as i64
}

fn from_ns(ns: i128) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
