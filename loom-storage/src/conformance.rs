//! The conformance suite: one set of behaviours every backend must show.
//!
//! Each case is a public async function that takes a fresh, empty store. A backend's tests run
//! them all with one macro call, which makes one named test per case:
//!
//! ```text
//! loom_storage::conformance_tests!(|| async { std::sync::Arc::new(MyStorage::open_temp().await) });
//! ```
//!
//! Cases that need time to pass use leases of 400 ms and real sleeps of 700 ms, so the suite
//! stays fast on any backend, including those that judge time by the database's clock, and
//! holds on a loaded machine. Timers "not yet due" are an hour away; "due" ones an hour ago.

#![allow(clippy::missing_panics_doc)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, Failure, HISTORY_FORMAT, LogLevel, LogRecord,
    Payload, Progress, Seq, TimerId, Timestamp, WorkflowId,
};

use crate::{
    ActivityTask, ActivityTaskCompletion, ClaimRequest, DecidedTask, ListQuery, Release, Storage,
    StorageError, WorkflowStatus, WorkflowTask, WorkflowTaskCompletion,
};

/// A fresh store for one case.
pub type Store = Arc<dyn Storage>;

const LEASE: Duration = Duration::from_secs(30);
// Long enough that a claim and an immediate renewal finish inside it on a loaded machine with
// a database server on the same two cores (60 ms was not); short enough to keep the suite fast.
const SHORT_LEASE: Duration = Duration::from_millis(400);
const PAST_SHORT_LEASE: Duration = Duration::from_millis(700);
const HOUR_MS: i64 = 3_600_000;

fn wid(s: &str) -> WorkflowId {
    WorkflowId::new(s)
}

fn json(v: impl serde::Serialize) -> Payload {
    Payload::encode(&v).expect("encodable")
}

fn wall_now() -> Timestamp {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

fn started(name: &str, input: impl serde::Serialize) -> Event {
    Event {
        seq: Seq::FIRST,
        at: wall_now(),
        kind: EventKind::WorkflowStarted {
            name: name.into(),
            version: 1,
            input: json(input),
            format: HISTORY_FORMAT,
        },
    }
}

fn event(seq: u64, kind: EventKind) -> Event {
    Event {
        seq: Seq::new(seq),
        at: wall_now(),
        kind,
    }
}

fn schedule(name: &str, input: impl serde::Serialize) -> EventKind {
    EventKind::ActivityScheduled {
        name: name.into(),
        input: json(input),
        options: ActivityOptions::default(),
    }
}

fn timer_at(fire_at: Timestamp) -> EventKind {
    EventKind::TimerScheduled {
        fire_at,
        duration_ms: None,
    }
}

fn claim(n: usize) -> ClaimRequest {
    ClaimRequest::new("conformance", n, LEASE)
}

async fn create(store: &Store, id: &str) {
    store
        .create_workflow(&wid(id), started("Conformance", id))
        .await
        .expect("create");
}

async fn claim_workflow(store: &Store) -> WorkflowTask {
    let mut tasks = store.claim_workflow_tasks(&claim(1)).await.expect("claim");
    assert_eq!(tasks.len(), 1, "expected exactly one ready workflow task");
    tasks.remove(0)
}

async fn claim_activity(store: &Store) -> ActivityTask {
    let mut tasks = store.claim_activity_tasks(&claim(1)).await.expect("claim");
    assert_eq!(tasks.len(), 1, "expected exactly one ready activity task");
    tasks.remove(0)
}

/// Commits `kinds` as the task's new events, consuming all its messages.
fn completion(task: &WorkflowTask, kinds: Vec<EventKind>) -> WorkflowTaskCompletion {
    let first = task.last_seq.get() + 1;
    WorkflowTaskCompletion {
        lease: task.lease,
        workflow_id: task.workflow_id.clone(),
        expected_last_seq: task.last_seq,
        events: kinds
            .into_iter()
            .enumerate()
            .map(|(i, k)| event(first + i as u64, k))
            .collect(),
        consumed: task.messages.iter().map(|m| m.id).collect(),
        progress: None,
        logs: Vec::new(),
    }
}

/// Creates workflow `id` and runs its first task, which schedules one activity.
async fn with_scheduled_activity(store: &Store, id: &str) -> ActivityId {
    create(store, id).await;
    let task = claim_workflow(store).await;
    store
        .complete_workflow_task(completion(&task, vec![schedule("charge", 5)]))
        .await
        .expect("complete");
    ActivityId(Seq::new(2))
}

async fn no_ready_workflow_task(store: &Store) {
    let tasks = store.claim_workflow_tasks(&claim(10)).await.expect("claim");
    assert!(
        tasks.is_empty(),
        "expected no ready workflow task, got {tasks:?}"
    );
}

async fn no_ready_activity_task(store: &Store) {
    let tasks = store.claim_activity_tasks(&claim(10)).await.expect("claim");
    assert!(
        tasks.is_empty(),
        "expected no ready activity task, got {tasks:?}"
    );
}

async fn history_len(store: &Store, id: &str) -> usize {
    store
        .load_history(&wid(id), Seq::ZERO)
        .await
        .expect("history")
        .len()
}

// ---- creating and reading ----

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
        store.append_events(&id, Seq::FIRST, vec![]).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        store.logs(&id).await,
        Err(StorageError::NotFound(_))
    ));
}

/// `load_history` returns the events after the given sequence number, in order.
pub async fn load_history_after_a_sequence_number(store: Store) {
    create(&store, "wf-1").await;
    let events = vec![
        event(2, EventKind::StepStarted { name: "a".into() }),
        event(3, EventKind::StepCompleted { name: "a".into() }),
        event(4, EventKind::StepStarted { name: "b".into() }),
    ];
    store
        .append_events(&wid("wf-1"), Seq::FIRST, events.clone())
        .await
        .expect("append");
    let tail = store
        .load_history(&wid("wf-1"), Seq::new(2))
        .await
        .expect("tail");
    assert_eq!(tail, events[1..].to_vec());
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
            value: json(serde_json::json!({"nested": [1, 2.5, "x", null, true]})),
        },
        EventKind::ValueRecorded {
            value: loom_core::RecordedValue::Random(u64::MAX),
        },
        schedule("emoji 🧶", "ünïcødé"),
        EventKind::SignalReceived {
            name: "s".into(),
            payload: json(0.1_f64 + 0.2_f64),
        },
    ];
    let events: Vec<Event> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, k)| event(i as u64 + 2, k))
        .collect();
    store
        .append_events(&wid("wf-1"), Seq::FIRST, events.clone())
        .await
        .expect("append");
    let back = store
        .load_history(&wid("wf-1"), Seq::FIRST)
        .await
        .expect("history");
    assert_eq!(back, events);
}

