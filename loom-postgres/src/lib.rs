//! # loom-postgres: many workers on many machines
//!
//! This crate is the **PostgreSQL room**: it implements [`loom_storage::Storage`] on
//! PostgreSQL through sqlx, for any number of worker processes on any number of hosts sharing
//! one database. PostgreSQL is the durable, replicated store; Loom does not re-implement it.
//! The crate must not touch workflow semantics: it stores what loom-core decided and reads task
//! plans with [`loom_storage::TaskPlan`], like every backend. No SQL leaves it.
//!
//! ## How it is built
//!
//! - **Claims scale with workers.** One statement claims a batch with `FOR UPDATE SKIP
//!   LOCKED`: concurrent claimers skip each other's rows instead of waiting.
//! - **Fencing in the committing transaction.** Every commit locks its task row and checks the
//!   lease's token and expiry in the same transaction that writes; a worker whose lease lapsed
//!   (paused, partitioned, slow) cannot commit.
//! - **Group commit on the server.** The commits of the hot path (starts, workflow-task and
//!   activity commits, signals) queue up and go to the PL/pgSQL function `loom_commit` as one
//!   array: one round trip, one transaction and one WAL flush for all of them, each checked and
//!   answered on its own (see `batch.rs` and `commit.sql`). Round trips, not the disk, bound a
//!   database on the other side of a network, and a per-statement start-up cost bounds one on
//!   the same machine.
//! - **One clock: the database's.** Lease expiry and due times are compared with
//!   `clock_timestamp()` on the server, and a timer armed by `sleep(d)` becomes visible at the
//!   database's now plus `d`, so clock skew between hosts can neither fire a timer early nor steal
//!   a live lease.
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
#[cfg(feature = "testing")]
pub mod testing;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use batch::{ActivityItem, CreateItem, DeliverItem, Outcome, WorkflowItem, unexpected};
use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, LogLevel, LogRecord, Payload, Progress, Seq,
    Timestamp, WorkflowId,
};
use loom_storage::plan::{activity_result, check_append, check_continues, started_fields};
use loom_storage::{
    ActivityTask, ActivityTaskCompletion, ClaimRequest, Lease, ListCursor, ListQuery, Message,
    MessageId, Page, Release, Result, Stats, Storage, StorageError, TaskId, TaskPlan,
    WorkflowStatus, WorkflowSummary, WorkflowTask, WorkflowTaskCompletion,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use tokio::sync::Notify;

/// The schema version this build writes.
const LATEST: i64 = MIGRATIONS.len() as i64;

/// Migrations in order; never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    r#"
-- The database's clock in milliseconds. STABLE, not VOLATILE: evaluated once per statement,
-- which is the meaning we want, and it lets `visible_at <= loom_now_ms()` be an index
-- condition (a volatile call is only a filter, and a claim that finds nothing would walk the
-- whole index of leased and future tasks).
CREATE FUNCTION loom_now_ms() RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE workflows (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    version       integer NOT NULL,
    status        text NOT NULL,
    input         text NOT NULL,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL,
    closed_at     bigint,
    last_seq      bigint NOT NULL,
    output        text,
    failure       text,
    pause_reason  text,
    progress      text
);
CREATE INDEX workflows_by_time ON workflows (created_at DESC, id DESC);
CREATE INDEX workflows_by_status ON workflows (status, created_at DESC, id DESC);

CREATE TABLE events (
    workflow_id  text NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    seq          bigint NOT NULL,
    at           bigint NOT NULL,
    kind         text NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);

CREATE TABLE messages (
    id           bigserial PRIMARY KEY,
    workflow_id  text NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    visible_at   bigint NOT NULL,
    kind         text NOT NULL
);
CREATE INDEX messages_by_workflow ON messages (workflow_id, visible_at, id);
CREATE INDEX messages_by_time ON messages (visible_at);

-- While leased, visible_at is the lease's expiry: claimable is visible_at <= now.
CREATE TABLE tasks (
    id                bigserial PRIMARY KEY,
    kind              smallint NOT NULL,
    workflow_id       text NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    visible_at        bigint,
    lease_token       bigint NOT NULL DEFAULT 0,
    lease_expires_at  bigint,
    lease_owner       text,
    deliveries        integer NOT NULL DEFAULT 0,
    activity_id       bigint,
    name              text,
    input             text,
    options           text,
    attempt           integer
);
CREATE INDEX tasks_ready ON tasks (kind, visible_at, id) WHERE visible_at IS NOT NULL;
CREATE UNIQUE INDEX tasks_workflow_task ON tasks (workflow_id) WHERE kind = 0;
CREATE INDEX tasks_by_workflow ON tasks (workflow_id);

CREATE TABLE logs (
    n            bigserial PRIMARY KEY,
    workflow_id  text NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    seq          bigint NOT NULL,
    at           bigint NOT NULL,
    level        text NOT NULL,
    message      text NOT NULL
);
CREATE INDEX logs_by_workflow ON logs (workflow_id, n);
"#,
    include_str!("commit.sql"),
];

const WORKFLOW_TASK: i16 = 0;
const ACTIVITY_TASK: i16 = 1;

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
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "loom".into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            commit_concurrency: 4,
            max_batch: 128,
        }
    }
}

/// A Loom store in a PostgreSQL schema. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStorage {
    pool: PgPool,
    channel: String,
    work: Arc<Notify>,
    /// Set while a NOTIFY is on its way: bursts of new work send one.
    notifying: Arc<AtomicBool>,
    /// The group commit of the hot path.
    committer: batch::Committer,
}

