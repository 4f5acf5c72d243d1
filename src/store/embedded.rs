//! `SqliteUserStore`: the embedded document store, a table of JSON documents keyed by id in
//! its own SQLite file (WAL), so that a lock on the store never stops the topic accepting.
//! The operator's `get` and `export` open the same file read-only while the service runs:
//! WAL readers never block the writer, nor it them.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{ExportPages, StoreError, StoredUser, UpsertOutcome, UserStore, WriteVersion};
use crate::broker::BackendHealth;
use crate::domain::{UserDocument, UserId};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id              TEXT PRIMARY KEY,
    doc             TEXT NOT NULL,
    etag            TEXT NOT NULL,
    ingested_at_ns  INTEGER NOT NULL,
    sequence        INTEGER NOT NULL
) WITHOUT ROWID;
";

/// How long a write waits for a lock before it counts as unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Reads run inline on the runtime's threads (two on this machine's kind), so few readers do.
const READERS: usize = 2;

pub struct SqliteUserStore {
    writer: Arc<Mutex<Connection>>,
    readers: Vec<Mutex<Connection>>,
    /// The documents this process wrote most recently, as committed: a write-through cache,
    /// filled only by writes (a read never fills it, so it can never hold a stale version:
    /// every write to the file goes through this store), bounded by [`CACHE_BYTES`].
    recent: Arc<quick_cache::sync::Cache<String, StoredUser, DocumentWeight>>,
}

/// The most memory the write-through cache may hold.
const CACHE_BYTES: u64 = 14 * 1024 * 1024;

#[derive(Clone)]
struct DocumentWeight;

impl quick_cache::Weighter<String, StoredUser> for DocumentWeight {
    fn weight(&self, id: &String, doc: &StoredUser) -> u64 {
        (id.len() + doc.json.len() + doc.etag.len() + 96) as u64
    }
}

