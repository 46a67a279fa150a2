//! # loom-redb: a pure-Rust embedded backend
//!
//! This crate is the **redb room**: it implements [`loom_storage::Storage`] on redb, a
//! pure-Rust, ACID, embedded key-value store, for users who embed Loom in one Rust process and
//! want no C compiler and no SQL. It must not touch workflow semantics: it stores what
//! loom-core decided and reads task plans with [`loom_storage::TaskPlan`], like every backend.
//!
//! ## How it is built
//!
//! - **Tables for Loom's access paths** (see `tables.rs`): histories by `(workflow, seq)`,
//!   ready tasks by `(kind, visible_at, task)` (a claim is one range scan, whatever the
//!   backlog), listings by `(created_at, id)`, and rows as JSON.
//! - **One write transaction per operation, group commit across them.** All writes go to one
//!   writer thread. Each request runs in its own write transaction, so a failed one is simply
//!   aborted; all but the last of a batch commit with `Durability::None`, and the last with
//!   `Durability::Immediate`, which makes the whole batch durable with one fsync. Callers are
//!   answered only after that.
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

mod tables;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use loom_core::{Event, EventKind, LogRecord, Payload, Seq, WorkflowId};
use loom_storage::{
    ActivityTask, ActivityTaskCompletion, ClaimRequest, Clock, Lease, ListQuery, Page, Release,
    Result, Stats, Storage, StorageError, SystemClock, WorkflowSummary, WorkflowTask,
    WorkflowTaskCompletion,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

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
    jobs: mpsc::Sender<Box<dyn Job>>,
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
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(StorageError::Unavailable {
                    message: format!(
                        "cannot open {}: the directory {} does not exist",
                        path.display(),
                        parent.display()
                    ),
                    source: None,
                });
            }
        }
        let db = Database::create(&path).map_err(|e| redb_err(&path, e))?;
        check_format(&db, &path)?;
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel(MAX_BATCH * 4);
        {
            let (db, path, clock) = (db.clone(), path.clone(), clock.clone());
            std::thread::Builder::new()
                .name("loom-redb-writer".into())
                .spawn(move || run_writer(&db, &path, clock.as_ref(), rx))
                .map_err(|e| StorageError::unavailable("cannot start the redb writer thread", e))?;
        }
        Ok(RedbStorage {
            inner: Arc::new(Inner {
                path,
                db,
                clock,
                jobs,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Tx<'_, redb::WriteTransaction>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Request {
            work: Some(work),
            result: None,
            reply,
        });
        let stopped = || StorageError::Unavailable {
            message: "the redb writer thread has stopped".into(),
            source: None,
        };
        self.inner.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Tx<'_, redb::ReadTransaction>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let tx = inner
                .db
                .begin_read()
                .map_err(|e| redb_err(&inner.path, e))?;
            work(&Tx {
                tx: &tx,
                path: &inner.path,
                now: inner.clock.now(),
            })
        })
        .await
        .map_err(|e| StorageError::unavailable("a redb read failed", e))?
    }
}

/// Records the format in a new file, and refuses a file written by a newer Loom.
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
            Some(_) => {}
            None => {
                meta.insert("format", FORMAT)
                    .map_err(|e| redb_err(path, e))?;
            }
        }
    }
    create_tables(&tx).map_err(|e| redb_err(path, e))?;
    tx.commit().map_err(|e| redb_err(path, e))
}

/// A write request for the writer thread.
trait Job: Send {
    /// Runs in its own write transaction and commits it with the given durability. Returns
    /// whether it committed.
    fn run(&mut self, db: &Database, path: &Path, now: loom_core::Timestamp, durable: bool)
    -> bool;
    /// Answers the caller; `flush_error` is set if the batch's durable commit failed.
    fn answer(self: Box<Self>, flush_error: Option<&str>);
}

