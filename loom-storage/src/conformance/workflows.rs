//! Creating workflows and reading their histories.

use loom_core::{EventKind, Payload, Seq};

use super::*;
use crate::{StorageError, WorkflowStatus};

/// A created workflow is described as running, with its started event as its history.
pub async fn create_then_describe(store: Store) {
    create(&store, "wf-1").await;
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.id, wid("wf-1"));
    assert_eq!(s.name, "Conformance");
    assert_eq!(s.version, 1);
    assert_eq!(s.status, WorkflowStatus::Running);
    assert_eq!(s.input, json("wf-1"));
    assert_eq!(s.last_seq, Seq::FIRST);
    assert!(s.closed_at.is_none() && s.output.is_none() && s.failure.is_none());
    let history = store
        .load_history(&wid("wf-1"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(history.len(), 1);
    assert!(matches!(
        &history[0].kind,
        EventKind::WorkflowStarted { name, input, .. } if name == "Conformance" && *input == json("wf-1")
    ));
}

/// A second create with the same id is `AlreadyExists` and changes nothing.
pub async fn create_twice_is_already_exists(store: Store) {
    create(&store, "wf-1").await;
    let err = store
        .create_workflow(&wid("wf-1"), started("Other", 2))
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, StorageError::AlreadyExists { ref id, status: WorkflowStatus::Running } if *id == wid("wf-1")),
        "{err}"
    );
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.name, "Conformance");
    assert_eq!(history_len(&store, "wf-1").await, 1);
    // Exactly one task exists for it.
    let tasks = store.claim_workflow_tasks(&claim(10)).await.expect("claim");
    assert_eq!(tasks.len(), 1);
}

/// A workflow is only created from a `WorkflowStarted` event numbered 1.
pub async fn create_rejects_anything_but_a_started_event(store: Store) {
    let not_started = event(1, EventKind::WorkflowCancelled {});
    let err = store
        .create_workflow(&wid("wf-1"), not_started)
        .await
        .expect_err("invalid");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    let mut misnumbered = started("Conformance", 1);
    misnumbered.seq = Seq::new(2);
    let err = store
        .create_workflow(&wid("wf-1"), misnumbered)
        .await
        .expect_err("invalid");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    assert!(matches!(
        store.describe(&wid("wf-1")).await,
        Err(StorageError::NotFound(_))
    ));
}

/// An empty id, one holding a NUL character, and `.` or `..` are refused on every backend
/// alike; odd but valid text (`...` among it) is kept exactly.
pub async fn create_refuses_ids_a_database_cannot_hold(store: Store) {
    for bad in ["", "nul\0inside", ".", ".."] {
        let err = store
            .create_workflow(&wid(bad), started("Conformance", 1))
            .await
            .expect_err("refused");
        assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    }
    let odd = "ünïcødé/🧶 \"quoted\" 'x' \\ %_";
    create(&store, odd).await;
    create(&store, "...").await;
    assert_eq!(
        store.describe(&wid(odd)).await.expect("describe").id,
        wid(odd)
    );
    let all = store
        .list(&crate::ListQuery::default())
        .await
        .expect("list");
    assert_eq!(
        all.items.len(),
        2,
        "nothing was written for the refused ids"
    );
}

/// Every call naming an unknown workflow is `NotFound`.
pub async fn unknown_workflows_are_not_found(store: Store) {
    let id = wid("nope");
    assert!(matches!(
        store.describe(&id).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        store.load_history(&id, Seq::ZERO).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        store.signal(&id, "s", Payload::NULL).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        store.request_cancel(&id, None).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        store.logs(&id).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        store.pending(&id).await,
        Err(StorageError::NotFound(_))
    ));
}

/// `load_history` returns the events after the given sequence number, in order.
pub async fn load_history_after_a_sequence_number(store: Store) {
    create(&store, "wf-1").await;
    let task = advance(&store, vec![step("a"), step("b"), step("c")]).await;
    assert_eq!(task.last_seq, Seq::FIRST);
    let all = store
        .load_history(&wid("wf-1"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(all.len(), 4);
    let tail = store
        .load_history(&wid("wf-1"), Seq::new(2))
        .await
        .expect("tail");
    assert_eq!(tail, all[2..].to_vec());
    let none = store
        .load_history(&wid("wf-1"), Seq::new(4))
        .await
        .expect("empty tail");
    assert!(none.is_empty());
}

/// Events are stored exactly as given: every field survives the round trip.
pub async fn events_round_trip_exactly(store: Store) {
    create(&store, "wf-1").await;
    let kinds = vec![
        EventKind::StateSet {
            key: "k".into(),
            value: json(
                serde_json::json!({"nested": [1, 2.5, "x", null, true], "b": {"z": 1, "a": 2}}),
            ),
        },
        EventKind::ValueRecorded {
            value: loom_core::RecordedValue::Random(u64::MAX),
        },
        schedule("emoji 🧶", "ünïcødé"),
        EventKind::StepStarted {
            name: "nul \0 inside".into(),
        },
        EventKind::StateSet {
            key: "float".into(),
            value: json(0.1_f64 + 0.2_f64),
        },
    ];
    let task = claim_workflow(&store).await;
    let c = completion(&task, kinds);
    let events = c.events.clone();
    store.complete_workflow_task(c).await.expect("complete");
    let back = store
        .load_history(&wid("wf-1"), Seq::FIRST)
        .await
        .expect("history");
    assert_eq!(back, events);
}

/// A commit that names another last event than the history's is `Conflict` and writes
/// nothing; the lease still holds, and the right commit then succeeds.
pub async fn a_commit_naming_the_wrong_last_event_conflicts(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let mut stale = completion(&task, vec![schedule("charge", 1)]);
    stale.expected_last_seq = Seq::ZERO;
    stale.events[0].seq = Seq::FIRST;
    let err = store
        .complete_workflow_task(stale)
        .await
        .expect_err("conflict");
    assert!(
        matches!(err, StorageError::Conflict { expected, actual, .. } if expected == Seq::ZERO && actual == Seq::FIRST),
        "{err}"
    );
    assert_eq!(history_len(&store, "wf-1").await, 1);
    no_ready_activity_task(&store).await;
    store
        .complete_workflow_task(completion(&task, vec![step("a")]))
        .await
        .expect("the lease still holds");
    assert_eq!(
        store
            .describe(&wid("wf-1"))
            .await
            .expect("describe")
            .last_seq,
        Seq::new(2)
    );
}

/// A commit's events must be numbered consecutively after the last; a gap or a second
/// `WorkflowStarted` is `InvalidArgument` and writes nothing.
pub async fn a_commit_rejects_gaps_and_restarts(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let mut gap = completion(&task, vec![step("a"), step("b")]);
    gap.events[1].seq = Seq::new(4);
    let err = store.complete_workflow_task(gap).await.expect_err("gap");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    let mut restart = completion(&task, vec![]);
    let mut again = started("Conformance", 1);
    again.seq = Seq::new(2);
    restart.events = vec![again];
    let err = store
        .complete_workflow_task(restart)
        .await
        .expect_err("restart");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    assert_eq!(history_len(&store, "wf-1").await, 1);
    store
        .complete_workflow_task(completion(&task, vec![step("a")]))
        .await
        .expect("the lease still holds");
}
