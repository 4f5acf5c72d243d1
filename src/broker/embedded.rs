//! `SqliteQueue`: the embedded topic and subscription, one SQLite file in WAL mode.
//!
//! Durability: every commit is fsync'd (`synchronous = FULL`). All writes go through ONE
//! writer thread that takes whatever commands are waiting and commits them together (group
//! commit), then answers each caller: many accepted records share one fsync, and none is
//! answered before its commit. Reads use their own connection, which WAL lets run beside the
//! writer.
//!
//! Delivery: a message this process published (with the document it checked) is handed to
//! the subscribed worker in memory as its commit completes, and leased in the table meanwhile,
//! as Service Bus's peek-lock leases a delivered message: the worker neither reads it back
//! nor parses it again. Everything else — messages of other producers, retries, and what was
//! leased when the process stopped — is read from the table.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// `visible_at_ms` of a message handed to the worker in memory: leased. Reads of the table
/// skip it; settling deletes it or sets the time of its next delivery; a new subscription
/// (the process restarted, or the worker did) releases every lease.
const LEASED: i64 = i64::MAX;
const _: () =
    assert!(LEASED == 9_223_372_036_854_775_807, "the SQL of the messages_waiting index spells it out");
/// The most messages waiting in memory for the worker; past it, new ones wait in the table.
const HANDOFF_CAPACITY: usize = 1024;
/// While messages are handed over in memory, the table is still read this often, so that
/// retries and other producers' messages are not starved by a steady load.
const TABLE_EVERY_MS: u64 = 100;

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
-- Messages to read from the table, by when they may be delivered. Leased ones (handed to the
-- worker in memory, visible_at_ms = i64::MAX) are left out: most messages never enter the index,
-- and a commit writes fewer pages. Queries repeat its condition word for word, as SQLite needs
-- to use a partial index.
DROP INDEX IF EXISTS messages_visible;
CREATE INDEX IF NOT EXISTS messages_waiting ON messages (visible_at_ms, sequence)
    WHERE visible_at_ms < 9223372036854775807;
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
    /// A worker starts consuming: release every lease, and hand over from now on.
    Subscribe,
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
    handoff: Arc<Handoff>,
    /// When the table was last read for deliveries, in ms since the queue opened.
    table_read_at: AtomicU64,
    opened: std::time::Instant,
}