// ---- appending ----

/// Appends check the expected last sequence number; a stale one is `Conflict` and writes
/// nothing.
pub async fn append_is_optimistically_concurrent(store: Store) {
    create(&store, "wf-1").await;
    let first = vec![event(2, EventKind::StepStarted { name: "a".into() })];
    store
        .append_events(&wid("wf-1"), Seq::FIRST, first)
        .await
        .expect("append");
    let racing = vec![event(2, EventKind::StepStarted { name: "b".into() })];
    let err = store
        .append_events(&wid("wf-1"), Seq::FIRST, racing)
        .await
        .expect_err("conflict");
    assert!(
        matches!(err, StorageError::Conflict { expected, actual, .. } if expected == Seq::FIRST && actual == Seq::new(2)),
        "{err}"
    );
    let history = store
        .load_history(&wid("wf-1"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].kind, EventKind::StepStarted { name: "a".into() });
    assert_eq!(
        store
            .describe(&wid("wf-1"))
            .await
            .expect("describe")
            .last_seq,
        Seq::new(2)
    );
}

/// Appended events must be numbered consecutively after the last; a gap or a second
/// `WorkflowStarted` is `InvalidArgument` and writes nothing.
pub async fn append_rejects_gaps_and_restarts(store: Store) {
    create(&store, "wf-1").await;
    let gap = vec![
        event(2, EventKind::StepStarted { name: "a".into() }),
        event(4, EventKind::StepCompleted { name: "a".into() }),
    ];
    let err = store
        .append_events(&wid("wf-1"), Seq::FIRST, gap)
        .await
        .expect_err("gap");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    let mut restart = started("Conformance", 1);
    restart.seq = Seq::new(2);
    let err = store
        .append_events(&wid("wf-1"), Seq::FIRST, vec![restart])
        .await
        .expect_err("restart");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    assert_eq!(history_len(&store, "wf-1").await, 1);
}

// ---- workflow tasks ----

/// A new workflow's first task is ready once; a claimed task is not handed out again.
pub async fn a_new_workflow_is_claimed_once(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    assert_eq!(task.workflow_id, wid("wf-1"));
    assert_eq!(task.workflow_name, "Conformance");
    assert_eq!(task.last_seq, Seq::FIRST);
    assert!(task.messages.is_empty());
    assert_eq!(task.deliveries, 1);
    assert!(task.lease.expires_at > wall_now());
    no_ready_workflow_task(&store).await;
}

/// A claim hands out at most `max` tasks, oldest ready first.
pub async fn claims_respect_max_and_age(store: Store) {
    for i in 0..5 {
        create(&store, &format!("wf-{i}")).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let first = store.claim_workflow_tasks(&claim(2)).await.expect("claim");
    assert_eq!(first.len(), 2);
    let ids: Vec<_> = first.iter().map(|t| t.workflow_id.clone()).collect();
    assert_eq!(ids, vec![wid("wf-0"), wid("wf-1")]);
    let rest = store.claim_workflow_tasks(&claim(10)).await.expect("claim");
    assert_eq!(rest.len(), 3);
    assert!(
        store
            .claim_workflow_tasks(&claim(0))
            .await
            .expect("claim")
            .is_empty()
    );
}

/// Concurrent claimers never hold the same task, and together they get every task.
pub async fn concurrent_claimers_never_share_a_task(store: Store) {
    const N: usize = 40;
    for i in 0..N {
        create(&store, &format!("wf-{i:02}")).await;
    }
    let mut handles = Vec::new();
    for worker in 0..4 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..N {
                let req = ClaimRequest::new(format!("worker-{worker}"), 3, LEASE);
                let tasks = store.claim_workflow_tasks(&req).await.expect("claim");
                got.extend(tasks.into_iter().map(|t| t.workflow_id));
                tokio::task::yield_now().await;
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("claimer"));
    }
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), unique.len(), "a task was handed to two claimers");
    assert_eq!(unique.len(), N, "every task was claimed");
}

/// Completing a task appends its events, consumes its messages and releases it; with no
/// message left the workflow waits.
pub async fn completion_appends_and_releases(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let mut c = completion(&task, vec![EventKind::StepStarted { name: "a".into() }]);
    c.progress = Some(Progress {
        current_step: Some("a".into()),
        state: json(serde_json::json!({"x": 1})),
        pending_activities: vec![],
        pending_timers: vec![],
        awaiting_signals: vec!["go".into()],
        buffered_signals: Default::default(),
        outcome: None,
    });
    store.complete_workflow_task(c).await.expect("complete");
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.last_seq, Seq::new(2));
    let progress = s.progress.expect("progress stored");
    assert_eq!(progress.current_step.as_deref(), Some("a"));
    assert_eq!(progress.awaiting_signals, vec!["go".to_owned()]);
    assert_eq!(history_len(&store, "wf-1").await, 2);
    no_ready_workflow_task(&store).await;
    // The lease is spent: completing again is LeaseLost.
    let again = completion(&task, vec![]);
    assert!(matches!(
        store.complete_workflow_task(again).await,
        Err(StorageError::LeaseLost(_))
    ));
}

/// A commit with a stale expected sequence number is `Conflict` and writes nothing.
pub async fn completion_with_a_stale_sequence_number_conflicts(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    store
        .append_events(
            &wid("wf-1"),
            Seq::FIRST,
            vec![event(
                2,
                EventKind::StepStarted {
                    name: "other".into(),
                },
            )],
        )
        .await
        .expect("append");
    let err = store
        .complete_workflow_task(completion(&task, vec![schedule("charge", 1)]))
        .await
        .expect_err("conflict");
    assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
    assert_eq!(history_len(&store, "wf-1").await, 2);
    no_ready_activity_task(&store).await;
}

/// A lease that expired cannot commit, even if nobody claimed the task since; nothing is
/// written and the task is handed out again with a new fencing token.
pub async fn an_expired_lease_cannot_commit(store: Store) {
    create(&store, "wf-1").await;
    let req = ClaimRequest::new("slow", 1, SHORT_LEASE);
    let task = store
        .claim_workflow_tasks(&req)
        .await
        .expect("claim")
        .remove(0);
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let err = store
        .complete_workflow_task(completion(&task, vec![schedule("charge", 1)]))
        .await
        .expect_err("expired");
    assert!(
        matches!(err, StorageError::LeaseLost(t) if t == task.lease.task),
        "{err}"
    );
    assert_eq!(history_len(&store, "wf-1").await, 1);
    no_ready_activity_task(&store).await;
    let again = claim_workflow(&store).await;
    assert_ne!(again.lease.token, task.lease.token);
    assert_eq!(again.deliveries, 2, "the second delivery is counted");
}

