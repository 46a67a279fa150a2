//! # loom-mysql: Loom on MySQL and MariaDB
//!
//! This crate is the **MySQL room**: it implements [`loom_storage::Storage`] on a MySQL 8 or
//! MariaDB 10.6+ database through sqlx's MySQL driver, for teams whose database is MySQL. It
//! decides nothing: every rule of the store is [`loom_storage::engine`]'s. This crate reads the
//! rows a check names (under row locks), and applies the engine's primitives in SQL
//! (`apply.rs`), on the writer thread the embedded backends share
//! ([`loom_storage::writer`]). SQL, and what MySQL's errors mean, stay here.
//!
//! ## How it is built
//!
//! - **InnoDB, `READ COMMITTED`.** Every write transaction reads what its checks name with a
//!   locking read (`FOR UPDATE`): a task before its workflow, the order every write takes, so a
//!   fencing token and a workflow's last event are checked under the lock of the transaction
//!   that writes. `READ COMMITTED` takes no gap locks, so claims and inserts of unrelated
//!   workflows never wait for each other; reads run in one consistent snapshot
//!   (`REPEATABLE READ`, `START TRANSACTION WITH CONSISTENT SNAPSHOT`).
//! - **Claims scale with workers.** A claim reads a batch with `FOR UPDATE SKIP LOCKED`:
//!   concurrent claimers, in this process or another, skip each other's rows instead of
//!   waiting.
//! - **Group commit.** Every write set goes to one writer thread per process, which runs all
//!   waiting write sets in one transaction and answers each caller after the commit: one log
//!   flush for many workflows' transitions. A write set that fails is undone alone (see
//!   `commit.rs`).
//! - **One clock: the database's.** A batch reads `NOW(3)` once, and every time it stores
//!   (a lease, a timer, a retry) is that time plus a duration the caller gave, so clock skew
//!   between hosts can neither fire a timer early nor steal a live lease.
//! - **Deadlocks are retried, never a workflow failure.** InnoDB reports a deadlock (and a
//!   lock wait timeout) where PostgreSQL waits; the batch is rolled back and run again, and
//!   after repeated failures every caller gets the retryable `StorageError::Unavailable`. So
//!   does a lost connection, which is opened again for the next batch.
//! - **Binary-safe ids.** Ids, names and keys are `VARBINARY`, compared byte by byte (no
//!   collation folds case or pads spaces); payloads are `LONGBLOB` holding JSON.
//! - **Migrations** are versioned, recorded in `loom_migrations`, and applied under the named
//!   lock `GET_LOCK('loom:migrate:<database>')`, so workers starting at once apply them once.
//!   MySQL commits each DDL statement on its own; every statement of a migration may run
//!   again, so one interrupted midway is finished by the next start.
//! - **No notifications.** MySQL has no `LISTEN`: workers in other processes learn of new
//!   work at their next poll ([`Storage::work_signal`](loom_storage::Storage::work_signal)
//!   never fires), and the workers of one process wake each other as on every backend.
//!
//! ```no_run
//! use loom_mysql::{MysqlOptions, MysqlStorage};
//! # async fn f() -> Result<(), loom_storage::StorageError> {
//! let store = MysqlStorage::connect("mysql://root@127.0.0.1:3306/test", MysqlOptions::default()).await?;
//! # Ok(()) }
//! ```

mod apply;
mod commit;
mod conn;
mod db;
mod read;
mod schema;
#[cfg(feature = "testing")]
pub mod testing;

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use loom_storage::engine::{Applied, WriteSet};
use loom_storage::transact::ReadJob;
use loom_storage::writer::{self, Writer};
use loom_storage::{Clock, Result, StorageError, SystemClock, Transact};
use sqlx::mysql::MySqlConnectOptions;
use tokio::sync::Semaphore;

use crate::commit::MysqlCommit;
use crate::conn::Conn;
use crate::db::Db;

/// How to connect.
#[derive(Clone)]
pub struct MysqlOptions {
    /// The most write sets committed in one transaction.
    pub max_batch: usize,
    /// Writer threads, each with a connection of its own, committing batches side by side.
    /// The round trips of one transaction, not the server's work, bound one writer; InnoDB
    /// locks rows, so writers of different workflows never wait for each other.
    pub writers: usize,
    /// The most read connections, opened as reads need them and kept open.
    pub readers: usize,
    /// How long a statement waits for another transaction's row lock before InnoDB gives up
    /// (`innodb_lock_wait_timeout`, whole seconds); the batch is then run again.
    pub lock_wait_timeout: Duration,
    /// How long connecting may take before the call fails as `Unavailable`.
    pub connect_timeout: Duration,
    /// The clock that judges leases and due times: `None`, the database's (`NOW(3)`), as in
    /// production; a given clock only for tests that run every backend on one manual clock.
    pub clock: Option<Arc<dyn Clock>>,
    /// Whether a batch's write sets go to the server-side applier, `loom_apply`, in one call
    /// (the default). `false` applies each write set from this side, with a round trip for
    /// each read its checks make: the same rules, for comparison and for tests.
    pub server_apply: bool,
}

impl Default for MysqlOptions {
    fn default() -> Self {
        MysqlOptions {
            max_batch: 128,
            writers: 4,
            readers: 8,
            lock_wait_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            clock: None,
            server_apply: true,
        }
    }
}

