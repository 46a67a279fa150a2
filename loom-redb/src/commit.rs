//! How the shared writer thread's batches become redb transactions.
//!
//! Each write set runs in its own write transaction, so a failed one is simply aborted and
//! touches nothing else. They commit with `Durability::None` (redb keeps the commit but does
//! not make it durable), except that the batch's last write set commits with
//! `Durability::Immediate` when it must be durable itself, which makes every commit before it
//! durable too: one fsync for the batch. If the last one was relaxed or failed while an
//! earlier one needs the disk, an empty durable commit follows. Claims and renewals alone
//! never wait for the disk: redb rolls a crash back to the last durable commit, which only
//! hands their tasks back.

use std::path::PathBuf;
use std::sync::Arc;

use loom_storage::engine::{self, rows::RowApply};
use loom_storage::writer::{Commit, Job};
use loom_storage::{Clock, StorageError};
use redb::Database;

use crate::tables::{Tx, redb_err};

/// The write side of one redb file.
pub(crate) struct RedbCommit {
    pub(crate) db: Arc<Database>,
    pub(crate) path: PathBuf,
}

impl RedbCommit {
    /// Runs one job in its own write transaction; returns whether it committed.
    fn run(&self, job: &mut Job, clock: &dyn Clock, durable: bool) -> bool {
        let (db, path) = (&self.db, &self.path);
        job.run(|ws| {
            let mut tx = db.begin_write().map_err(|e| redb_err(path, e))?;
            if !durable {
                tx.set_durability(redb::Durability::None)
                    .map_err(|e| StorageError::unavailable("cannot defer a redb commit", e))?;
            }
            // A panic here drops the transaction, which aborts it.
            let applied = engine::apply(&mut RowApply(&mut Tx { tx: &tx, path }), ws, clock.now());
            match applied {
                Ok(applied) => {
                    tx.commit().map_err(|e| redb_err(path, e))?;
                    Ok(applied)
                }
                Err(e) => {
                    let _ = tx.abort();
                    Err(e)
                }
            }
        })
    }
}

impl Commit for RedbCommit {
    fn commit(&mut self, batch: &mut [Job], clock: &dyn Clock) -> Option<String> {
        let last = batch.len().saturating_sub(1);
        // A committed job whose result needs the disk, not yet followed by a durable commit.
        let mut unsynced = false;
        for (i, job) in batch.iter_mut().enumerate() {
            let durable = i == last && job.durable();
            let committed = self.run(job, clock, durable);
            if committed && durable {
                unsynced = false;
            } else if committed && job.needs_sync() {
                unsynced = true;
            }
        }
        if !unsynced {
            return None;
        }
        self.db
            .begin_write()
            .map_err(|e| redb_err(&self.path, e))
            .and_then(|tx| tx.commit().map_err(|e| redb_err(&self.path, e)))
            .err()
            .map(|e| e.to_string())
    }
}