fn sql_err(e: sqlx::Error) -> StorageError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // Serialization failures, deadlocks and shutdowns are worth retrying.
            if code.starts_with("40") || code.starts_with("57") || code.starts_with("08") {
                StorageError::unavailable(format!("PostgreSQL asked to retry ({code})"), e)
            } else {
                StorageError::unavailable(format!("PostgreSQL error {code}"), e)
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StorageError::corrupt("a PostgreSQL row cannot be decoded", e)
        }
        _ => StorageError::unavailable("PostgreSQL is unavailable", e),
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StorageError::InvalidArgument(format!("cannot encode a value: {e}")))
}

fn decode<T: DeserializeOwned>(text: &str, what: impl FnOnce() -> String) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StorageError::corrupt(format!("{} cannot be decoded", what()), e))
}

fn seq(n: i64) -> Seq {
    Seq::new(n.max(0).unsigned_abs())
}

fn seq_i64(s: Seq) -> i64 {
    i64::try_from(s.get()).unwrap_or(i64::MAX)
}

/// A log line as PostgreSQL text can hold it: NUL characters become U+FFFD, so that a line
/// that contains one cannot make its workflow task's commit fail for ever.
fn log_text(message: &str) -> std::borrow::Cow<'_, str> {
    if message.contains('\0') {
        std::borrow::Cow::Owned(message.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(message)
    }
}

