//! WAL checkpoints of the embedded queue and store: when the WAL is copied back into the
//! database file, and so how large it grows.
//!
//! A checkpoint copies the newest version of each page in the WAL into the database file and
//! syncs it; once all of it is copied, the next commit rewinds the WAL to its start. Both
//! files checkpoint as SQLite does by default, in whichever commit pushes the WAL past
//! [`AUTO_PAGES`]: that commit pays for it (about a millisecond for the queue, whose database
//! is a few hot pages, since it is drained as it fills), and the WAL stays a few MB.
//!
//! Measured against the alternative, a thread per file running a PASSIVE checkpoint every
//! 250 ms beside the writer (docs/performance.md): behind a writer committing ~1,000 times a
//! second, each checkpoint finished behind the latest commit, so the WAL was never rewound
//! and grew by ~45 MB/s of fresh file (359 MB after an 8 s benchmark, for a queue of a few
//! hundred KB); every commit's sync then had new blocks of a growing file to flush, and the
//! accept→readable p99 was 24–26 ms, against 5–6 ms with checkpoints on the commits.

use rusqlite::Connection;

/// The WAL size, in pages, past which a commit checkpoints (SQLite's default).
const AUTO_PAGES: i64 = 1000;
/// When the WAL is rewound, a file grown by a burst (a checkpoint held back by a long read,
/// such as an export) is cut back to this.
const WAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

/// Checkpoints on `writer`'s own commits, past [`AUTO_PAGES`].
pub fn on_commit(writer: &Connection) -> rusqlite::Result<()> {
    writer.pragma_update(None, "wal_autocheckpoint", AUTO_PAGES)?;
    writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
}
