//! End-to-end behaviour of the worker and client, on MemoryStorage, SQLite, redb and
//! PostgreSQL (the last skipped loudly without a server, failing under `CI=true`). Retry
//! intervals are milliseconds long, and the tests about long waits (an hour's sleep, a week's
//! signal timeout) run on a manual clock that the store and the worker share and the test
//! moves: no test waits seconds for real time to pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loom_core::future::join_all;
use loom_core::{
    Activity, ActivityContext, ActivityError, ActivityOptions, EventKind, Failure, Payload,
    Registry, RetryPolicy, Workflow, WorkflowContext, WorkflowError, WorkflowId,
};
use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::{ManualClock, MemoryStorage, Storage, WorkflowStatus};
use loom_worker::{Client, ClientError, MetricsSnapshot, StartOptions, Worker, WorkerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

// ---- activities ----

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_interval: Duration::from_millis(5),
        backoff_coefficient: 2.0,
        max_interval: Duration::from_millis(20),
        non_retryable: vec!["card_declined".into()],
    }
}

struct ProcessPayment;
impl Activity for ProcessPayment {
    const NAME: &'static str = "process_payment";
    type Input = String;
    type Output = bool;
    async fn run(&self, _: ActivityContext, order_id: String) -> Result<bool, Failure> {
        Ok(!order_id.starts_with("declined"))
    }
}

struct SendConfirmation(Arc<AtomicU32>);
impl Activity for SendConfirmation {
    const NAME: &'static str = "send_confirmation";
    type Input = String;
    type Output = ();
    async fn run(&self, _: ActivityContext, _email: String) -> Result<(), Failure> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Fails the first `fail_times` attempts of each call, then succeeds.
struct Flaky;
impl Activity for Flaky {
    const NAME: &'static str = "flaky";
    type Input = u32;
    type Output = u32;
    fn options() -> ActivityOptions {
        ActivityOptions {
            retry: fast_retry(5),
            ..ActivityOptions::default()
        }
    }
    async fn run(&self, ctx: ActivityContext, fail_times: u32) -> Result<u32, Failure> {
        if ctx.info().attempt <= fail_times {
            return Err(Failure::new(
                "flaky",
                format!("attempt {} fails", ctx.info().attempt),
            ));
        }
        Ok(ctx.info().attempt)
    }
}

/// Sleeps for its input in milliseconds.
struct Slow;
impl Activity for Slow {
    const NAME: &'static str = "slow";
    type Input = u64;
    type Output = u64;
    fn options() -> ActivityOptions {
        ActivityOptions {
            traceparent: None,
            retry: fast_retry(2),
            start_to_close_timeout: Duration::from_millis(50),
            heartbeat_timeout_ms: None,
        }
    }
    async fn run(&self, _: ActivityContext, ms: u64) -> Result<u64, Failure> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
}

struct Double;
impl Activity for Double {
    const NAME: &'static str = "double";
    type Input = u64;
    type Output = u64;
    async fn run(&self, _: ActivityContext, n: u64) -> Result<u64, Failure> {
        Ok(n * 2)
    }
}

struct Panicky;
impl Activity for Panicky {
    const NAME: &'static str = "panicky";
    type Input = ();
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions {
            retry: fast_retry(2),
            ..ActivityOptions::default()
        }
    }
    async fn run(&self, _: ActivityContext, (): ()) -> Result<(), Failure> {
        panic!("activity code blew up")
    }
}

/// Runs for a minute unless cancelled.
struct Long;
impl Activity for Long {
    const NAME: &'static str = "long";
    type Input = ();
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions {
            traceparent: None,
            retry: RetryPolicy::no_retries(),
            start_to_close_timeout: Duration::from_secs(120),
            heartbeat_timeout_ms: None,
        }
    }
    async fn run(&self, _: ActivityContext, (): ()) -> Result<(), Failure> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
}

struct LongRunning;
impl Workflow for LongRunning {
    const NAME: &'static str = "LongRunning";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        Ok(ctx.activity::<Long>(()).await?)
    }
}

/// Never heartbeats, and runs longer than its heartbeat timeout.
struct Silent;
impl Activity for Silent {
    const NAME: &'static str = "silent";
    type Input = ();
    type Output = ();
    fn options() -> ActivityOptions {
        ActivityOptions {
            traceparent: None,
            retry: RetryPolicy::no_retries(),
            start_to_close_timeout: Duration::from_secs(30),
            heartbeat_timeout_ms: Some(40),
        }
    }
    async fn run(&self, _: ActivityContext, (): ()) -> Result<(), Failure> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    }
}

// ---- workflows ----

#[derive(Serialize, Deserialize, Clone)]
struct Order {
    order_id: String,
    customer_email: String,
}

#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct OrderState {
    payment_confirmed: bool,
    email_sent: bool,
}

struct OrderProcessing;
impl Workflow for OrderProcessing {
    const NAME: &'static str = "OrderProcessing";
    type Input = Order;
    type State = OrderState;
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let paid = ctx
            .step(
                "payment",
                ctx.activity::<ProcessPayment>(ctx.input().order_id.clone()),
            )
            .await?;
        ctx.update_state(|s| s.payment_confirmed = paid)?;
        if !paid {
            return Ok("payment declined".into());
        }
        ctx.activity::<SendConfirmation>(ctx.input().customer_email.clone())
            .await?;
        ctx.update_state(|s| s.email_sent = true)?;
        Ok(format!("order {} complete", ctx.input().order_id))
    }
}

struct Retrying;
impl Workflow for Retrying {
    const NAME: &'static str = "Retrying";
    type Input = u32;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        match ctx.activity::<Flaky>(*ctx.input()).await {
            Ok(attempt) => Ok(format!("succeeded on attempt {attempt}")),
            Err(ActivityError::Failed { attempts, .. }) => Ok(format!("gave up after {attempts}")),
            Err(e) => Err(e.into()),
        }
    }
}

struct TimesOut;
impl Workflow for TimesOut {
    const NAME: &'static str = "TimesOut";
    type Input = u64;
    type State = ();
    type Output = u64;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        Ok(ctx.activity::<Slow>(*ctx.input()).await?)
    }
}

struct Nap;
impl Workflow for Nap {
    const NAME: &'static str = "Nap";
    type Input = u64;
    type State = ();
    type Output = u64;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        ctx.sleep(Duration::from_millis(*ctx.input())).await?;
        Ok(ctx.activity::<Double>(*ctx.input()).await?)
    }
}

#[derive(Serialize, Deserialize)]
struct Approval {
    approved: bool,
    by: String,
}