/// After another worker re-claims an expired task, the first worker's commit is rejected and
/// the second's succeeds.
pub async fn a_reclaimed_task_fences_out_the_old_holder(store: Store) {
    create(&store, "wf-1").await;
    let req = ClaimRequest::new("slow", 1, SHORT_LEASE);
    let old = store
        .claim_workflow_tasks(&req)
        .await
        .expect("claim")
        .remove(0);
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let new = claim_workflow(&store).await;
    let err = store
        .complete_workflow_task(completion(&old, vec![schedule("old", 1)]))
        .await
        .expect_err("fenced");
    assert!(matches!(err, StorageError::LeaseLost(_)), "{err}");
    store
        .complete_workflow_task(completion(&new, vec![schedule("new", 1)]))
        .await
        .expect("the live lease commits");
    let activity = claim_activity(&store).await;
    assert_eq!(activity.name, "new");
    assert_eq!(history_len(&store, "wf-1").await, 2);
}

/// Renewing a live lease keeps it alive past its original expiry; an expired lease cannot be
/// renewed.
pub async fn renewal_extends_a_live_lease_only(store: Store) {
    create(&store, "wf-1").await;
    let req = ClaimRequest::new("w", 1, SHORT_LEASE);
    let task = store
        .claim_workflow_tasks(&req)
        .await
        .expect("claim")
        .remove(0);
    let renewed = store.renew_lease(&task.lease, LEASE).await.expect("renew");
    assert!(renewed.expires_at > task.lease.expires_at);
    assert_eq!(renewed.token, task.lease.token);
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    no_ready_workflow_task(&store).await;
    let mut c = completion(&task, vec![]);
    c.lease = renewed;
    store.complete_workflow_task(c).await.expect("still held");

    create(&store, "wf-2").await;
    let task = store
        .claim_workflow_tasks(&req)
        .await
        .expect("claim")
        .remove(0);
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    assert!(matches!(
        store.renew_lease(&task.lease, LEASE).await,
        Err(StorageError::LeaseLost(_))
    ));
}

/// A lease of one task cannot commit another workflow's task.
pub async fn a_lease_commits_only_its_own_task(store: Store) {
    create(&store, "wf-1").await;
    create(&store, "wf-2").await;
    let tasks = store.claim_workflow_tasks(&claim(2)).await.expect("claim");
    let mut c = completion(&tasks[0], vec![EventKind::StepStarted { name: "x".into() }]);
    c.workflow_id = tasks[1].workflow_id.clone();
    assert!(store.complete_workflow_task(c).await.is_err());
    assert_eq!(history_len(&store, "wf-1").await, 1);
    assert_eq!(history_len(&store, "wf-2").await, 1);
}

/// A released task is ready again at once, or at the given time; a pause shows in the
/// summary until the next successful commit.
pub async fn release_and_pause(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    store
        .release_task(&task.lease, Release::default())
        .await
        .expect("release");
    let task = claim_workflow(&store).await;
    assert_eq!(task.deliveries, 1, "a release is not a failed delivery");
    let later = Timestamp::from_millis(wall_now().as_millis() + HOUR_MS);
    let pause = Release {
        visible_at: Some(later),
        pause: Some("non-determinism at #2".into()),
    };
    store.release_task(&task.lease, pause).await.expect("pause");
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.status, WorkflowStatus::Paused);
    assert_eq!(s.pause_reason.as_deref(), Some("non-determinism at #2"));
    no_ready_workflow_task(&store).await;
    let paused = store
        .list(&ListQuery {
            status: Some(WorkflowStatus::Paused),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(paused.items.len(), 1);
    // A signal wakes it for another try; a clean commit resumes it.
    store
        .signal(&wid("wf-1"), "poke", Payload::NULL)
        .await
        .expect("signal");
    let task = claim_workflow(&store).await;
    store
        .complete_workflow_task(completion(&task, vec![]))
        .await
        .expect("complete");
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.status, WorkflowStatus::Running);
    assert!(s.pause_reason.is_none());
}

// ---- activities ----

/// A scheduled activity becomes an activity task with its name, input, options and attempt 1.
pub async fn scheduled_activities_become_tasks(store: Store) {
    let id = with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    assert_eq!(task.workflow_id, wid("wf-1"));
    assert_eq!(task.activity_id, id);
    assert_eq!(task.name, "charge");
    assert_eq!(task.input, json(5));
    assert_eq!(task.options, ActivityOptions::default());
    assert_eq!(task.attempt, 1);
    no_ready_activity_task(&store).await;
}

/// An activity's result wakes its workflow with the result as a message, in one step.
pub async fn an_activity_result_wakes_the_workflow(store: Store) {
    let id = with_scheduled_activity(&store, "wf-1").await;
    no_ready_workflow_task(&store).await;
    let task = claim_activity(&store).await;
    let result = EventKind::ActivityCompleted {
        activity_id: id,
        attempt: 1,
        result: json(true),
    };
    store
        .complete_activity_task(ActivityTaskCompletion {
            lease: task.lease,
            result: result.clone(),
        })
        .await
        .expect("complete");
    let wf = claim_workflow(&store).await;
    assert_eq!(wf.messages.len(), 1);
    assert_eq!(wf.messages[0].kind, result);
    assert_eq!(wf.last_seq, Seq::new(2));
    no_ready_activity_task(&store).await;
}

/// A workflow-task commit that claims eagerly hands out at most what was asked, each task a
/// real claim (its lease commits), and leaves the rest for any claimer. Backends may claim
/// nothing.
pub async fn an_eager_commit_claims_only_its_own_activities(store: Store) {
    create(&store, "other").await;
    let other = claim_workflow(&store).await;
    store
        .complete_workflow_task(completion(&other, vec![schedule("other", 0)]))
        .await
        .expect("complete other");
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let c = completion(&task, vec![schedule("a", 1), schedule("b", 2)]);
    let eager = store
        .complete_workflow_task_and_claim(c, &claim(1))
        .await
        .expect("complete and claim");
    assert!(eager.len() <= 1, "asked for one, got {eager:?}");
    for t in &eager {
        assert_eq!(
            t.workflow_id,
            wid("wf-1"),
            "only the committed workflow's activities"
        );
        store
            .complete_activity_task(ActivityTaskCompletion {
                lease: t.lease,
                result: EventKind::ActivityCompleted {
                    activity_id: t.activity_id,
                    attempt: 1,
                    result: json(1),
                },
            })
            .await
            .expect("the eager lease commits");
    }
    let rest = store.claim_activity_tasks(&claim(10)).await.expect("claim");
    assert_eq!(
        rest.len(),
        3 - eager.len(),
        "the others wait for any claimer"
    );
    assert_eq!(history_len(&store, "wf-1").await, 3);
}

