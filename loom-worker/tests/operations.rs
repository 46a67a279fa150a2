//! An operator's actions end to end, on MemoryStorage, SQLite, redb and PostgreSQL (the last
//! skipped loudly without a server, failing under `CI=true`): a paused workflow runs none of
//! its code while signals and an activity's result arrive, and resumed, takes them once, in
//! order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loom_core::{
    Activity, ActivityContext, EventKind, Failure, Payload, Registry, Workflow, WorkflowContext,
    WorkflowError,
};
use loom_storage::{Storage, StorageError, WorkflowStatus};
use loom_worker::{Client, ClientError, StartOptions, Worker, WorkerConfig};

mod support;
use support::{Running, memory, postgres, redb, sqlite};

const WAIT: Duration = Duration::from_secs(20);

/// Takes a while, counting its calls.
struct Slow(Arc<AtomicU32>);
impl Activity for Slow {
    const NAME: &'static str = "slow";
    type Input = ();
    type Output = u32;
    async fn run(&self, _: ActivityContext, (): ()) -> Result<u32, Failure> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

/// Runs the slow activity, then joins three `word` signals in the order they came.
struct Collector;
impl Workflow for Collector {
    const NAME: &'static str = "Collector";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let n = ctx.activity::<Slow>(()).await?;
        let mut words = vec![n.to_string()];
        for _ in 0..3 {
            words.push(ctx.wait_signal::<String>("word").await?);
        }
        Ok(words.join(" "))
    }
}

fn spawn(store: Arc<dyn Storage>, calls: Arc<AtomicU32>) -> (Client, Running) {
    let mut registry = Registry::new();
    registry
        .add_workflow::<Collector>()
        .and_then(|r| r.add_activity(Slow(calls)))
        .expect("registry");
    let config = WorkerConfig {
        id: "operations".into(),
        poll_interval: Duration::from_millis(20),
        lease: Duration::from_secs(2),
        shutdown_grace: Duration::from_millis(500),
        ..WorkerConfig::default()
    };
    support::run(Worker::with_config(store, registry, config))
}

async fn word(client: &Client, id: &loom_core::WorkflowId, w: &str) {
    client
        .signal(id, "word", Payload::encode(&w).expect("encode"))
        .await
        .expect("signal");
}

async fn a_paused_workflow_takes_what_waited_once_resumed(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (client, running) = spawn(store, calls.clone());
    let handle = client
        .start::<Collector>(&(), StartOptions::id("collect-1"))
        .await
        .expect("start");
    // Paused while its activity runs: the activity finishes, its result waits.
    let deadline = tokio::time::Instant::now() + WAIT;
    while client.history(handle.id()).await.expect("history").len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never scheduled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client
        .pause(handle.id(), "ada: checking the ledger")
        .await
        .expect("pause");
    for w in ["one", "two", "three"] {
        word(&client, handle.id(), w).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the activity ran and reported"
    );
    let summary = client.describe(handle.id()).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::Paused);
    assert_eq!(
        summary.pause_reason.as_deref(),
        Some("ada: checking the ledger")
    );
    let history = client.history(handle.id()).await.expect("history");
    assert!(
        !history
            .iter()
            .any(|e| matches!(e.kind, EventKind::ActivityCompleted { .. })),
        "nothing was delivered while paused: {history:#?}"
    );
    let pending = client
        .storage()
        .pending(handle.id())
        .await
        .expect("pending");
    assert_eq!(
        pending.messages.len(),
        4,
        "the result and three signals wait"
    );

    client.resume(handle.id()).await.expect("resume");
    assert_eq!(
        handle.result_within(WAIT).await.expect("result"),
        "1 one two three"
    );
    let history = client.history(handle.id()).await.expect("history");
    let signals = history
        .iter()
        .filter(|e| matches!(e.kind, EventKind::SignalReceived { .. }))
        .count();
    assert_eq!(signals, 3, "each delivered once");
    // Resuming what is not paused, or pausing what has ended, is refused.
    assert!(matches!(
        client.resume(handle.id()).await,
        Err(ClientError::Storage(StorageError::Closed { .. }))
    ));
    assert!(matches!(
        client.pause(handle.id(), "late").await,
        Err(ClientError::Storage(StorageError::Closed { .. }))
    ));
    running.stop().await;
}

on_every_backend!(a_paused_workflow_takes_what_waited_once_resumed);
