//! Group commit on SQLite: how the shared writer thread's batches become transactions.
//!
//! The writer thread (`loom_storage::writer`) owns the write connection and hands each batch
//! of write sets here. The batch runs in one `BEGIN IMMEDIATE` transaction and commits once:
//! one fsync for many workflows' transitions.
//!
//! A write set that fails (a conflict, a lost lease) must not take the others down with it.
//! The engine's checks come before its writes, so a failed write set has almost always
//! written nothing, and the batch commits without it at no cost: SQLite's change counter
//! says so. One that failed after writing (an I/O error mid-way) makes the batch roll back
//! and run again with a savepoint around each write set, so that one is undone alone.
//! Savepoints are not used otherwise: they cost a statement journal copy of every page a job
//! touches, which was the largest avoidable cost in the writer's profile.
//!
//! Not every write needs its own fsync ([`Sync`](loom_storage::engine::Sync)). A batch of
//! nothing but relaxed write sets (claims, renewals) commits with `synchronous = NORMAL` (in
//! WAL mode: no fsync), and the next durable commit's fsync of the log carries it to the disk
//! with everything before it. A process crash loses neither: the log is in the operating
//! system's cache. A relaxed write set may find, once it ran, that its result must reach the
//! disk after all ([`Job::needs_sync`]); the batch's log is then synced here, before anyone
//! is answered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use loom_storage::Clock;
use loom_storage::engine;
use loom_storage::writer::{Commit, Job};
use rusqlite::Connection;

use crate::conn::{is_busy, map_err};
use crate::db::Db;

/// The write side of one SQLite file.
pub(crate) struct SqliteCommit {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    /// The store's setting: `synchronous = FULL`.
    pub(crate) full_sync: bool,
    /// The connection's current setting is FULL.
    pub(crate) synced: bool,
    /// Commits that waited for the disk (a FULL commit, or a sync of the log after one).
    pub(crate) disk_syncs: Arc<AtomicU64>,
}

/// How long to keep retrying to start a transaction while another process holds the lock,
/// on top of the connection's busy timeout.
const BEGIN_RETRIES: u32 = 6;

fn begin(conn: &Connection, path: &Path) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match crate::conn::run_cached(conn, "BEGIN IMMEDIATE") {
            Ok(()) => return Ok(()),
            Err(e) if is_busy(&e) && attempt < BEGIN_RETRIES => {
                attempt += 1;
                tracing::debug!(path = %path.display(), attempt, "database busy; retrying");
                std::thread::sleep(Duration::from_millis(20 << attempt.min(6)));
            }
            Err(e) => return Err(map_err(path, e).to_string()),
        }
    }
}

/// How one run of a batch ended.
enum Attempt {
    /// Committed (`None`) or lost with the reason (`Some`): every job gets its answer.
    Done(Option<String>),
    /// A job failed after writing; the transaction was rolled back and nothing stands.
    Dirty,
}

impl SqliteCommit {
    /// Runs the batch in one transaction. Without savepoints (the fast path, almost always) a
    /// job that fails before writing anything costs nothing; one that fails after writing
    /// makes the batch `Dirty`. With savepoints, each job's failure is rolled back alone.
    fn attempt(&self, batch: &mut [Job], clock: &dyn Clock, savepoints: bool) -> Attempt {
        let (conn, path) = (&self.conn, self.path.as_path());
        if let Err(reason) = begin(conn, path) {
            return Attempt::Done(Some(reason));
        }
        let step = |sql: &str| {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
                .map(drop)
        };
        // One `Db` for the batch: the statements it holds serve every job.
        let mut db = Db::new(conn, path);
        for job in batch.iter_mut() {
            if savepoints && let Err(e) = step("SAVEPOINT job") {
                let _ = conn.execute_batch("ROLLBACK");
                return Attempt::Done(Some(map_err(path, e).to_string()));
            }
            let before = conn.total_changes();
            let ok = job.run(|ws| {
                // What a failed write set held back is not written.
                db.pending.clear();
                let applied = engine::apply(&mut db, ws, clock.now())?;
                db.write_pending()?;
                Ok(applied)
            });
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (an I/O error, a full disk).
                return Attempt::Done(Some(format!(
                    "the transaction on {} was rolled back by SQLite",
                    path.display()
                )));
            }
            let restored = if savepoints {
                if ok {
                    step("RELEASE job")
                } else {
                    step("ROLLBACK TO job").and_then(|()| step("RELEASE job"))
                }
            } else if !ok && conn.total_changes() != before {
                let _ = conn.execute_batch("ROLLBACK");
                return Attempt::Dirty;
            } else {
                Ok(())
            };
            if let Err(e) = restored {
                let _ = conn.execute_batch("ROLLBACK");
                return Attempt::Done(Some(map_err(path, e).to_string()));
            }
        }
        match crate::conn::run_cached(conn, "COMMIT") {
            Ok(()) => Attempt::Done(None),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Attempt::Done(Some(map_err(path, e).to_string()))
            }
        }
    }

    /// Sets `synchronous` for this batch: FULL if any of it must be durable.
    fn set_sync(&mut self, sync: bool) -> Result<(), String> {
        if sync == self.synced {
            return Ok(());
        }
        let pragma = if sync {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        self.conn
            .execute_batch(pragma)
            .map_err(|e| map_err(&self.path, e).to_string())?;
        self.synced = sync;
        Ok(())
    }
}

impl Commit for SqliteCommit {
    fn commit(&mut self, batch: &mut [Job], clock: &dyn Clock) -> Option<String> {
        if let Err(reason) = self.set_sync(self.full_sync && batch.iter().any(Job::durable)) {
            return Some(reason);
        }
        let mut outcome = match self.attempt(batch, clock, false) {
            Attempt::Done(outcome) => outcome,
            Attempt::Dirty => match self.attempt(batch, clock, true) {
                Attempt::Done(outcome) => outcome,
                Attempt::Dirty => {
                    Some("a write failed halfway and could not be isolated".to_owned())
                }
            },
        };
        if outcome.is_none() && self.synced {
            self.disk_syncs.fetch_add(1, Ordering::Relaxed);
        } else if outcome.is_none() && self.full_sync && batch.iter().any(Job::needs_sync) {
            // The same fdatasync of the log that `synchronous = FULL` does at commit.
            let mut wal = self.path.as_os_str().to_owned();
            wal.push("-wal");
            match std::fs::File::open(&wal).and_then(|f| f.sync_data()) {
                Ok(()) => {
                    self.disk_syncs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    outcome = Some(format!(
                        "committed, but syncing {} failed: {e}",
                        Path::new(&wal).display()
                    ));
                }
            }
        }
        outcome
    }
}