/// An activity commit that claims eagerly claims the workflow task its result woke, with the
/// result among its messages, or claims nothing and leaves it ready; while another lease
/// holds the workflow task, it claims nothing.
pub async fn an_eager_activity_commit_claims_the_woken_task(store: Store) {
    let id = with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let result = EventKind::ActivityCompleted {
        activity_id: id,
        attempt: 1,
        result: json(true),
    };
    let eager = store
        .complete_activity_task_and_claim(
            ActivityTaskCompletion {
                lease: task.lease,
                result: result.clone(),
            },
            &claim(1),
        )
        .await
        .expect("complete and claim");
    let wf = match eager {
        Some(wf) => {
            no_ready_workflow_task(&store).await;
            wf
        }
        None => claim_workflow(&store).await,
    };
    assert_eq!(wf.workflow_id, wid("wf-1"));
    assert_eq!(wf.messages.len(), 1);
    assert_eq!(wf.messages[0].kind, result);
    // Schedule a second activity and keep the workflow task leased while it completes.
    store
        .complete_workflow_task(completion(&wf, vec![schedule("again", 1)]))
        .await
        .expect("complete");
    let second = claim_activity(&store).await;
    store
        .signal(&wid("wf-1"), "hold", json(0))
        .await
        .expect("signal");
    let held = claim_workflow(&store).await;
    let eager = store
        .complete_activity_task_and_claim(
            ActivityTaskCompletion {
                lease: second.lease,
                result: EventKind::ActivityCompleted {
                    activity_id: second.activity_id,
                    attempt: 1,
                    result: json(2),
                },
            },
            &claim(1),
        )
        .await
        .expect("complete while the workflow task is held");
    assert!(
        eager.is_none(),
        "a leased workflow task is not claimed again: {eager:?}"
    );
    store
        .complete_workflow_task(completion(&held, vec![]))
        .await
        .expect("the holder still commits");
    let next = claim_workflow(&store).await;
    assert_eq!(
        next.messages.len(),
        1,
        "the result waited for the next task"
    );
}

/// The activity `id`'s completion with `value`, and the decision a worker would make from it
/// alone on a history ending at `last`: record the result, schedule `next`.
fn decided(
    task: &ActivityTask,
    last: Seq,
    value: i64,
    next: &str,
) -> (ActivityTaskCompletion, DecidedTask) {
    let result = EventKind::ActivityCompleted {
        activity_id: task.activity_id,
        attempt: 1,
        result: json(value),
    };
    let decided = DecidedTask {
        workflow_id: task.workflow_id.clone(),
        expected_last_seq: last,
        events: vec![
            event(last.get() + 1, result.clone()),
            event(last.get() + 2, schedule(next, value)),
        ],
        progress: None,
        logs: Vec::new(),
    };
    let completion = ActivityTaskCompletion {
        lease: task.lease,
        result,
    };
    (completion, decided)
}

/// A decision made ahead from an activity's result is applied whole or not at all: applied,
/// the history holds it and the result is consumed; not applied, the result waits for the
/// workflow's next task as usual. A decision from a stale history, or made while another
/// message is due, is never applied.
pub async fn a_decision_ahead_is_applied_whole_or_not_at_all(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let (done, decision) = decided(&task, Seq::new(2), 7, "next");
    let applied = store
        .complete_activity_and_decide(done, decision, &claim(0))
        .await
        .expect("complete and decide");
    let history = store
        .load_history(&wid("wf-1"), Seq::ZERO)
        .await
        .expect("history");
    match applied {
        Some(claimed) => {
            assert!(claimed.is_empty(), "asked to claim none");
            assert_eq!(history.len(), 4, "the decision is in the history");
            no_ready_workflow_task(&store).await;
        }
        None => {
            assert_eq!(history.len(), 2, "nothing of the decision is written");
            let wf = claim_workflow(&store).await;
            assert_eq!(wf.messages.len(), 1, "the result waits as a message");
            // The normal path decides the same.
            let same = vec![wf.messages[0].kind.clone(), schedule("next", 7)];
            store
                .complete_workflow_task(completion(&wf, same))
                .await
                .expect("the normal path goes on");
        }
    }
    // Now one activity waits; decide from a stale history: never applied.
    let next = claim_activity(&store).await;
    let (done, decision) = decided(&next, Seq::new(1), 8, "stale");
    let applied = store
        .complete_activity_and_decide(done, decision, &claim(1))
        .await
        .expect("complete");
    assert!(applied.is_none(), "a stale decision is not applied");
    let wf = claim_workflow(&store).await;
    assert_eq!(wf.messages.len(), 1, "the result still arrived");
    store
        .complete_workflow_task(completion(&wf, vec![schedule("third", 3)]))
        .await
        .expect("complete");
    // A signal is due too: a decision from the result alone is not applied.
    store
        .signal(&wid("wf-1"), "poke", json(0))
        .await
        .expect("signal");
    let third = claim_activity(&store).await;
    let last = store
        .describe(&wid("wf-1"))
        .await
        .expect("describe")
        .last_seq;
    let (done, decision) = decided(&third, last, 9, "blind");
    let applied = store
        .complete_activity_and_decide(done, decision, &claim(1))
        .await
        .expect("complete");
    assert!(
        applied.is_none(),
        "a decision that missed a signal is not applied"
    );
    let wf = claim_workflow(&store).await;
    assert_eq!(
        wf.messages.len(),
        2,
        "the signal and the result wait together"
    );
}

