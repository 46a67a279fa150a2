//! Versions of one workflow type side by side, on MemoryStorage, SQLite, redb and PostgreSQL
//! (the last skipped loudly without a server, failing under `CI=true`): after a deploy that
//! adds version 2, runs started on version 1 finish on version 1's code, new runs take
//! version 2 (or the version named at start), a run that continues as new moves to the newest
//! version, and listings filter by version.

use std::sync::Arc;
use std::time::Duration;

use loom_core::{Payload, Registry, Workflow, WorkflowContext, WorkflowError, WorkflowId};
use loom_storage::{ListQuery, Storage};
use loom_worker::{Client, StartOptions, Worker, WorkerConfig};

mod support;
use support::{Running, memory, mysql, postgres, redb, sqlite};

const WAIT: Duration = Duration::from_secs(20);

/// Greets the name it is signalled, the first way.
struct GreeterV1;
impl Workflow for GreeterV1 {
    const NAME: &'static str = "Greeter";
    type Input = u32;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        let name: String = ctx.wait_signal("name").await?;
        if *ctx.input() == 1 {
            // Once more, as a new run: the run after it takes the newest version.
            return Err(ctx.continue_as_new(0));
        }
        Ok(format!("v1 hello {name}"))
    }
}

/// The same type, version 2: other code, which version 1's histories would not replay on.
struct GreeterV2;
impl Workflow for GreeterV2 {
    const NAME: &'static str = "Greeter";
    const VERSION: u32 = 2;
    type Input = u32;
    type State = ();
    type Output = String;
    async fn run(ctx: WorkflowContext<Self>) -> Result<String, WorkflowError> {
        ctx.sleep(Duration::from_millis(1)).await?;
        if ctx.run() > 1 {
            return Ok(format!("v2 run {}", ctx.run()));
        }
        let name: String = ctx.wait_signal("name").await?;
        Ok(format!("v2 hi {name}"))
    }
}

fn spawn(store: Arc<dyn Storage>, v2: bool) -> (Client, Running) {
    let mut registry = Registry::new();
    registry.add_workflow::<GreeterV1>().expect("v1");
    if v2 {
        registry.add_workflow::<GreeterV2>().expect("v2 beside v1");
    }
    let config = WorkerConfig {
        id: "versions".into(),
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    support::run(Worker::with_config(store, registry, config))
}

async fn waiting(client: &Client, id: &WorkflowId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .describe(id)
        .await
        .expect("describe")
        .progress
        .is_none_or(|p| p.awaiting_signals.is_empty())
    {
        assert!(tokio::time::Instant::now() < deadline, "{id} never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn name(client: &Client, id: &str) {
    client
        .signal(&id.into(), "name", Payload::encode(&"ada").expect("encode"))
        .await
        .expect("signal");
}

async fn runs_finish_on_the_version_they_started_with(store: Arc<dyn Storage>) {
    // Before the deploy: only version 1.
    let (client, running) = spawn(store.clone(), false);
    for (id, input) in [("old", 0), ("looping", 1)] {
        client
            .start::<GreeterV1>(&input, StartOptions::id(id))
            .await
            .expect("start");
        waiting(&client, &id.into()).await;
    }
    running.stop().await;

    // After: versions 1 and 2 side by side.
    let (client, running) = spawn(store, true);
    let mut registry = Registry::new();
    registry
        .add_workflow::<GreeterV1>()
        .and_then(|r| r.add_workflow::<GreeterV2>())
        .expect("registry");
    let by_name = |id: &str, version: Option<u32>| StartOptions {
        version,
        ..StartOptions::id(id)
    };
    client
        .start_by_name(
            &registry,
            "Greeter",
            Payload::encode(&0u32).expect("encode"),
            by_name("new", None),
        )
        .await
        .expect("start the newest");
    client
        .start_by_name(
            &registry,
            "Greeter",
            Payload::encode(&0u32).expect("encode"),
            by_name("pinned", Some(1)),
        )
        .await
        .expect("start version 1 by name");
    assert!(matches!(
        client
            .start_by_name(
                &registry,
                "Greeter",
                Payload::NULL,
                by_name("nine", Some(9))
            )
            .await,
        Err(loom_worker::ClientError::UnknownWorkflow { .. })
    ));
    for id in ["new", "pinned"] {
        waiting(&client, &id.into()).await;
    }
    for id in ["old", "new", "pinned", "looping"] {
        name(&client, id).await;
    }
    let result = |id: &'static str| {
        let client = client.clone();
        async move {
            client
                .handle::<GreeterV1>(id)
                .result_within(WAIT)
                .await
                .expect("result")
        }
    };
    assert_eq!(result("old").await, "v1 hello ada");
    assert_eq!(result("pinned").await, "v1 hello ada");
    assert_eq!(result("new").await, "v2 hi ada");
    assert_eq!(
        result("looping").await,
        "v2 run 2",
        "the next run took version 2"
    );

    let ids = |version: u32| {
        let client = client.clone();
        async move {
            let query = ListQuery {
                version: Some(version),
                ..ListQuery::default()
            };
            let mut ids: Vec<String> = client
                .list(&query)
                .await
                .expect("list")
                .items
                .into_iter()
                .map(|s| s.id.to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(ids(1).await, ["old", "pinned"]);
    assert_eq!(ids(2).await, ["looping", "new"]);
    running.stop().await;
}

on_every_backend!(runs_finish_on_the_version_they_started_with);
