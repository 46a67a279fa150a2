//! Continue-as-new end to end, on MemoryStorage, SQLite, redb and PostgreSQL (the last
//! skipped loudly without a server, failing under `CI=true`): a workflow that loops keeps a
//! bounded history across runs, signals sent while runs switch all arrive, a child of an
//! earlier run never reports to a later one, the execution timeout spans the runs, and a
//! cancel or a termination reaches whichever run is current.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loom_core::{
    Activity, ActivityContext, EventKind, Failure, ParentClosePolicy, Registry, Workflow,
    WorkflowContext, WorkflowError, WorkflowId,
};
use loom_storage::{Storage, StorageError, WorkflowStatus};
use loom_worker::{Client, ClientError, StartOptions, Worker, WorkerConfig};
use serde::{Deserialize, Serialize};

mod support;
use support::{Running, memory, mysql, postgres, redb, sqlite};

const WAIT: Duration = Duration::from_secs(20);

/// Counts its calls.
struct Bill(Arc<AtomicU32>);
impl Activity for Bill {
    const NAME: &'static str = "bill";
    type Input = u32;
    type Output = u32;
    async fn run(&self, _: ActivityContext, cycle: u32) -> Result<u32, Failure> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(cycle)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Billing {
    /// The next cycle to bill.
    cycle: u32,
    /// Cycles per run.
    per_run: u32,
    /// Cycles in all.
    total: u32,
    /// How long each cycle waits.
    period_ms: u64,
}

/// Bills a cycle, waits a period, and every `per_run` cycles starts afresh.
struct Subscription;
impl Workflow for Subscription {
    const NAME: &'static str = "Subscription";
    type Input = Billing;
    type State = ();
    type Output = u32;
    async fn run(ctx: WorkflowContext<Self>) -> Result<u32, WorkflowError> {
        let mut b = ctx.input().clone();
        for _ in 0..b.per_run {
            if b.cycle == b.total {
                return Ok(b.cycle);
            }
            ctx.activity::<Bill>(b.cycle).await?;
            ctx.sleep(Duration::from_millis(b.period_ms)).await?;
            b.cycle += 1;
        }
        Err(ctx.continue_as_new(b))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Tally {
    sum: i64,
    runs_left: u32,
}

/// Takes one `add` signal per run.
struct Accumulator;
impl Workflow for Accumulator {
    const NAME: &'static str = "Accumulator";
    type Input = Tally;
    type State = ();
    type Output = i64;
    async fn run(ctx: WorkflowContext<Self>) -> Result<i64, WorkflowError> {
        let mut t = ctx.input().clone();
        t.sum += ctx.wait_signal::<i64>("add").await?;
        if t.runs_left == 0 {
            return Ok(t.sum);
        }
        t.runs_left -= 1;
        Err(ctx.continue_as_new(t))
    }
}

/// Waits for `done`.
struct Waiter;
impl Workflow for Waiter {
    const NAME: &'static str = "Waiter";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        ctx.wait_signal::<()>("done").await?;
        Ok("waited".into())
    }
}

/// Run 1 starts an abandoned child and continues; run 2 starts one of its own and waits
/// for it.
struct Parent;
impl Workflow for Parent {
    const NAME: &'static str = "Parent";
    type Input = u32;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        if *ctx.input() == 1 {
            let child = ctx
                .child::<Waiter>(())
                .with_parent_close(ParentClosePolicy::Abandon);
            // Started, not awaited: the run continues while the child waits.
            let started = loom_core::future::select(child, ctx.sleep(Duration::from_millis(1)));
            drop(started.await);
            return Err(ctx.continue_as_new(2));
        }
        Ok(ctx.child::<Waiter>(()).await?)
    }
}

fn registry(calls: Arc<AtomicU32>) -> Registry {
    let mut r = Registry::new();
    r.add_workflow::<Subscription>()
        .and_then(|r| r.add_workflow::<Accumulator>())
        .and_then(|r| r.add_workflow::<Waiter>())
        .and_then(|r| r.add_workflow::<Parent>())
        .and_then(|r| r.add_activity(Bill(calls)))
        .expect("registry");
    r
}

fn spawn(store: Arc<dyn Storage>, calls: Arc<AtomicU32>) -> (Client, Running) {
    let config = WorkerConfig {
        id: "continue-as-new".into(),
        poll_interval: Duration::from_millis(20),
        lease: Duration::from_secs(2),
        shutdown_grace: Duration::from_millis(500),
        ..WorkerConfig::default()
    };
    support::run(Worker::with_config(store, registry(calls), config))
}

async fn until(
    client: &Client,
    id: &WorkflowId,
    what: &str,
    ok: impl Fn(&loom_storage::WorkflowSummary) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(s) = client.describe(id).await
            && ok(&s)
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_subscription_keeps_a_bounded_history_across_runs(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let billing = Billing {
        cycle: 0,
        per_run: 3,
        total: 7,
        period_ms: 1,
    };
    let handle = client
        .start::<Subscription>(&billing, StartOptions::id("sub-1"))
        .await
        .expect("start");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        7,
        "the chain's end"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 7, "each cycle billed once");
    let summary = client.describe(handle.id()).await.expect("describe");
    assert_eq!(summary.run, 3, "cycles 0-2, 3-5, 6");
    assert_eq!(summary.status, WorkflowStatus::Completed);
    // The current run's history starts afresh and is short.
    let history = client.history(handle.id()).await.expect("history");
    assert!(matches!(
        &history[0].kind,
        EventKind::WorkflowStarted { run: 3, input, .. }
            if input.decode::<Billing>().expect("input").cycle == 6
    ));
    assert!(history.len() < 12, "{} events", history.len());
    // The earlier runs are kept, each ended by continue-as-new.
    let runs = client.runs(handle.id()).await.expect("runs");
    assert_eq!(runs.iter().map(|r| r.run).collect::<Vec<_>>(), [1, 2]);
    for r in &runs {
        let past = client.run_history(handle.id(), r.run).await.expect("run");
        assert_eq!(past.len() as u64, r.events);
        assert_eq!(past.first().map(|e| e.at), Some(r.started_at));
        assert!(matches!(
            past.last().map(|e| &e.kind),
            Some(EventKind::WorkflowContinuedAsNew { .. })
        ));
    }
    assert_eq!(
        client.run_history(handle.id(), 3).await.expect("current"),
        history
    );
    let err = client
        .run_history(handle.id(), 4)
        .await
        .expect_err("no run 4");
    assert!(
        matches!(err, ClientError::Storage(StorageError::InvalidArgument(ref m)) if m.contains("runs 1 to 3")),
        "{err}"
    );
    running.stop().await;
}

async fn signals_sent_while_runs_switch_all_arrive(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store, Arc::new(AtomicU32::new(0)));
    let handle = client
        .start::<Accumulator>(
            &Tally {
                sum: 0,
                runs_left: 5,
            },
            StartOptions::id("acc-1"),
        )
        .await
        .expect("start");
    // Six signals in a burst: some arrive in one task (the run takes one and carries the
    // rest), some while a run is switching.
    for n in 1..=6_i64 {
        client
            .signal(
                handle.id(),
                "add",
                loom_core::Payload::encode(&(n * 10)).expect("encode"),
            )
            .await
            .expect("signal");
    }
    assert_eq!(handle.result_within(WAIT).await.expect("result"), 210);
    assert_eq!(client.describe(handle.id()).await.expect("describe").run, 6);
    running.stop().await;
}