/// For backends that implement [`Storage::complete_activity_and_decide`] (not part of the
/// suite every backend runs): a decision made ahead is applied, with its eager claim.
pub async fn decisions_ahead_are_applied(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let (done, decision) = decided(&task, Seq::new(2), 7, "next");
    let claimed = store
        .complete_activity_and_decide(done, decision, &claim(1))
        .await
        .expect("complete and decide")
        .expect("applied");
    assert_eq!(
        claimed.len(),
        1,
        "the scheduled activity is claimed with the decision"
    );
    assert_eq!(claimed[0].name, "next");
    assert_eq!(history_len(&store, "wf-1").await, 4);
    no_ready_workflow_task(&store).await;
    no_ready_activity_task(&store).await;
}

/// For backends that implement eager claims (not part of the suite every backend runs): a
/// workflow task's commit hands back the activity it scheduled, and that activity's commit
/// hands back the workflow task it woke, which nobody else can then claim.
pub async fn eager_claims_are_made(store: Store) {
    create(&store, "chain").await;
    let task = claim_workflow(&store).await;
    let mut activities = store
        .complete_workflow_task_and_claim(completion(&task, vec![schedule("step", 1)]), &claim(1))
        .await
        .expect("commit and claim");
    assert_eq!(
        activities.len(),
        1,
        "the scheduled activity is claimed with the commit"
    );
    let activity = activities.remove(0);
    assert_eq!(activity.name, "step");
    let result = EventKind::ActivityCompleted {
        activity_id: activity.activity_id,
        attempt: 1,
        result: json(2),
    };
    let woken = store
        .complete_activity_task_and_claim(
            ActivityTaskCompletion {
                lease: activity.lease,
                result: result.clone(),
            },
            &claim(1),
        )
        .await
        .expect("complete and claim")
        .expect("the woken workflow task is claimed with the result");
    assert_eq!(woken.workflow_id, wid("chain"));
    assert_eq!(woken.workflow_name, "Conformance");
    assert_eq!(woken.last_seq, Seq::new(2));
    assert_eq!(woken.messages.len(), 1);
    assert_eq!(woken.messages[0].kind, result);
    no_ready_workflow_task(&store).await;
    store
        .complete_workflow_task(completion(&woken, vec![]))
        .await
        .expect("the eager lease commits");
}

/// A failed attempt with a retry time is delivered to the workflow and schedules the next
/// attempt, which is not handed out before its time.
pub async fn a_failed_attempt_schedules_the_next(store: Store) {
    let id = with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let later = Timestamp::from_millis(wall_now().as_millis() + HOUR_MS);
    let failed = EventKind::ActivityFailed {
        activity_id: id,
        attempt: 1,
        failure: Failure::new("network", "reset"),
        retry_at: Some(later),
    };
    store
        .complete_activity_task(ActivityTaskCompletion {
            lease: task.lease,
            result: failed,
        })
        .await
        .expect("complete");
    no_ready_activity_task(&store).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.activity_tasks_waiting, 1);
    assert!(stats.next_due_at.is_some_and(|t| t <= later));
    let wf = claim_workflow(&store).await;
    assert!(matches!(
        wf.messages[0].kind,
        EventKind::ActivityFailed { attempt: 1, .. }
    ));

    // A retry due already is handed out at once, as attempt 2.
    let id2 = with_scheduled_activity(&store, "wf-2").await;
    let task = claim_activity(&store).await;
    let past = Timestamp::from_millis(wall_now().as_millis() - HOUR_MS);
    let timed_out = EventKind::ActivityTimedOut {
        activity_id: id2,
        attempt: 1,
        retry_at: Some(past),
    };
    store
        .complete_activity_task(ActivityTaskCompletion {
            lease: task.lease,
            result: timed_out,
        })
        .await
        .expect("complete");
    let retry = claim_activity(&store).await;
    assert_eq!(retry.workflow_id, wid("wf-2"));
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.activity_id, id2);
}

/// An activity result must name the task's activity and attempt.
pub async fn an_activity_result_must_match_its_task(store: Store) {
    let id = with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let wrong = EventKind::ActivityCompleted {
        activity_id: ActivityId(Seq::new(99)),
        attempt: 1,
        result: Payload::NULL,
    };
    let err = store
        .complete_activity_task(ActivityTaskCompletion {
            lease: task.lease,
            result: wrong,
        })
        .await
        .expect_err("wrong activity");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    let not_a_result = EventKind::SignalReceived {
        name: "x".into(),
        payload: Payload::NULL,
    };
    let err = store
        .complete_activity_task(ActivityTaskCompletion {
            lease: task.lease,
            result: not_a_result,
        })
        .await
        .expect_err("not a result");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    no_ready_workflow_task(&store).await;
    // The task is still held and can still complete properly.
    let ok = EventKind::ActivityCompleted {
        activity_id: id,
        attempt: 1,
        result: Payload::NULL,
    };
    store
        .complete_activity_task(ActivityTaskCompletion {
            lease: task.lease,
            result: ok,
        })
        .await
        .expect("complete");
}

/// An activity attempt whose lease expired cannot report; the attempt is handed out again.
pub async fn an_expired_activity_lease_cannot_report(store: Store) {
    let id = with_scheduled_activity(&store, "wf-1").await;
    let req = ClaimRequest::new("slow", 1, SHORT_LEASE);
    let task = store
        .claim_activity_tasks(&req)
        .await
        .expect("claim")
        .remove(0);
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let result = EventKind::ActivityCompleted {
        activity_id: id,
        attempt: 1,
        result: Payload::NULL,
    };
    let err = store
        .complete_activity_task(ActivityTaskCompletion {
            lease: task.lease,
            result,
        })
        .await
        .expect_err("expired");
    assert!(matches!(err, StorageError::LeaseLost(_)), "{err}");
    no_ready_workflow_task(&store).await;
    let again = claim_activity(&store).await;
    assert_eq!(again.attempt, 1);
    assert_eq!(again.deliveries, 2);
}

// ---- timers ----

/// A timer not yet due is not handed out; stats show it waiting.
pub async fn timers_not_due_are_not_handed_out(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let later = Timestamp::from_millis(wall_now().as_millis() + HOUR_MS);
    store
        .complete_workflow_task(completion(&task, vec![timer_at(later)]))
        .await
        .expect("complete");
    no_ready_workflow_task(&store).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.messages_waiting, 1);
    assert_eq!(stats.next_due_at, Some(later));
    assert_eq!(stats.workflow_tasks_ready, 0);
}

/// A due timer is delivered as a `TimerFired` message for its timer.
pub async fn due_timers_are_delivered(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let past = Timestamp::from_millis(wall_now().as_millis() - 1_000);
    store
        .complete_workflow_task(completion(&task, vec![timer_at(past)]))
        .await
        .expect("complete");
    let wf = claim_workflow(&store).await;
    assert_eq!(wf.messages.len(), 1);
    assert_eq!(
        wf.messages[0].kind,
        EventKind::TimerFired {
            timer_id: TimerId(Seq::new(2))
        }
    );
    assert_eq!(wf.messages[0].visible_at, past);
}

