//! # loom-redb: a pure-Rust embedded backend
//!
//! This crate is the **redb room**: it implements [`loom_storage::Storage`] on redb, a
//! pure-Rust, ACID, embedded key-value store, for users who embed Loom in one Rust process and
//! want no C compiler and no SQL. It decides nothing: every rule of the store is
//! [`loom_storage::engine`]'s, and its primitives are the row implementation the engine
//! shares with `MemoryStorage` ([`loom_storage::engine::rows`]); this crate keeps the tables,
//! their indexes and the transactions.
//!
//! ## How it is built
//!
//! - **Tables for Loom's access paths** (see `tables.rs`): histories by `(workflow, seq)`,
//!   ready tasks by `(kind, visible_at, task)` (a claim is one range scan, whatever the
//!   backlog), listings by `(created_at, id)`, and rows as JSON.
//! - **One write transaction per operation, group commit across them.** All writes go to the
//!   writer thread the embedded backends share ([`loom_storage::writer`]). Each write set runs
//!   in its own write transaction, so a failed one is simply aborted; they commit with
//!   `Durability::None`, and the batch's last durable one with `Durability::Immediate`, which
//!   makes the whole batch durable with one fsync (see `commit.rs`). Claims and renewals need
//!   no fsync of their own. Callers are answered only after that.
//! - **Off the runtime.** Writes run on the writer thread, reads on `spawn_blocking`.
//! - **A file format version** is stored in the database and checked on open; a file written
//!   by a newer Loom is refused with an error that says so.
//! - **One process per file.** redb locks the file: a second process opening it gets a clear
//!   error naming SQLite or PostgreSQL as the backends for several processes.
//!
//! ```
//! use loom_redb::RedbStorage;
//! use loom_storage::{ListQuery, Storage};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = RedbStorage::open(dir.path().join("loom.redb")).await.unwrap();
//! assert!(store.list(&ListQuery::default()).await.unwrap().items.is_empty());
//! # });
//! ```

mod commit;
mod read;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use loom_storage::engine::{Applied, WriteSet};
use loom_storage::transact::ReadJob;
use loom_storage::writer::{self, Writer};
use loom_storage::{Clock, Result, StorageError, SystemClock, Transact};
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::commit::RedbCommit;
use crate::tables::{FORMAT, META, Tx, create_tables, redb_err};

/// The most write requests committed together.
const MAX_BATCH: usize = 256;

/// A Loom store in one redb file. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct RedbStorage {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    clock: Arc<dyn Clock>,
    writer: Writer,
}

impl RedbStorage {
    /// Opens (creating if needed) the store at `path` on the system clock.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_clock(path, Arc::new(SystemClock)).await
    }

    /// Opens the store with the clock that judges leases and due times.
    pub async fn open_with_clock(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, clock))
            .await
            .map_err(|e| StorageError::unavailable("opening the redb store failed", e))?
    }

    fn open_blocking(path: PathBuf, clock: Arc<dyn Clock>) -> Result<Self> {
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
        let db = Database::create(&path).map_err(|e| redb_err(&path, e))?;
        check_format(&db, &path)?;
        let db = Arc::new(db);
        let commit = RedbCommit {
            db: db.clone(),
            path: path.clone(),
        };
        let writer = Writer::start("loom-redb-writer", commit, clock.clone(), MAX_BATCH)
            .map_err(|e| StorageError::unavailable("cannot start the redb writer thread", e))?;
        Ok(RedbStorage {
            inner: Arc::new(Inner {
                path,
                db,
                clock,
                writer,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// Records the format in a new file, upgrades an older one (its tables are created), and
/// refuses a file written by a newer Loom.
fn check_format(db: &Database, path: &Path) -> Result<()> {
    let tx = db.begin_write().map_err(|e| redb_err(path, e))?;
    {
        let mut meta = tx.open_table(META).map_err(|e| redb_err(path, e))?;
        let found = meta
            .get("format")
            .map_err(|e| redb_err(path, e))?
            .map(|v| v.value());
        match found {
            Some(format) if format > FORMAT => {
                return Err(StorageError::Incompatible(format!(
                    "{} has Loom file format {format}, written by a newer Loom; this build reads up to \
                     format {FORMAT}. Upgrade Loom to open it",
                    path.display()
                )));
            }
            Some(FORMAT) => {}
            Some(_) | None => {
                meta.insert("format", FORMAT)
                    .map_err(|e| redb_err(path, e))?;
            }
        }
    }
    create_tables(&tx).map_err(|e| redb_err(path, e))?;
    tx.commit().map_err(|e| redb_err(path, e))
}

impl std::fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStorage")
            .field("path", &self.inner.path)
            .finish()
    }
}

#[async_trait]
impl Transact for RedbStorage {
    async fn transact(&self, ws: WriteSet) -> Result<Applied> {
        self.inner.writer.write(ws).await
    }

    fn counters(&self) -> loom_storage::StoreCounters {
        self.inner.writer.counters()
    }

    async fn read<T: Send + 'static>(&self, read: ReadJob<T>) -> Result<T> {
        let inner = self.inner.clone();
        writer::blocking("a redb read failed", move || {
            let tx = inner
                .db
                .begin_read()
                .map_err(|e| redb_err(&inner.path, e))?;
            read(
                &mut Tx {
                    tx: &tx,
                    path: &inner.path,
                },
                inner.clock.now(),
            )
        })
        .await
    }
}
