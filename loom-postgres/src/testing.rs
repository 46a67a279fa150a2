//! Test support (feature `testing`): a store in a fresh schema of the test server, or a loud
//! skip when no server is reachable (a failure under `CI=true`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loom_core::{Event, LogRecord, Payload, Seq, WorkflowId};
use loom_storage::{
    ActivityCommitted, ActivityTask, ActivityTaskCompletion, ClaimRequest, Lease, ListQuery, Page,
    Pending, Release, Stats, Storage, WorkflowSummary, WorkflowTask, WorkflowTaskCompletion,
};

use sqlx::postgres::PgPoolOptions;
use tokio::sync::OnceCell;

use crate::{PostgresOptions, PostgresStorage};

/// The environment variable naming the test server.
pub const URL_VAR: &str = "LOOM_TEST_POSTGRES_URL";
/// The test server used when the variable is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test server's URL.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

static READY: OnceCell<bool> = OnceCell::const_new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether the test server answers. The first call also drops the schemas earlier test runs
/// left behind. Without a server: under `CI=true` this panics; otherwise it prints a loud
/// notice and returns `false`.
pub async fn server_available() -> bool {
    *READY
        .get_or_init(|| async {
            let url = url();
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(3))
                .connect(&url)
                .await;
            match pool {
                Ok(pool) => {
                    let stale: Vec<String> = sqlx::query_scalar(
                        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'loomtest\\_%'",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
                    let mine = format!("loomtest_{}_", std::process::id());
                    for schema in stale.iter().filter(|s| !s.starts_with(&mine)) {
                        let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
                    }
                    pool.close().await;
                    true
                }
                Err(e) => {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "PostgreSQL is not reachable at {url} ({e}) and CI=true: the PostgreSQL tests must run in CI"
                    );
                    // Straight to the process's stderr: the test harness hides what passing tests
                    // print, and this notice must be seen.
                    let notice = format!(
                        "\n!!! SKIPPED: the PostgreSQL tests need a server at {url} ({e}); \
                         set {URL_VAR} to point at one. Nothing was tested against PostgreSQL.\n\n"
                    );
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
                    false
                }
            }
        })
        .await
}