/// Messages committed by this process, waiting in memory for the worker (leased in the table).
#[derive(Default)]
struct Handoff {
    messages: Mutex<VecDeque<QueuedMessage>>,
    subscribed: AtomicBool,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<QueuedMessage>> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner())
    }
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
        let handoff = Arc::new(Handoff::default());
        let (notify, handed) = (published.clone(), handoff.clone());
        std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || write_loop(writer, receiver, notify, handed))?;
        Ok(Self {
            jobs,
            reader: Arc::new(Mutex::new(reader)),
            published,
            handoff,
            table_read_at: AtomicU64::new(0),
            opened: std::time::Instant::now(),
        })
    }

    /// Makes the caller the subscription's consumer: every message leased to an earlier one
    /// is released (readable from the table again), and the messages this process publishes
    /// from now on are handed over in memory. Called by the worker each time it starts.
    pub async fn subscribe(&self) -> Result<(), PublishError> {
        self.submit(Command::Subscribe).await.map(drop)
    }

    /// How many messages wait in memory for the worker.
    pub fn handed_over(&self) -> usize {
        self.handoff.lock().len()
    }

    /// Resolves when a publish has committed since the last call (or already had).
    pub async fn published(&self) {
        self.published.notified().await
    }

    /// Up to `limit` messages to deliver: those handed over in memory first, then those whose
    /// visibility time has come in the table, oldest first. The table is read when nothing
    /// waits in memory, and at least every [`TABLE_EVERY_MS`] even when something does.
    pub async fn receive(&self, limit: usize) -> Result<Vec<QueuedMessage>, PublishError> {
        let now = self.opened.elapsed().as_millis() as u64;
        let table_due = now.saturating_sub(self.table_read_at.load(Ordering::Relaxed)) >= TABLE_EVERY_MS;
        let mut batch = Vec::new();
        if table_due || self.handed_over() == 0 {
            self.table_read_at.store(now, Ordering::Relaxed);
            batch = self.receive_from_table(limit).await?;
        }
        let mut handed = self.handoff.lock();
        let take = (limit - batch.len()).min(handed.len());
        batch.extend(handed.drain(..take));
        Ok(batch)
    }

    /// Up to `limit` messages of the table whose visibility time has come, oldest first.
    async fn receive_from_table(&self, limit: usize) -> Result<Vec<QueuedMessage>, PublishError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now_ms = now_ms();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT sequence, message_id, body, enqueued_at_ns, attempts FROM messages
                 WHERE visible_at_ms <= ?1 AND visible_at_ms < 9223372036854775807
                 ORDER BY sequence LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_ms, limit as i64], |row| {
                Ok(QueuedMessage {
                    sequence: row.get(0)?,
                    message_id: row.get(1)?,
                    body: row.get(2)?,
                    enqueued_at: from_ns(row.get::<_, i64>(3)? as i128),
                    delivery_count: row.get::<_, u32>(4)? + 1,
                    checked: None,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// When the next message that is waiting out a retry delay becomes visible.
    pub async fn next_visible_at(&self) -> Result<Option<OffsetDateTime>, PublishError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT MIN(visible_at_ms) FROM messages WHERE visible_at_ms < 9223372036854775807",
            )?
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

fn write_loop(
    mut conn: Connection,
    mut jobs: mpsc::Receiver<Job>,
    published: Arc<Notify>,
    handoff: Arc<Handoff>,
) {
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
        let must_sync =
            group.iter().any(|job| !matches!(job.command, Command::Settle(_) | Command::Subscribe));
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
            commit_group(&mut conn, &group, &handoff).map_err(|e| e.to_string())
        };
        // The worker is woken when a message was inserted (not for a replayed key).
        let any_publish = match &result {
            Ok(committed) => group
                .iter()
                .zip(&committed.done)
                .any(|(job, done)| matches!(job.command, Command::Publish(..)) && *done == Done::Applied),
            Err(e) => {
                tracing::error!(error = %e, commands = group.len(), "queue commit failed");
                false
            }
        };
        match result {
            Ok(committed) => {
                hand_over(&mut group, &committed, &handoff);
                for (job, done) in group.drain(..).zip(committed.done) {
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

/// What a committed group did.
struct Committed {
    /// What each command did, in order.
    done: Vec<Done>,
    /// The messages inserted leased, to hand over: (command, message, sequence).
    leased: Vec<(usize, usize, i64)>,
    /// When they were enqueued.
    now: i128,
    /// Whether the group held a subscription.
    subscribed: bool,
}

/// Moves the leased messages of a committed group to the worker's hand-over queue.
fn hand_over(group: &mut [Job], committed: &Committed, handoff: &Handoff) {
    let mut handed = handoff.lock();
    if committed.subscribed {
        // The leases of whatever waited here were released in the same commit.
        handed.clear();
        handoff.subscribed.store(true, Ordering::Release);
    }
    let enqueued_at = from_ns(committed.now);
    for &(job, index, sequence) in &committed.leased {
        if let Command::Publish(messages, _) = &mut group[job].command {
            let m = &mut messages[index];
            handed.push_back(QueuedMessage {
                sequence,
                message_id: std::mem::take(&mut m.message_id),
                body: std::mem::take(&mut m.body).into_bytes(),
                enqueued_at,
                delivery_count: 1,
                checked: m.checked.take(),
            });
        }
    }
}

/// Commits the group in one transaction.
fn commit_group(conn: &mut Connection, group: &[Job], handoff: &Handoff) -> rusqlite::Result<Committed> {
    // A subscription releases every lease (and, once committed, empties the hand-over
    // queue): what an earlier worker held in memory is read from the table again.
    let subscribed = group.iter().any(|job| matches!(job.command, Command::Subscribe));
    let mut room = if subscribed || handoff.subscribed.load(Ordering::Acquire) {
        HANDOFF_CAPACITY.saturating_sub(handoff.lock().len())
    } else {
        0
    };
    let tx = conn.transaction()?;
    if subscribed {
        tx.prepare_cached("UPDATE messages SET visible_at_ms = 0 WHERE visible_at_ms = ?1")?
            .execute([LEASED])?;
    }
    let now = now_ns();
    let mut outcomes = Vec::with_capacity(group.len());
    let mut leased = Vec::new();
    for (job_index, job) in group.iter().enumerate() {
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
                    "INSERT INTO messages (message_id, correlation_id, body, enqueued_at_ns, visible_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (message_id) DO NOTHING",
                )?;
                for (index, m) in messages.iter().enumerate() {
                    // Handed over only with the document this process checked.
                    let lease = room > 0 && m.checked.is_some();
                    let visible_at = if lease { LEASED } else { 0 };
                    let inserted = insert.execute(params![
                        m.message_id,
                        m.correlation_id,
                        m.body.as_bytes(),
                        now as i64,
                        visible_at
                    ])?;
                    if lease && inserted == 1 {
                        room -= 1;
                        leased.push((job_index, index, tx.last_insert_rowid()));
                    }
                }
            }
            Command::Settle(settlements) => {
                for s in settlements {
                    settle_one(&tx, s, now)?;
                }
            }
            Command::Subscribe => {}
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
    Ok(Committed { done: outcomes, leased, now, subscribed })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewUser, UserDocument};

    fn checked_message(id: &str) -> OutgoingMessage {
        let record = serde_json::json!({"id": id, "name": "Ada", "email": "ada@example.com"});
        let doc: UserDocument = NewUser::parse(record).unwrap().into_document(OffsetDateTime::now_utc());
        OutgoingMessage {
            message_id: uuid::Uuid::now_v7().to_string(),
            correlation_id: None,
            body: doc.to_json(),
            checked: Some(Arc::new(doc)),
        }
    }

    fn foreign_message(id: &str) -> OutgoingMessage {
        OutgoingMessage {
            message_id: format!("foreign-{id}"),
            correlation_id: None,
            body: format!(r#"{{"id":"{id}","name":"Grace","email":"grace@example.com"}}"#),
            checked: None,
        }
    }

    /// A queue in a fresh directory, with a worker subscribed: the path of its file too.
    async fn subscribed_queue(dir: &tempfile::TempDir) -> (std::path::PathBuf, SqliteQueue) {
        let path = dir.path().join("queue.db");
        let queue = SqliteQueue::open(&path).unwrap();
        queue.subscribe().await.unwrap();
        (path, queue)
    }

    fn leased(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM messages WHERE visible_at_ms = ?1", [LEASED], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn what_this_process_publishes_is_handed_over_in_memory_with_its_checked_document() {
        let dir = tempfile::tempdir().unwrap();
        let (path, queue) = subscribed_queue(&dir).await;
        queue.publish(vec![checked_message("mem-1"), checked_message("mem-2")]).await.unwrap();
        assert_eq!(queue.handed_over(), 2);
        assert_eq!(leased(&path), 2, "leased in the table while in memory");
        let batch = queue.receive(10).await.unwrap();
        let ids: Vec<&str> = batch.iter().map(|m| m.checked.as_ref().unwrap().id.as_str()).collect();
        assert_eq!(ids, ["mem-1", "mem-2"]);
        assert!(batch.iter().all(|m| m.delivery_count == 1));
        // The body is the checked document's JSON, byte for byte.
        let doc = batch[0].checked.as_ref().unwrap();
        assert_eq!(batch[0].body, doc.to_json().into_bytes());
        assert!(queue.receive(10).await.unwrap().is_empty(), "a leased message is not read from the table");
        queue
            .settle(batch.iter().map(|m| Settlement::Complete { sequence: m.sequence }).collect())
            .await
            .unwrap();
        assert_eq!(queue.stats().await.unwrap().depth, 0);
    }

    #[tokio::test]
    async fn a_new_subscription_releases_what_an_earlier_worker_held_and_reads_it_from_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let (path, queue) = subscribed_queue(&dir).await;
        queue.publish(vec![checked_message("held-1")]).await.unwrap();
        // A worker took it and died (a panic) before settling it.
        let lost = queue.receive(10).await.unwrap();
        assert_eq!(lost.len(), 1);
        assert!(queue.receive(10).await.unwrap().is_empty());
        // The restarted worker subscribes: the message is delivered again, from the table,
        // and is checked again like any message read back.
        queue.subscribe().await.unwrap();
        assert_eq!(leased(&path), 0);
        let again = queue.receive(10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].sequence, lost[0].sequence);
        assert!(again[0].checked.is_none());
        assert_eq!(again[0].body, lost[0].body);
    }

    #[tokio::test]
    async fn a_process_that_stopped_with_leased_messages_delivers_them_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        {
            let queue = SqliteQueue::open(&path).unwrap();
            queue.subscribe().await.unwrap();
            queue.publish(vec![checked_message("crash-1"), checked_message("crash-2")]).await.unwrap();
        }
        assert_eq!(leased(&path), 2);
        let queue = SqliteQueue::open(&path).unwrap();
        assert!(queue.receive(10).await.unwrap().is_empty(), "still leased until a worker subscribes");
        queue.subscribe().await.unwrap();
        assert_eq!(queue.receive(10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn messages_of_other_producers_and_those_without_a_subscriber_wait_in_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let queue = SqliteQueue::open(&path).unwrap();
        // No worker yet (INGEST_WORKER=off): nothing is leased.
        queue.publish(vec![checked_message("unsubscribed")]).await.unwrap();
        assert_eq!((queue.handed_over(), leased(&path)), (0, 0));
        queue.subscribe().await.unwrap();
        queue.publish(vec![foreign_message("other")]).await.unwrap();
        assert_eq!(queue.handed_over(), 0, "a message without a checked document is read and checked");
        let batch = queue.receive(10).await.unwrap();
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|m| m.checked.is_none()));
    }

    #[tokio::test]
    async fn the_table_is_still_read_while_messages_keep_arriving_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (_, queue) = subscribed_queue(&dir).await;
        queue.publish(vec![foreign_message("waiting")]).await.unwrap();
        let mut seen_foreign = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !seen_foreign {
            assert!(std::time::Instant::now() < deadline, "the table was never read under a steady load");
            queue.publish(vec![checked_message("steady")]).await.unwrap();
            let batch = queue.receive(1).await.unwrap();
            seen_foreign = batch.iter().any(|m| m.checked.is_none());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