struct Request<F, T> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<F, T> Job for Request<F, T>
where
    F: FnOnce(&Tx<'_, redb::WriteTransaction>) -> Result<T> + Send,
    T: Send + 'static,
{
    fn run(
        &mut self,
        db: &Database,
        path: &Path,
        now: loom_core::Timestamp,
        durable: bool,
    ) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let outcome = (|| {
            let mut tx = db.begin_write().map_err(|e| redb_err(path, e))?;
            if !durable {
                tx.set_durability(redb::Durability::None)
                    .map_err(|e| StorageError::unavailable("cannot defer a redb commit", e))?;
            }
            let result = catch_unwind(AssertUnwindSafe(|| work(&Tx { tx: &tx, path, now })))
                .unwrap_or_else(|_| {
                    Err(StorageError::Unavailable {
                        message: "a storage operation panicked; it was rolled back".into(),
                        source: None,
                    })
                });
            match result {
                Ok(value) => {
                    tx.commit().map_err(|e| redb_err(path, e))?;
                    Ok(value)
                }
                Err(e) => {
                    let _ = tx.abort();
                    Err(e)
                }
            }
        })();
        let committed = outcome.is_ok();
        self.result = Some(outcome);
        committed
    }

    fn answer(self: Box<Self>, flush_error: Option<&str>) {
        let answer = match (self.result, flush_error) {
            (Some(Ok(_)), Some(reason)) => Err(StorageError::Unavailable {
                message: reason.to_owned(),
                source: None,
            }),
            (Some(result), _) => result,
            (None, reason) => Err(StorageError::Unavailable {
                message: reason.unwrap_or("the request never ran").to_owned(),
                source: None,
            }),
        };
        let _ = self.reply.send(answer);
    }
}

fn run_writer(db: &Database, path: &Path, clock: &dyn Clock, mut rx: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let last = batch.len() - 1;
        let mut pending_flush = false;
        for (i, job) in batch.iter_mut().enumerate() {
            let durable = i == last;
            let committed = job.run(db, path, clock.now(), durable);
            pending_flush = if durable {
                !committed && pending_flush
            } else {
                pending_flush || committed
            };
        }
        // The last request failed after others committed without flushing: flush now.
        let flush_error = if pending_flush {
            db.begin_write()
                .map_err(|e| redb_err(path, e))
                .and_then(|tx| tx.commit().map_err(|e| redb_err(path, e)))
                .err()
                .map(|e| e.to_string())
        } else {
            None
        };
        for job in batch.drain(..) {
            job.answer(flush_error.as_deref());
        }
    }
}

impl std::fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStorage")
            .field("path", &self.inner.path)
            .finish()
    }
}

#[async_trait]
impl Storage for RedbStorage {
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()> {
        let id = id.clone();
        self.write(move |tx| tx.create_workflow(&id, &started))
            .await
    }

    async fn append_events(
        &self,
        id: &WorkflowId,
        expected_last_seq: Seq,
        events: Vec<Event>,
    ) -> Result<()> {
        let id = id.clone();
        self.write(move |tx| tx.append_events(&id, expected_last_seq, &events))
            .await
    }

    async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        let id = id.clone();
        self.read(move |tx| tx.load_history(&id, after)).await
    }

    async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        let req = req.clone();
        self.write(move |tx| tx.claim_workflow_tasks(&req)).await
    }

    async fn complete_workflow_task(&self, completion: WorkflowTaskCompletion) -> Result<()> {
        self.write(move |tx| tx.complete_workflow_task(&completion))
            .await
    }

    async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        let req = req.clone();
        self.write(move |tx| tx.claim_activity_tasks(&req)).await
    }

    async fn complete_activity_task(&self, completion: ActivityTaskCompletion) -> Result<()> {
        self.write(move |tx| tx.complete_activity_task(&completion))
            .await
    }

    async fn renew_lease(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        let lease = *lease;
        self.write(move |tx| tx.renew_lease(&lease, extend)).await
    }

    async fn release_task(&self, lease: &Lease, release: Release) -> Result<()> {
        let lease = *lease;
        self.write(move |tx| tx.release_task(&lease, &release))
            .await
    }

    async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()> {
        let id = id.clone();
        let kind = EventKind::SignalReceived {
            name: name.to_owned(),
            payload,
        };
        self.write(move |tx| tx.signal(&id, kind)).await
    }

    async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()> {
        let id = id.clone();
        self.write(move |tx| tx.signal(&id, EventKind::CancelRequested { reason }))
            .await
    }

    async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
        let id = id.clone();
        self.read(move |tx| tx.describe(&id)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>> {
        let query = query.clone();
        self.read(move |tx| tx.list(&query)).await
    }

    async fn stats(&self) -> Result<Stats> {
        self.read(|tx| tx.stats()).await
    }

    async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        let id = id.clone();
        self.read(move |tx| tx.logs(&id)).await
    }
}
