//! Child workflows end to end, on MemoryStorage, SQLite, redb and PostgreSQL (the last skipped
//! loudly without a server, failing under `CI=true`): a child's output or error reaches its
//! parent, a saga compensates when its child fails, and cancelling a parent reaches its
//! children by their parent-close policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loom_core::{
    Activity, ActivityContext, ChildError, EventKind, Failure, ParentClosePolicy, Registry,
    Workflow, WorkflowContext, WorkflowError, WorkflowId,
};
use loom_storage::{ListQuery, Storage, WorkflowStatus};
use loom_worker::{Client, ClientError, StartOptions, Worker, WorkerConfig};
use serde::{Deserialize, Serialize};

mod support;
use support::{Running, memory, mysql, postgres, redb, sqlite};

const WAIT: Duration = Duration::from_secs(20);

/// Counts its calls.
struct Counted(&'static str, Arc<AtomicU32>);
impl Activity for Counted {
    const NAME: &'static str = "counted";
    type Input = String;
    type Output = String;
    async fn run(&self, _: ActivityContext, what: String) -> Result<String, Failure> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{} {what}", self.0))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Shipping {
    order: String,
    /// Fail instead of shipping.
    fail: bool,
    /// Wait an hour before shipping (long enough to be cancelled).
    slow: bool,
}

/// The child: ships an order, or fails, or waits and cleans up when cancelled.
struct Shipment;
impl Workflow for Shipment {
    const NAME: &'static str = "Shipment";
    type Input = Shipping;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let input = ctx.input().clone();
        if input.fail {
            return Err(WorkflowError::failed("no_stock", "nothing left to ship"));
        }
        if input.slow {
            if let Err(WorkflowError::Cancelled) = ctx.sleep(Duration::from_secs(3_600)).await {
                ctx.activity::<Counted>(format!("unpack {}", input.order))
                    .await?;
                return Err(WorkflowError::Cancelled);
            }
        }
        let shipped = ctx
            .activity::<Counted>(format!("ship {}", input.order))
            .await?;
        Ok(format!("tracking for {shipped}"))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SagaInput {
    shipping: Shipping,
    policy: ParentClosePolicy,
    child_id: Option<String>,
    child_timeout_ms: Option<u64>,
}

/// The parent: charges, ships through a child, refunds if the child fails.
struct Saga;
impl Workflow for Saga {
    const NAME: &'static str = "Saga";
    type Input = SagaInput;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let input = ctx.input().clone();
        ctx.activity::<Counted>("charge".into()).await?;
        let mut call = ctx
            .child::<Shipment>(input.shipping.clone())
            .with_parent_close(input.policy);
        if let Some(id) = input.child_id {
            call = call.with_id(id);
        }
        if let Some(ms) = input.child_timeout_ms {
            call = call.with_run_timeout(Duration::from_millis(ms));
        }
        match call.await {
            Ok(tracking) => Ok(tracking),
            Err(ChildError::Failed { failure, .. }) if failure.kind == "already_exists" => {
                Ok(format!("not shipped: {}", failure.message))
            }
            Err(e @ ChildError::Failed { .. }) => {
                ctx.activity::<Counted>("refund".into()).await?;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Fails on attempts before `succeed_on`, each after calling the activity once.
struct Unsteady;
impl Workflow for Unsteady {
    const NAME: &'static str = "Unsteady";
    type Input = u32;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        ctx.activity::<Counted>(format!("attempt {}", ctx.attempt()))
            .await?;
        if ctx.attempt() < *ctx.input() {
            return Err(WorkflowError::failed(
                "unsteady",
                format!("attempt {}", ctx.attempt()),
            ));
        }
        Ok(format!("steady on attempt {}", ctx.attempt()))
    }
}

/// Starts `Unsteady` with a retry policy of `max_attempts`, and reports how it went.
struct Patient;
impl Workflow for Patient {
    const NAME: &'static str = "Patient";
    type Input = (u32, u32);
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let (succeed_on, max_attempts) = *ctx.input();
        let policy = loom_core::RetryPolicy {
            max_attempts,
            initial_interval: Duration::from_millis(20),
            ..loom_core::RetryPolicy::default()
        };
        match ctx.child::<Unsteady>(succeed_on).with_retry(policy).await {
            Ok(out) => Ok(out),
            Err(ChildError::Failed { failure, .. }) => Ok(format!("gave up: {}", failure.message)),
            Err(e) => Err(e.into()),
        }
    }
}

fn registry(calls: Arc<AtomicU32>) -> Registry {
    let mut r = Registry::new();
    r.add_workflow::<Saga>()
        .and_then(|r| r.add_workflow::<Unsteady>())
        .and_then(|r| r.add_workflow::<Patient>())
        .and_then(|r| r.add_workflow::<Shipment>())
        .and_then(|r| r.add_activity(Counted("done:", calls)))
        .expect("registry");
    r
}

fn spawn(store: Arc<dyn Storage>, calls: Arc<AtomicU32>) -> (Client, Running) {
    let config = WorkerConfig {
        id: "children".into(),
        poll_interval: Duration::from_millis(20),
        lease: Duration::from_secs(2),
        shutdown_grace: Duration::from_millis(500),
        ..WorkerConfig::default()
    };
    support::run(Worker::with_config(store, registry(calls), config))
}

fn saga(order: &str, fail: bool, slow: bool, policy: ParentClosePolicy) -> SagaInput {
    SagaInput {
        shipping: Shipping {
            order: order.into(),
            fail,
            slow,
        },
        policy,
        child_id: None,
        child_timeout_ms: None,
    }
}

async fn children_of(client: &Client, parent: &WorkflowId) -> Vec<loom_storage::WorkflowSummary> {
    client
        .list(&ListQuery {
            parent: Some(parent.clone()),
            ..ListQuery::default()
        })
        .await
        .expect("list")
        .items
}

/// Waits until `id` reaches `status`.
async fn until_status(client: &Client, id: &WorkflowId, status: WorkflowStatus) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(s) = client.describe(id).await
            && s.status == status
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never became {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_childs_output_reaches_its_parent(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let handle = client
        .start::<Saga>(
            &saga("o-1", false, false, ParentClosePolicy::RequestCancel),
            StartOptions::id("saga-1"),
        )
        .await
        .expect("start");
    let output = handle.result_within(WAIT).await.expect("result");
    assert_eq!(output, "tracking for done: ship o-1");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "charge and ship, once each"
    );
    let children = children_of(&client, handle.id()).await;
    assert_eq!(children.len(), 1);
    let child = &children[0];
    assert_eq!(
        child.id.as_str(),
        "saga-1/4",
        "derived from the parent and seq"
    );
    assert_eq!(child.status, WorkflowStatus::Completed);
    assert_eq!(child.parent.as_ref(), Some(handle.id()));
    let history = client.history(handle.id()).await.expect("history");
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.type_name()).collect();
    assert!(
        kinds.contains(&"ChildWorkflowScheduled") && kinds.contains(&"ChildWorkflowCompleted"),
        "{kinds:?}"
    );
    running.stop().await;
}

async fn a_failed_child_is_compensated_by_its_parent(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let handle = client
        .start::<Saga>(
            &saga("o-2", true, false, ParentClosePolicy::RequestCancel),
            StartOptions::id("saga-2"),
        )
        .await
        .expect("start");
    let err = handle
        .result_within(WAIT)
        .await
        .expect_err("the saga fails");
    match err {
        ClientError::Failed { failure, .. } => {
            assert_eq!(failure.kind, "no_stock");
            assert!(failure.message.contains("saga-2/4"), "{}", failure.message);
        }
        other => panic!("expected a failure, got {other}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "charge, then refund");
    let history = client.history(handle.id()).await.expect("history");
    let refunded = history.iter().any(|e| {
        matches!(&e.kind, EventKind::ActivityScheduled { input, .. } if input.as_json() == "refund")
    });
    assert!(refunded, "the refund was scheduled");
    let child = client
        .describe(&WorkflowId::new("saga-2/4"))
        .await
        .expect("child");
    assert_eq!(child.status, WorkflowStatus::Failed);
    running.stop().await;
}

/// Starts saga `n` with a slow child under `policy`, cancels it once the child waits on its
/// timer, and checks that the parent ends cancelled; answers the child's id.
async fn cancel_once_the_child_waits(
    client: &Client,
    n: u32,
    policy: ParentClosePolicy,
) -> WorkflowId {
    let handle = client
        .start::<Saga>(
            &saga(&format!("o-{n}"), false, true, policy),
            StartOptions::id(format!("saga-{n}")),
        )
        .await
        .expect("start");
    let child = WorkflowId::new(format!("saga-{n}/4"));
    wait_for_timer(client, &child).await;
    client.cancel(handle.id(), None).await.expect("cancel");
    let err = handle.result_within(WAIT).await.expect_err("cancelled");
    assert!(matches!(err, ClientError::Cancelled(_)), "{err}");
    child
}

async fn cancelling_a_parent_cancels_a_request_cancel_child(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let handle = client
        .start::<Saga>(
            &saga("o-3", false, true, ParentClosePolicy::RequestCancel),
            StartOptions::id("saga-3"),
        )
        .await
        .expect("start");
    let child = WorkflowId::new("saga-3/4");
    wait_for_timer(&client, &child).await;
    client
        .cancel(handle.id(), Some("customer cancelled".into()))
        .await
        .expect("cancel");
    let err = handle.result_within(WAIT).await.expect_err("cancelled");
    assert!(matches!(err, ClientError::Cancelled(_)), "{err}");
    until_status(&client, &child, WorkflowStatus::Cancelled).await;
    let history = client.history(&child).await.expect("history");
    let reason = history.iter().find_map(|e| match &e.kind {
        EventKind::CancelRequested { reason } => reason.clone(),
        _ => None,
    });
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("saga-3")),
        "{reason:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "charge, then the child unpacks"
    );
    running.stop().await;
}

async fn cancelling_a_parent_leaves_an_abandoned_child_running(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let child = cancel_once_the_child_waits(&client, 4, ParentClosePolicy::Abandon).await;
    // The child is not told: it still waits on its timer, with nothing pending for it.
    let summary = client.describe(&child).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::Running);
    let pending = client.storage().pending(&child).await.expect("pending");
    assert!(
        pending
            .messages
            .iter()
            .all(|m| matches!(m.kind, EventKind::TimerFired { .. })),
        "{pending:?}"
    );
    running.stop().await;
}

async fn a_child_id_that_is_taken_is_an_error_the_parent_handles(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let first = client
        .start::<Shipment>(
            &Shipping {
                order: "other".into(),
                fail: false,
                slow: false,
            },
            StartOptions::id("ship-42"),
        )
        .await
        .expect("start");
    first.result_within(WAIT).await.expect("shipped");
    let mut input = saga("o-5", false, false, ParentClosePolicy::RequestCancel);
    input.child_id = Some("ship-42".into());
    let handle = client
        .start::<Saga>(&input, StartOptions::id("saga-5"))
        .await
        .expect("start");
    let output = handle.result_within(WAIT).await.expect("result");
    assert!(
        output.starts_with("not shipped:") && output.contains("ship-42"),
        "{output}"
    );
    assert!(children_of(&client, handle.id()).await.is_empty());
    let other = client.describe(first.id()).await.expect("describe");
    assert_eq!(other.parent, None, "the other workflow is untouched");
    running.stop().await;
}

/// Waits until `id` exists and has started its timer.
async fn wait_for_timer(client: &Client, id: &WorkflowId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(s) = client.describe(id).await
            && s.progress.is_some_and(|p| !p.pending_timers.is_empty())
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never slept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn cancelling_a_parent_terminates_a_terminate_child(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let child = cancel_once_the_child_waits(&client, 6, ParentClosePolicy::Terminate).await;
    until_status(&client, &child, WorkflowStatus::Terminated).await;
    let history = client.history(&child).await.expect("history");
    match history.last().map(|e| &e.kind) {
        Some(EventKind::WorkflowTerminated { reason }) => {
            assert!(reason.contains("saga-6"), "{reason}");
        }
        other => panic!("the child ended with {other:?}"),
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the charge ran: the child ran no code to unpack"
    );
    running.stop().await;
}

async fn a_parent_that_times_out_ends_so_and_its_children_follow_their_policy(
    store: Arc<dyn Storage>,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let handle = client
        .start::<Saga>(
            &saga("o-7", false, true, ParentClosePolicy::RequestCancel),
            StartOptions::id("saga-7").with_run_timeout(Duration::from_millis(400)),
        )
        .await
        .expect("start");
    let err = handle.result_within(WAIT).await.expect_err("timed out");
    match err {
        ClientError::Failed { failure, .. } => assert_eq!(failure.kind, "timed_out"),
        other => panic!("expected a timeout, got {other}"),
    }
    let summary = client.describe(handle.id()).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::TimedOut);
    let history = client.history(handle.id()).await.expect("history");
    assert!(
        matches!(
            history.last().map(|e| &e.kind),
            Some(EventKind::WorkflowTimedOut { .. })
        ),
        "{:?}",
        history.last()
    );
    // Its child was asked to cancel, and unpacked.
    until_status(
        &client,
        &WorkflowId::new("saga-7/4"),
        WorkflowStatus::Cancelled,
    )
    .await;
    running.stop().await;
}

async fn a_child_that_times_out_is_a_failure_its_parent_compensates(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let mut input = saga("o-8", false, true, ParentClosePolicy::RequestCancel);
    input.child_timeout_ms = Some(300);
    let handle = client
        .start::<Saga>(&input, StartOptions::id("saga-8"))
        .await
        .expect("start");
    let err = handle
        .result_within(WAIT)
        .await
        .expect_err("the saga fails");
    match err {
        ClientError::Failed { failure, .. } => assert_eq!(failure.kind, "timed_out"),
        other => panic!("expected a failure, got {other}"),
    }
    let child = client
        .describe(&WorkflowId::new("saga-8/4"))
        .await
        .expect("child");
    assert_eq!(child.status, WorkflowStatus::TimedOut);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "charge, then refund");
    running.stop().await;
}