fn task_i64(t: TaskId) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn level_str(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
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
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StorageError::InvalidArgument(format!("{url:?} is not a PostgreSQL URL: {e}"))
            })?
            .application_name("loom")
            .options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| {
                StorageError::unavailable(
                    format!("cannot connect to PostgreSQL at {}", redact(url)),
                    e,
                )
            })?;
        migrate(&pool, &schema).await?;
        let channel = format!("loom_work_{schema}");
        let notifying = Arc::new(AtomicBool::new(false));
        let committer = {
            let (pool, channel, notifying) = (pool.clone(), channel.clone(), notifying.clone());
            batch::Committer::start(
                pool.clone(),
                options.commit_concurrency,
                options.max_batch,
                move || notify_later(&pool, &channel, &notifying),
            )
        };
        let store = PostgresStorage {
            pool,
            channel,
            work: Arc::new(Notify::new()),
            notifying,
            committer,
        };
        store.listen();
        Ok(store)
    }

    /// Keeps a `LISTEN`ing connection that wakes idle workers; reconnects when it drops.
    fn listen(&self) {
        let (pool, channel, work) = (
            self.pool.clone(),
            self.channel.clone(),
            Arc::downgrade(&self.work),
        );
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                if work.upgrade().is_none() {
                    return;
                }
                let listener = async {
                    let mut l = PgListener::connect_with(&pool).await?;
                    l.listen(&channel).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                match listener.await {
                    Ok(mut l) => {
                        pause = Duration::from_millis(100);
                        // `Ok(None)` means the connection was re-established and notifications
                        // may have been missed: waking the workers then is right too.
                        while l.try_recv().await.is_ok() {
                            match work.upgrade() {
                                Some(n) => n.notify_waiters(),
                                None => return,
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "LISTEN failed; retrying"),
                }
                if pool.is_closed() {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Starts a transaction. Only ever called inside [`Self::detached`]: see there.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(sql_err)
    }

    /// Runs `op` (which holds a transaction) on a task of its own and waits for it, so that
    /// a caller that stops waiting (a `select!`, a timeout, an aborted task) never cancels it
    /// half-way.
    ///
    /// sqlx 0.9.0's `Pool::begin` is not cancel-safe on PostgreSQL (transact-rs/sqlx#4393):
    /// a future dropped while `BEGIN` is in flight returns its connection to the pool inside
    /// an open transaction that nothing ends. Every later statement on that connection,
    /// group commits included, then runs inside it: their results come back as if committed,
    /// are visible to that connection's own reads, and are lost when it closes. The worker
    /// drops a lease renewal whenever its task ends first, so this was not hypothetical: a
    /// multi-process test lost workflow steps to it.
    async fn detached<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(PostgresStorage) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(op(self.clone()))
            .await
            .map_err(|e| StorageError::Unavailable {
                message: format!("a PostgreSQL transaction's task ended early: {e}"),
                source: None,
            })?
    }

    /// [`Storage::release_task`], in a transaction (run it through [`Self::detached`]).
    async fn release(&self, lease: &Lease, release: Release) -> Result<()> {
        let mut tx = self.begin().await?;
        let (kind, workflow) = held(&mut tx, lease).await?;
        let task = task_i64(lease.task);
        match release.visible_at {
            Some(t) => sqlx::query(
                "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0, visible_at = $2 WHERE id = $1",
            )
            .bind(task)
            .bind(t.as_millis()),
            None => sqlx::query(
                "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0, visible_at = loom_now_ms() WHERE id = $1",
            )
            .bind(task),
        }
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
        if let (WORKFLOW_TASK, Some(reason)) = (kind, &release.pause) {
            sqlx::query("UPDATE workflows SET status = 'paused', pause_reason = $2, updated_at = loom_now_ms() WHERE id = $1")
                .bind(workflow.as_str())
                .bind(reason)
                .execute(&mut *tx)
                .await
                .map_err(sql_err)?;
        }
        self.commit(tx, release.visible_at.is_none()).await
    }

    /// Tells other processes that work is ready, after the commit that made it so.
    ///
    /// Not inside the data transaction: PostgreSQL serialises the commits of transactions that
    /// NOTIFY (a global lock held through the commit's WAL flush), which would undo its group
    /// commit. A separate, tiny transaction has no WAL to flush; bursts send one notification.
    fn notify_later(&self) {
        notify_later(&self.pool, &self.channel, &self.notifying);
    }

    /// Commits, then notifies other processes if `woke`.
    async fn commit(&self, tx: Transaction<'static, Postgres>, woke: bool) -> Result<()> {
        tx.commit().await.map_err(sql_err)?;
        if woke {
            self.notify_later();
        }
        Ok(())
    }

    /// Closes the pool; later calls fail as `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The URL without its password, for messages.
/// Sends one `NOTIFY` on `channel` from a task of its own, unless one is already on its way.
fn notify_later(pool: &PgPool, channel: &str, notifying: &Arc<AtomicBool>) {
    if notifying.swap(true, Ordering::AcqRel) {
        return;
    }
    let (pool, channel, flag) = (pool.clone(), channel.to_owned(), notifying.clone());
    tokio::spawn(async move {
        // Cleared first: work committed while this one is in flight sends another.
        flag.store(false, Ordering::Release);
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(&channel)
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "NOTIFY failed; workers will find the work by polling");
        }
    });
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn migrate(pool: &PgPool, schema: &str) -> Result<()> {
    let mut tx = pool.begin().await.map_err(sql_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("loom-migrations:{schema}"))
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&mut *tx)
    .await
    .map_err(sql_err)?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {schema}.loom_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )))
    .execute(&mut *tx)
    .await
    .map_err(sql_err)?;
    let current: i64 = sqlx::query_scalar::<_, Option<i32>>(AssertSqlSafe(format!(
        "SELECT MAX(version) FROM {schema}.loom_migrations"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(sql_err)?
    .map_or(0, i64::from);
    if current > LATEST {
        return Err(StorageError::Incompatible(format!(
            "the PostgreSQL schema {schema} has Loom schema version {current}, written by a newer Loom; \
             this build knows up to {LATEST}. Upgrade Loom to use it"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET LOCAL search_path TO {schema}; {sql}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {schema}.loom_migrations (version) VALUES ($1)"
        )))
        .bind(i as i32 + 1)
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
    }
    tx.commit().await.map_err(sql_err)
}

type Tx = Transaction<'static, Postgres>;

/// The task under `lease`, locked, if the lease is live: its kind and workflow.
async fn held(tx: &mut Tx, lease: &Lease) -> Result<(i16, WorkflowId)> {
    let row = sqlx::query(
        "SELECT kind, workflow_id FROM tasks WHERE id = $1 AND lease_token = $2 AND lease_expires_at > loom_now_ms() FOR UPDATE",
    )
    .bind(i64::try_from(lease.task.0).unwrap_or(i64::MAX))
    .bind(i64::try_from(lease.token).unwrap_or(i64::MAX))
    .fetch_optional(&mut **tx)
    .await
    .map_err(sql_err)?;
    let Some(row) = row else {
        return Err(StorageError::LeaseLost(lease.task));
    };
    Ok((row.get(0), WorkflowId::new(row.get::<String, _>(1))))
}

/// The workflow's last sequence number and status, locked.
async fn lock_workflow(tx: &mut Tx, id: &WorkflowId) -> Result<(Seq, WorkflowStatus)> {
    let row = sqlx::query("SELECT last_seq, status FROM workflows WHERE id = $1 FOR UPDATE")
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(sql_err)?;
    let Some(row) = row else {
        return Err(StorageError::NotFound(id.clone()));
    };
    let status: String = row.get(1);
    let status = status.parse().map_err(|e: String| StorageError::Corrupt {
        message: format!("workflow {id}: {e}"),
        source: None,
    })?;
    Ok((seq(row.get(0)), status))
}

/// Adds a message; the workflow task becomes ready by its time unless a live lease holds it.
async fn post(tx: &mut Tx, id: &WorkflowId, kind: &EventKind, visible: VisibleAt) -> Result<()> {
    let (mode, value) = visible.params();
    sqlx::query(
        "WITH m AS (
             INSERT INTO messages (workflow_id, visible_at, kind)
             VALUES ($1, CASE $3 WHEN 0 THEN loom_now_ms() WHEN 1 THEN loom_now_ms() + $4 ELSE $4 END, $2)
             RETURNING visible_at)
         UPDATE tasks SET visible_at = LEAST(COALESCE(tasks.visible_at, m.visible_at),
             CASE WHEN lease_expires_at > loom_now_ms() THEN GREATEST(m.visible_at, lease_expires_at) ELSE m.visible_at END)
         FROM m WHERE tasks.kind = 0 AND tasks.workflow_id = $1",
    )
    .bind(id.as_str())
    .bind(encode(kind)?)
    .bind(mode)
    .bind(value)
    .execute(&mut **tx)
    .await
    .map_err(sql_err)?;
    Ok(())
}

/// When a message or task becomes visible, computed on the database's clock.
#[derive(Clone, Copy)]
enum VisibleAt {
    Now,
    After(i64),
    At(Timestamp),
}

impl VisibleAt {
    /// `(mode, value)` for the SQL `CASE mode WHEN 0 THEN now WHEN 1 THEN now + value ELSE value`.
    fn params(self) -> (i16, i64) {
        match self {
            VisibleAt::Now => (0, 0),
            VisibleAt::After(ms) => (1, ms),
            VisibleAt::At(t) => (2, t.as_millis()),
        }
    }
}

/// Makes an unleased workflow task ready at its earliest message, or not ready.
async fn refresh(tx: &mut Tx, id: &WorkflowId) -> Result<()> {
    sqlx::query(
        "UPDATE tasks SET visible_at = (SELECT MIN(visible_at) FROM messages WHERE workflow_id = $1)
         WHERE kind = 0 AND workflow_id = $1 AND (lease_expires_at IS NULL OR lease_expires_at <= loom_now_ms())",
    )
    .bind(id.as_str())
    .execute(&mut **tx)
    .await
    .map_err(sql_err)?;
    Ok(())
}

#[expect(clippy::too_many_arguments, reason = "one row's columns")]
async fn insert_activity(
    tx: &mut Tx,
    id: &WorkflowId,
    activity: ActivityId,
    name: &str,
    input: &Payload,
    options: &ActivityOptions,
    attempt: u32,
    visible: VisibleAt,
) -> Result<()> {
    let (mode, value) = visible.params();
    sqlx::query(
        "INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input, options, attempt)
         VALUES (1, $1, CASE $7 WHEN 0 THEN loom_now_ms() WHEN 1 THEN loom_now_ms() + $8 ELSE $8 END, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_str())
    .bind(seq_i64(activity.0))
    .bind(name)
    .bind(encode(input)?)
    .bind(encode(options)?)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .bind(mode)
    .bind(value)
    .execute(&mut **tx)
    .await
    .map_err(sql_err)?;
    Ok(())
}

/// Checks and appends events and stores what they imply. Returns whether new work became
/// ready (for NOTIFY).
async fn append(tx: &mut Tx, id: &WorkflowId, expected: Seq, events: &[Event]) -> Result<bool> {
    let (actual, status) = lock_workflow(tx, id).await?;
    check_append(id, actual, status, expected, events)?;
    let Some(last) = events.last() else {
        return Ok(false);
    };
    let seqs: Vec<i64> = events.iter().map(|e| seq_i64(e.seq)).collect();
    let ats: Vec<i64> = events.iter().map(|e| e.at.as_millis()).collect();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| encode(&e.kind))
        .collect::<Result<_>>()?;
    sqlx::query("INSERT INTO events (workflow_id, seq, at, kind) SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::text[])")
        .bind(id.as_str())
        .bind(&seqs)
        .bind(&ats)
        .bind(&kinds)
        .execute(&mut **tx)
        .await
        .map_err(sql_err)?;
    sqlx::query("UPDATE workflows SET last_seq = $2, updated_at = loom_now_ms() WHERE id = $1")
        .bind(id.as_str())
        .bind(seq_i64(last.seq))
        .execute(&mut **tx)
        .await
        .map_err(sql_err)?;
    let plan = TaskPlan::from_events(events);
    let woke = !plan.activities.is_empty();
    for a in &plan.activities {
        insert_activity(
            tx,
            id,
            a.activity_id,
            &a.name,
            &a.input,
            &a.options,
            1,
            VisibleAt::Now,
        )
        .await?;
    }
    for t in &plan.timers {
        // Judged by the database's clock: a timer never fires before its duration has passed
        // there, whatever the clock of the worker that computed `fire_at`.
        let visible = match t.duration_ms {
            Some(ms) => VisibleAt::After(i64::try_from(ms).unwrap_or(i64::MAX)),
            None => VisibleAt::At(t.fire_at),
        };
        post(tx, id, &t.message(), visible).await?;
    }
    if let Some(end) = plan.terminal {
        let output = end.output.as_ref().map(encode).transpose()?;
        let failure = end.failure.as_ref().map(encode).transpose()?;
        sqlx::query(
            "UPDATE workflows SET status = $2, output = $3, failure = $4, pause_reason = NULL, closed_at = loom_now_ms() WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(end.status.as_str())
        .bind(output)
        .bind(failure)
        .execute(&mut **tx)
        .await
        .map_err(sql_err)?;
        for sql in [
            "DELETE FROM messages WHERE workflow_id = $1",
            "DELETE FROM tasks WHERE (workflow_id = $1 AND kind = 0) OR (workflow_id = $1 AND kind = 1)",
        ] {
            sqlx::query(sql)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await
                .map_err(sql_err)?;
        }
    }
    Ok(woke)
}

const SUMMARY: &str = "id, name, version, status, input, created_at, updated_at, closed_at, last_seq, output, failure, pause_reason, progress";

fn summary(row: &PgRow) -> Result<WorkflowSummary> {
    let id: String = row.get(0);
    let field = |what: &str| format!("the {what} of workflow {id}");
    let status: String = row.get(3);
    let status = status.parse().map_err(|e: String| StorageError::Corrupt {
        message: format!("{}: {e}", field("status")),
        source: None,
    })?;
    let input: String = row.get(4);
    let output: Option<String> = row.get(9);
    let failure: Option<String> = row.get(10);
    let progress: Option<String> = row.get(12);
    Ok(WorkflowSummary {
        id: WorkflowId::new(id.clone()),
        name: row.get(1),
        version: u32::try_from(row.get::<i32, _>(2)).unwrap_or(0),
        status,
        input: decode(&input, || field("input"))?,
        created_at: Timestamp::from_millis(row.get(5)),
        updated_at: Timestamp::from_millis(row.get(6)),
        closed_at: row.get::<Option<i64>, _>(7).map(Timestamp::from_millis),
        last_seq: seq(row.get(8)),
        output: output.map(|t| decode(&t, || field("output"))).transpose()?,
        failure: failure
            .map(|t| decode(&t, || field("failure")))
            .transpose()?,
        pause_reason: row.get(11),
        progress: progress
            .map(|t| decode::<Progress>(&t, || field("progress")))
            .transpose()?,
    })
}

impl PostgresStorage {
    /// Claims up to `max` ready tasks of `kind` in one statement.
    async fn claim(&self, kind: i16, req: &ClaimRequest) -> Result<Vec<PgRow>> {
        sqlx::query(
            "WITH now AS MATERIALIZED (SELECT loom_now_ms() AS ms), picked AS (
                SELECT id FROM tasks WHERE kind = $1 AND visible_at <= (SELECT ms FROM now)
                ORDER BY visible_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
             )
             UPDATE tasks t SET lease_token = t.lease_token + 1, lease_expires_at = now.ms + $3,
                 visible_at = now.ms + $3, lease_owner = $4, deliveries = t.deliveries + 1
             FROM picked, now WHERE t.id = picked.id
             RETURNING t.id, t.workflow_id, t.lease_token, t.lease_expires_at, t.deliveries,
                 t.activity_id, t.name, t.input, t.options, t.attempt",
        )
        .bind(kind)
        .bind(i64::try_from(req.max).unwrap_or(i64::MAX))
        .bind(millis(req.lease))
        .bind(&req.owner)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)
    }
}