impl std::fmt::Debug for MysqlOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlOptions")
            .field("max_batch", &self.max_batch)
            .field("writers", &self.writers)
            .field("readers", &self.readers)
            .field("lock_wait_timeout", &self.lock_wait_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("database_clock", &self.clock.is_none())
            .field("server_apply", &self.server_apply)
            .finish()
    }
}

/// A Loom store in a MySQL or MariaDB database. Cheap to clone; clones share the writer
/// and the read connections.
#[derive(Clone)]
pub struct MysqlStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the store is, for errors (no password).
    shown: String,
    connect: MySqlConnectOptions,
    options: MysqlOptions,
    writers: Vec<Writer>,
    /// What the writers did with their batches.
    counts: Arc<commit::Counts>,
    /// The writer the next write set goes to.
    next: AtomicUsize,
    readers: Mutex<Vec<Conn>>,
    /// One permit per read connection: a read waits for one rather than opening more.
    reader_slots: Semaphore,
}

impl MysqlStorage {
    /// Connects to the database `url` names (`mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`),
    /// creating Loom's tables there if needed. Fails with an error naming the server if it
    /// cannot be reached, is not MySQL 8 or MariaDB 10.6 or later, or holds a schema written by
    /// a newer Loom.
    pub async fn connect(url: &str, options: MysqlOptions) -> Result<Self> {
        let connect = MySqlConnectOptions::from_str(url).map_err(|e| {
            StorageError::InvalidArgument(format!("not a MySQL URL ({e}): mysql://USER@HOST/DB"))
        })?;
        let Some(database) = connect.get_database().map(str::to_owned) else {
            return Err(StorageError::InvalidArgument(format!(
                "the MySQL URL names no database: mysql://USER@HOST:PORT/DATABASE, not {}",
                loom_storage::redact_url(url)
            )));
        };
        let shown = format!(
            "MySQL database {database} at {}:{}",
            connect.get_host(),
            connect.get_port()
        );
        tokio::task::spawn_blocking(move || Self::open_blocking(connect, shown, options))
            .await
            .map_err(|e| StorageError::unavailable("connecting to MySQL failed", e))?
    }

    /// Write sets applied by the server-side applier `loom_apply`, and batches it refused
    /// that were then applied from this side, since the store was opened: for tests and
    /// diagnostics.
    pub fn applier_counts(&self) -> (u64, u64) {
        self.inner.counts.get()
    }

    fn open_blocking(
        connect: MySqlConnectOptions,
        shown: String,
        options: MysqlOptions,
    ) -> Result<Self> {
        let mut conn = Conn::open(&connect, &shown, &options, conn::Role::Write)?;
        schema::migrate(&mut conn, &shown)?;
        let clock: Arc<dyn Clock> = options.clock.clone().unwrap_or(Arc::new(SystemClock));
        let mut writers = Vec::with_capacity(options.writers.max(1));
        let counts = Arc::new(commit::Counts::default());
        let mut first = Some(conn);
        for _ in 0..options.writers.max(1) {
            let conn = match first.take() {
                Some(conn) => conn,
                None => Conn::open(&connect, &shown, &options, conn::Role::Write)?,
            };
            let commit = MysqlCommit::new(
                conn,
                connect.clone(),
                shown.clone(),
                options.clone(),
                counts.clone(),
            );
            let writer = Writer::start(
                "loom-mysql-writer",
                commit,
                clock.clone(),
                options.max_batch,
            )
            .map_err(|e| StorageError::unavailable("cannot start a MySQL writer thread", e))?;
            writers.push(writer);
        }
        let reader_slots = Semaphore::new(options.readers.max(1));
        Ok(MysqlStorage {
            inner: Arc::new(Inner {
                shown,
                connect,
                options,
                writers,
                counts,
                next: AtomicUsize::new(0),
                readers: Mutex::new(Vec::new()),
                reader_slots,
            }),
        })
    }
}

impl std::fmt::Debug for MysqlStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStorage")
            .field("database", &self.inner.shown)
            .field("options", &self.inner.options)
            .finish()
    }
}

#[async_trait]
impl Transact for MysqlStorage {
    async fn transact(&self, ws: WriteSet) -> Result<Applied> {
        let writers = &self.inner.writers;
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % writers.len();
        writers[i].write(ws).await
    }

    fn counters(&self) -> loom_storage::StoreCounters {
        let mut sum = loom_storage::StoreCounters::default();
        for writer in &self.inner.writers {
            let c = writer.counters();
            sum.group_commits += c.group_commits;
            sum.writes_committed += c.writes_committed;
        }
        sum
    }

    async fn read<T: Send + 'static>(&self, read: ReadJob<T>) -> Result<T> {
        // Held until the read is done: at most `readers` connections at once.
        let _slot = self
            .inner
            .reader_slots
            .acquire()
            .await
            .map_err(|e| StorageError::unavailable("the MySQL store is closed", e))?;
        let inner = self.inner.clone();
        writer::blocking("a MySQL read failed", move || {
            let idle = inner
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => Conn::open(
                    &inner.connect,
                    &inner.shown,
                    &inner.options,
                    conn::Role::Read,
                )?,
            };
            let result = conn.snapshot(&inner.options.clock, |db: &mut Db<'_>, now| read(db, now));
            if !conn.broken() {
                inner
                    .readers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
            }
            result
        })
        .await
    }
}

/// Whole seconds, at least one: what `innodb_lock_wait_timeout` takes.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs().max(1)
}
