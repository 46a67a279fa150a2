//! Limits, end to end on every backend: an input or a signal over the payload limit is
//! refused and writes nothing; an activity result over it is a failure the code handles; a
//! workflow task that would record one pauses its workflow with the reason; a history past
//! its limit ends the run with a reason that names the limit; code that waits on something
//! not Loom's is paused with that cause.

use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    Activity, ActivityContext, ActivityError, Failure, Registry, Workflow, WorkflowContext,
    WorkflowError, WorkflowId,
};
use loom_storage::{Storage, StorageError, WorkflowStatus};
use loom_worker::{Client, ClientError, Limits, StartOptions, Worker, WorkerConfig};

mod support;
use support::{Running, memory, mysql, postgres, redb, sqlite};

const WAIT: Duration = Duration::from_secs(20);
const LIMIT: usize = 1_024;

/// Returns `n` bytes of text.
struct Blob;
impl Activity for Blob {
    const NAME: &'static str = "blob";
    type Input = usize;
    type Output = String;
    async fn run(&self, _: ActivityContext, n: usize) -> Result<String, Failure> {
        Ok("x".repeat(n))
    }
}

/// Takes text; returns its length.
struct Sink;
impl Activity for Sink {
    const NAME: &'static str = "sink";
    type Input = String;
    type Output = usize;
    async fn run(&self, _: ActivityContext, text: String) -> Result<usize, Failure> {
        Ok(text.len())
    }
}

/// Sends `n` bytes to `Sink`.
struct SendBlob;
impl Workflow for SendBlob {
    const NAME: &'static str = "SendBlob";
    type Input = usize;
    type State = ();
    type Output = usize;
    async fn run(ctx: WorkflowContext<Self>) -> Result<usize, WorkflowError> {
        Ok(ctx.activity::<Sink>("x".repeat(*ctx.input())).await?)
    }
}

/// Asks `Blob` for a result of its input's size; reports how that went.
struct AskForBlob;
impl Workflow for AskForBlob {
    const NAME: &'static str = "AskForBlob";
    type Input = usize;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        match ctx.activity::<Blob>(*ctx.input()).await {
            Ok(blob) => Ok(format!("got {} bytes", blob.len())),
            Err(ActivityError::Failed { failure, .. }) => Ok(failure.kind),
            Err(e) => Err(e.into()),
        }
    }
}

/// Waits on a tokio timer, which Loom cannot see.
struct Stalls;
impl Workflow for Stalls {
    const NAME: &'static str = "Stalls";
    type Input = ();
    type State = ();
    type Output = ();
    #[allow(clippy::disallowed_methods, reason = "the mistake under test")]
    async fn run(_ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        Ok(())
    }
}

/// Sleeps a millisecond, for ever.
struct Forever;
impl Workflow for Forever {
    const NAME: &'static str = "Forever";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        loop {
            ctx.sleep(Duration::from_millis(1)).await?;
        }
    }
}

fn spawn(store: Arc<dyn Storage>) -> (Client, Running) {
    let mut registry = Registry::new();
    registry
        .add_workflow::<AskForBlob>()
        .and_then(|r| r.add_workflow::<Forever>())
        .and_then(|r| r.add_workflow::<SendBlob>())
        .and_then(|r| r.add_workflow::<Stalls>())
        .and_then(|r| r.add_activity(Blob))
        .and_then(|r| r.add_activity(Sink))
        .expect("registry");
    let config = WorkerConfig {
        id: "limits".into(),
        poll_interval: Duration::from_millis(20),
        pause_retry: Duration::from_secs(60),
        limits: Limits {
            max_payload_bytes: LIMIT,
            history_warning_events: 10,
            max_history_events: 30,
        },
        ..WorkerConfig::default()
    };
    support::run(Worker::with_config(store, registry, config))
}