fn lease_of(row: &PgRow) -> Lease {
    Lease {
        task: TaskId(row.get::<i64, _>(0).unsigned_abs()),
        token: row.get::<i64, _>(2).unsigned_abs(),
        expires_at: Timestamp::from_millis(row.get(3)),
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()> {
        let (name, version, input) = started_fields(&started)?;
        if id.as_str().is_empty() {
            return Err(StorageError::InvalidArgument(
                "a workflow id cannot be empty".into(),
            ));
        }
        if id.as_str().contains('\0') {
            return Err(StorageError::InvalidArgument(
                "a workflow id cannot contain a NUL character (PostgreSQL text cannot hold one)"
                    .into(),
            ));
        }
        let item = CreateItem {
            t: "c",
            wf: id.as_str(),
            name,
            version,
            input: encode(input)?,
            at: started.at.as_millis(),
            kind: encode(&started.kind)?,
        };
        match self.committer.commit(&item, true).await? {
            Outcome::Ok(_) => Ok(()),
            Outcome::Exists(status) => Err(StorageError::AlreadyExists {
                id: id.clone(),
                status: batch::status(&status, id)?,
            }),
            other => Err(unexpected(&other)),
        }
    }

    async fn append_events(
        &self,
        id: &WorkflowId,
        expected_last_seq: Seq,
        events: Vec<Event>,
    ) -> Result<()> {
        let id = id.clone();
        self.detached(move |store| async move {
            let mut tx = store.begin().await?;
            let woke = append(&mut tx, &id, expected_last_seq, &events).await?;
            refresh(&mut tx, &id).await?;
            store.commit(tx, woke).await
        })
        .await
    }

    async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT seq, at, kind FROM events WHERE workflow_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(id.as_str())
        .bind(seq_i64(after))
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        // Nothing after `after`: either the history ends there or there is no such workflow.
        if rows.is_empty() {
            let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM workflows WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(sql_err)?;
            if exists.is_none() {
                return Err(StorageError::NotFound(id.clone()));
            }
        }
        rows.iter()
            .map(|r| {
                let n: i64 = r.get(0);
                let kind: String = r.get(2);
                Ok(Event {
                    seq: seq(n),
                    at: Timestamp::from_millis(r.get(1)),
                    kind: decode(&kind, || format!("event #{n} of workflow {id}"))?,
                })
            })
            .collect()
    }

    async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        // One statement: claim, then read each claimed workflow's name, last sequence number
        // and due messages (as parallel arrays, oldest first).
        let rows = sqlx::query(
            "WITH now AS MATERIALIZED (SELECT loom_now_ms() AS ms), picked AS (
                SELECT id, visible_at FROM tasks WHERE kind = 0 AND visible_at <= (SELECT ms FROM now)
                ORDER BY visible_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
             ), claimed AS (
                UPDATE tasks t SET lease_token = t.lease_token + 1, lease_expires_at = now.ms + $2,
                    visible_at = now.ms + $2, lease_owner = $3, deliveries = t.deliveries + 1
                FROM picked, now WHERE t.id = picked.id
                RETURNING t.id, t.workflow_id, t.lease_token, t.lease_expires_at, t.deliveries
             )
             SELECT c.id, c.workflow_id, c.lease_token, c.lease_expires_at, c.deliveries,
                 w.name, w.last_seq, m.ids, m.ats, m.kinds
             FROM claimed c
             JOIN picked p ON p.id = c.id
             JOIN workflows w ON w.id = c.workflow_id
             CROSS JOIN LATERAL (
                SELECT array_agg(id ORDER BY visible_at, id) AS ids,
                       array_agg(visible_at ORDER BY visible_at, id) AS ats,
                       array_agg(kind ORDER BY visible_at, id) AS kinds
                FROM messages WHERE workflow_id = c.workflow_id AND visible_at <= (SELECT ms FROM now)
             ) m
             ORDER BY p.visible_at, p.id",
        )
        .bind(i64::try_from(req.max).unwrap_or(i64::MAX))
        .bind(millis(req.lease))
        .bind(&req.owner)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        let mut tasks = Vec::with_capacity(rows.len());
        for row in &rows {
            let workflow_id: String = row.get(1);
            let ids: Vec<i64> = row.get::<Option<Vec<i64>>, _>(7).unwrap_or_default();
            let ats: Vec<i64> = row.get::<Option<Vec<i64>>, _>(8).unwrap_or_default();
            let kinds: Vec<String> = row.get::<Option<Vec<String>>, _>(9).unwrap_or_default();
            let mut due = Vec::with_capacity(ids.len());
            for ((mid, at), kind) in ids.into_iter().zip(ats).zip(kinds) {
                due.push(Message {
                    id: MessageId(mid.unsigned_abs()),
                    kind: decode(&kind, || format!("message {mid} of workflow {workflow_id}"))?,
                    visible_at: Timestamp::from_millis(at),
                });
            }
            tasks.push(WorkflowTask {
                lease: lease_of(row),
                workflow_name: row.get(5),
                last_seq: seq(row.get(6)),
                messages: due,
                deliveries: u32::try_from(row.get::<i32, _>(4)).unwrap_or(0),
                workflow_id: WorkflowId::new(workflow_id),
            });
        }
        Ok(tasks)
    }

    async fn complete_workflow_task(&self, c: WorkflowTaskCompletion) -> Result<()> {
        self.commit_workflow_task(c, None).await.map(drop)
    }

    async fn complete_workflow_task_and_claim(
        &self,
        c: WorkflowTaskCompletion,
        eager: &ClaimRequest,
    ) -> Result<Vec<ActivityTask>> {
        let id = c.workflow_id.clone();
        if eager.max == 0 {
            self.complete_workflow_task(c).await?;
            return Ok(Vec::new());
        }
        match self.commit_workflow_task(c, Some(eager)).await? {
            None => Ok(Vec::new()),
            Some(json) => eager_activities(&json, &id),
        }
    }

    async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        let rows = self.claim(ACTIVITY_TASK, req).await?;
        rows.iter()
            .map(|row| {
                let task: i64 = row.get(0);
                let input: String = row.get(7);
                let options: String = row.get(8);
                Ok(ActivityTask {
                    lease: lease_of(row),
                    workflow_id: WorkflowId::new(row.get::<String, _>(1)),
                    activity_id: ActivityId(seq(row.get::<Option<i64>, _>(5).unwrap_or(0))),
                    name: row.get::<Option<String>, _>(6).unwrap_or_default(),
                    input: decode(&input, || format!("the input of activity task {task}"))?,
                    options: decode(&options, || format!("the options of activity task {task}"))?,
                    attempt: u32::try_from(row.get::<Option<i32>, _>(9).unwrap_or(1)).unwrap_or(1),
                    deliveries: u32::try_from(row.get::<i32, _>(4)).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn complete_activity_task(&self, c: ActivityTaskCompletion) -> Result<()> {
        self.commit_activity_task(c, None).await.map(drop)
    }

    async fn complete_activity_task_and_claim(
        &self,
        c: ActivityTaskCompletion,
        eager: &ClaimRequest,
    ) -> Result<Option<WorkflowTask>> {
        if eager.max == 0 {
            self.complete_activity_task(c).await?;
            return Ok(None);
        }
        match self.commit_activity_task(c, Some(eager)).await? {
            None => Ok(None),
            Some(json) => eager_workflow_task(&json).map(Some),
        }
    }

    async fn renew_lease(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        // One statement, no transaction: the check and the extension together.
        let expires: Option<i64> = sqlx::query_scalar(
            "UPDATE tasks SET lease_expires_at = loom_now_ms() + $3, visible_at = loom_now_ms() + $3
             WHERE id = $1 AND lease_token = $2 AND lease_expires_at > loom_now_ms()
             RETURNING lease_expires_at",
        )
        .bind(task_i64(lease.task))
        .bind(i64::try_from(lease.token).unwrap_or(i64::MAX))
        .bind(millis(extend))
        .fetch_optional(&self.pool)
        .await
        .map_err(sql_err)?;
        match expires {
            Some(expires) => Ok(Lease {
                expires_at: Timestamp::from_millis(expires),
                ..*lease
            }),
            None => Err(StorageError::LeaseLost(lease.task)),
        }
    }

    async fn release_task(&self, lease: &Lease, release: Release) -> Result<()> {
        let lease = *lease;
        self.detached(move |store| async move { store.release(&lease, release).await })
            .await
    }

    async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()> {
        let kind = EventKind::SignalReceived {
            name: name.to_owned(),
            payload,
        };
        self.deliver(id, &kind).await
    }

    async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()> {
        self.deliver(id, &EventKind::CancelRequested { reason })
            .await
    }

    async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {SUMMARY} FROM workflows WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(sql_err)?;
        match row {
            Some(row) => summary(&row),
            None => Err(StorageError::NotFound(id.clone())),
        }
    }

    async fn list(&self, q: &ListQuery) -> Result<Page<WorkflowSummary>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {SUMMARY} FROM workflows
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR name = $2)
               AND ($3::bigint IS NULL OR created_at >= $3) AND ($4::bigint IS NULL OR created_at < $4)
               AND ($5::bigint IS NULL OR (created_at, id) < ($5, $6))
             ORDER BY created_at DESC, id DESC LIMIT $7"
        )))
        .bind(q.status.map(WorkflowStatus::as_str))
        .bind(q.name.as_deref())
        .bind(q.created_after.map(Timestamp::as_millis))
        .bind(q.created_before.map(Timestamp::as_millis))
        .bind(q.after.as_ref().map(|c| c.created_at.as_millis()))
        .bind(q.after.as_ref().map_or("", |c| c.id.as_str()))
        .bind(i64::try_from(q.limit).unwrap_or(i64::MAX - 1) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        let more = rows.len() > q.limit;
        let items = rows
            .iter()
            .take(q.limit)
            .map(summary)
            .collect::<Result<Vec<_>>>()?;
        let next = match items.last() {
            Some(last) if more => Some(ListCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            }),
            _ => None,
        };
        Ok(Page { items, next })
    }

    async fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        let rows = sqlx::query("SELECT status, COUNT(*) FROM workflows GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(sql_err)?;
        for r in rows {
            let status: String = r.get(0);
            if let Ok(status) = status.parse::<WorkflowStatus>() {
                stats
                    .workflows
                    .insert(status, r.get::<i64, _>(1).unsigned_abs());
            }
        }
        let r = sqlx::query(
            "WITH now AS (SELECT loom_now_ms() AS t)
             SELECT
               (SELECT COUNT(*) FROM events),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 0 AND visible_at <= now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 0 AND lease_expires_at > now.t),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 1 AND visible_at <= now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 1 AND lease_expires_at > now.t),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 1 AND visible_at > now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)),
               (SELECT COUNT(*) FROM messages, now WHERE visible_at > now.t),
               (SELECT MIN(visible_at) FROM tasks, now WHERE visible_at <= now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)),
               (SELECT MIN(v) FROM (
                   SELECT MIN(visible_at) AS v FROM tasks, now WHERE visible_at > now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)
                   UNION ALL SELECT MIN(visible_at) FROM messages, now WHERE visible_at > now.t) due)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(sql_err)?;
        let n = |i: usize| r.get::<i64, _>(i).unsigned_abs();
        stats.events = n(0);
        stats.workflow_tasks_ready = n(1);
        stats.workflow_tasks_running = n(2);
        stats.activity_tasks_ready = n(3);
        stats.activity_tasks_running = n(4);
        stats.activity_tasks_waiting = n(5);
        stats.messages_waiting = n(6);
        stats.oldest_ready_at = r.get::<Option<i64>, _>(7).map(Timestamp::from_millis);
        stats.next_due_at = r.get::<Option<i64>, _>(8).map(Timestamp::from_millis);
        Ok(stats)
    }

    async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        self.describe(id).await?;
        let rows = sqlx::query(
            "SELECT seq, at, level, message FROM logs WHERE workflow_id = $1 ORDER BY n",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        Ok(rows
            .iter()
            .map(|r| LogRecord {
                seq: seq(r.get(0)),
                at: Timestamp::from_millis(r.get(1)),
                level: match r.get::<String, _>(2).as_str() {
                    "debug" => LogLevel::Debug,
                    "warn" => LogLevel::Warn,
                    "error" => LogLevel::Error,
                    _ => LogLevel::Info,
                },
                message: r.get(3),
            })
            .collect())
    }

    async fn work_signal(&self) {
        self.work.notified().await;
    }
}