struct AwaitApproval;
impl Workflow for AwaitApproval {
    const NAME: &'static str = "AwaitApproval";
    type Input = u64;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let first: Approval = ctx.wait_signal("approve").await?;
        let second = ctx
            .wait_signal_timeout::<Approval>("approve", Duration::from_millis(*ctx.input()))
            .await?;
        Ok(format!(
            "{}:{} then {}",
            first.by,
            first.approved,
            second.map_or("timeout".to_owned(), |a| format!("{}:{}", a.by, a.approved))
        ))
    }
}

#[derive(Default, Serialize, Deserialize)]
struct CleanupState {
    cleaned_up: bool,
}

struct CancelMe;
impl Workflow for CancelMe {
    const NAME: &'static str = "CancelMe";
    type Input = ();
    type State = CleanupState;
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        match ctx.sleep(Duration::from_secs(3_600)).await {
            Err(WorkflowError::Cancelled) => {
                ctx.activity::<Double>(1).await?;
                ctx.update_state(|s| s.cleaned_up = true)?;
                Err(WorkflowError::Cancelled)
            }
            other => other,
        }
    }
}

struct FanOut;
impl Workflow for FanOut {
    const NAME: &'static str = "FanOut";
    type Input = u64;
    type State = ();
    type Output = u64;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let calls = (1..=*ctx.input()).map(|i| ctx.activity::<Double>(i));
        let mut sum = 0;
        for r in join_all(calls).await {
            sum += r?;
        }
        Ok(sum)
    }
}

/// Version A of a workflow: double, wait for a signal, double again.
struct Evolving;
impl Workflow for Evolving {
    const NAME: &'static str = "Evolving";
    type Input = u64;
    type State = ();
    type Output = u64;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let a = ctx.activity::<Double>(*ctx.input()).await?;
        let () = ctx.wait_signal("go").await?;
        Ok(ctx.activity::<Double>(a).await?)
    }
}

/// An incompatible change to `Evolving`: the first activity's input differs.
struct EvolvingBroken;
impl Workflow for EvolvingBroken {
    const NAME: &'static str = "Evolving";
    type Input = u64;
    type State = ();
    type Output = u64;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u64, WorkflowError> {
        let a = ctx.activity::<Double>(*ctx.input() + 1).await?;
        let () = ctx.wait_signal("go").await?;
        Ok(ctx.activity::<Double>(a).await?)
    }
}

struct PanicsInActivity;
impl Workflow for PanicsInActivity {
    const NAME: &'static str = "PanicsInActivity";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        match ctx.activity::<Panicky>(()).await {
            Err(ActivityError::Failed {
                failure, attempts, ..
            }) => Ok(format!("{} after {attempts}", failure.kind)),
            other => Ok(format!("unexpected: {other:?}")),
        }
    }
}

struct HeartbeatLost;
impl Workflow for HeartbeatLost {
    const NAME: &'static str = "HeartbeatLost";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        match ctx.activity::<Silent>(()).await {
            Err(ActivityError::TimedOut { attempts, .. }) => {
                Ok(format!("timed out after {attempts}"))
            }
            other => Ok(format!("unexpected: {other:?}")),
        }
    }
}

/// A retried activity, then a durable sleep, then the time: everything that a worker's clock
/// used to decide.
struct Skewed;
impl Workflow for Skewed {
    const NAME: &'static str = "Skewed";
    type Input = u64;
    type State = ();
    type Output = i64;
    async fn run(ctx: WorkflowContext<Self>) -> Result<i64, WorkflowError> {
        ctx.activity::<Flaky>(1).await?;
        ctx.sleep(Duration::from_millis(*ctx.input())).await?;
        Ok(ctx.now().as_millis())
    }
}

// ---- harness ----

fn registry_with(emails: Arc<AtomicU32>, evolving_broken: bool) -> Registry {
    let mut r = Registry::new();
    r.add_workflow::<OrderProcessing>()
        .and_then(|r| r.add_workflow::<Retrying>())
        .and_then(|r| r.add_workflow::<TimesOut>())
        .and_then(|r| r.add_workflow::<Nap>())
        .and_then(|r| r.add_workflow::<AwaitApproval>())
        .and_then(|r| r.add_workflow::<CancelMe>())
        .and_then(|r| r.add_workflow::<FanOut>())
        .and_then(|r| r.add_workflow::<PanicsInActivity>())
        .and_then(|r| r.add_workflow::<HeartbeatLost>())
        .and_then(|r| r.add_activity(ProcessPayment))
        .and_then(|r| r.add_activity(SendConfirmation(emails)))
        .and_then(|r| r.add_activity(Flaky))
        .and_then(|r| r.add_activity(Slow))
        .and_then(|r| r.add_activity(Double))
        .and_then(|r| r.add_activity(Panicky))
        .and_then(|r| r.add_activity(Silent))
        .and_then(|r| r.add_workflow::<LongRunning>())
        .and_then(|r| r.add_workflow::<Skewed>())
        .and_then(|r| r.add_activity(Long))
        .expect("registry");
    if evolving_broken {
        r.add_workflow::<EvolvingBroken>().expect("register");
    } else {
        r.add_workflow::<Evolving>().expect("register");
    }
    r
}

fn registry() -> Registry {
    registry_with(Arc::new(AtomicU32::new(0)), false)
}

fn config() -> WorkerConfig {
    WorkerConfig {
        id: "test-worker".into(),
        poll_interval: Duration::from_millis(20),
        lease: Duration::from_secs(2),
        shutdown_grace: Duration::from_millis(500),
        pause_retry: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<MetricsSnapshot>,
}

impl Running {
    async fn stop(self) -> MetricsSnapshot {
        let _ = self.stop.send(());
        self.handle.await.expect("worker task")
    }
}

/// Waits until the workflow's progress satisfies `ready`; fails with `what` after `WAIT`.
async fn wait_for_progress(
    client: &Client,
    id: &WorkflowId,
    what: &str,
    ready: impl Fn(&loom_core::Progress) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !client
        .describe(id)
        .await
        .expect("describe")
        .progress
        .is_some_and(|p| ready(&p))
    {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn spawn(worker: &Worker) -> Running {
    let (stop, rx) = oneshot::channel::<()>();
    let worker = worker.clone();
    let handle = tokio::spawn(async move {
        worker
            .run(async {
                let _ = rx.await;
            })
            .await
            .expect("worker runs")
    });
    Running { stop, handle }
}

const WAIT: Duration = Duration::from_secs(20);

async fn memory() -> Arc<dyn Storage> {
    Arc::new(MemoryStorage::new())
}

async fn sqlite() -> Arc<dyn Storage> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStorage::open(dir.path().join("loom.db"), SqliteOptions::default())
        .await
        .expect("open");
    std::mem::forget(dir);
    Arc::new(store)
}

async fn redb() -> Arc<dyn Storage> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = loom_redb::RedbStorage::open(dir.path().join("loom.redb"))
        .await
        .expect("open");
    std::mem::forget(dir);
    Arc::new(store)
}

/// A store in a fresh schema of the test server; `None` (after a loud notice) without one.
async fn postgres() -> Option<Arc<dyn Storage>> {
    let store = loom_postgres::testing::fresh().await?;
    Some(Arc::new(store))
}

/// A store in a fresh database of the MySQL test server; `None` (after a loud notice) without
/// one.
async fn mysql() -> Option<Arc<dyn Storage>> {
    let store = loom_mysql::testing::fresh().await?;
    Some(Arc::new(store))
}

async fn memory_on(clock: ManualClock) -> Option<Arc<dyn Storage>> {
    Some(Arc::new(MemoryStorage::with_clock(Arc::new(clock))))
}

async fn sqlite_on(clock: ManualClock) -> Option<Arc<dyn Storage>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions {
        clock: Arc::new(clock),
        ..SqliteOptions::default()
    };
    let store = SqliteStorage::open(dir.path().join("loom.db"), options)
        .await
        .expect("open");
    std::mem::forget(dir);
    Some(Arc::new(store))
}