async fn inputs_and_signals_over_the_limit_are_refused_and_write_nothing(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store);
    let err = client
        .start::<AskForBlob>(&1, StartOptions::id("too-big"))
        .await
        .map(drop);
    assert!(err.is_ok(), "a small input is taken: {err:?}");
    // The size is checked first: a huge input of the wrong type is refused for its size,
    // without an error that quotes it whole.
    let big = "x".repeat(LIMIT * 2);
    let err = client
        .start_by_name(
            &{
                let mut r = Registry::new();
                r.add_workflow::<AskForBlob>().expect("register");
                r
            },
            "AskForBlob",
            loom_core::Payload::encode(&big).expect("encode"),
            StartOptions::id("refused"),
        )
        .await
        .expect_err("over the limit");
    assert!(
        matches!(&err, ClientError::Payload(m) if m.contains("over the limit") && m.len() < 200),
        "{err}"
    );
    assert!(matches!(
        client.describe(&WorkflowId::new("refused")).await,
        Err(ClientError::Storage(StorageError::NotFound(_)))
    ));
    let err = client
        .signal(
            &WorkflowId::new("too-big"),
            "s",
            loom_core::Payload::encode(&big).expect("encode"),
        )
        .await
        .expect_err("over the limit");
    assert!(matches!(err, ClientError::Payload(_)), "{err}");
    let pending = client
        .storage()
        .pending(&WorkflowId::new("too-big"))
        .await
        .expect("pending");
    assert!(
        pending
            .messages
            .iter()
            .all(|m| !matches!(m.kind, loom_core::EventKind::SignalReceived { .. })),
        "the signal was not written"
    );
    running.stop().await;
}

async fn a_result_over_the_limit_is_a_failure_the_code_handles(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store);
    let fits = client
        .start::<AskForBlob>(&(LIMIT / 2), StartOptions::id("fits"))
        .await
        .expect("start");
    assert_eq!(
        fits.result_within(WAIT).await.expect("result"),
        format!("got {} bytes", LIMIT / 2)
    );
    let too_big = client
        .start::<AskForBlob>(&(LIMIT * 2), StartOptions::id("too-big"))
        .await
        .expect("start");
    assert_eq!(
        too_big.result_within(WAIT).await.expect("result"),
        "payload_too_large"
    );
    let history = client.history(too_big.id()).await.expect("history");
    assert!(
        history.iter().all(|e| e.kind.largest_payload() <= LIMIT),
        "nothing over the limit was recorded"
    );
    running.stop().await;
}

async fn a_task_that_would_record_too_much_pauses_its_workflow(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store);
    let handle = client
        .start::<SendBlob>(&(LIMIT * 2), StartOptions::id("big-input"))
        .await
        .expect("start");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = client.describe(handle.id()).await.expect("describe");
        if s.status == WorkflowStatus::Paused {
            let reason = s.pause_reason.expect("a reason");
            assert!(
                reason.contains("ActivityScheduled") && reason.contains("over the limit"),
                "{reason}"
            );
            assert_eq!(s.last_seq.get(), 1, "nothing was recorded");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await;
}

async fn a_history_past_its_limit_ends_the_run(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store);
    let handle = client
        .start::<Forever>(&(), StartOptions::id("forever"))
        .await
        .expect("start");
    let err = handle.result_within(WAIT).await.expect_err("ended");
    match err {
        ClientError::Terminated { reason, .. } => {
            assert!(reason.contains("30 events"), "{reason}");
        }
        other => panic!("expected a termination, got {other}"),
    }
    let history = client.history(handle.id()).await.expect("history");
    assert!(history.len() <= 31, "{} events", history.len());
    running.stop().await;
}

async fn code_waiting_on_something_not_looms_is_paused_with_the_cause(store: Arc<dyn Storage>) {
    let (client, running) = spawn(store);
    let handle = client
        .start::<Stalls>(&(), StartOptions::id("stalls"))
        .await
        .expect("start");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = client.describe(handle.id()).await.expect("describe");
        if s.status == WorkflowStatus::Paused {
            let reason = s.pause_reason.expect("a reason");
            assert!(
                reason.contains("stalled") && reason.contains("not Loom's"),
                "{reason}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await;
}

on_every_backend!(
    code_waiting_on_something_not_looms_is_paused_with_the_cause,
    inputs_and_signals_over_the_limit_are_refused_and_write_nothing,
    a_result_over_the_limit_is_a_failure_the_code_handles,
    a_task_that_would_record_too_much_pauses_its_workflow,
    a_history_past_its_limit_ends_the_run,
);