impl PostgresStorage {
    async fn deliver(&self, id: &WorkflowId, kind: &EventKind) -> Result<()> {
        let item = DeliverItem {
            t: "s",
            wf: id.as_str(),
            kind: encode(kind)?,
        };
        match self.committer.commit(&item, true).await? {
            Outcome::Ok(_) => Ok(()),
            Outcome::NotFound => Err(StorageError::NotFound(id.clone())),
            Outcome::Closed(status) => Err(StorageError::Closed {
                id: id.clone(),
                status: batch::status(&status, id)?,
            }),
            other => Err(unexpected(&other)),
        }
    }
}

impl PostgresStorage {
    /// Commits a workflow task, with an eager claim of its activities if `eager`; returns the
    /// claim as the server's JSON.
    async fn commit_workflow_task(
        &self,
        c: WorkflowTaskCompletion,
        eager: Option<&ClaimRequest>,
    ) -> Result<Option<String>> {
        let id = &c.workflow_id;
        check_continues(c.expected_last_seq, &c.events)?;
        let plan = TaskPlan::from_events(&c.events);
        let item = WorkflowItem {
            t: "w",
            wf: id.as_str(),
            task: task_i64(c.lease.task),
            token: i64::try_from(c.lease.token).unwrap_or(i64::MAX),
            expected: seq_i64(c.expected_last_seq),
            last: seq_i64(c.events.last().map_or(c.expected_last_seq, |e| e.seq)),
            events: c
                .events
                .iter()
                .map(|e| Ok((seq_i64(e.seq), e.at.as_millis(), encode(&e.kind)?)))
                .collect::<Result<_>>()?,
            acts: plan
                .activities
                .iter()
                .map(|a| {
                    Ok((
                        seq_i64(a.activity_id.0),
                        a.name.as_str(),
                        encode(&a.input)?,
                        encode(&a.options)?,
                    ))
                })
                .collect::<Result<_>>()?,
            timers: plan
                .timers
                .iter()
                .map(|t| {
                    // Judged by the database's clock: a timer never fires before its duration
                    // has passed there, whatever the clock of the worker that computed `fire_at`.
                    let (mode, value) = match t.duration_ms {
                        Some(ms) => VisibleAt::After(i64::try_from(ms).unwrap_or(i64::MAX)),
                        None => VisibleAt::At(t.fire_at),
                    }
                    .params();
                    Ok((encode(&t.message())?, mode, value))
                })
                .collect::<Result<_>>()?,
            term: plan
                .terminal
                .as_ref()
                .map(|end| {
                    Ok::<_, StorageError>((
                        end.status.as_str(),
                        end.output.as_ref().map(encode).transpose()?,
                        end.failure.as_ref().map(encode).transpose()?,
                    ))
                })
                .transpose()?,
            consumed: c
                .consumed
                .iter()
                .map(|m| i64::try_from(m.0).unwrap_or(i64::MAX))
                .collect(),
            logs: c
                .logs
                .iter()
                .map(|l| {
                    (
                        seq_i64(l.seq),
                        l.at.as_millis(),
                        level_str(l.level),
                        log_text(&l.message),
                    )
                })
                .collect(),
            progress: c.progress.as_ref().map(encode).transpose()?,
            eager: eager.map(|r| batch::Eager {
                owner: &r.owner,
                lease_ms: millis(r.lease),
                max: i64::try_from(r.max).unwrap_or(i64::MAX),
            }),
        };
        let wakes = !plan.activities.is_empty();
        match self.committer.commit(&item, wakes).await? {
            Outcome::Ok(claimed) => Ok(claimed),
            Outcome::LeaseLost => Err(StorageError::LeaseLost(c.lease.task)),
            Outcome::NotThatTask => Err(StorageError::InvalidArgument(format!(
                "{} is not the workflow task of {}",
                c.lease.task, c.workflow_id
            ))),
            Outcome::NotFound => Err(StorageError::NotFound(id.clone())),
            Outcome::Closed(status) => Err(StorageError::Closed {
                id: id.clone(),
                status: batch::status(&status, id)?,
            }),
            Outcome::Conflict(actual) => Err(batch::conflict(id, c.expected_last_seq, actual)),
            other => Err(unexpected(&other)),
        }
    }

