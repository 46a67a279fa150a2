//! Checkpoints off the writer thread.
//!
//! In WAL mode a commit appends pages to the log, and a checkpoint copies the newest version
//! of each logged page back into the database file, so that the log can start again from its
//! beginning. SQLite checkpoints on the committing connection by default, once the log passes
//! 1,000 pages: the writer thread, which bounds throughput, would stop for the copy and for an
//! fsync of the database file (about 6% of its time under load). Here a thread of its own, on
//! a connection of its own, runs a passive checkpoint (one that never waits for the writer or
//! readers) every [`EVERY`], and the writer's own checkpoint is left as a backstop for a log
//! that grows past [`BACKSTOP_PAGES`] all the same. Durability is the commits' business and
//! does not change: every checkpoint syncs the log before copying and the file after.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

use loom_storage::StorageError;

use crate::Durability;

/// How often the checkpoint thread looks at the log.
pub(crate) const EVERY: Duration = Duration::from_millis(200);

/// The log's length, in pages, at which the writer checkpoints by itself.
pub(crate) const BACKSTOP_PAGES: u32 = 16_000;

/// The checkpoint thread; it ends when this is dropped.
pub(crate) struct Checkpointer {
    _stop: Sender<()>,
}

/// Starts the checkpoint thread for the file at `path`.
pub(crate) fn start(
    path: PathBuf,
    durability: Durability,
    busy: Duration,
) -> Result<Checkpointer, StorageError> {
    let conn = crate::conn::open(&path, durability, busy)?;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("loom-sqlite-ckpt".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                // Busy (another process checkpointing) or failing, it is tried again later,
                // and the writer's backstop bounds the log meanwhile.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(path = %path.display(), error = %e, "checkpoint failed");
                }
            }
        })
        .map_err(|e| StorageError::unavailable("cannot start the SQLite checkpoint thread", e))?;
    Ok(Checkpointer { _stop: stop })
}
