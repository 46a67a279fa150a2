//! # loom-postgres: many workers on many machines
//!
//! This crate is the **PostgreSQL room**: it implements [`loom_storage::Storage`] on
//! PostgreSQL through sqlx, for any number of worker processes on any number of hosts sharing
//! one database. PostgreSQL is the durable, replicated store; Loom does not re-implement it.
//! It decides nothing: every rule of the store is [`loom_storage::engine`]'s, and this crate
//! carries the engine's write sets to the server, where `loom_apply` checks them under row
//! locks and applies their primitives. No SQL leaves it.
//!
//! ## How it is built
//!
//! - **Claims scale with workers.** One statement claims a batch with `FOR UPDATE SKIP
//!   LOCKED`: concurrent claimers skip each other's rows instead of waiting.
//! - **Fencing in the committing transaction.** Every commit locks its task row and checks the
//!   lease's token and expiry in the same transaction that writes; a worker whose lease lapsed
//!   (paused, partitioned, slow) cannot commit.
//! - **Group commit on the server.** Every write set (starts, workflow-task and activity
//!   commits, signals, releases) queues up and goes to the PL/pgSQL function `loom_apply` as
//!   one array: one round trip, one transaction and one WAL flush for all of them, each checked
//!   and answered on its own (see `batch.rs`, `functions.sql` and `loom_storage::engine::wire`). Round trips, not the
//!   disk, bound a database on the other side of a network, and a per-statement start-up cost
//!   bounds one on the same machine.
//! - **One clock: the database's.** Lease expiry and due times are compared with
//!   `clock_timestamp()` on the server, and every time stored for visibility (a timer armed by
//!   `sleep(d)`, a retry, a release, a lease) is the database's now plus a duration the caller
//!   gave, so clock skew between hosts can neither fire a timer early nor steal a live lease.
//! - **No busy polling.** Enqueueing work sends `NOTIFY`; a `LISTEN`ing connection wakes idle
//!   workers through [`Storage::work_signal`]. Polling is only the fallback.
//! - **The database going away is survived.** Connection errors are the retryable
//!   `StorageError::Unavailable`; the pool reconnects; nothing is recorded against a workflow.
//! - **Migrations** are versioned, recorded, and applied under an advisory lock, so workers
//!   starting at the same moment apply them once. Everything lives in one schema (default
//!   `loom`), so several Loom installations or test runs can share a database.
//!
//! ```no_run
//! use loom_postgres::{PostgresOptions, PostgresStorage};
//! # async fn f() -> Result<(), loom_storage::StorageError> {
//! let store = PostgresStorage::connect("postgres://postgres@127.0.0.1:5432/test", PostgresOptions::default()).await?;
//! # Ok(()) }
//! ```

mod batch;
mod claim;
mod notify;
mod read;
mod schema;
#[cfg(feature = "testing")]
pub mod testing;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_trait::async_trait;
use loom_core::{Event, EventKind, LogRecord, Payload, Seq, WorkflowId};
use loom_storage::engine::{self, Applied, Op, WriteSet};
use loom_storage::{
    ActivityCommitted, ActivityTask, ActivityTaskCompletion, Backlog, ClaimRequest, Lease,
    ListQuery, Page, Pending, Purge, Release, Reset, Result, RunSummary, Stats, Storage,
    StorageError, TaskId, Termination, WorkflowSummary, WorkflowTask, WorkflowTaskCompletion,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::Notify;

/// How to connect.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The schema that holds Loom's tables; created if missing.
    pub schema: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a call waits for a free connection before failing as `Unavailable`.
    pub acquire_timeout: Duration,
    /// How many group commits may be in flight at once, each on its own connection.
    pub commit_concurrency: usize,
    /// The most commits one group commit carries.
    pub max_batch: usize,
    /// Whether to hold a connection that listens for work other processes enqueue, so that
    /// idle workers wake at once. A one-shot client (a command line) needs none.
    pub listen: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "loom".into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            commit_concurrency: 4,
            max_batch: 128,
            listen: true,
        }
    }
}

/// A Loom store in a PostgreSQL schema. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStorage {
    pool: PgPool,
    channel: String,
    work: Arc<Notify>,
    /// Whether it listens for other processes' work (`work` fires for it).
    listens: bool,
    /// The group commit of write sets.
    committer: batch::Committer,
}