    /// Commits an activity attempt, with an eager claim of the workflow task it wakes if
    /// `eager`; returns the claim as the server's JSON.
    async fn commit_activity_task(
        &self,
        c: ActivityTaskCompletion,
        eager: Option<&ClaimRequest>,
    ) -> Result<Option<String>> {
        let (activity, attempt, retry_at) = activity_result(&c.result)?;
        let item = ActivityItem {
            t: "a",
            task: task_i64(c.lease.task),
            token: i64::try_from(c.lease.token).unwrap_or(i64::MAX),
            act: seq_i64(activity.0),
            attempt,
            result: encode(&c.result)?,
            retry_at: retry_at.map(Timestamp::as_millis),
            eager: eager.map(|r| batch::Eager {
                owner: &r.owner,
                lease_ms: millis(r.lease),
                max: 1,
            }),
        };
        match self.committer.commit(&item, true).await? {
            Outcome::Ok(claimed) => Ok(claimed),
            Outcome::LeaseLost => Err(StorageError::LeaseLost(c.lease.task)),
            Outcome::NotThatTask => Err(StorageError::InvalidArgument(format!(
                "{} is not an activity task",
                c.lease.task
            ))),
            Outcome::Mismatch(task_activity, task_attempt) => {
                Err(StorageError::InvalidArgument(format!(
                    "the result is for {activity} attempt {attempt}, the task is {} attempt {task_attempt}",
                    ActivityId(seq(task_activity))
                )))
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// The activity tasks a workflow-task commit claimed, from `loom_commit`'s JSON:
/// `[[task, token, expires, deliveries, activity_id, name, input, options, attempt], ...]`.
fn eager_activities(json: &str, id: &WorkflowId) -> Result<Vec<ActivityTask>> {
    type Row = (i64, i64, i64, i32, i64, String, String, String, i32);
    let rows: Vec<Row> = decode(json, || format!("the eager claim of {id}'s activities"))?;
    rows.into_iter()
        .map(
            |(task, token, expires, deliveries, activity, name, input, options, attempt)| {
                Ok(ActivityTask {
                    lease: Lease {
                        task: TaskId(task.unsigned_abs()),
                        token: token.unsigned_abs(),
                        expires_at: Timestamp::from_millis(expires),
                    },
                    workflow_id: id.clone(),
                    activity_id: ActivityId(seq(activity)),
                    name,
                    input: decode(&input, || format!("the input of activity task {task}"))?,
                    options: decode(&options, || format!("the options of activity task {task}"))?,
                    attempt: u32::try_from(attempt).unwrap_or(1),
                    deliveries: u32::try_from(deliveries).unwrap_or(0),
                })
            },
        )
        .collect()
}

/// The workflow task an activity commit claimed, from `loom_commit`'s JSON:
/// `[task, token, expires, deliveries, workflow_id, name, last_seq, [[id, visible_at, kind], ...]]`.
fn eager_workflow_task(json: &str) -> Result<WorkflowTask> {
    type Row = (
        i64,
        i64,
        i64,
        i32,
        String,
        String,
        i64,
        Vec<(i64, i64, String)>,
    );
    let (task, token, expires, deliveries, workflow_id, name, last, messages): Row =
        decode(json, || "the eager claim of a workflow task".to_owned())?;
    let messages = messages
        .into_iter()
        .map(|(mid, at, kind)| {
            Ok(Message {
                id: MessageId(mid.unsigned_abs()),
                kind: decode(&kind, || format!("message {mid} of workflow {workflow_id}"))?,
                visible_at: Timestamp::from_millis(at),
            })
        })
        .collect::<Result<_>>()?;
    Ok(WorkflowTask {
        lease: Lease {
            task: TaskId(task.unsigned_abs()),
            token: token.unsigned_abs(),
            expires_at: Timestamp::from_millis(expires),
        },
        workflow_id: WorkflowId::new(workflow_id),
        workflow_name: name,
        last_seq: seq(last),
        messages,
        deliveries: u32::try_from(deliveries).unwrap_or(0),
    })
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
    use super::redact;

    #[test]
    fn passwords_are_kept_out_of_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