/// A child that fails is retried as new runs under its id until an attempt succeeds; its
/// parent hears only of that end.
async fn a_retried_child_succeeds_on_a_later_attempt(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let handle = client
        .start::<Patient>(&(3, 5), StartOptions::id("patient-1"))
        .await
        .expect("start");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "steady on attempt 3"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one activity per attempt");
    let child = WorkflowId::new("patient-1/2");
    let summary = client.describe(&child).await.expect("the child");
    assert_eq!(summary.status, WorkflowStatus::Completed);
    assert_eq!(summary.run, 3, "three attempts, each a run");
    for run in 1..=2 {
        let history = client.run_history(&child, run).await.expect("an attempt");
        assert!(matches!(
            history.last().map(|e| &e.kind),
            Some(EventKind::WorkflowFailed { .. })
        ));
    }
    let parent = client.history(handle.id()).await.expect("history");
    let reports = parent
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::ChildWorkflowCompleted { .. } | EventKind::ChildWorkflowFailed { .. }
            )
        })
        .count();
    assert_eq!(reports, 1, "the parent hears of the last attempt only");
    running.stop().await;
}

/// When the attempts run out, the last failure reaches the parent.
async fn a_retried_childs_last_failure_reaches_its_parent(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let handle = client
        .start::<Patient>(&(9, 2), StartOptions::id("patient-2"))
        .await
        .expect("start");
    let out = handle.result_within(WAIT).await.expect("result");
    assert!(out.starts_with("gave up"), "{out}");
    assert!(
        out.contains("attempt 2"),
        "the last attempt's failure: {out}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let summary = client
        .describe(&WorkflowId::new("patient-2/2"))
        .await
        .expect("the child");
    assert_eq!(summary.status, WorkflowStatus::Failed);
    assert_eq!(summary.run, 2);
    running.stop().await;
}

on_every_backend!(
    a_retried_child_succeeds_on_a_later_attempt,
    a_retried_childs_last_failure_reaches_its_parent,
    a_child_that_times_out_is_a_failure_its_parent_compensates,
    a_parent_that_times_out_ends_so_and_its_children_follow_their_policy,
    cancelling_a_parent_terminates_a_terminate_child,
    a_childs_output_reaches_its_parent,
    a_failed_child_is_compensated_by_its_parent,
    cancelling_a_parent_cancels_a_request_cancel_child,
    cancelling_a_parent_leaves_an_abandoned_child_running,
    a_child_id_that_is_taken_is_an_error_the_parent_handles,
);