/// What a database error means: a serialization failure, a deadlock, a shutdown or a lost
/// connection may pass if retried (`Unavailable`); a constraint or data error, or one the
/// applier raised, will not (`Rejected`); an undecodable row is `Corrupt`.
fn sql_err(e: sqlx::Error) -> StorageError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.get(..2).unwrap_or("") {
                "40" | "57" | "08" | "53" => {
                    StorageError::unavailable(format!("PostgreSQL asked to retry ({code})"), e)
                }
                "22" | "23" | "P0" => {
                    StorageError::rejected(format!("PostgreSQL refused a write ({code})"), e)
                }
                _ => StorageError::unavailable(format!("PostgreSQL error {code}"), e),
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StorageError::corrupt("a PostgreSQL row cannot be decoded", e)
        }
        _ => StorageError::unavailable("PostgreSQL is unavailable", e),
    }
}

fn seq(n: i64) -> Seq {
    Seq::new(n.max(0).unsigned_abs())
}

fn seq_i64(s: Seq) -> i64 {
    i64::try_from(s.get()).unwrap_or(i64::MAX)
}

fn task_i64(t: TaskId) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PostgresStorage {
    /// Connects to `url`, creates the schema if needed and applies migrations under an
    /// advisory lock. A schema written by a newer Loom is refused.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self> {
        let schema = options.schema.clone();
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StorageError::InvalidArgument(format!(
                "the schema name {schema:?} must be letters, digits and underscores"
            )));
        }
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StorageError::InvalidArgument(format!("{url:?} is not a PostgreSQL URL: {e}"))
            })?
            .application_name("loom")
            .options([("search_path", schema.as_str())]);
        // TLS to this machine protects nothing and costs a handshake per connection: unless
        // the URL asks for an `sslmode`, a loopback server is reached without it.
        if !url.contains("sslmode=") && is_loopback(connect.get_host()) {
            connect = connect.ssl_mode(sqlx::postgres::PgSslMode::Disable);
        }
        let pool = PgPoolOptions::new()
            // The listening connection is the pool's too: it needs one more.
            .max_connections(options.max_connections.max(1 + u32::from(options.listen)))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| {
                StorageError::unavailable(
                    format!(
                        "cannot connect to PostgreSQL at {}",
                        loom_storage::redact_url(url)
                    ),
                    e,
                )
            })?;
        schema::migrate(&pool, &schema).await?;
        let channel = format!("loom_work_{schema}");
        let committer = {
            // Set while a NOTIFY is on its way: bursts of new work send one.
            let notifying = Arc::new(AtomicBool::new(false));
            let (pool, channel) = (pool.clone(), channel.clone());
            batch::Committer::start(
                pool.clone(),
                options.commit_concurrency,
                options.max_batch,
                move || notify::notify_later(&pool, &channel, &notifying),
            )
        };
        let store = PostgresStorage {
            pool,
            channel,
            work: Arc::new(Notify::new()),
            listens: options.listen,
            committer,
        };
        if options.listen {
            store.listen();
        }
        Ok(store)
    }

    /// Closes the pool; later calls fail as `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies a write set of the engine's through the group commit.
    async fn apply(&self, ws: WriteSet) -> Result<Applied> {
        if ws.checks.is_empty() && ws.ops.is_empty() {
            return Ok(Applied::default());
        }
        let item = loom_storage::engine::wire::item(&ws)?;
        // A store that listens lives on and sends its notifications from a task of their own;
        // one that does not (a one-shot command) sends its own before answering, or the
        // command could end with it still on its way.
        let wakes = ws.wakes();
        let answer = self.committer.commit(item, wakes && self.listens).await?;
        let applied = loom_storage::engine::wire::applied(&ws, answer)?;
        if wakes && !self.listens {
            notify::notify_now(&self.pool, &self.channel).await;
        }
        Ok(applied)
    }
}

