//! An operator's actions end to end, on MemoryStorage, SQLite, redb and PostgreSQL (the last
//! skipped loudly without a server, failing under `CI=true`): a paused workflow runs none of
//! its code while signals and an activity's result arrive, and resumed, takes them once, in
//! order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use loom_core::{
    Activity, ActivityContext, EventKind, Failure, Payload, Registry, Seq, Workflow,
    WorkflowContext, WorkflowError,
};
use loom_storage::{Storage, StorageError, WorkflowStatus};
use loom_worker::{Client, ClientError, ResetTo, StartOptions, Worker, WorkerConfig};

mod support;
use support::{Running, memory, mysql, postgres, redb, sqlite};

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

/// Ends at once.
struct Quick;
impl Workflow for Quick {
    const NAME: &'static str = "Quick";
    type Input = ();
    type State = ();
    type Output = ();
    async fn run(_: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        Ok(())
    }
}

/// A worker with a retention policy purges what ended past its period, in the background:
/// never an open workflow, and a type with a longer period of its own is kept.
async fn a_worker_purges_closed_workflows_past_their_retention(store: Arc<dyn Storage>) {
    let calls = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    registry
        .add_workflow::<Collector>()
        .and_then(|r| r.add_workflow::<Quick>())
        .and_then(|r| r.add_activity(Slow(calls)))
        .expect("registry");
    let retention = loom_worker::Retention {
        closed: Duration::from_millis(200),
        every: Duration::from_millis(50),
        batch: 2,
        ..loom_worker::Retention::closed_for(Duration::ZERO)
    }
    .with_type("Collector", Duration::from_secs(3_600));
    let config = WorkerConfig {
        id: "retention".into(),
        poll_interval: Duration::from_millis(20),
        retention: Some(retention),
        ..WorkerConfig::default()
    };
    let (client, running) = support::run(Worker::with_config(store, registry, config));
    let mut quick = Vec::new();
    for n in 0..5 {
        let id = format!("quick-{n}");
        quick.push(
            client
                .start::<Quick>(&(), StartOptions::id(id.as_str()))
                .await
                .expect("start"),
        );
    }
    let kept = client
        .start::<Collector>(&(), StartOptions::id("kept"))
        .await
        .expect("start");
    for w in ["a", "b", "c"] {
        word(&client, kept.id(), w).await;
    }
    kept.result_within(WAIT).await.expect("the collector ends");
    let open = client
        .start::<Collector>(&(), StartOptions::id("open"))
        .await
        .expect("start");
    let deadline = tokio::time::Instant::now() + WAIT;
    for h in &quick {
        loop {
            match client.describe(h.id()).await {
                Err(ClientError::Storage(StorageError::NotFound(_))) => break,
                Ok(_) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} was never purged",
                        h.id()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(
        client.describe(kept.id()).await.expect("kept").status,
        WorkflowStatus::Completed,
        "its type keeps closed workflows for an hour"
    );
    assert_eq!(
        client.describe(open.id()).await.expect("open").status,
        WorkflowStatus::Running
    );
    let metrics = running.stop_with_metrics().await;
    assert_eq!(metrics.workflows_purged, 5);
}

/// Charges once, counting its calls.
struct Charge(Arc<AtomicU32>);
impl Activity for Charge {
    const NAME: &'static str = "charge";
    type Input = ();
    type Output = u32;
    async fn run(&self, _: ActivityContext, (): ()) -> Result<u32, Failure> {
        Ok(self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

/// Prints a label for an address; refuses for good while the printer is broken (a bug that a
/// deploy fixes).
struct Label(Arc<AtomicBool>);
impl Activity for Label {
    const NAME: &'static str = "label";
    type Input = String;
    type Output = String;
    async fn run(&self, _: ActivityContext, address: String) -> Result<String, Failure> {
        if self.0.load(Ordering::SeqCst) {
            return Err(Failure::non_retryable("label", "the printer rejected it"));
        }
        Ok(format!("label for {address}"))
    }
}

/// Charges, waits for the address, prints the label: fails if the label fails.
struct Shipment;
impl Workflow for Shipment {
    const NAME: &'static str = "Shipment";
    type Input = ();
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let charged = ctx.activity::<Charge>(()).await?;
        let address = ctx.wait_signal::<String>("address").await?;
        let label = ctx.activity::<Label>(address).await?;
        Ok(format!("charge #{charged}, {label}"))
    }
}

/// A run that failed on a bug is reset, once the bug is fixed, to the last task before the
/// failure: the new run keeps the charge and the signal from the old history (the charge is
/// not made again), runs the label again, and completes; the old run is kept and the two are
/// linked. Bad resets are refused and change nothing.
async fn a_run_that_failed_is_reset_after_the_fix_and_completes(store: Arc<dyn Storage>) {
    let charges = Arc::new(AtomicU32::new(0));
    let broken = Arc::new(AtomicBool::new(true));
    let mut registry = Registry::new();
    registry
        .add_workflow::<Shipment>()
        .and_then(|r| r.add_activity(Charge(charges.clone())))
        .and_then(|r| r.add_activity(Label(broken.clone())))
        .expect("registry");
    let config = WorkerConfig {
        id: "reset".into(),
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let (client, running) = support::run(Worker::with_config(store, registry, config));
    let handle = client
        .start::<Shipment>(&(), StartOptions::id("ship-1"))
        .await
        .expect("start");
    client
        .signal(
            handle.id(),
            "address",
            Payload::encode(&"1 Main St").expect("encode"),
        )
        .await
        .expect("signal");
    assert!(matches!(
        handle.result_within(WAIT).await,
        Err(ClientError::Failed { .. })
    ));
    let failed = client.history(handle.id()).await.expect("history");

    // Bad resets: an unknown workflow, a point inside a task, a point past the history.
    assert!(matches!(
        client
            .reset(&"ghost".into(), ResetTo::LastTask, "ops", true)
            .await,
        Err(ClientError::Storage(StorageError::NotFound(_)))
    ));
    let inside = failed
        .iter()
        .find(|e| !loom_core::history::is_reset_point(&failed, e.seq))
        .expect("a point inside a task")
        .seq;
    assert!(matches!(
        client
            .reset(handle.id(), ResetTo::Event(inside), "ops", true)
            .await,
        Err(ClientError::Storage(StorageError::InvalidArgument(m))) if m.contains("not a workflow-task boundary")
    ));
    assert!(matches!(
        client
            .reset(handle.id(), ResetTo::Event(Seq::new(999)), "ops", true)
            .await,
        Err(ClientError::Storage(StorageError::InvalidArgument(_)))
    ));
    assert_eq!(
        client.describe(handle.id()).await.expect("describe").run,
        1,
        "nothing was written"
    );

    broken.store(false, Ordering::SeqCst);
    let done = client
        .reset(handle.id(), ResetTo::LastTask, "ada: printer fixed", true)
        .await
        .expect("reset");
    assert_eq!(done.run, 2);
    assert!(matches!(
        failed[done.point.get() as usize].kind,
        EventKind::ActivityFailed { .. }
    ));
    let output = handle
        .result_within(WAIT)
        .await
        .expect("the new run completes");
    assert_eq!(output, "charge #1, label for 1 Main St");
    assert_eq!(
        charges.load(Ordering::SeqCst),
        1,
        "the charge was not made again"
    );

    // The old run is kept whole, and the new one names it.
    assert_eq!(
        client.run_history(handle.id(), 1).await.expect("run 1"),
        failed
    );
    let runs = client.runs(handle.id()).await.expect("runs");
    assert_eq!(runs.len(), 1);
    let history = client.history(handle.id()).await.expect("history");
    assert!(matches!(
        &history[0].kind,
        EventKind::WorkflowStarted { run: 2, reset: Some(origin), .. }
            if origin.run == 1 && origin.point == done.point && origin.reason == "ada: printer fixed"
    ));
    running.stop().await;
}

/// Tags itself with how far it got.
struct Tagger;
impl Workflow for Tagger {
    const NAME: &'static str = "Tagger";
    type Input = i64;
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        ctx.set_tag("amount", *ctx.input())?;
        ctx.set_tag("stage", "done")?;
        // A key no store can hold is the code's error, not the store's.
        assert!(ctx.set_tag("bad key", 1).is_err());
        Ok(())
    }
}

/// Tags given at start and set by the code find the workflow, by equality and by range.
async fn tags_from_the_start_and_the_code_find_workflows(store: Arc<dyn Storage>) {
    let mut registry = Registry::new();
    registry.add_workflow::<Tagger>().expect("registry");
    let config = WorkerConfig {
        id: "tags".into(),
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let (client, running) = support::run(Worker::with_config(store, registry, config));
    for (n, customer) in [(10, "ada"), (500, "bob"), (900, "ada")] {
        let h = client
            .start::<Tagger>(
                &n,
                StartOptions::id(format!("tagged-{n}")).with_tag("customer", customer),
            )
            .await
            .expect("start");
        h.result_within(WAIT).await.expect("result");
    }
    assert!(matches!(
        client
            .start::<Tagger>(&1, StartOptions::id("bad").with_tag("", 1))
            .await,
        Err(ClientError::Storage(StorageError::InvalidArgument(_)))
    ));
    let ids = |tags: Vec<loom_storage::TagFilter>| {
        let client = client.clone();
        async move {
            let query = loom_storage::ListQuery {
                tags,
                ..loom_storage::ListQuery::default()
            };
            client
                .list(&query)
                .await
                .expect("list")
                .items
                .into_iter()
                .map(|s| s.id.to_string())
                .collect::<Vec<_>>()
        }
    };
    let tag = |key: &str, cmp, value: loom_core::TagValue| loom_storage::TagFilter {
        key: key.into(),
        cmp,
        value,
    };
    use loom_storage::TagCmp;
    assert_eq!(
        ids(vec![tag("customer", TagCmp::Eq, "ada".into())]).await,
        ["tagged-900", "tagged-10"]
    );
    assert_eq!(
        ids(vec![
            tag("amount", TagCmp::Gt, 100.into()),
            tag("stage", TagCmp::Eq, "done".into())
        ])
        .await,
        ["tagged-900", "tagged-500"]
    );
    running.stop().await;
}

on_every_backend!(
    a_paused_workflow_takes_what_waited_once_resumed,
    a_worker_purges_closed_workflows_past_their_retention,
    a_run_that_failed_is_reset_after_the_fix_and_completes,
    tags_from_the_start_and_the_code_find_workflows,
);

/// Many starts at once: each answered on its own, in the order given, idempotent on its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_starts_are_answered_each_in_order() {
    let store: Arc<dyn Storage> = Arc::new(loom_storage::MemoryStorage::new());
    let client = Client::new(store.clone());
    client
        .start::<Collector>(&(), StartOptions::id("taken"))
        .await
        .expect("start");
    let answers = client
        .start_many::<Collector>(vec![
            ((), StartOptions::id("one")),
            ((), StartOptions::id("taken")),
            ((), StartOptions::id("two")),
            ((), StartOptions::id("")),
        ])
        .await;
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0].as_ref().expect("one").id().as_str(), "one");
    assert_eq!(
        answers[1]
            .as_ref()
            .expect("the same start again")
            .id()
            .as_str(),
        "taken"
    );
    assert_eq!(answers[2].as_ref().expect("two").id().as_str(), "two");
    assert!(
        matches!(
            answers[3],
            Err(ClientError::Storage(StorageError::InvalidArgument(_)))
        ),
        "an empty id is refused alone"
    );
    for id in ["one", "two", "taken"] {
        assert_eq!(
            store
                .describe(&loom_core::WorkflowId::new(id))
                .await
                .expect("started")
                .status,
            WorkflowStatus::Running
        );
    }
}