async fn a_child_of_an_earlier_run_never_reports_to_a_later_one(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store, Arc::new(AtomicU32::new(0)));
    let parent = client
        .start::<Parent>(&1, StartOptions::id("dad"))
        .await
        .expect("start");
    let second_child = WorkflowId::new("dad/run2/2");
    until(&client, &second_child, "started", |s| {
        s.status == WorkflowStatus::Running
    })
    .await;
    // The first run's child, abandoned, ends now: its parent's run is over.
    let first_child = WorkflowId::new("dad/2");
    client
        .signal(&first_child, "done", loom_core::Payload::NULL)
        .await
        .expect("signal");
    until(&client, &first_child, "completed", |s| {
        s.status == WorkflowStatus::Completed
    })
    .await;
    let pending = client
        .storage()
        .pending(parent.id())
        .await
        .expect("pending");
    assert!(
        pending.messages.is_empty(),
        "the second run got {:?}",
        pending.messages
    );
    client
        .signal(&second_child, "done", loom_core::Payload::NULL)
        .await
        .expect("signal");
    assert_eq!(parent.result_within(WAIT).await.expect("result"), "waited");
    let history = client.history(parent.id()).await.expect("history");
    let reports = history
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ChildWorkflowCompleted { .. }))
        .count();
    assert_eq!(reports, 1, "only its own child's end: {history:#?}");
    running.stop().await;
}

async fn the_execution_timeout_spans_the_runs(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store, Arc::new(AtomicU32::new(0)));
    // Runs of ~3 cycles of 40 ms each: never past the run timeout, always continuing.
    let billing = Billing {
        cycle: 0,
        per_run: 3,
        total: u32::MAX,
        period_ms: 40,
    };
    let handle = client
        .start::<Subscription>(
            &billing,
            StartOptions::id("sub-forever")
                .with_run_timeout(Duration::from_secs(5))
                .with_execution_timeout(Duration::from_millis(900)),
        )
        .await
        .expect("start");
    let err = handle.result_within(WAIT).await.expect_err("timed out");
    assert!(matches!(err, ClientError::Failed { .. }), "{err}");
    let summary = client.describe(handle.id()).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::TimedOut);
    assert!(summary.run > 1, "it continued before the deadline");
    let last = client.history(handle.id()).await.expect("history");
    assert!(matches!(
        last.last().map(|e| &e.kind),
        Some(EventKind::WorkflowTimedOut {
            scope: loom_core::TimeoutScope::Execution
        })
    ));
    running.stop().await;
}

async fn cancel_and_terminate_reach_the_current_run(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store, Arc::new(AtomicU32::new(0)));
    let billing = Billing {
        cycle: 0,
        per_run: 2,
        total: u32::MAX,
        period_ms: 5,
    };
    for (id, terminate) in [("sub-cancel", false), ("sub-terminate", true)] {
        let handle = client
            .start::<Subscription>(&billing, StartOptions::id(id))
            .await
            .expect("start");
        until(&client, handle.id(), "continued twice", |s| s.run >= 3).await;
        if terminate {
            client
                .terminate(handle.id(), "enough")
                .await
                .expect("terminate");
        } else {
            client.cancel(handle.id(), None).await.expect("cancel");
        }
        let summary = client.wait(handle.id(), Some(WAIT)).await.expect("wait");
        let expected = if terminate {
            WorkflowStatus::Terminated
        } else {
            WorkflowStatus::Cancelled
        };
        assert_eq!(summary.status, expected, "{id}");
    }
    running.stop().await;
}

on_every_backend!(
    a_subscription_keeps_a_bounded_history_across_runs,
    signals_sent_while_runs_switch_all_arrive,
    a_child_of_an_earlier_run_never_reports_to_a_later_one,
    the_execution_timeout_spans_the_runs,
    cancel_and_terminate_reach_the_current_run,
);