/// The error for a write set this backend applies outside `loom_apply` that no longer has the
/// shape it expects: the engine and this crate disagree.
/// Whether `host` is this machine: `localhost`, a loopback address, or a Unix socket's
/// directory.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.starts_with('/')
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn unexpected(ws: &WriteSet) -> StorageError {
    StorageError::Unavailable {
        message: format!("loom-postgres cannot apply {ws:?} in one statement"),
        source: None,
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()> {
        self.apply(engine::create(id, started)?).await.map(drop)
    }

    async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        self.fetch_history(id, after).await
    }

    async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
        let ws = engine::claim_workflow_tasks(req);
        match ws.ops.as_slice() {
            [] => Ok(Vec::new()),
            [Op::ClaimWorkflowTasks { of: None, req }] => self.claim_workflows(req).await,
            _ => Err(unexpected(&ws)),
        }
    }

    async fn complete_workflow_task(
        &self,
        completion: WorkflowTaskCompletion,
    ) -> Result<Vec<ActivityTask>> {
        Ok(self
            .apply(engine::complete_workflow_task(completion)?)
            .await?
            .activity_tasks)
    }

    async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
        let ws = engine::claim_activity_tasks(req);
        match ws.ops.as_slice() {
            [] => Ok(Vec::new()),
            [Op::ClaimActivityTasks { of: None, req }] => self.claim_activities(req).await,
            _ => Err(unexpected(&ws)),
        }
    }

    async fn complete_activity_task(
        &self,
        completion: ActivityTaskCompletion,
    ) -> Result<ActivityCommitted> {
        Ok(self
            .apply(engine::complete_activity_task(completion)?)
            .await?
            .activity_committed())
    }

    async fn renew_lease(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        let ws = engine::renew(lease, extend);
        match (ws.checks.as_slice(), ws.ops.as_slice()) {
            (
                [engine::Check::Leased { task, token }],
                [
                    Op::Renew {
                        until: engine::When::After(d),
                        ..
                    },
                ],
            ) if *task == lease.task && *token == lease.token => self.renew(lease, *d).await,
            _ => Err(unexpected(&ws)),
        }
    }

    async fn release_task(&self, lease: &Lease, release: Release) -> Result<()> {
        self.apply(engine::release(lease, release)).await.map(drop)
    }

    async fn forget_affinity(&self, owner: &str) -> Result<()> {
        self.apply(engine::forget_affinity(owner)?).await.map(drop)
    }

    async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()> {
        let kind = EventKind::SignalReceived {
            name: name.to_owned(),
            payload,
        };
        self.apply(engine::deliver(id, kind)?).await.map(drop)
    }

    async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()> {
        let kind = EventKind::CancelRequested { reason };
        self.apply(engine::deliver(id, kind)?).await.map(drop)
    }

    async fn terminate(&self, termination: Termination) -> Result<()> {
        self.apply(engine::terminate(termination)?).await.map(drop)
    }

    async fn reset(&self, reset: Reset) -> Result<()> {
        self.apply(engine::reset(reset)?).await.map(drop)
    }

    async fn purge(&self, purge: &Purge) -> Result<Vec<WorkflowId>> {
        Ok(self.apply(engine::purge(purge)?).await?.purged)
    }

    async fn pause(&self, id: &WorkflowId, reason: &str) -> Result<()> {
        self.apply(engine::pause(id, reason)?).await.map(drop)
    }

    async fn resume(&self, id: &WorkflowId) -> Result<()> {
        self.apply(engine::resume(id)?).await.map(drop)
    }

    async fn load_run(&self, id: &WorkflowId, run: u32) -> Result<Vec<Event>> {
        self.fetch_run(id, run).await
    }

    async fn runs(&self, id: &WorkflowId) -> Result<Vec<RunSummary>> {
        self.fetch_runs(id).await
    }

    async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
        self.fetch_summary(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>> {
        self.fetch_list(query).await
    }

    async fn stats(&self) -> Result<Stats> {
        self.fetch_stats().await
    }

    async fn backlog(&self) -> Result<Backlog> {
        self.fetch_backlog().await
    }

    fn counters(&self) -> loom_storage::StoreCounters {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        let (group_commits, writes_committed) = self.committer.committed();
        loom_storage::StoreCounters {
            group_commits,
            writes_committed,
            connections: Some((self.pool.size(), idle)),
        }
    }

    async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        self.fetch_logs(id).await
    }

    async fn pending(&self, id: &WorkflowId) -> Result<Pending> {
        self.fetch_pending(id).await
    }

    async fn now(&self) -> Result<loom_core::Timestamp> {
        self.fetch_now().await
    }

    async fn schedule(&self, id: &str) -> Result<loom_storage::Schedule> {
        self.fetch_schedules(Some(id), None, 1)
            .await?
            .pop()
            .ok_or_else(|| StorageError::ScheduleNotFound(id.to_owned()))
    }

    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<loom_storage::Schedule>> {
        self.fetch_schedules(None, after, limit).await
    }

    async fn due_schedules(&self, limit: usize) -> Result<loom_storage::DueSchedules> {
        self.fetch_due_schedules(limit).await
    }

    async fn write_schedule(&self, write: loom_storage::ScheduleWrite) -> Result<()> {
        self.apply(engine::write_schedule(write)?).await.map(drop)
    }

    fn work_signal(&self) -> loom_storage::WorkSignal<'_> {
        // Made here, not in an `async` body: a `Notified` sees every `notify_waiters` after its
        // creation, polled or not.
        Box::pin(self.work.notified())
    }

    fn signals_work(&self) -> bool {
        self.listens
    }
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("channel", &self.channel)
            .field("group_commits", &self.committer.statements())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_this_machine_is_loopback() {
        for host in [
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
            "/var/run/postgresql",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["db.example.com", "10.0.0.5", "192.168.1.2"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