async fn redb_on(clock: ManualClock) -> Option<Arc<dyn Storage>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        loom_redb::RedbStorage::open_with_clock(dir.path().join("loom.redb"), Arc::new(clock))
            .await
            .expect("open");
    std::mem::forget(dir);
    Some(Arc::new(store))
}

/// Each backend on a manual clock that the test moves, which the worker shares: time passes
/// when the test says so, not by waiting.
macro_rules! on_every_backend_on_a_clock {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;
                async fn run(fresh: impl AsyncFn(ManualClock) -> Option<Arc<dyn Storage>>) {
                    let clock = ManualClock::new(loom_storage::Clock::now(&loom_storage::SystemClock));
                    let Some(store) = fresh(clock.clone()).await else {
                        return;
                    };
                    super::$name(store, clock).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_memory() {
                    run(memory_on).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    run(sqlite_on).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_redb() {
                    run(redb_on).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    run(loom_postgres::testing::fresh_on).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_mysql() {
                    run(loom_mysql::testing::fresh_on).await;
                }
            }
        )*
    };
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::memory().await).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite().await).await;
                }
            )*
        }
        mod on_redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::redb().await).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = super::postgres().await else {
                        return;
                    };
                    super::$name(store).await;
                }
            )*
        }
        mod on_mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = super::mysql().await else {
                        return;
                    };
                    super::$name(store).await;
                }
            )*
        }
    };
}

on_every_backend!(
    order_processing_pays_then_emails,
    a_busy_worker_decides_the_next_step_of_a_workflow_in_flight,
    a_declined_payment_sends_no_email,
    a_flaky_activity_is_retried_and_each_attempt_recorded,
    retries_run_out_and_the_code_handles_it,
    a_hung_activity_times_out_and_the_workflow_fails_with_the_cause,
    signals_sent_before_and_after_the_wait_are_delivered_in_order,
    cancellation_reaches_the_code_which_cleans_up,
    parallel_activities_fan_out_and_in,
    a_nondeterministic_change_pauses_and_the_fix_resumes,
    a_panicking_activity_is_a_failure_and_the_worker_survives,
    a_silent_activity_times_out_on_its_heartbeat,
    the_sticky_cache_and_replay_give_the_same_result,
    starting_twice_with_one_id_is_idempotent,
    an_unknown_workflow_type_pauses_with_a_clear_reason,
    shutdown_releases_unfinished_work_at_once,
    a_worker_clock_an_hour_ahead_changes_nothing,
    a_worker_clock_an_hour_behind_changes_nothing,
);

on_every_backend_on_a_clock!(
    a_durable_sleep_survives_a_worker_restart,
    a_signal_wait_times_out_after_a_week,
);

fn order(id: &str) -> Order {
    Order {
        order_id: id.into(),
        customer_email: "ada@example.com".into(),
    }
}

async fn order_processing_pays_then_emails(store: Arc<dyn Storage>) {
    let emails = Arc::new(AtomicU32::new(0));
    let worker = Worker::with_config(store, registry_with(emails.clone(), false), config());
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<OrderProcessing>(&order("42"), StartOptions::id("order-42"))
        .await
        .expect("start");
    let output = handle.result_within(WAIT).await.expect("result");
    assert_eq!(output, "order 42 complete");
    let summary = client.describe(handle.id()).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::Completed);
    let state: OrderState = summary
        .progress
        .expect("progress")
        .state
        .decode()
        .expect("state");
    assert_eq!(
        state,
        OrderState {
            payment_confirmed: true,
            email_sent: true
        }
    );
    assert_eq!(emails.load(Ordering::SeqCst), 1);
    running.stop().await;
}

/// A worker whose every activity slot is busy (here its only one, running the payment) still
/// decides the next step of the workflow whose activity just finished, from its cached
/// machine, in the result's own commit: the step continues a workflow in flight, and left in
/// the queue it would wait behind every newer workflow's first task.
async fn a_busy_worker_decides_the_next_step_of_a_workflow_in_flight(store: Arc<dyn Storage>) {
    let cfg = WorkerConfig {
        activity_concurrency: 1,
        ..config()
    };
    let worker = Worker::with_config(store, registry(), cfg);
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<OrderProcessing>(&order("7"), StartOptions::id("order-busy"))
        .await
        .expect("start");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "order 7 complete"
    );
    let metrics = running.stop().await;
    assert_eq!(metrics.workflows_finished, 1, "{metrics:?}");
    assert!(
        metrics.decided_ahead >= 1,
        "the payment's commit decided the next step: {metrics:?}"
    );
}

/// Two workers share a PostgreSQL store and each other's activities: a workflow's later tasks
/// still go to the worker that holds it in its cache (its affinity; the store's notification
/// tells that worker at once), so every history is loaded once, however often an activity's
/// result is committed by the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_stay_with_the_worker_that_holds_them() {
    let Some(store) = postgres().await else {
        return;
    };
    assert!(store.signals_work());
    const ORDERS: u64 = 24;
    let worker = |id: &str| {
        Worker::with_config(
            store.clone(),
            registry(),
            WorkerConfig {
                id: id.into(),
                // One activity slot each: a commit rarely finds one free to run its activity
                // itself, so most results reach the store from whichever worker claimed
                // them. Workflow slots for every order: a claimed task never goes back for
                // want of one (a release gives up its affinity).
                activity_concurrency: 1,
                workflow_concurrency: 64,
                affinity_window: Duration::from_secs(60),
                ..config()
            },
        )
    };
    let (a, b) = (worker("worker-a"), worker("worker-b"));
    let client = a.client();
    let (running_a, running_b) = (spawn(&a), spawn(&b));
    let mut handles = Vec::new();
    for i in 0..ORDERS {
        handles.push(
            client
                .start::<OrderProcessing>(
                    &order(&i.to_string()),
                    StartOptions::id(format!("sticky-{i}")),
                )
                .await
                .expect("start"),
        );
    }
    for (i, handle) in handles.iter().enumerate() {
        assert_eq!(
            handle.result_within(WAIT).await.expect("result"),
            format!("order {i} complete")
        );
    }
    let (ma, mb) = (running_a.stop().await, running_b.stop().await);
    assert_eq!(ma.workflows_finished + mb.workflows_finished, ORDERS);
    assert!(
        ma.activities_completed > 0 && mb.activities_completed > 0,
        "both workers ran activities: {ma:?} {mb:?}"
    );
    assert_eq!(
        ma.cache_misses + mb.cache_misses,
        ORDERS,
        "each history loaded once: {ma:?} {mb:?}"
    );
}

