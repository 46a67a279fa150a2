//! # loom-sqlite: Loom's embedded default backend
//!
//! This crate is the **SQLite room**: it implements [`loom_storage::Storage`] on one SQLite
//! file through rusqlite (SQLite bundled, so a fresh machine needs no system library). It knows
//! SQL and SQLite's behaviour; it decides nothing: every rule of the store is
//! [`loom_storage::engine`]'s, and this crate reads the rows a check names and applies the
//! engine's primitives in SQL (`apply.rs`), on the writer thread every embedded backend
//! shares ([`loom_storage::writer`]).
//!
//! ## How it is built
//!
//! - **Durable by default.** WAL mode with `synchronous = FULL`: a call that returned `Ok`
//!   survives a process crash and a power cut. The exceptions are claims and lease renewals,
//!   which a power cut may erase (handing the task back to the queue, as the cut does to the
//!   lease anyway); they wait for no fsync of their own, and the next durable commit carries
//!   them to the disk. So does an activity result committed together with an eager claim of
//!   the workflow task it wakes: that task's durable commit follows at once, and a power cut
//!   in between only runs the activity again, as at-least-once allows.
//!   [`Durability::Fast`] (`synchronous = NORMAL`)
//!   survives a process crash but may lose the last commits on a power cut; it is an explicit
//!   option, named as such.
//! - **Group commit.** Every write goes to one writer thread that runs all waiting write sets
//!   in one transaction and answers each caller once the commit is durable: one fsync for many
//!   workflows' transitions. A write set that fails is undone alone (see `commit.rs`).
//! - **Checkpoints off the writer.** A thread of its own copies the log back into the file
//!   every 200 ms (`checkpoint.rs`); the writer checkpoints only if the log outgrows that.
//! - **Reads in parallel.** Reads take turns on at most `readers` separate connections, on the
//!   blocking thread pool; WAL lets them run while the writer writes.
//! - **Never blocks the runtime.** Callers await channels; SQLite runs on the writer thread and
//!   on `spawn_blocking`.
//! - **Contention is never a workflow failure.** `SQLITE_BUSY` (another process writing) is
//!   waited out with a busy timeout and retried; if it persists the call fails with the
//!   retryable `StorageError::Unavailable`, which a worker backs off from.
//! - **Several processes on one file** (a worker and a CLI, or two workers) are safe: leases,
//!   fencing tokens and due times are all in the database and every claim and commit checks
//!   them in its transaction.
//! - **Versioned schema.** Migrations are recorded in the file and applied once, in a
//!   transaction; a file written by a newer Loom, or a SQLite file that is not Loom's, is refused
//!   with an error naming it.
//!
//! ```
//! use loom_sqlite::{SqliteOptions, SqliteStorage};
//! use loom_storage::{ListQuery, Storage};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStorage::open(dir.path().join("loom.db"), SqliteOptions::default()).await.unwrap();
//! assert!(store.list(&ListQuery::default()).await.unwrap().items.is_empty());
//! # });
//! ```

mod apply;
mod checkpoint;
mod commit;
mod conn;
mod db;
mod read;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use loom_storage::engine::{Applied, WriteSet};
use loom_storage::transact::ReadJob;
use loom_storage::writer::{self, Writer};
use loom_storage::{Clock, Result, StorageError, SystemClock, Transact};
use rusqlite::Connection;

