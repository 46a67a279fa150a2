//! Callers drop storage futures half-way (a worker drops a lease renewal whenever its task
//! ends first; shutdown aborts tasks). No such drop may leave a pooled connection inside an
//! open transaction: every later statement on it would run in that transaction, report
//! success, and be lost. Against the real server in `LOOM_TEST_POSTGRES_URL` (skipped loudly
//! without one, failing under `CI=true`).

use std::time::Duration;

use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
use loom_postgres::{PostgresOptions, PostgresStorage, testing};
use loom_storage::{ClaimRequest, Release, Storage};

fn started(n: u64) -> Event {
    Event {
        seq: Seq::FIRST,
        at: Timestamp::from_millis(0),
        kind: EventKind::WorkflowStarted {
            traceparent: None,
            tags: Default::default(),
            reset: None,
            attempt: 1,
            retry: None,
            run: 1,
            name: "Cancel".into(),
            version: 1,
            input: Payload::encode(&n).expect("encode"),
            format: HISTORY_FORMAT,
            timeouts: Default::default(),
            parent: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_calls_leave_no_transaction_open() {
    if !testing::server_available().await {
        return;
    }
    let schema = testing::fresh_schema();
    // One connection: a poisoned one would be the one every later call uses.
    let options = PostgresOptions {
        schema: schema.clone(),
        max_connections: 1,
        ..PostgresOptions::default()
    };
    let store = PostgresStorage::connect(&testing::url(), options)
        .await
        .expect("connect");
    store
        .create_workflow(&WorkflowId::new("held"), started(0))
        .await
        .expect("create");
    let req = ClaimRequest::new("cancel-test", 1, Duration::from_secs(60));
    let task = store
        .claim_workflow_tasks(&req)
        .await
        .expect("claim")
        .remove(0);
    let mut lease = task.lease;

    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&testing::url())
        .await
        .expect("admin connection");

    // Drop renewals and releases after a few microseconds to a millisecond (some of them in
    // the middle of a round trip); after each, what the store commits must be committed.
    // (Checked each time: a later transaction on a poisoned connection would commit the
    // stale one and hide the fault.)
    let mut dropped = 0;
    for i in 0..300u64 {
        let wait = Duration::from_micros((i * 37) % 700);
        let done = if i % 2 == 0 {
            tokio::time::timeout(wait, store.renew_lease(&lease, Duration::from_secs(60)))
                .await
                .map(|r| r.map(|l| lease = l).map(drop))
        } else {
            let release = Release {
                after: Duration::from_secs(3_600 * 24 * 365),
                pause: None,
            };
            tokio::time::timeout(wait, store.release_task(&lease, release))
                .await
                .map(|r| r.map(drop))
        };
        let was_dropped = done.is_err();
        match done {
            Err(_elapsed) => dropped += 1,
            Ok(Ok(())) | Ok(Err(loom_storage::StorageError::LeaseLost(_))) => {}
            Ok(Err(e)) => panic!("call {i} failed: {e}"),
        }
        let id = format!("after-{i}");
        store
            .create_workflow(&WorkflowId::new(id.as_str()), started(i))
            .await
            .expect("create");
        let seen: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT last_seq FROM {schema}.workflows WHERE id = '{id}'"
        )))
        .fetch_optional(&admin)
        .await
        .expect("read from another connection");
        assert_eq!(
            seen,
            Some(1),
            "after call {i} (dropped: {}), a reported commit must be committed, not held in an open transaction",
            was_dropped
        );
    }
    assert!(dropped > 0, "some calls were dropped half-way");
}