/// A worker that stops gracefully gives up its affinities: the workflow it kept cached goes
/// to another worker as soon as there is work for it, not after the window (a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_hands_its_workflows_on_at_once() {
    let Some(store) = postgres().await else {
        return;
    };
    let worker = |id: &str| {
        Worker::with_config(
            store.clone(),
            registry(),
            WorkerConfig {
                id: id.into(),
                affinity_window: Duration::from_secs(60),
                ..config()
            },
        )
    };
    let a = worker("worker-a");
    let client = a.client();
    let running = spawn(&a);
    let handle = client
        .start::<AwaitApproval>(&60_000, StartOptions::id("handed-on"))
        .await
        .expect("start");
    // Its first task has run on worker a (which now prefers it) when it waits for a signal.
    wait_for_progress(&client, handle.id(), "the first task never ran", |p| {
        !p.awaiting_signals.is_empty()
    })
    .await;
    running.stop().await;
    let b = worker("worker-b");
    let running = spawn(&b);
    for by in ["ada", "grace"] {
        let approval = Approval {
            approved: true,
            by: by.into(),
        };
        client
            .signal(
                handle.id(),
                "approve",
                loom_core::Payload::encode(&approval).expect("encode"),
            )
            .await
            .expect("signal");
    }
    assert_eq!(
        handle
            .result_within(Duration::from_secs(10))
            .await
            .expect("worker b finishes it well inside the window"),
        "ada:true then grace:true"
    );
    running.stop().await;
}

async fn a_declined_payment_sends_no_email(store: Arc<dyn Storage>) {
    let emails = Arc::new(AtomicU32::new(0));
    let worker = Worker::with_config(store, registry_with(emails.clone(), false), config());
    let running = spawn(&worker);
    let handle = worker
        .client()
        .start::<OrderProcessing>(&order("declined-7"), StartOptions::default())
        .await
        .expect("start");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "payment declined"
    );
    assert_eq!(emails.load(Ordering::SeqCst), 0);
    running.stop().await;
}

fn count(history: &[loom_core::Event], f: impl Fn(&EventKind) -> bool) -> usize {
    history.iter().filter(|e| f(&e.kind)).count()
}

async fn a_flaky_activity_is_retried_and_each_attempt_recorded(store: Arc<dyn Storage>) {
    let worker = Worker::with_config(store, registry(), config());
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<Retrying>(&3, StartOptions::default())
        .await
        .expect("start");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "succeeded on attempt 4"
    );
    let history = client.history(handle.id()).await.expect("history");
    let failed: Vec<(u32, bool)> = history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ActivityFailed {
                attempt, retry_at, ..
            } => Some((*attempt, retry_at.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![(1, true), (2, true), (3, true)]);
    assert_eq!(
        count(&history, |k| matches!(
            k,
            EventKind::ActivityCompleted { attempt: 4, .. }
        )),
        1
    );
    running.stop().await;
}

async fn retries_run_out_and_the_code_handles_it(store: Arc<dyn Storage>) {
    let worker = Worker::with_config(store, registry(), config());
    let running = spawn(&worker);
    let handle = worker
        .client()
        .start::<Retrying>(&99, StartOptions::default())
        .await
        .expect("start");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "gave up after 5"
    );
    running.stop().await;
}

async fn a_hung_activity_times_out_and_the_workflow_fails_with_the_cause(store: Arc<dyn Storage>) {
    let worker = Worker::with_config(store, registry(), config());
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<TimesOut>(&5_000, StartOptions::default())
        .await
        .expect("start");
    let err = handle.result_within(WAIT).await.expect_err("times out");
    let ClientError::Failed { failure, .. } = err else {
        panic!("expected a failure, got {err}");
    };
    assert_eq!(failure.kind, "activity_timed_out");
    assert!(
        failure.message.contains("slow") && failure.message.contains("2 attempt"),
        "{}",
        failure.message
    );
    let history = client.history(handle.id()).await.expect("history");
    assert_eq!(
        count(&history, |k| matches!(
            k,
            EventKind::ActivityTimedOut { .. }
        )),
        2
    );
    // And a fast one completes within the same timeout.
    let quick = client
        .start::<TimesOut>(&1, StartOptions::default())
        .await
        .expect("start");
    assert_eq!(quick.result_within(WAIT).await.expect("result"), 1);
    running.stop().await;
}

/// A worker on the store's manual clock.
fn on(clock: &ManualClock) -> WorkerConfig {
    WorkerConfig {
        clock: Arc::new(clock.clone()),
        ..config()
    }
}

