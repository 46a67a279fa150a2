//! # loom-sqlite: Loom's embedded default backend
//!
//! This crate is the **SQLite room**: it implements [`loom_storage::Storage`] on one SQLite
//! file through rusqlite (SQLite bundled, so a fresh machine needs no system library). It knows
//! SQL and SQLite's behaviour; it must not touch workflow semantics: it stores what loom-core
//! decided and reads task plans with [`loom_storage::TaskPlan`], like every backend.
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
//! - **Group commit.** Every write goes to one writer thread that runs all waiting requests in
//!   one transaction and answers each caller once the commit is durable: one fsync for many
//!   workflows' transitions. A request that fails is undone alone (see `writer.rs`).
//! - **Reads in parallel.** Reads use a small pool of separate connections on the blocking
//!   thread pool; WAL lets them run while the writer writes.
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

mod conn;
mod ops;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use loom_core::{Event, EventKind, LogRecord, Payload, Seq, WorkflowId};
use loom_storage::{
    ActivityTask, ActivityTaskCompletion, ClaimRequest, Clock, DecidedTask, Lease, ListQuery, Page,
    Release, Result, Stats, Storage, StorageError, SystemClock, WorkflowSummary, WorkflowTask,
    WorkflowTaskCompletion,
};
use rusqlite::Connection;

use crate::ops::Db;
use crate::writer::{Sync, Writer};

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
    /// Read connections kept open.
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
        let conn = conn::open(&path, options.durability, options.busy_timeout)?;
        conn::migrate(&conn, &path)?;
        let writer = Writer::start(
            conn,
            path.clone(),
            options.clock.clone(),
            options.max_batch,
            options.durability == Durability::Full,
        )
        .map_err(|e| StorageError::unavailable("cannot start the SQLite writer thread", e))?;
        Ok(SqliteStorage {
            inner: Arc::new(Inner {
                path,
                options,
                writer,
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` in the writer's next batch, answering once it is durable. `work` may run
    /// more than once (see the writer), so it takes its inputs by reference.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: Fn(&Db<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.write_with(Sync::Always, work).await
    }

    /// Like [`write`](Self::write), for a claim or a lease renewal: one that a power cut may
    /// erase, which only hands the task back to the queue. Its commit waits for no fsync of
    /// its own; the next durable commit carries it to the disk.
    async fn write_relaxed<T, F>(&self, work: F) -> Result<T>
    where
        F: Fn(&Db<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.write_with(Sync::Never, work).await
    }

    async fn write_with<T, F>(&self, sync: Sync<T>, work: F) -> Result<T>
    where
        F: Fn(&Db<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let path = self.inner.path.clone();
        self.inner
            .writer
            .write(sync, move |conn, now| {
                work(&Db {
                    conn,
                    path: &path,
                    now,
                })
            })
            .await
    }

    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Db<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let idle = inner
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let conn = match idle {
                Some(conn) => conn,
                None => conn::open(
                    &inner.path,
                    inner.options.durability,
                    inner.options.busy_timeout,
                )?,
            };
            let db = Db {
                conn: &conn,
                path: &inner.path,
                now: inner.options.clock.now(),
            };
            let result = work(&db);
            let mut idle = inner.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < inner.options.readers {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StorageError::unavailable("a SQLite read failed", e))?
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
impl Storage for SqliteStorage {
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()> {
        let id = id.clone();
        self.write(move |db| db.create_workflow(&id, &started))
            .await
    }

    async fn append_events(
        &self,
        id: &WorkflowId,
        expected_last_seq: Seq,
        events: Vec<Event>,
    ) -> Result<()> {
        let id = id.clone();
        self.write(move |db| db.append_events(&id, expected_last_seq, &events))
            .await
    }

    async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        let id = id.clone();
        self.read(move |db| db.load_history(&id, after)).await
    }

    async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        let req = req.clone();
        self.write_relaxed(move |db| db.claim_workflow_tasks(&req, None))
            .await
    }

    async fn complete_workflow_task(&self, completion: WorkflowTaskCompletion) -> Result<()> {
        self.write(move |db| db.complete_workflow_task(&completion))
            .await
    }

    async fn complete_workflow_task_and_claim(
        &self,
        completion: WorkflowTaskCompletion,
        eager: &ClaimRequest,
    ) -> Result<Vec<ActivityTask>> {
        let req = eager.clone();
        self.write(move |db| {
            db.complete_workflow_task(&completion)?;
            if req.max == 0 {
                return Ok(Vec::new());
            }
            db.claim_activity_tasks(&req, Some(&completion.workflow_id))
        })
        .await
    }

    async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        let req = req.clone();
        self.write_relaxed(move |db| db.claim_activity_tasks(&req, None))
            .await
    }

    async fn complete_activity_task(&self, completion: ActivityTaskCompletion) -> Result<()> {
        self.write(move |db| db.complete_activity_task(&completion).map(drop))
            .await
    }

    async fn complete_activity_task_and_claim(
        &self,
        completion: ActivityTaskCompletion,
        eager: &ClaimRequest,
    ) -> Result<Option<WorkflowTask>> {
        let req = ClaimRequest {
            max: eager.max.min(1),
            ..eager.clone()
        };
        // Relaxed when the workflow task is claimed: this worker runs it at once, and its
        // durable commit carries this result to the disk before anything depends on it (a
        // power cut in between runs the activity again, as at-least-once allows). When the
        // claim fails, the result is synced before the call returns, as any commit is.
        self.write_with(Sync::If(Option::is_none), move |db| {
            let workflow = db.complete_activity_task(&completion)?;
            if req.max == 0 {
                return Ok(None);
            }
            Ok(db.claim_workflow_tasks(&req, Some(&workflow))?.pop())
        })
        .await
    }

    fn decides_ahead(&self) -> bool {
        true
    }

    async fn complete_activity_and_decide(
        &self,
        activity: ActivityTaskCompletion,
        decided: DecidedTask,
        eager: &ClaimRequest,
    ) -> Result<Option<Vec<ActivityTask>>> {
        let eager = eager.clone();
        self.write(move |db| db.complete_activity_and_decide(&activity, &decided, &eager))
            .await
    }

    async fn renew_lease(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        let lease = *lease;
        self.write_relaxed(move |db| db.renew_lease(&lease, extend))
            .await
    }

    async fn release_task(&self, lease: &Lease, release: Release) -> Result<()> {
        let lease = *lease;
        self.write(move |db| db.release_task(&lease, &release))
            .await
    }

    async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()> {
        let id = id.clone();
        let kind = EventKind::SignalReceived {
            name: name.to_owned(),
            payload,
        };
        self.write(move |db| db.signal(&id, &kind)).await
    }

    async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()> {
        let id = id.clone();
        let kind = EventKind::CancelRequested { reason };
        self.write(move |db| db.signal(&id, &kind)).await
    }

    async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
        let id = id.clone();
        self.read(move |db| db.describe(&id)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>> {
        let query = query.clone();
        self.read(move |db| db.list(&query)).await
    }

    async fn stats(&self) -> Result<Stats> {
        self.read(|db| db.stats()).await
    }

    async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        let id = id.clone();
        self.read(move |db| db.logs(&id)).await
    }
}