/// A schema name unique to this process and call.
pub fn fresh_schema() -> String {
    format!(
        "loomtest_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A store in a fresh schema, or `None` (after a loud notice) when no server is reachable.
pub async fn fresh() -> Option<PostgresStorage> {
    if !server_available().await {
        return None;
    }
    let options = PostgresOptions {
        schema: fresh_schema(),
        max_connections: 4,
        ..PostgresOptions::default()
    };
    Some(
        PostgresStorage::connect(&url(), options)
            .await
            .expect("connect to the test server"),
    )
}

/// A store in a fresh schema whose clock is `clock` rather than the server's, or `None` when
/// no server is reachable: `loom_now_ms()`, by which every statement reads the time, reads a
/// one-row table instead, which every call first sets from `clock`. For the differential
/// test, which runs every backend on one manual clock.
pub async fn fresh_on(clock: loom_storage::ManualClock) -> Option<std::sync::Arc<dyn Storage>> {
    // One at a time: the previous one's connections are closed first, so that a long run of
    // cases does not exhaust the server's connections.
    let previous = PREVIOUS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(previous) = previous {
        previous.close().await;
    }
    let store = fresh().await?;
    *PREVIOUS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store.clone());
    sqlx::raw_sql(
        "CREATE TABLE loom_test_clock (ms bigint NOT NULL);
         INSERT INTO loom_test_clock VALUES (0);
         CREATE OR REPLACE FUNCTION loom_now_ms() RETURNS bigint LANGUAGE sql STABLE
             AS $$ SELECT ms FROM loom_test_clock $$;",
    )
    .execute(&store.pool)
    .await
    .expect("install the test clock");
    Some(std::sync::Arc::new(OnClock {
        store,
        clock,
        synced: tokio::sync::Mutex::new(i64::MIN),
    }))
}

static PREVIOUS: std::sync::Mutex<Option<PostgresStorage>> = std::sync::Mutex::new(None);

/// A store whose database clock follows a manual clock.
struct OnClock {
    store: PostgresStorage,
    clock: loom_storage::ManualClock,
    /// The time last written to the table; held while writing, so that a concurrent call
    /// waits for the write rather than running on the old time.
    synced: tokio::sync::Mutex<i64>,
}

impl OnClock {
    async fn sync(&self) -> loom_storage::Result<()> {
        let now = loom_storage::Clock::now(&self.clock).as_millis();
        let mut synced = self.synced.lock().await;
        if *synced != now {
            sqlx::query("UPDATE loom_test_clock SET ms = $1")
                .bind(now)
                .execute(&self.store.pool)
                .await
                .map_err(crate::sql_err)?;
            *synced = now;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Storage for OnClock {
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.create_workflow(id, started).await
    }
    async fn load_history(&self, id: &WorkflowId, after: Seq) -> loom_storage::Result<Vec<Event>> {
        self.store.load_history(id, after).await
    }
    async fn claim_workflow_tasks(
        &self,
        req: &ClaimRequest,
    ) -> loom_storage::Result<Vec<WorkflowTask>> {
        self.sync().await?;
        self.store.claim_workflow_tasks(req).await
    }
    async fn complete_workflow_task(
        &self,
        c: WorkflowTaskCompletion,
    ) -> loom_storage::Result<Vec<ActivityTask>> {
        self.sync().await?;
        self.store.complete_workflow_task(c).await
    }
    async fn claim_activity_tasks(
        &self,
        req: &ClaimRequest,
    ) -> loom_storage::Result<Vec<ActivityTask>> {
        self.sync().await?;
        self.store.claim_activity_tasks(req).await
    }
    async fn complete_activity_task(
        &self,
        c: ActivityTaskCompletion,
    ) -> loom_storage::Result<ActivityCommitted> {
        self.sync().await?;
        self.store.complete_activity_task(c).await
    }
    async fn renew_lease(&self, lease: &Lease, extend: Duration) -> loom_storage::Result<Lease> {
        self.sync().await?;
        self.store.renew_lease(lease, extend).await
    }
    async fn release_task(&self, lease: &Lease, release: Release) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.release_task(lease, release).await
    }
    async fn forget_affinity(&self, owner: &str) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.forget_affinity(owner).await
    }
    async fn signal(
        &self,
        id: &WorkflowId,
        name: &str,
        payload: Payload,
    ) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.signal(id, name, payload).await
    }
    async fn request_cancel(
        &self,
        id: &WorkflowId,
        reason: Option<String>,
    ) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.request_cancel(id, reason).await
    }
    async fn terminate(&self, termination: loom_storage::Termination) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.terminate(termination).await
    }
    async fn purge(&self, purge: &loom_storage::Purge) -> loom_storage::Result<Vec<WorkflowId>> {
        self.sync().await?;
        self.store.purge(purge).await
    }
    async fn reset(&self, reset: loom_storage::Reset) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.reset(reset).await
    }
    async fn pause(&self, id: &WorkflowId, reason: &str) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.pause(id, reason).await
    }
    async fn resume(&self, id: &WorkflowId) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.resume(id).await
    }
    async fn load_run(&self, id: &WorkflowId, run: u32) -> loom_storage::Result<Vec<Event>> {
        self.store.load_run(id, run).await
    }
    async fn runs(&self, id: &WorkflowId) -> loom_storage::Result<Vec<loom_storage::RunSummary>> {
        self.store.runs(id).await
    }
    async fn describe(&self, id: &WorkflowId) -> loom_storage::Result<WorkflowSummary> {
        self.store.describe(id).await
    }
    async fn list(&self, query: &ListQuery) -> loom_storage::Result<Page<WorkflowSummary>> {
        self.store.list(query).await
    }
    async fn stats(&self) -> loom_storage::Result<Stats> {
        self.sync().await?;
        self.store.stats().await
    }
    async fn backlog(&self) -> loom_storage::Result<loom_storage::Backlog> {
        self.sync().await?;
        self.store.backlog().await
    }
    fn counters(&self) -> loom_storage::StoreCounters {
        self.store.counters()
    }
    async fn logs(&self, id: &WorkflowId) -> loom_storage::Result<Vec<LogRecord>> {
        self.store.logs(id).await
    }
    async fn pending(&self, id: &WorkflowId) -> loom_storage::Result<Pending> {
        self.sync().await?;
        self.store.pending(id).await
    }
    async fn now(&self) -> loom_storage::Result<loom_core::Timestamp> {
        self.sync().await?;
        self.store.now().await
    }
    async fn schedule(&self, id: &str) -> loom_storage::Result<loom_storage::Schedule> {
        self.store.schedule(id).await
    }
    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> loom_storage::Result<Vec<loom_storage::Schedule>> {
        self.store.schedules(after, limit).await
    }
    async fn due_schedules(
        &self,
        limit: usize,
    ) -> loom_storage::Result<loom_storage::DueSchedules> {
        self.sync().await?;
        self.store.due_schedules(limit).await
    }
    async fn write_schedule(&self, write: loom_storage::ScheduleWrite) -> loom_storage::Result<()> {
        self.sync().await?;
        self.store.write_schedule(write).await
    }
}
