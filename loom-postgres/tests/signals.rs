//! The work signal that wakes idle workers, without the races that would leave one asleep
//! until its next poll: a signal taken before a claim sees a notification that arrives before
//! it is first polled, and a listener that has just begun to listen wakes those already
//! waiting (what was sent before it listened is lost to it). Against the real server in
//! `LOOM_TEST_POSTGRES_URL` (skipped loudly without one, failing under `CI=true`).

use std::time::Duration;

use loom_core::{Event, EventKind, Payload, Seq, Timestamp, WorkflowId};
use loom_postgres::{PostgresOptions, PostgresStorage, testing};
use loom_storage::Storage;

async fn store(schema: &str, listen: bool) -> PostgresStorage {
    let options = PostgresOptions {
        schema: schema.to_owned(),
        listen,
        max_connections: 2,
        ..PostgresOptions::default()
    };
    PostgresStorage::connect(&testing::url(), options)
        .await
        .expect("connect to the test server")
}

fn started() -> Event {
    Event {
        seq: Seq::FIRST,
        at: Timestamp::from_millis(0),
        kind: EventKind::workflow_started("Signalled", 1, Payload::encode(&0).expect("encode")),
    }
}

// On one thread, so that the order is the test's: the listener task, spawned by `connect`,
// first runs when the test awaits, after the signal is taken.
#[tokio::test(flavor = "current_thread")]
async fn a_listener_that_begins_to_listen_wakes_those_already_waiting() {
    if !testing::server_available().await {
        return;
    }
    let listening = store(&testing::fresh_schema(), true).await;
    let signal = listening.work_signal();
    tokio::time::timeout(Duration::from_secs(10), signal)
        .await
        .expect("a listener that begins to listen wakes the workers already waiting");
}

#[tokio::test(flavor = "current_thread")]
async fn a_signal_sees_what_is_sent_after_it_is_taken_even_before_it_is_polled() {
    if !testing::server_available().await {
        return;
    }
    let schema = testing::fresh_schema();
    let listening = store(&schema, true).await;
    // Once this resolves, the listener listens (see the test above).
    tokio::time::timeout(Duration::from_secs(10), listening.work_signal())
        .await
        .expect("the listener listens");

    let signal = listening.work_signal();
    let other = store(&schema, false).await;
    other
        .create_workflow(&WorkflowId::new("signalled"), started())
        .await
        .expect("create");
    // The notification arrives while the signal is not being polled, as it does while a
    // worker's claim is in flight. Nothing but that notification could wake the signal.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::time::timeout(Duration::from_secs(10), signal)
        .await
        .expect("the notification reached the signal taken before it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_listen_never_signals() {
    if !testing::server_available().await {
        return;
    }
    let schema = testing::fresh_schema();
    let quiet = store(&schema, false).await;
    let signal = quiet.work_signal();
    store(&schema, false)
        .await
        .create_workflow(&WorkflowId::new("unheard"), started())
        .await
        .expect("create");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), signal)
            .await
            .is_err(),
        "a store without a listener signalled"
    );
    assert!(!quiet.signals_work());
}