impl SqliteUserStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let writer = open_connection(path)?;
        writer.execute_batch(SCHEMA)?;
        crate::wal::on_commit(&writer)?;
        let readers =
            (0..READERS).map(|_| open_connection(path).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
        let recent =
            Arc::new(quick_cache::sync::Cache::with_weighter(32 * 1024, CACHE_BYTES, DocumentWeight));
        Ok(Self { writer: Arc::new(Mutex::new(writer)), readers, recent })
    }

    /// Opens an existing store for reading only, as the operator's commands do while the
    /// service may be running: it never creates the file or the table, never changes the
    /// journal mode, and every write through it fails.
    pub fn open_read_only(path: &Path) -> anyhow::Result<Self> {
        if !path.is_file() {
            anyhow::bail!("no such file (is DATA_DIR or --data-dir right?)");
        }
        let open = || -> anyhow::Result<Connection> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            Ok(conn)
        };
        let writer = open()?;
        // Proves at once that the file is a store, not whatever else lives at that path.
        writer
            .prepare("SELECT id, doc, etag FROM users LIMIT 0")
            .map_err(|e| anyhow::anyhow!("not a user store: {e}"))?;
        let readers = (0..READERS).map(|_| open().map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
        // Filled only by writes, which a read-only store never makes: kept tiny.
        let recent = Arc::new(quick_cache::sync::Cache::with_weighter(16, 1024, DocumentWeight));
        Ok(Self { writer: Arc::new(Mutex::new(writer)), readers, recent })
    }

    /// One page of the export: the documents with ids after `after`, in id order.
    async fn export_page(&self, after: String, limit: u32) -> Result<Vec<(String, String)>, StoreError> {
        self.read(move |conn| {
            // Keyset pagination: each page is one range scan of the primary key, however deep
            // the export is. Every id is at least one character, so `""` starts before all.
            let mut page =
                conn.prepare_cached("SELECT id, doc FROM users WHERE id > ?1 ORDER BY id LIMIT ?2")?;
            let rows = page.query_map(params![after, limit], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    /// How many users are stored: a scan of the table, so on a multi-threaded runtime it
    /// tells the runtime it blocks (other tasks move off this thread meanwhile).
    pub async fn count(&self) -> Result<u64, StoreError> {
        let count = || {
            self.read_now(|conn| {
                conn.prepare_cached("SELECT COUNT(*) FROM users")?.query_row([], |r| r.get::<_, i64>(0))
            })
        };
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let n = if multi_threaded { tokio::task::block_in_place(count) } else { count() }?;
        Ok(n as u64)
    }

    /// Runs a read on a pooled connection, inline: a point read by primary key takes
    /// microseconds and WAL readers never wait for the writer, so handing it to the blocking
    /// pool would cost more than it saves.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T>,
    {
        self.read_now(f)
    }

    /// [`read`](Self::read), as the blocking call it is.
    fn read_now<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T>,
    {
        // Take the first free reader; if all are busy, wait for one picked by thread.
        let readers = &self.readers;
        let conn = readers.iter().find_map(|r| r.try_lock().ok()).unwrap_or_else(|| {
            let i = thread_index() % readers.len();
            readers[i].lock().unwrap_or_else(|p| p.into_inner())
        });
        f(&conn).map_err(unavailable)
    }
}

#[async_trait]
impl UserStore for SqliteUserStore {
    async fn upsert(&self, doc: &UserDocument, version: &WriteVersion) -> Result<UpsertOutcome, StoreError> {
        let mut outcomes = self.upsert_batch(vec![(doc.clone(), version.clone())]).await?;
        Ok(outcomes.pop().expect("one outcome per write"))
    }

    async fn upsert_batch(
        &self,
        writes: Vec<(UserDocument, WriteVersion)>,
    ) -> Result<Vec<UpsertOutcome>, StoreError> {
        let writer = self.writer.clone();
        let recent = self.recent.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            let rows: Vec<(String, String)> =
                writes.iter().map(|(doc, version)| (doc.to_json(), version.message_id.clone())).collect();
            let tx = conn.transaction()?;
            let mut outcomes = Vec::with_capacity(writes.len());
            {
                // Conditional: a redelivered OLD message must never overwrite a newer version.
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO users (id, doc, etag, ingested_at_ns, sequence) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, etag = excluded.etag,
                         ingested_at_ns = excluded.ingested_at_ns, sequence = excluded.sequence
                     WHERE excluded.ingested_at_ns > users.ingested_at_ns
                        OR (excluded.ingested_at_ns = users.ingested_at_ns AND excluded.sequence >= users.sequence)",
                )?;
                for ((doc, version), (json, etag)) in writes.iter().zip(&rows) {
                    let changed = upsert.execute(params![
                        doc.id.as_str(),
                        json,
                        etag,
                        doc.ingested_at.unix_timestamp_nanos() as i64,
                        version.sequence
                    ])?;
                    outcomes.push(if changed == 1 { UpsertOutcome::Written } else { UpsertOutcome::Stale });
                }
            }
            tx.commit()?;
            // Still under the writer's lock, so the cache sees the commits in their order.
            for (((doc, _), (json, etag)), outcome) in writes.iter().zip(rows).zip(&outcomes) {
                if *outcome == UpsertOutcome::Written {
                    recent.insert(doc.id.as_str().to_owned(), StoredUser { json: json.into(), etag });
                }
            }
            Ok(outcomes)
        })
        .await
        .map_err(|e| StoreError::Unavailable { reason: e.to_string(), retry_after: RETRY_AFTER })?
        .map_err(unavailable)
    }

    async fn get(&self, id: &UserId) -> Result<Option<StoredUser>, StoreError> {
        if let Some(doc) = self.recent.get(id.as_str()) {
            return Ok(Some(doc));
        }
        let id = id.as_str().to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT doc, etag FROM users WHERE id = ?1")?
                .query_row([id], |row| {
                    Ok(StoredUser { json: row.get::<_, String>(0)?.into(), etag: row.get(1)? })
                })
                .optional()
        })
        .await
    }

    fn export(&self, page_size: NonZeroU32) -> ExportPages<'_> {
        // The cursor is the last id of the page before; `None` once a short page ended it.
        let pages = futures::stream::try_unfold(Some(String::new()), move |cursor| async move {
            let Some(after) = cursor else { return Ok(None) };
            let rows = self.export_page(after, page_size.get()).await?;
            if rows.is_empty() {
                return Ok(None);
            }
            let full = rows.len() == page_size.get() as usize;
            let next = full.then(|| rows.last().map(|(id, _)| id.clone())).flatten();
            Ok(Some((rows.into_iter().map(|(_, doc)| doc).collect(), next)))
        });
        pages.boxed()
    }

    async fn export_total(&self) -> Result<Option<u64>, StoreError> {
        self.count().await.map(Some)
    }

    async fn health(&self) -> BackendHealth {
        let mut details = serde_json::Map::new();
        details.insert("kind".into(), "sqlite".into());
        match self.count().await {
            Ok(n) => {
                details.insert("documents".into(), n.into());
                BackendHealth { up: true, details }
            }
            Err(e) => {
                details.insert("error".into(), e.to_string().into());
                BackendHealth { up: false, details }
            }
        }
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable { reason: e.to_string(), retry_after: RETRY_AFTER }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // The queue holds every message until its document is committed here, so the store
    // could sync less often; it stays FULL so a GET never sees a document a crash takes back.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn thread_index() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() as usize
}