async fn a_durable_sleep_survives_a_worker_restart(store: Arc<dyn Storage>, clock: ManualClock) {
    let client = Client::new(store.clone());
    let hour = 3_600_000;
    let handle = client
        .start::<Nap>(&hour, StartOptions::default())
        .await
        .expect("start");
    // The first worker starts the timer, then goes away before it fires.
    let first = Worker::with_config(store.clone(), registry(), on(&clock));
    let running = spawn(&first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let history = client.history(handle.id()).await.expect("history");
        if count(&history, |k| matches!(k, EventKind::TimerScheduled { .. })) == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timer was never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await;
    assert_eq!(
        client.status(handle.id()).await.expect("status"),
        WorkflowStatus::Running
    );
    // Nothing fires before its time, with or without a worker.
    clock.advance(Duration::from_millis(hour - 1_000));
    let second = Worker::with_config(store, registry(), on(&clock));
    let running = spawn(&second);
    assert!(
        handle
            .result_within(Duration::from_millis(300))
            .await
            .is_err(),
        "the timer fired early"
    );
    // An hour later by the store's clock (and not one second of waiting for it), it fires.
    clock.advance(Duration::from_millis(1_000));
    assert_eq!(handle.result_within(WAIT).await.expect("result"), 2 * hour);
    let history = client.history(handle.id()).await.expect("history");
    assert_eq!(
        count(&history, |k| matches!(k, EventKind::TimerFired { .. })),
        1
    );
    let scheduled_at = history[1].at;
    let fired_at = history
        .iter()
        .find(|e| matches!(e.kind, EventKind::TimerFired { .. }))
        .expect("fired")
        .at;
    assert!(
        fired_at.as_millis() - scheduled_at.as_millis() >= i64::try_from(hour).unwrap_or(0),
        "the timer fired after its time"
    );
    running.stop().await;
}

/// A workflow waits a week for a signal that never comes, and then takes the timeout branch;
/// the week passes on the manual clock.
async fn a_signal_wait_times_out_after_a_week(store: Arc<dyn Storage>, clock: ManualClock) {
    let week = 7 * 24 * 3_600_000;
    let worker = Worker::with_config(store, registry(), on(&clock));
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<AwaitApproval>(&week, StartOptions::default())
        .await
        .expect("start");
    client
        .signal(handle.id(), "approve", approval("ann", true))
        .await
        .expect("signal");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = client.describe(handle.id()).await.expect("describe");
        if s.progress.is_some_and(|p| p.pending_timers.len() == 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workflow never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clock.advance(Duration::from_millis(week));
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "ann:true then timeout"
    );
    running.stop().await;
}

/// The system clock shifted by a fixed amount: a host whose clock is wrong.
struct Shifted(i64);
impl loom_storage::Clock for Shifted {
    fn now(&self) -> loom_core::Timestamp {
        let now = loom_storage::Clock::now(&loom_storage::SystemClock);
        loom_core::Timestamp::from_millis(now.as_millis() + self.0)
    }
}

async fn a_worker_clock_an_hour_ahead_changes_nothing(store: Arc<dyn Storage>) {
    a_worker_clock_off_by(store, 3_600_000).await;
}

async fn a_worker_clock_an_hour_behind_changes_nothing(store: Arc<dyn Storage>) {
    a_worker_clock_off_by(store, -3_600_000).await;
}

/// A worker whose clock is `offset_ms` off runs a retried activity and a durable sleep on
/// time, and every time it records (event times, the retry's time, the timer's, `ctx.now()`)
/// is the store's: within a minute of when the store created the workflow.
async fn a_worker_clock_off_by(store: Arc<dyn Storage>, offset_ms: i64) {
    let config = WorkerConfig {
        clock: Arc::new(Shifted(offset_ms)),
        ..config()
    };
    let worker = Worker::with_config(store.clone(), registry(), config);
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<Skewed>(&200, StartOptions::default())
        .await
        .expect("start");
    let now = handle.result_within(WAIT).await.expect("result");
    let created = client
        .describe(handle.id())
        .await
        .expect("describe")
        .created_at
        .as_millis();
    let near = |t: i64, what: &str| {
        assert!(
            (created - 1_000..created + 60_000).contains(&t),
            "{what} is {} ms from the workflow's creation by the store's clock",
            t - created
        );
    };
    near(now, "ctx.now()");
    let history = client.history(handle.id()).await.expect("history");
    for e in &history[1..] {
        near(e.at.as_millis(), &format!("the time of {}", e.seq));
        match &e.kind {
            EventKind::ActivityFailed {
                retry_at: Some(t), ..
            } => near(t.as_millis(), "the retry's time"),
            EventKind::TimerScheduled { fire_at, .. } => {
                near(fire_at.as_millis(), "the timer's time");
            }
            _ => {}
        }
    }
    assert_eq!(
        count(&history, |k| matches!(k, EventKind::ActivityFailed { .. })),
        1,
        "the first attempt failed and the retry ran"
    );
    running.stop().await;
}

fn approval(by: &str, approved: bool) -> Payload {
    Payload::encode(&Approval {
        approved,
        by: by.into(),
    })
    .expect("encode")
}

async fn signals_sent_before_and_after_the_wait_are_delivered_in_order(store: Arc<dyn Storage>) {
    let client = Client::new(store.clone());
    // Sent before any worker runs, so before the code waits.
    let handle = client
        .start::<AwaitApproval>(&10_000, StartOptions::default())
        .await
        .expect("start");
    client
        .signal(handle.id(), "approve", approval("ann", true))
        .await
        .expect("signal");
    let worker = Worker::with_config(store, registry(), config());
    let client = worker.client();
    let running = spawn(&worker);
    // Wait until the code consumed the first and waits for the second, then send it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = client.describe(handle.id()).await.expect("describe");
        let waiting = s.progress.is_some_and(|p| {
            p.awaiting_signals.contains(&"approve".to_owned()) && p.pending_timers.len() == 1
        });
        if waiting {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workflow never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client
        .signal(handle.id(), "approve", approval("bob", false))
        .await
        .expect("signal");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "ann:true then bob:false"
    );
    // A signal to a finished workflow is refused.
    let err = client
        .signal(handle.id(), "approve", Payload::NULL)
        .await
        .expect_err("closed");
    assert!(
        matches!(
            err,
            ClientError::Storage(loom_storage::StorageError::Closed { .. })
        ),
        "{err}"
    );
    // Signals sent together stay in order, and the timeout path works.
    let timed = client
        .start::<AwaitApproval>(&30, StartOptions::default())
        .await
        .expect("start");
    client
        .signal(timed.id(), "approve", approval("cy", true))
        .await
        .expect("signal");
    assert_eq!(
        timed.result_within(WAIT).await.expect("result"),
        "cy:true then timeout"
    );
    running.stop().await;
}

async fn cancellation_reaches_the_code_which_cleans_up(store: Arc<dyn Storage>) {
    let worker = Worker::with_config(store, registry(), config());
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<CancelMe>(&(), StartOptions::default())
        .await
        .expect("start");
    wait_for_progress(&client, handle.id(), "never slept", |p| {
        !p.pending_timers.is_empty()
    })
    .await;
    client
        .cancel(handle.id(), Some("changed my mind".into()))
        .await
        .expect("cancel");
    let err = handle.result_within(WAIT).await.expect_err("cancelled");
    assert!(matches!(err, ClientError::Cancelled(_)), "{err}");
    let summary = client.describe(handle.id()).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::Cancelled);
    let state = summary.progress.expect("progress").state;
    assert_eq!(state.as_json()["cleaned_up"], true);
    running.stop().await;
}

async fn parallel_activities_fan_out_and_in(store: Arc<dyn Storage>) {
    let worker = Worker::with_config(store, registry(), config());
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<FanOut>(&20, StartOptions::default())
        .await
        .expect("start");
    assert_eq!(handle.result_within(WAIT).await.expect("result"), 420);
    let history = client.history(handle.id()).await.expect("history");
    // All twenty were scheduled in the first task, before any result came back.
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.type_name()).collect();
    assert!(
        kinds[1..21].iter().all(|k| *k == "ActivityScheduled"),
        "{kinds:?}"
    );
    running.stop().await;
}