use crate::commit::SqliteCommit;
use crate::db::Db;

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = FULL`: every acknowledged commit survives a power cut. The default.
    #[default]
    Full,
    /// `synchronous = NORMAL`: acknowledged commits survive a process crash; the last ones may
    /// be lost on a power cut or an OS crash. Faster; never the default.
    Fast,
}

/// How to open a SQLite store.
#[derive(Clone)]
pub struct SqliteOptions {
    /// Durability of commits.
    pub durability: Durability,
    /// How long one statement waits for another process's lock before the backend's own
    /// retries take over.
    pub busy_timeout: Duration,
    /// The most write requests committed in one transaction.
    pub max_batch: usize,
    /// The most read connections, opened as reads need them and kept, and so the most reads
    /// that run at once (at least one); further reads wait their turn. More reads at once than
    /// cores gain nothing, and each extra one would open a connection, parse the schema and
    /// prepare its statements afresh.
    pub readers: usize,
    /// The clock that judges leases and due times.
    pub clock: Arc<dyn Clock>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            max_batch: 256,
            readers: 4,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("durability", &self.durability)
            .field("busy_timeout", &self.busy_timeout)
            .field("max_batch", &self.max_batch)
            .field("readers", &self.readers)
            .finish_non_exhaustive()
    }
}

/// A Loom store in one SQLite file. Cheap to clone; clones share the writer and readers.
#[derive(Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    /// One permit per read connection: a read holds one while it runs.
    read_turns: Arc<tokio::sync::Semaphore>,
    /// Read connections open now, idle or in use.
    open_readers: AtomicU32,
    disk_syncs: Arc<AtomicU64>,
    _checkpointer: checkpoint::Checkpointer,
}

impl SqliteStorage {
    /// Opens (creating if needed) the store at `path`, applying migrations. The directory must
    /// exist. Fails with an error naming the path if the file is not a SQLite database, not a
    /// Loom database, or written by a newer Loom.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, options))
            .await
            .map_err(|e| StorageError::unavailable("opening the SQLite store failed", e))?
    }

    /// [`open`](Self::open), for callers outside an async runtime.
    pub fn open_blocking(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(StorageError::Unavailable {
                message: format!(
                    "cannot open {}: the directory {} does not exist",
                    path.display(),
                    parent.display()
                ),
                source: None,
            });
        }
        let conn = conn::open(&path, options.durability, options.busy_timeout)?;
        conn::migrate(&conn, &path)?;
        conn.pragma_update(None, "wal_autocheckpoint", checkpoint::BACKSTOP_PAGES)
            .map_err(|e| conn::map_err(&path, e))?;
        let checkpointer =
            checkpoint::start(path.clone(), options.durability, options.busy_timeout)?;
        let disk_syncs = Arc::new(AtomicU64::new(0));
        let full_sync = options.durability == Durability::Full;
        let commit = SqliteCommit {
            conn,
            path: path.clone(),
            full_sync,
            synced: full_sync,
            disk_syncs: disk_syncs.clone(),
        };
        let writer = Writer::start(
            "loom-sqlite-writer",
            commit,
            options.clock.clone(),
            options.max_batch,
        )
        .map_err(|e| StorageError::unavailable("cannot start the SQLite writer thread", e))?;
        let readers = options.readers.max(1);
        Ok(SqliteStorage {
            inner: Arc::new(Inner {
                path,
                options,
                writer,
                readers: Mutex::new(Vec::new()),
                read_turns: Arc::new(tokio::sync::Semaphore::new(readers)),
                open_readers: AtomicU32::new(0),
                disk_syncs,
                _checkpointer: checkpointer,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many commits have waited for the disk so far: a measure of what relaxed writes
    /// (claims, renewals) save, for tests and diagnostics.
    pub fn disk_syncs(&self) -> u64 {
        self.inner.disk_syncs.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish()
    }
}

#[async_trait]
impl Transact for SqliteStorage {
    async fn transact(&self, ws: WriteSet) -> Result<Applied> {
        self.inner.writer.write(ws).await
    }

    fn counters(&self) -> loom_storage::StoreCounters {
        // Both read under the lock, which every move into or out of the idle list takes: the
        // idle are never more than the open.
        let connections = {
            let idle = self
                .inner
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (
                self.inner.open_readers.load(Ordering::Relaxed),
                u32::try_from(idle.len()).unwrap_or(u32::MAX),
            )
        };
        loom_storage::StoreCounters {
            connections: Some(connections),
            ..self.inner.writer.counters()
        }
    }

    async fn read<T: Send + 'static>(&self, read: ReadJob<T>) -> Result<T> {
        let inner = self.inner.clone();
        let turn = inner
            .read_turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StorageError::unavailable("the SQLite readers are closed", e))?;
        writer::blocking("a SQLite read failed", move || {
            let _turn = turn;
            let idle = inner
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let conn = match idle {
                Some(conn) => conn,
                None => {
                    let conn = conn::open(
                        &inner.path,
                        inner.options.durability,
                        inner.options.busy_timeout,
                    )?;
                    inner.open_readers.fetch_add(1, Ordering::Relaxed);
                    conn
                }
            };
            // Uncounted when the connection is dropped, even by a read that panicked.
            let mut counted = Counted(Some(&inner.open_readers));
            let now = inner.options.clock.now();
            // One snapshot for the whole read, as SQLite's statements would each take their own.
            let (result, reusable) = match conn::run_cached(&conn, "BEGIN") {
                Ok(()) => {
                    let result = read(&mut Db::new(&conn, &inner.path), now);
                    (result, conn::run_cached(&conn, "COMMIT").is_ok())
                }
                Err(e) => (Err(conn::map_err(&inner.path, e)), false),
            };
            if reusable {
                inner
                    .readers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
                counted.0 = None;
            }
            result
        })
        .await
    }
}

/// A read connection counted in `open_readers`: uncounts it when dropped, unless disarmed
/// because the connection went back to the idle list.
struct Counted<'a>(Option<&'a AtomicU32>);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if let Some(open) = self.0 {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
