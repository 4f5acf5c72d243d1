//! WAL checkpoints off the commit path, for the embedded queue and store.
//!
//! By default SQLite checkpoints inside whichever commit pushes the WAL past 1000 pages: that
//! commit copies the WAL back into the database file and syncs it, and every caller waiting
//! on it (a POST's 202, the worker's batch) waits too — the tail of the latency. Here the
//! writers turn automatic checkpoints off and one thread per file runs a PASSIVE checkpoint
//! every [`EVERY`]: it copies what no reader still needs, never blocks a writer or a reader,
//! and the WAL is rewound from its start once all of it is copied.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::Connection;

/// How often each file is checkpointed.
const EVERY: Duration = Duration::from_millis(250);

/// Keeps the checkpoint thread of a file running; it stops within [`EVERY`] once dropped.
pub struct Checkpointer {
    _alive: Arc<()>,
}

/// Turns automatic checkpoints off on `writer` and starts checkpointing `path` on a thread
/// of its own.
pub fn start(writer: &Connection, path: &Path, name: &str) -> anyhow::Result<Checkpointer> {
    writer.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Under a steady load the WAL is only rewound when a checkpoint catches up; when it is,
    // a file grown by a burst is cut back to this rather than kept at its high-water mark.
    writer.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    let alive = Arc::new(());
    let token = Arc::downgrade(&alive);
    let path: PathBuf = path.to_owned();
    std::thread::Builder::new().name(format!("{name}-checkpoint")).spawn(move || run(conn, token, path))?;
    Ok(Checkpointer { _alive: alive })
}

fn run(conn: Connection, alive: Weak<()>, path: PathBuf) {
    while alive.strong_count() > 0 {
        std::thread::sleep(EVERY);
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        if let Err(e) = result {
            tracing::warn!(file = %path.display(), error = %e, "WAL checkpoint failed; retrying");
        }
    }
    // The last one, so a clean stop leaves little WAL for the next start to read.
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}