/// Only due messages are delivered: a signal now is delivered, a timer later is kept.
pub async fn only_due_messages_are_delivered(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let later = Timestamp::from_millis(wall_now().as_millis() + HOUR_MS);
    store
        .complete_workflow_task(completion(&task, vec![timer_at(later)]))
        .await
        .expect("complete");
    store
        .signal(&wid("wf-1"), "go", json(1))
        .await
        .expect("signal");
    let wf = claim_workflow(&store).await;
    assert_eq!(wf.messages.len(), 1);
    assert!(matches!(
        wf.messages[0].kind,
        EventKind::SignalReceived { .. }
    ));
    store
        .complete_workflow_task(completion(&wf, vec![]))
        .await
        .expect("complete");
    no_ready_workflow_task(&store).await;
    assert_eq!(store.stats().await.expect("stats").messages_waiting, 1);
}

// ---- signals and cancellation ----

/// Signals sent before any worker runs are kept, in the order sent.
pub async fn signals_before_the_workflow_waits_are_kept_in_order(store: Store) {
    create(&store, "wf-1").await;
    for i in 0..3 {
        store
            .signal(&wid("wf-1"), "step", json(i))
            .await
            .expect("signal");
    }
    let wf = claim_workflow(&store).await;
    let payloads: Vec<_> = wf
        .messages
        .iter()
        .map(|m| match &m.kind {
            EventKind::SignalReceived { name, payload } => {
                assert_eq!(name, "step");
                payload.clone()
            }
            other => panic!("expected a signal, got {other:?}"),
        })
        .collect();
    assert_eq!(payloads, vec![json(0), json(1), json(2)]);
}

/// A signal sent while a task runs is not lost: it is delivered by the next task.
pub async fn a_signal_during_a_task_is_delivered_next(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    store
        .signal(&wid("wf-1"), "late", json("x"))
        .await
        .expect("signal");
    store
        .complete_workflow_task(completion(&task, vec![]))
        .await
        .expect("complete");
    let next = claim_workflow(&store).await;
    assert_eq!(next.messages.len(), 1);
    assert!(
        matches!(&next.messages[0].kind, EventKind::SignalReceived { name, .. } if name == "late")
    );
}

/// A cancel request is a message to the workflow.
pub async fn a_cancel_request_is_delivered(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    store
        .complete_workflow_task(completion(&task, vec![]))
        .await
        .expect("complete");
    store
        .request_cancel(&wid("wf-1"), Some("user asked".into()))
        .await
        .expect("cancel");
    let wf = claim_workflow(&store).await;
    assert_eq!(
        wf.messages[0].kind,
        EventKind::CancelRequested {
            reason: Some("user asked".into())
        }
    );
}

// ---- ending ----

/// A terminal event closes the workflow: status, output, end time; its pending activities,
/// timers and messages are gone; signals and cancels are `Closed`.
pub async fn ending_a_workflow_closes_it(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let later = Timestamp::from_millis(wall_now().as_millis() + HOUR_MS);
    store
        .complete_workflow_task(completion(&task, vec![schedule("a", 1), timer_at(later)]))
        .await
        .expect("complete");
    store
        .signal(&wid("wf-1"), "s", Payload::NULL)
        .await
        .expect("signal");
    let task = claim_workflow(&store).await;
    let done = EventKind::WorkflowCompleted {
        output: json("done"),
    };
    store
        .complete_workflow_task(completion(&task, vec![done]))
        .await
        .expect("complete");
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.status, WorkflowStatus::Completed);
    assert_eq!(s.output, Some(json("done")));
    assert!(s.closed_at.is_some());
    no_ready_activity_task(&store).await;
    no_ready_workflow_task(&store).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.messages_waiting, 0);
    assert_eq!(stats.activity_tasks_ready + stats.activity_tasks_waiting, 0);
    assert!(matches!(
        store.signal(&wid("wf-1"), "s", Payload::NULL).await,
        Err(StorageError::Closed {
            status: WorkflowStatus::Completed,
            ..
        })
    ));
    assert!(matches!(
        store.request_cancel(&wid("wf-1"), None).await,
        Err(StorageError::Closed { .. })
    ));
    assert!(matches!(
        store
            .append_events(
                &wid("wf-1"),
                s.last_seq,
                vec![event(
                    s.last_seq.get() + 1,
                    EventKind::StepStarted { name: "x".into() }
                )]
            )
            .await,
        Err(StorageError::Closed { .. })
    ));
}

/// A failure and a cancellation are recorded with their status; a failure keeps its error.
pub async fn failed_and_cancelled_are_recorded(store: Store) {
    create(&store, "wf-f").await;
    let task = claim_workflow(&store).await;
    let failure = Failure::new("boom", "it broke");
    store
        .complete_workflow_task(completion(
            &task,
            vec![EventKind::WorkflowFailed {
                failure: failure.clone(),
            }],
        ))
        .await
        .expect("complete");
    let s = store.describe(&wid("wf-f")).await.expect("describe");
    assert_eq!(s.status, WorkflowStatus::Failed);
    assert_eq!(s.failure, Some(failure));
    create(&store, "wf-c").await;
    let task = claim_workflow(&store).await;
    store
        .complete_workflow_task(completion(&task, vec![EventKind::WorkflowCancelled {}]))
        .await
        .expect("complete");
    assert_eq!(
        store.describe(&wid("wf-c")).await.expect("describe").status,
        WorkflowStatus::Cancelled
    );
}

/// An activity that reports after its workflow ended finds its lease gone; nothing changes.
pub async fn a_late_activity_result_after_the_end_is_refused(store: Store) {
    let id = with_scheduled_activity(&store, "wf-1").await;
    let activity = claim_activity(&store).await;
    store
        .request_cancel(&wid("wf-1"), None)
        .await
        .expect("cancel");
    let task = claim_workflow(&store).await;
    store
        .complete_workflow_task(completion(&task, vec![EventKind::WorkflowCancelled {}]))
        .await
        .expect("complete");
    let result = EventKind::ActivityCompleted {
        activity_id: id,
        attempt: 1,
        result: Payload::NULL,
    };
    let err = store
        .complete_activity_task(ActivityTaskCompletion {
            lease: activity.lease,
            result,
        })
        .await
        .expect_err("the workflow ended");
    assert!(matches!(err, StorageError::LeaseLost(_)), "{err}");
    // Started, scheduled, cancelled: the late result added nothing.
    assert_eq!(history_len(&store, "wf-1").await, 3);
    assert!(
        store
            .claim_workflow_tasks(&claim(10))
            .await
            .expect("claim")
            .is_empty()
    );
}