async fn a_nondeterministic_change_pauses_and_the_fix_resumes(store: Arc<dyn Storage>) {
    let good = Worker::with_config(store.clone(), registry(), config());
    let client = good.client();
    let running = spawn(&good);
    let handle = client
        .start::<Evolving>(&5, StartOptions::default())
        .await
        .expect("start");
    wait_for_progress(&client, handle.id(), "never waited", |p| {
        !p.awaiting_signals.is_empty()
    })
    .await;
    running.stop().await;
    let events_before = client.history(handle.id()).await.expect("history").len();

    // Deploy the broken change; the signal makes it replay.
    let broken = Worker::with_config(
        store.clone(),
        registry_with(Arc::new(AtomicU32::new(0)), true),
        config(),
    );
    let running = spawn(&broken);
    client
        .signal(handle.id(), "go", Payload::NULL)
        .await
        .expect("signal");
    let deadline = tokio::time::Instant::now() + WAIT;
    let summary = loop {
        let s = client.describe(handle.id()).await.expect("describe");
        if s.status == WorkflowStatus::Paused {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let reason = summary.pause_reason.expect("a reason");
    assert!(
        reason.contains("non-determinism") && reason.contains("#2") && reason.contains("double"),
        "{reason}"
    );
    let metrics = running.stop().await;
    assert!(metrics.workflow_tasks_paused >= 1);
    assert_eq!(
        client.history(handle.id()).await.expect("history").len(),
        events_before,
        "nothing was appended by the broken code"
    );

    // Roll back to the good code: the workflow resumes and completes with the signal.
    let fixed = Worker::with_config(store, registry(), config());
    let running = spawn(&fixed);
    assert_eq!(handle.result_within(WAIT).await.expect("result"), 20);
    running.stop().await;
}

async fn a_panicking_activity_is_a_failure_and_the_worker_survives(store: Arc<dyn Storage>) {
    let worker = Worker::with_config(store, registry(), config());
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<PanicsInActivity>(&(), StartOptions::default())
        .await
        .expect("start");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "panic after 2"
    );
    // The worker still runs other workflows.
    let other = client
        .start::<FanOut>(&3, StartOptions::default())
        .await
        .expect("start");
    assert_eq!(other.result_within(WAIT).await.expect("result"), 12);
    running.stop().await;
}

async fn a_silent_activity_times_out_on_its_heartbeat(store: Arc<dyn Storage>) {
    let worker = Worker::with_config(store, registry(), config());
    let running = spawn(&worker);
    let handle = worker
        .client()
        .start::<HeartbeatLost>(&(), StartOptions::default())
        .await
        .expect("start");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "timed out after 1"
    );
    running.stop().await;
}

async fn the_sticky_cache_and_replay_give_the_same_result(store: Arc<dyn Storage>) {
    let mut outputs = Vec::new();
    for capacity in [1_000, 0] {
        let cfg = WorkerConfig {
            cache_capacity: capacity,
            ..config()
        };
        let worker = Worker::with_config(store.clone(), registry(), cfg);
        let client = worker.client();
        let running = spawn(&worker);
        let handle = client
            .start::<FanOut>(&6, StartOptions::default())
            .await
            .expect("start");
        let seq = client
            .start::<Retrying>(&2, StartOptions::default())
            .await
            .expect("start");
        outputs.push((
            handle.result_within(WAIT).await.expect("result"),
            seq.result_within(WAIT).await.expect("result"),
            client.history(handle.id()).await.expect("history").len(),
        ));
        let metrics = running.stop().await;
        if capacity == 0 {
            assert_eq!(metrics.cache_hits, 0, "no cache, no hits");
        } else {
            assert!(metrics.cache_hits > 0, "the cache was used: {metrics:?}");
        }
    }
    assert_eq!(outputs[0], outputs[1]);
}

async fn starting_twice_with_one_id_is_idempotent(store: Arc<dyn Storage>) {
    let worker = Worker::with_config(store, registry(), config());
    let client = worker.client();
    let a = client
        .start::<FanOut>(&2, StartOptions::id("same"))
        .await
        .expect("start");
    let b = client
        .start::<FanOut>(&2, StartOptions::id("same"))
        .await
        .expect("repeat");
    assert_eq!(a.id(), b.id());
    let err = client
        .start::<FanOut>(&3, StartOptions::id("same"))
        .await
        .err()
        .expect("a different input under the same id is refused");
    assert!(matches!(err, ClientError::IdInUse(_)), "{err}");
    let running = spawn(&worker);
    assert_eq!(a.result_within(WAIT).await.expect("result"), 6);
    let page = client
        .list(&loom_storage::ListQuery::default())
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1);
    running.stop().await;
}

async fn an_unknown_workflow_type_pauses_with_a_clear_reason(store: Arc<dyn Storage>) {
    // Started by a client that knows a type this worker does not.
    let mut other = Registry::new();
    other.add_workflow::<Evolving>().expect("register");
    let client = Client::new(store.clone());
    let id = client
        .start_by_name(
            &other,
            "Evolving",
            Payload::encode(&1u64).expect("encode"),
            StartOptions::default(),
        )
        .await
        .expect("start");
    let mut mine = Registry::new();
    mine.add_workflow::<FanOut>()
        .expect("register")
        .add_activity(Double)
        .expect("register");
    let worker = Worker::with_config(store, mine, config());
    let running = spawn(&worker);
    let deadline = tokio::time::Instant::now() + WAIT;
    let summary = loop {
        let s = client.describe(&id).await.expect("describe");
        if s.status == WorkflowStatus::Paused {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let reason = summary.pause_reason.expect("reason");
    assert!(
        reason.contains("\"Evolving\"") && reason.contains("FanOut"),
        "{reason}"
    );
    running.stop().await;
    // Bad names and inputs are refused at start, before anything is written.
    let err = client
        .start_by_name(&other, "Nope", Payload::NULL, StartOptions::default())
        .await
        .expect_err("unknown");
    assert!(
        err.to_string().contains("unknown workflow \"Nope\""),
        "{err}"
    );
    let err = client
        .start_by_name(
            &other,
            "Evolving",
            Payload::encode("text").expect("encode"),
            StartOptions::id("bad-input"),
        )
        .await
        .expect_err("bad input");
    assert!(matches!(err, ClientError::Payload(_)), "{err}");
    assert!(
        client
            .describe(&WorkflowId::new("bad-input"))
            .await
            .is_err()
    );
}

async fn shutdown_releases_unfinished_work_at_once(store: Arc<dyn Storage>) {
    let cfg = WorkerConfig {
        lease: Duration::from_secs(60),
        shutdown_grace: Duration::from_millis(100),
        ..config()
    };
    let worker = Worker::with_config(store.clone(), registry(), cfg);
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<LongRunning>(&(), StartOptions::default())
        .await
        .expect("start");
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.stats().await.expect("stats").activity_tasks_running == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the activity never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopping = tokio::time::Instant::now();
    running.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown waited only for its grace period"
    );
    // The attempt it could not finish is claimable now, not after its 60 s lease.
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.activity_tasks_running, 0);
    assert_eq!(stats.activity_tasks_ready, 1);
    assert_eq!(
        client.status(handle.id()).await.expect("status"),
        WorkflowStatus::Running
    );
}

