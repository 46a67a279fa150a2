//! Work that becomes due is run when it becomes due: a durable timer fires as real time passes,
//! never early and with bounded lateness, on every backend; and on PostgreSQL a workflow
//! started by another process reaches an idle worker through LISTEN/NOTIFY, long before the
//! worker's next poll (so a broken notification fails here instead of hiding behind polling).

use std::sync::Arc;
use std::time::{Duration, Instant};

use loom_core::{Registry, Workflow, WorkflowContext, WorkflowError};
use loom_storage::{Storage, WorkflowStatus};
use loom_worker::{Client, StartOptions, Worker, WorkerConfig};

mod support;
use support::{memory, mysql, postgres, redb, sqlite};

/// Sleeps as long as its input says.
struct Nap;
impl Workflow for Nap {
    const NAME: &'static str = "Nap";
    type Input = u64;
    type State = ();
    type Output = ();
    async fn run(ctx: WorkflowContext<Self>) -> Result<(), WorkflowError> {
        ctx.sleep(Duration::from_millis(*ctx.input())).await?;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.add_workflow::<Nap>().expect("registry");
    registry
}

/// How late a timer may fire on a loaded test machine: far less than the polls and leases
/// that would hide a timer that is not armed.
const LATENESS: Duration = Duration::from_secs(2);

async fn timers_fire_as_time_passes(store: Arc<dyn Storage>) {
    let config = WorkerConfig {
        id: "timers".into(),
        poll_interval: Duration::from_millis(50),
        ..WorkerConfig::default()
    };
    let (client, running) = support::run(Worker::with_config(store, registry(), config));
    for (n, ms) in [(1, 300u64), (2, 800)] {
        let started = Instant::now();
        let handle = client
            .start::<Nap>(&ms, StartOptions::id(format!("nap-{n}")))
            .await
            .expect("start");
        handle
            .result_within(Duration::from_secs(30))
            .await
            .expect("the timer fires");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(ms),
            "a {ms} ms timer fired early, after {took:?}"
        );
        assert!(
            took <= Duration::from_millis(ms) + LATENESS,
            "a {ms} ms timer fired {took:?} after its start"
        );
        let history = client.history(handle.id()).await.expect("history");
        assert!(
            history
                .iter()
                .any(|e| matches!(e.kind, loom_core::EventKind::TimerFired { .. }))
        );
    }
    running.stop().await;
}

on_every_backend!(timers_fire_as_time_passes);

/// A worker on a fresh PostgreSQL schema that polls only every 30 s, gone idle in its long
/// wait, so that only a notification can bring it work sooner; its schema and its own client.
/// `None` without a server.
async fn idle_postgres_worker() -> Option<(String, Client, support::Running)> {
    if !loom_postgres::testing::server_available().await {
        return None;
    }
    let schema = loom_postgres::testing::fresh_schema();
    let worker_store = loom_postgres::PostgresStorage::connect(
        &loom_postgres::testing::url(),
        loom_postgres::PostgresOptions {
            schema: schema.clone(),
            ..loom_postgres::PostgresOptions::default()
        },
    )
    .await
    .expect("connect");
    let config = WorkerConfig {
        id: "notified".into(),
        poll_interval: Duration::from_secs(30),
        ..WorkerConfig::default()
    };
    let (client, running) = support::run(Worker::with_config(
        Arc::new(worker_store),
        registry(),
        config,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    Some((schema, client, running))
}

/// Another process's store on `schema`: its own connection, no link to the worker, and no
/// listener (as a one-shot command opens it).
async fn another_process(schema: String) -> loom_postgres::PostgresStorage {
    let options = loom_postgres::PostgresOptions {
        schema,
        listen: false,
        max_connections: 1,
        ..loom_postgres::PostgresOptions::default()
    };
    loom_postgres::PostgresStorage::connect(&loom_postgres::testing::url(), options)
        .await
        .expect("connect")
}

/// Waits for workflow `id`, started at `started`, to complete, failing after 10 s: far less
/// than the worker's 30 s poll.
async fn completes_without_a_poll(client: &Client, id: &str, started: Instant, what: &str) {
    loop {
        let status = client.status(&id.into()).await.expect("status");
        if status == WorkflowStatus::Completed {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "workflow {id} waited {:?} for a worker polling every 30 s: {what}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_wakes_an_idle_postgres_worker_through_notify() {
    let Some((schema, worker_client, running)) = idle_postgres_worker().await else {
        return;
    };
    let client = Client::new(Arc::new(another_process(schema).await));
    for n in 0..3 {
        let started = Instant::now();
        let id = format!("woken-{n}");
        client
            .start::<Nap>(&0, StartOptions::id(id.as_str()))
            .await
            .expect("start");
        completes_without_a_poll(
            &worker_client,
            &id,
            started,
            "the notification did not wake it",
        )
        .await;
    }
    running.stop().await;
}

/// A one-shot command (`loom start`) opens a store that does not listen and ends as soon as its
/// start is answered: its notification must be sent by then, not left to a task that dies
/// with the command's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_start_wakes_an_idle_postgres_worker() {
    let Some((schema, client, running)) = idle_postgres_worker().await else {
        return;
    };
    for n in 0..3 {
        let id = format!("one-shot-{n}");
        let schema = schema.clone();
        let started = Instant::now();
        let to_start = id.clone();
        // Like `loom start`: a runtime of its own that ends once the start is answered.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                Client::new(Arc::new(another_process(schema).await))
                    .start::<Nap>(&0, StartOptions::id(to_start.as_str()))
                    .await
                    .expect("start");
            });
        })
        .join()
        .expect("the one-shot start");
        completes_without_a_poll(
            &client,
            &id,
            started,
            "the one-shot start's notification was lost",
        )
        .await;
    }
    running.stop().await;
}