// ---- listing, stats and logs ----

/// Lists are newest first and page without gaps or repeats.
pub async fn list_is_newest_first_and_pages(store: Store) {
    for i in 0..7 {
        create(&store, &format!("wf-{i}")).await;
    }
    let mut seen = Vec::new();
    let mut query = ListQuery {
        limit: 3,
        ..ListQuery::default()
    };
    let mut pages = 0;
    loop {
        let page = store.list(&query).await.expect("list");
        pages += 1;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|s| s.id.clone()));
        match page.next {
            Some(cursor) => query.after = Some(cursor),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    let expected: Vec<_> = (0..7).rev().map(|i| wid(&format!("wf-{i}"))).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
}

/// Lists filter by status, name and creation time.
pub async fn list_filters(store: Store) {
    store
        .create_workflow(&wid("a-1"), started("Alpha", 1))
        .await
        .expect("create");
    store
        .create_workflow(&wid("b-1"), started("Beta", 1))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .create_workflow(&wid("b-2"), started("Beta", 2))
        .await
        .expect("create");
    let task = store
        .claim_workflow_tasks(&claim(10))
        .await
        .expect("claim")
        .into_iter()
        .find(|t| t.workflow_id == wid("b-1"))
        .expect("b-1 ready");
    store
        .complete_workflow_task(completion(
            &task,
            vec![EventKind::WorkflowCompleted {
                output: Payload::NULL,
            }],
        ))
        .await
        .expect("complete");
    let by_name = store
        .list(&ListQuery {
            name: Some("Beta".into()),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    let ids: Vec<_> = by_name.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["b-2", "b-1"]);
    let completed = store
        .list(&ListQuery {
            status: Some(WorkflowStatus::Completed),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(completed.items.len(), 1);
    assert_eq!(completed.items[0].id, wid("b-1"));
    let b2 = store.describe(&wid("b-2")).await.expect("describe");
    let recent = store
        .list(&ListQuery {
            created_after: Some(b2.created_at),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(recent.items.len(), 1);
    assert_eq!(recent.items[0].id, wid("b-2"));
    let older = store
        .list(&ListQuery {
            created_before: Some(b2.created_at),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(older.items.len(), 2);
    assert!(older.next.is_none());
}

/// Stats count workflows by status, events and tasks.
pub async fn stats_count_what_is_there(store: Store) {
    let empty = store.stats().await.expect("stats");
    assert!(empty.workflows.is_empty());
    assert_eq!(empty.events, 0);
    with_scheduled_activity(&store, "wf-1").await;
    create(&store, "wf-2").await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.workflows.get(&WorkflowStatus::Running), Some(&2));
    assert_eq!(stats.events, 3);
    assert_eq!(stats.workflow_tasks_ready, 1);
    assert_eq!(stats.activity_tasks_ready, 1);
    assert!(stats.oldest_ready_at.is_some());
    let _held = claim_activity(&store).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.activity_tasks_running, 1);
    assert_eq!(stats.activity_tasks_ready, 0);
}

/// Log lines committed with a task are kept in order.
pub async fn logs_are_kept_with_their_task(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let mut c = completion(&task, vec![EventKind::StepStarted { name: "a".into() }]);
    let line = |n: u32| LogRecord {
        seq: Seq::new(2),
        at: wall_now(),
        level: LogLevel::Info,
        message: format!("line {n}"),
    };
    // Any text is kept as written; a NUL, which some databases cannot store in text, may
    // come back as U+FFFD, but never makes the commit fail.
    let tricky = "quote \" back\\slash {\"json\": [1]} \u{1F600} tab\t newline\n";
    let mut odd = line(3);
    odd.message = tricky.into();
    let mut nul = line(4);
    nul.message = "before\0after".into();
    c.logs = vec![line(1), line(2), odd, nul];
    store.complete_workflow_task(c).await.expect("complete");
    let logs = store.logs(&wid("wf-1")).await.expect("logs");
    assert_eq!(logs.len(), 4);
    assert_eq!(logs[0].message, "line 1");
    assert_eq!(logs[1].message, "line 2");
    assert_eq!(logs[2].message, tricky);
    assert!(
        ["before\0after", "before\u{FFFD}after"].contains(&logs[3].message.as_str()),
        "{:?}",
        logs[3].message
    );
    // A failed commit writes no logs.
    let mut stale = completion(&task, vec![]);
    stale.logs = vec![line(5)];
    assert!(store.complete_workflow_task(stale).await.is_err());
    assert_eq!(store.logs(&wid("wf-1")).await.expect("logs").len(), 4);
}

/// Runs every case, each on a fresh store, from one test; for backends that prefer one
/// test over many. The macro [`conformance_tests!`](crate::conformance_tests) makes one
/// test per case instead.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Store>,
{
    macro_rules! each {
        (() $($case:ident),* $(,)?) => { $( $case(fresh().await).await; )* };
    }
    crate::for_each_conformance_case!(each, ());
}

/// Calls `$m!(($extra) case, case, ...)` with the names of every conformance case. Used by
/// [`conformance_tests!`](crate::conformance_tests) and [`run_all`], so that adding a case here
/// adds it everywhere.
#[doc(hidden)]
#[macro_export]
macro_rules! for_each_conformance_case {
    ($m:path, ($($extra:tt)*)) => {
        $m! {
            ($($extra)*)
            create_then_describe,
            create_twice_is_already_exists,
            create_rejects_anything_but_a_started_event,
            unknown_workflows_are_not_found,
            load_history_after_a_sequence_number,
            events_round_trip_exactly,
            append_is_optimistically_concurrent,
            append_rejects_gaps_and_restarts,
            a_new_workflow_is_claimed_once,
            claims_respect_max_and_age,
            concurrent_claimers_never_share_a_task,
            completion_appends_and_releases,
            completion_with_a_stale_sequence_number_conflicts,
            an_expired_lease_cannot_commit,
            a_reclaimed_task_fences_out_the_old_holder,
            renewal_extends_a_live_lease_only,
            a_lease_commits_only_its_own_task,
            release_and_pause,
            scheduled_activities_become_tasks,
            an_activity_result_wakes_the_workflow,
            an_eager_commit_claims_only_its_own_activities,
            an_eager_activity_commit_claims_the_woken_task,
            a_decision_ahead_is_applied_whole_or_not_at_all,
            a_failed_attempt_schedules_the_next,
            an_activity_result_must_match_its_task,
            an_expired_activity_lease_cannot_report,
            timers_not_due_are_not_handed_out,
            due_timers_are_delivered,
            only_due_messages_are_delivered,
            signals_before_the_workflow_waits_are_kept_in_order,
            a_signal_during_a_task_is_delivered_next,
            a_cancel_request_is_delivered,
            ending_a_workflow_closes_it,
            failed_and_cancelled_are_recorded,
            a_late_activity_result_after_the_end_is_refused,
            list_is_newest_first_and_pages,
            list_filters,
            stats_count_what_is_there,
            logs_are_kept_with_their_task
        }
    };
}

/// Makes one test function per case; the body of [`conformance_tests!`](crate::conformance_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __loom_conformance_fns {
    (($fresh:expr) $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fresh = $fresh;
                $crate::conformance::$case(fresh().await).await;
            }
        )*
    };
}

/// Makes one test function per case on a store that may be missing; the body of
/// `conformance_tests!(optional: ...)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __loom_conformance_optional_fns {
    (($fresh:expr) $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fresh = $fresh;
                let Some(store) = fresh().await else {
                    return;
                };
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

/// Makes one `#[tokio::test]` per conformance case, each on a store from `$fresh`, an
/// expression of type `Fn() -> impl Future<Output = Arc<dyn Storage>>`. The calling crate
/// needs tokio (with `macros` and `rt-multi-thread`) among its dev-dependencies.
///
/// For a backend that needs a server, `conformance_tests!(optional: fresh)` takes a factory
/// returning `Option<Arc<dyn Storage>>`: `None` skips the case (the factory says so loudly).
#[macro_export]
macro_rules! conformance_tests {
    (optional: $fresh:expr) => {
        $crate::for_each_conformance_case!($crate::__loom_conformance_optional_fns, ($fresh));
    };
    ($fresh:expr) => {
        $crate::for_each_conformance_case!($crate::__loom_conformance_fns, ($fresh));
    };
}

/// A crash test every file backend runs the same way: a second process writes and prints
/// `ack ID` after each acknowledged write, is killed with SIGKILL mid-stream, again and again,
/// and then every acknowledged write must be there whole, and nothing half-written.
pub mod crash {
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};

    use crate::{ListQuery, Storage};

    /// Events each written workflow ends with: its start plus one append of ten.
    pub const EVENTS_PER_WORKFLOW: usize = 11;

    /// The writer process's work: eight concurrent writers, each creating a workflow and then
    /// appending ten events to it in one call, forever; prints `ack ID` once the append is
    /// acknowledged.
    pub async fn write_acknowledged(store: Arc<dyn Storage>, prefix: &str) -> Result<(), String> {
        let mut handles = Vec::new();
        for writer in 0..8 {
            let store = store.clone();
            let prefix = prefix.to_owned();
            handles.push(tokio::spawn(async move {
                for n in 0u64.. {
                    let id = WorkflowId::new(format!("{prefix}-{writer}-{n}"));
                    let started = Event {
                        seq: Seq::FIRST,
                        at: Timestamp::from_millis(0),
                        kind: EventKind::WorkflowStarted {
                            name: "Probe".into(),
                            version: 1,
                            input: Payload::NULL,
                            format: HISTORY_FORMAT,
                        },
                    };
                    store
                        .create_workflow(&id, started)
                        .await
                        .map_err(|e| e.to_string())?;
                    let events = (2..=EVENTS_PER_WORKFLOW as u64)
                        .map(|s| Event {
                            seq: Seq::new(s),
                            at: Timestamp::from_millis(0),
                            kind: EventKind::StepStarted {
                                name: format!("s{s}"),
                            },
                        })
                        .collect();
                    store
                        .append_events(&id, Seq::FIRST, events)
                        .await
                        .map_err(|e| e.to_string())?;
                    println!("ack {id}");
                }
                Ok::<(), String>(())
            }));
        }
        for h in handles {
            h.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    }

    /// Runs `rounds` writer processes one after another (`spawn(round)` builds the command;
    /// its prefix should be `r{round}`), killing each with SIGKILL after a varying number of
    /// acknowledgements. Returns every acknowledged id.
    pub fn kill_repeatedly(
        mut spawn: impl FnMut(usize) -> Command,
        rounds: usize,
    ) -> BTreeSet<String> {
        let mut acked = BTreeSet::new();
        for round in 0..rounds {
            let mut child = spawn(round)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn the writer");
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let target = 15 + round * 31;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut mine = 0;
            while mine < target {
                assert!(Instant::now() < deadline, "the writer made no progress");
                match lines.next() {
                    Some(Ok(line)) => {
                        if let Some(id) = line.strip_prefix("ack ") {
                            acked.insert(id.to_owned());
                            mine += 1;
                        }
                    }
                    _ => break,
                }
            }
            child.kill().expect("SIGKILL");
            // Lines printed before the kill landed are acknowledgements too.
            for line in lines.map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("ack ") {
                    acked.insert(id.to_owned());
                }
            }
            child.wait().expect("reap");
        }
        acked
    }

    /// Every acknowledged workflow has all its events; every workflow present is whole (its
    /// start alone, or start and append), and its summary agrees with its history.
    pub async fn check_survivors(store: &dyn Storage, acked: &BTreeSet<String>) {
        for id in acked {
            let history = store
                .load_history(&WorkflowId::new(id.clone()), Seq::ZERO)
                .await
                .expect("an acknowledged workflow survives");
            assert_eq!(
                history.len(),
                EVENTS_PER_WORKFLOW,
                "{id}: every acknowledged event survives"
            );
        }
        let all = store
            .list(&ListQuery {
                limit: 100_000,
                ..ListQuery::default()
            })
            .await
            .expect("list");
        assert!(all.items.len() >= acked.len());
        for s in &all.items {
            let history = store.load_history(&s.id, Seq::ZERO).await.expect("history");
            assert!(
                history.len() == 1 || history.len() == EVENTS_PER_WORKFLOW,
                "{}: a half-written append ({} events)",
                s.id,
                history.len()
            );
            assert_eq!(
                s.last_seq.get() as usize,
                history.len(),
                "{}: summary and history agree",
                s.id
            );
        }
    }
}
