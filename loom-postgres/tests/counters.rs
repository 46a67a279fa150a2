//! What the backend counts of its own work, for metrics: commits grouped by the committer
//! and the pool's connections. Against the real server in `LOOM_TEST_POSTGRES_URL` (skipped
//! loudly without one, failing under `CI=true`).

use std::sync::Arc;

use loom_core::{Event, EventKind, Payload, Seq, Timestamp, WorkflowId};
use loom_postgres::testing;
use loom_storage::Storage;

fn started() -> Event {
    Event {
        seq: Seq::FIRST,
        at: Timestamp::from_millis(0),
        kind: EventKind::workflow_started("Counted", 1, Payload::encode(&0).expect("encode")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_and_connections_are_counted() {
    let Some(store) = testing::fresh().await else {
        return;
    };
    let store = Arc::new(store);
    let before = store.counters();
    let mut starts = tokio::task::JoinSet::new();
    for n in 0..20 {
        let store = store.clone();
        starts.spawn(async move {
            store
                .create_workflow(&WorkflowId::new(format!("wf-{n}")), started())
                .await
        });
    }
    while let Some(created) = starts.join_next().await {
        created.expect("joined").expect("create");
    }
    let after = store.counters();
    let commits = after.group_commits - before.group_commits;
    let writes = after.writes_committed - before.writes_committed;
    assert!(commits >= 1, "no commit counted");
    assert!(
        writes >= 20 && writes >= commits,
        "{writes} writes in {commits} commits for 20 creates"
    );
    let (open, idle) = after.connections.expect("a pool");
    assert!(open >= 1 && idle <= open, "{open} open, {idle} idle");
}
