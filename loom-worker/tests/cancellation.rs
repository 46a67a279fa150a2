//! Timers and activities the workflow stops waiting for, end to end on every backend: a
//! cancelled timer is withdrawn from the store and never wakes the run; a running activity
//! that lost a race, or whose run was terminated, learns of it through its context, and its
//! result is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use loom_core::future::{Either, select};
use loom_core::{
    Activity, ActivityContext, EventKind, Failure, Registry, Workflow, WorkflowContext,
    WorkflowError,
};
use loom_storage::{Storage, WorkflowStatus};
use loom_worker::{Client, StartOptions, Worker, WorkerConfig};

mod support;
use support::{Running, memory, mysql, postgres, redb, sqlite};

const WAIT: Duration = Duration::from_secs(20);

/// Runs until its attempt is cancelled, then says so.
struct Stubborn(Arc<AtomicBool>);
impl Activity for Stubborn {
    const NAME: &'static str = "stubborn";
    type Input = ();
    type Output = ();
    async fn run(&self, ctx: ActivityContext, (): ()) -> Result<(), Failure> {
        tokio::select! {
            () = ctx.cancelled() => {
                self.0.store(true, Ordering::SeqCst);
                Err(Failure::new("stopped", "the attempt was cancelled"))
            }
            () = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
        }
    }
}

/// Races the stubborn activity against a short timer; the timer wins.
struct Impatient;
impl Workflow for Impatient {
    const NAME: &'static str = "Impatient";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let call = ctx.activity::<Stubborn>(());
        let timer = ctx.sleep(Duration::from_millis(200));
        Ok(match select(call, timer).await {
            Either::Left(_) => "the activity".into(),
            Either::Right(_) => "the timer".into(),
        })
    }
}

/// Runs the stubborn activity to its end.
struct Patient;
impl Workflow for Patient {
    const NAME: &'static str = "Patient";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        Ok(ctx.activity::<Stubborn>(()).await?)
    }
}

/// Waits an hour for a signal, then waits for another.
struct Listener;
impl Workflow for Listener {
    const NAME: &'static str = "Listener";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        ctx.wait_signal_timeout::<()>("first", Duration::from_secs(3_600))
            .await?;
        ctx.wait_signal::<()>("second").await
    }
}

fn spawn(store: Arc<dyn Storage>, stopped: Arc<AtomicBool>) -> (Client, Running) {
    let mut registry = Registry::new();
    registry
        .add_workflow::<Impatient>()
        .and_then(|r| r.add_workflow::<Listener>())
        .and_then(|r| r.add_workflow::<Patient>())
        .and_then(|r| r.add_activity(Stubborn(stopped)))
        .expect("registry");
    let config = WorkerConfig {
        id: "cancellation".into(),
        poll_interval: Duration::from_millis(20),
        // Renewed every 200 ms: that is when a running attempt learns it was cancelled.
        lease: Duration::from_millis(600),
        shutdown_grace: Duration::from_millis(500),
        ..WorkerConfig::default()
    };
    support::run(Worker::with_config(store, registry, config))
}

async fn the_loser_of_a_race_is_told_to_stop_and_its_result_refused(store: Arc<dyn Storage>) {
    let stopped = Arc::new(AtomicBool::new(false));
    let (client, running) = spawn(store, stopped.clone());
    let handle = client
        .start::<Impatient>(&(), StartOptions::id("impatient"))
        .await
        .expect("start");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "the timer"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while !stopped.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the running attempt was never told"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a refused report time to have been tried.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = client.history(handle.id()).await.expect("history");
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.type_name()).collect();
    assert!(kinds.contains(&"ActivityCancelled"), "{kinds:?}");
    assert!(
        !kinds.iter().any(|k| k.starts_with("Activity")
            && *k != "ActivityScheduled"
            && *k != "ActivityCancelled"),
        "no result of the cancelled attempt is recorded: {kinds:?}"
    );
    let pending = client
        .storage()
        .pending(handle.id())
        .await
        .expect("pending");
    assert!(pending.tasks.is_empty() && pending.messages.is_empty());
    running.stop().await;
}

async fn a_signal_that_beats_its_timeout_withdraws_the_timer(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store, Arc::new(AtomicBool::new(false)));
    let handle = client
        .start::<Listener>(&(), StartOptions::id("listener"))
        .await
        .expect("start");
    let id = handle.id().clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .describe(&id)
        .await
        .expect("describe")
        .progress
        .is_none_or(|p| p.pending_timers.is_empty())
    {
        assert!(tokio::time::Instant::now() < deadline, "never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client
        .signal(&id, "first", loom_core::Payload::NULL)
        .await
        .expect("signal");
    loop {
        let history = client.history(&id).await.expect("history");
        if history
            .iter()
            .any(|e| matches!(e.kind, EventKind::TimerCancelled { .. }))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pending = client.storage().pending(&id).await.expect("pending");
    assert!(
        pending.messages.is_empty(),
        "the hour's timer is withdrawn: {:?}",
        pending.messages
    );
    let summary = client.describe(&id).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::Running);
    let progress = summary.progress.expect("progress");
    assert!(progress.pending_timers.is_empty());
    assert_eq!(progress.awaiting_signals, ["second"]);
    running.stop().await;
}

async fn terminating_a_run_stops_its_running_activity_and_refuses_its_result(
    store: Arc<dyn Storage>,
) {
    let stopped = Arc::new(AtomicBool::new(false));
    let (client, running) = spawn(store, stopped.clone());
    let handle = client
        .start::<Patient>(&(), StartOptions::id("patient"))
        .await
        .expect("start");
    let id = handle.id().clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .storage()
        .pending(&id)
        .await
        .expect("pending")
        .tasks
        .iter()
        .all(|t| t.activity.is_none() || t.leased_until.is_none())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the activity never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client
        .terminate(&id, "ops: the supplier is down")
        .await
        .expect("terminate");
    let err = handle.result_within(WAIT).await.expect_err("terminated");
    assert!(
        matches!(&err, loom_worker::ClientError::Terminated { reason, .. } if reason == "ops: the supplier is down"),
        "{err}"
    );
    while !stopped.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the running attempt was never told"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = client.history(&id).await.expect("history");
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.type_name()).collect();
    assert_eq!(kinds.last(), Some(&"WorkflowTerminated"), "{kinds:?}");
    assert!(
        !kinds.contains(&"ActivityFailed"),
        "the attempt's result was refused: {kinds:?}"
    );
    assert!(client.terminate(&id, "again").await.is_err());
    running.stop().await;
}

on_every_backend!(
    terminating_a_run_stops_its_running_activity_and_refuses_its_result,
    the_loser_of_a_race_is_told_to_stop_and_its_result_refused,
    a_signal_that_beats_its_timeout_withdraws_the_timer,
);
