//! The shared conformance suite against a real PostgreSQL server, each case in its own schema.
//! The server is `LOOM_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

use std::sync::Arc;

use loom_storage::Storage;

async fn fresh() -> Option<Arc<dyn Storage>> {
    let store = loom_postgres::testing::fresh().await?;
    Some(Arc::new(store))
}

loom_storage::conformance_tests!(optional: fresh);

/// PostgreSQL text cannot hold NUL: an id with one is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_with_a_nul_is_refused() {
    use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
    use loom_storage::{ListQuery, StorageError};
    let Some(store) = fresh().await else {
        return;
    };
    let started = Event {
        seq: Seq::FIRST,
        at: Timestamp::from_millis(0),
        kind: EventKind::WorkflowStarted {
            name: "Nul".into(),
            version: 1,
            input: Payload::encode(&0).expect("encode"),
            format: HISTORY_FORMAT,
        },
    };
    let err = store
        .create_workflow(&WorkflowId::new("a\0b"), started)
        .await
        .expect_err("refused");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    let page = store.list(&ListQuery::default()).await.expect("list");
    assert!(page.items.is_empty(), "nothing was written");
}

/// PostgreSQL implements eager claims (the shared check, which backends opt into).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_claims_are_made() {
    let Some(store) = fresh().await else {
        return;
    };
    loom_storage::conformance::eager_claims_are_made(store).await;
}