// ---- a store whose claims disagree with its histories ----

/// MemoryStorage, except that its first `lies` claims of a workflow task past the first (by a
/// claim or with an activity's commit) report a `last_seq` one beyond the history: what a
/// PostgreSQL connection stuck in an uncommitted transaction reported (it saw its own
/// writes; every other connection did not).
struct StaleClaims {
    inner: MemoryStorage,
    lies: AtomicU32,
    /// How many commits to answer `Unavailable` without touching the store, as a database
    /// being restarted does.
    outages: AtomicU32,
}

impl StaleClaims {
    fn over(inner: MemoryStorage, lies: u32, outages: u32) -> Self {
        StaleClaims {
            inner,
            lies: AtomicU32::new(lies),
            outages: AtomicU32::new(outages),
        }
    }

    fn outage(&self) -> loom_storage::Result<()> {
        if self
            .outages
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(loom_storage::StorageError::Unavailable {
                message: "the database is restarting".into(),
                source: None,
            });
        }
        Ok(())
    }
}

impl StaleClaims {
    fn maybe_lie(&self, task: &mut loom_storage::WorkflowTask) {
        let lie = task.last_seq > loom_core::Seq::FIRST
            && self
                .lies
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if lie {
            task.last_seq = loom_core::Seq::new(task.last_seq.get() + 1);
        }
    }
}

#[async_trait::async_trait]
impl Storage for StaleClaims {
    async fn create_workflow(
        &self,
        id: &WorkflowId,
        started: loom_core::Event,
    ) -> loom_storage::Result<()> {
        self.inner.create_workflow(id, started).await
    }
    async fn load_history(
        &self,
        id: &WorkflowId,
        after: loom_core::Seq,
    ) -> loom_storage::Result<Vec<loom_core::Event>> {
        self.inner.load_history(id, after).await
    }
    async fn claim_workflow_tasks(
        &self,
        req: &loom_storage::ClaimRequest,
    ) -> loom_storage::Result<Vec<loom_storage::WorkflowTask>> {
        let mut tasks = self.inner.claim_workflow_tasks(req).await?;
        for task in &mut tasks {
            self.maybe_lie(task);
        }
        Ok(tasks)
    }
    async fn complete_workflow_task(
        &self,
        completion: loom_storage::WorkflowTaskCompletion,
    ) -> loom_storage::Result<Vec<loom_storage::ActivityTask>> {
        self.outage()?;
        self.inner.complete_workflow_task(completion).await
    }
    async fn claim_activity_tasks(
        &self,
        req: &loom_storage::ClaimRequest,
    ) -> loom_storage::Result<Vec<loom_storage::ActivityTask>> {
        self.inner.claim_activity_tasks(req).await
    }
    async fn complete_activity_task(
        &self,
        completion: loom_storage::ActivityTaskCompletion,
    ) -> loom_storage::Result<loom_storage::ActivityCommitted> {
        self.outage()?;
        let mut answer = self.inner.complete_activity_task(completion).await?;
        if let loom_storage::ActivityCommitted::WorkflowTask(task) = &mut answer {
            self.maybe_lie(task);
        }
        Ok(answer)
    }
    async fn renew_lease(
        &self,
        lease: &loom_storage::Lease,
        extend: Duration,
    ) -> loom_storage::Result<loom_storage::Lease> {
        self.inner.renew_lease(lease, extend).await
    }
    async fn release_task(
        &self,
        lease: &loom_storage::Lease,
        release: loom_storage::Release,
    ) -> loom_storage::Result<()> {
        self.inner.release_task(lease, release).await
    }
    async fn forget_affinity(&self, owner: &str) -> loom_storage::Result<()> {
        self.inner.forget_affinity(owner).await
    }
    async fn signal(
        &self,
        id: &WorkflowId,
        name: &str,
        payload: Payload,
    ) -> loom_storage::Result<()> {
        self.inner.signal(id, name, payload).await
    }
    async fn request_cancel(
        &self,
        id: &WorkflowId,
        reason: Option<String>,
    ) -> loom_storage::Result<()> {
        self.inner.request_cancel(id, reason).await
    }
    async fn terminate(&self, termination: loom_storage::Termination) -> loom_storage::Result<()> {
        self.inner.terminate(termination).await
    }
    async fn purge(&self, purge: &loom_storage::Purge) -> loom_storage::Result<Vec<WorkflowId>> {
        self.inner.purge(purge).await
    }
    async fn reset(&self, reset: loom_storage::Reset) -> loom_storage::Result<()> {
        self.inner.reset(reset).await
    }
    async fn pause(&self, id: &WorkflowId, reason: &str) -> loom_storage::Result<()> {
        self.inner.pause(id, reason).await
    }
    async fn resume(&self, id: &WorkflowId) -> loom_storage::Result<()> {
        self.inner.resume(id).await
    }
    async fn load_run(
        &self,
        id: &WorkflowId,
        run: u32,
    ) -> loom_storage::Result<Vec<loom_core::Event>> {
        self.inner.load_run(id, run).await
    }
    async fn runs(&self, id: &WorkflowId) -> loom_storage::Result<Vec<loom_storage::RunSummary>> {
        self.inner.runs(id).await
    }
    async fn describe(
        &self,
        id: &WorkflowId,
    ) -> loom_storage::Result<loom_storage::WorkflowSummary> {
        self.inner.describe(id).await
    }
    async fn list(
        &self,
        query: &loom_storage::ListQuery,
    ) -> loom_storage::Result<loom_storage::Page<loom_storage::WorkflowSummary>> {
        self.inner.list(query).await
    }
    async fn stats(&self) -> loom_storage::Result<loom_storage::Stats> {
        self.inner.stats().await
    }
    async fn backlog(&self) -> loom_storage::Result<loom_storage::Backlog> {
        self.inner.backlog().await
    }
    async fn logs(&self, id: &WorkflowId) -> loom_storage::Result<Vec<loom_core::LogRecord>> {
        self.inner.logs(id).await
    }
    async fn pending(&self, id: &WorkflowId) -> loom_storage::Result<loom_storage::Pending> {
        self.inner.pending(id).await
    }
    async fn now(&self) -> loom_storage::Result<loom_core::Timestamp> {
        self.inner.now().await
    }
    async fn schedule(&self, id: &str) -> loom_storage::Result<loom_storage::Schedule> {
        self.inner.schedule(id).await
    }
    async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> loom_storage::Result<Vec<loom_storage::Schedule>> {
        self.inner.schedules(after, limit).await
    }
    async fn due_schedules(
        &self,
        limit: usize,
    ) -> loom_storage::Result<loom_storage::DueSchedules> {
        self.inner.due_schedules(limit).await
    }
    async fn write_schedule(&self, write: loom_storage::ScheduleWrite) -> loom_storage::Result<()> {
        self.inner.write_schedule(write).await
    }
}

/// A claim whose `last_seq` is not where the history ends is never decided: the worker gives
/// the task back and decides it once the two agree. (Deciding it anyway commits against a
/// history the machine does not have: refused here, and on the PostgreSQL connection that
/// once reported such claims, accepted, consuming a message without recording it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_disagrees_with_the_history_is_not_decided() {
    let store = Arc::new(StaleClaims::over(MemoryStorage::new(), 2, 0));
    let emails = Arc::new(AtomicU32::new(0));
    // No cached machines, so no decisions ahead: every workflow task after the first is
    // claimed, by the claim loop or with an activity's result.
    let config = WorkerConfig {
        cache_capacity: 0,
        ..config()
    };
    let worker = Worker::with_config(store.clone(), registry_with(emails.clone(), false), config);
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<OrderProcessing>(&order("7"), StartOptions::id("order-7"))
        .await
        .expect("start");
    let output = handle.result_within(WAIT).await.expect("result");
    assert_eq!(output, "order 7 complete");
    let metrics = running.stop().await;
    assert_eq!(store.lies.load(Ordering::SeqCst), 0, "both lies were told");
    assert_eq!(
        metrics.commits_refused, 0,
        "no decision was made from a claim that disagreed with the history: {metrics:?}"
    );
    assert_eq!(emails.load(Ordering::SeqCst), 1);
}

/// A commit the store could not take (unavailable, as while a database restarts) is tried
/// again by the worker that holds the task, not left until the lease lapses: on a manual
/// clock that never moves, no lease ever lapses, so the workflow finishes only if its
/// commits are retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_the_store_could_not_take_are_tried_again_while_the_lease_holds() {
    let clock = ManualClock::new(loom_storage::Clock::now(&loom_storage::SystemClock));
    let store = Arc::new(StaleClaims::over(
        MemoryStorage::with_clock(Arc::new(clock.clone())),
        0,
        5,
    ));
    let emails = Arc::new(AtomicU32::new(0));
    let config = WorkerConfig {
        lease: Duration::from_secs(3_600),
        ..on(&clock)
    };
    let worker = Worker::with_config(store.clone(), registry_with(emails.clone(), false), config);
    let client = worker.client();
    let running = spawn(&worker);
    let handle = client
        .start::<OrderProcessing>(&order("8"), StartOptions::id("order-8"))
        .await
        .expect("start");
    let output = handle.result_within(WAIT).await.expect("result");
    assert_eq!(output, "order 8 complete");
    assert_eq!(
        store.outages.load(Ordering::SeqCst),
        0,
        "every outage was met"
    );
    let metrics = running.stop().await;
    assert_eq!(metrics.commits_refused, 0, "{metrics:?}");
    assert_eq!(emails.load(Ordering::SeqCst), 1, "no attempt ran twice");
}

/// Counts its ticks for ever, whatever its context says: only dropping it stops it.
struct Ticker(Arc<AtomicU32>);
impl Activity for Ticker {
    const NAME: &'static str = "ticker";
    type Input = ();
    type Output = ();
    async fn run(&self, _: ActivityContext, (): ()) -> Result<(), Failure> {
        loop {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct Ticking;
impl Workflow for Ticking {
    const NAME: &'static str = "Ticking";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        Ok(ctx.activity::<Ticker>(()).await?)
    }
}

#[tokio::test]
async fn dropping_run_stops_everything_the_worker_runs_and_keeps_its_leases() {
    let ticks = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    registry
        .add_workflow::<Ticking>()
        .expect("workflow")
        .add_activity(Ticker(ticks.clone()))
        .expect("activity");
    let storage = Arc::new(MemoryStorage::new());
    let worker = Worker::with_config(storage.clone(), registry, config());
    let handle = worker
        .client()
        .start::<Ticking>(&(), StartOptions::default())
        .await
        .expect("start");
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run(std::future::pending()).await }
    });
    while ticks.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // As if the process died: the run future is dropped.
    running.abort();
    assert!(running.await.expect_err("aborted").is_cancelled());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after_drop = ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        after_drop,
        "the activity went on running after the worker's run future was dropped"
    );
    // Nothing was released: the activity's lease is still held, to lapse.
    let pending = storage.pending(handle.id()).await.expect("pending");
    assert!(
        pending
            .tasks
            .iter()
            .any(|t| t.activity.is_some() && t.leased_until.is_some()),
        "the activity's lease was released: {pending:?}"
    );
    // The worker is done: it refuses to run again with its state cut off.
    assert!(matches!(
        worker.run(std::future::ready(())).await,
        Err(loom_worker::WorkerError::Abandoned)
    ));
}

#[tokio::test]
async fn a_start_keeps_a_given_trace_and_refuses_a_malformed_one() {
    let storage = Arc::new(MemoryStorage::new());
    let client = Client::new(storage.clone());
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let options = StartOptions {
        traceparent: Some(given.to_owned()),
        ..StartOptions::id("traced")
    };
    let handle = client.start::<Ticking>(&(), options).await.expect("start");
    let history = storage
        .load_history(handle.id(), loom_core::Seq::ZERO)
        .await
        .expect("history");
    match &history[0].kind {
        EventKind::WorkflowStarted { traceparent, .. } => {
            assert_eq!(traceparent.as_deref(), Some(given));
        }
        other => panic!("{other}"),
    }
    let bad = StartOptions {
        traceparent: Some("<script>".to_owned()),
        ..StartOptions::id("untraced")
    };
    let refused = client.start::<Ticking>(&(), bad).await.err();
    assert!(
        matches!(&refused, Some(ClientError::Storage(loom_storage::StorageError::InvalidArgument(m))) if m.contains("not a W3C trace context")),
        "{refused:?}"
    );
    assert!(
        storage
            .describe(&WorkflowId::new("untraced"))
            .await
            .is_err(),
        "nothing was written"
    );
}
