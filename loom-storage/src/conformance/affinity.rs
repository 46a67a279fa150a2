//! Affinity: a workflow task committed by a worker that keeps the workflow cached goes back to
//! that worker first, for a window, and to anyone after it.

use std::time::Duration;

use loom_core::{EventKind, Payload};

use super::*;
use crate::{Affinity, Release, StorageError};

/// The window these cases give: as short as a short lease, for the same reasons.
const WINDOW: Duration = SHORT_LEASE;

fn claim_as(owner: &str, n: usize) -> ClaimRequest {
    ClaimRequest::new(owner, n, LEASE)
}

/// The workflow tasks a claim by `owner` of up to `n` takes, by workflow id in claim order.
async fn claimed_by(store: &Store, owner: &str, n: usize) -> Vec<WorkflowTask> {
    store
        .claim_workflow_tasks(&claim_as(owner, n))
        .await
        .expect("claim")
}

fn ids(tasks: &[WorkflowTask]) -> Vec<String> {
    tasks.iter().map(|t| t.workflow_id.to_string()).collect()
}

/// Commits `task` with one step and `affinity`, then signals the workflow so that its task is
/// claimable again at once.
async fn commit_and_wake(store: &Store, task: &WorkflowTask, affinity: Option<Affinity>) {
    let mut c = completion(task, vec![step("s")]);
    c.affinity = affinity;
    store.complete_workflow_task(c).await.expect("commit");
    store
        .signal(&task.workflow_id, "go", Payload::NULL)
        .await
        .expect("signal");
}

/// Creates `id`, claims its first task as `owner` and commits it with an affinity for
/// `owner`; the task is claimable again (a signal woke it).
async fn sticky_to(store: &Store, id: &str, owner: &str, window: Duration) {
    create(store, id).await;
    let task = claimed_by(store, owner, 1)
        .await
        .pop()
        .expect("a first task");
    assert_eq!(task.workflow_id, wid(id));
    commit_and_wake(store, &task, Some(Affinity::new(owner, window))).await;
}

/// The owner a workflow's task prefers, as `pending` shows it.
async fn preferred_by(store: &Store, id: &str) -> Option<String> {
    store
        .pending(&wid(id))
        .await
        .expect("pending")
        .tasks
        .into_iter()
        .find(|t| t.activity.is_none())
        .and_then(|t| t.preferred_by)
        .map(|(owner, _)| owner)
}

/// While its window lasts, a task whose affinity names another worker is not handed to a
/// claimer; its owner takes it, with its messages; once the window has passed, anyone does.
/// `pending` shows the owner.
pub async fn an_affinity_keeps_a_task_for_its_owner(store: Store) {
    sticky_to(&store, "wf-1", "a", LEASE).await;
    assert_eq!(preferred_by(&store, "wf-1").await.as_deref(), Some("a"));
    assert!(
        claimed_by(&store, "b", 10).await.is_empty(),
        "another worker's affinity keeps the task from b"
    );
    let task = claimed_by(&store, "a", 10).await.pop().expect("a takes it");
    assert_eq!(task.workflow_id, wid("wf-1"));
    assert!(
        task.messages
            .iter()
            .any(|m| matches!(&m.kind, EventKind::SignalReceived { name, .. } if name == "go")),
        "the owner's claim hands out the waiting signal: {:?}",
        task.messages
    );
    // A short window lapses by the store's clock; then anyone may claim.
    commit_and_wake(&store, &task, Some(Affinity::new("a", WINDOW))).await;
    assert!(claimed_by(&store, "b", 10).await.is_empty());
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    assert_eq!(ids(&claimed_by(&store, "b", 10).await), ["wf-1"]);
}

/// An owner's claim takes the tasks that prefer it before older ones; another worker's claim
/// passes over them to the rest of the queue, one task at a time.
pub async fn an_owner_takes_its_own_tasks_first(store: Store) {
    create(&store, "kept-1").await;
    create(&store, "kept-2").await;
    let kept = claimed_by(&store, "a", 2).await;
    create(&store, "old-free").await;
    // The kept tasks are woken after old-free was created: they are younger than it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for task in &kept {
        commit_and_wake(&store, task, Some(Affinity::new("a", LEASE))).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    create(&store, "free-1").await;
    assert_eq!(ids(&claimed_by(&store, "a", 1).await), ["kept-1"]);
    assert_eq!(ids(&claimed_by(&store, "b", 1).await), ["old-free"]);
    // kept-2 comes before free-1 in the queue; b passes over it.
    assert_eq!(ids(&claimed_by(&store, "b", 1).await), ["free-1"]);
    assert!(claimed_by(&store, "b", 10).await.is_empty());
    assert_eq!(ids(&claimed_by(&store, "a", 10).await), ["kept-2"]);
}

/// A release hands the task to anyone at once, and so does a commit without an affinity:
/// neither leaves the old preference behind.
pub async fn an_affinity_ends_with_a_release_or_a_commit_without_one(store: Store) {
    sticky_to(&store, "wf-1", "a", LEASE).await;
    let task = claimed_by(&store, "a", 1).await.pop().expect("a takes it");
    store
        .release_task(
            &task.lease,
            Release {
                after: Duration::ZERO,
                pause: None,
            },
        )
        .await
        .expect("release");
    assert_eq!(
        preferred_by(&store, "wf-1").await,
        None,
        "a release ends it"
    );
    let task = claimed_by(&store, "b", 1)
        .await
        .pop()
        .expect("a released task is anyone's");
    commit_and_wake(&store, &task, Some(Affinity::new("b", LEASE))).await;
    let task = claimed_by(&store, "b", 1).await.pop().expect("b's again");
    commit_and_wake(&store, &task, None).await;
    assert_eq!(ids(&claimed_by(&store, "c", 1).await), ["wf-1"]);
}

/// An activity's commit that also claims the workflow task its result woke claims it only if
/// its worker may: a task another worker is preferred for waits, with the result, for that
/// worker.
pub async fn an_activity_commit_claims_only_a_task_it_may_take(store: Store) {
    create(&store, "wf-1").await;
    let task = claimed_by(&store, "a", 1).await.pop().expect("first task");
    let mut c = completion(&task, vec![schedule("charge", 5)]);
    c.affinity = Some(Affinity::new("a", LEASE));
    store.complete_workflow_task(c).await.expect("commit");
    let activity = store
        .claim_activity_tasks(&claim_as("b", 1))
        .await
        .expect("claim")
        .pop()
        .expect("the activity");
    let mut done = completed(&activity, 7);
    done.then = AfterActivity::ClaimWorkflowTask(claim_as("b", 1));
    let answer = store.complete_activity_task(done).await.expect("commit");
    assert_eq!(answer, crate::ActivityCommitted::Nothing, "a is preferred");
    let task = claimed_by(&store, "a", 1).await.pop().expect("a's task");
    assert!(
        task.messages
            .iter()
            .any(|m| matches!(m.kind, EventKind::ActivityCompleted { .. })),
        "the result waits for a: {:?}",
        task.messages
    );
}

/// A worker that gives up its affinities frees its workflows' tasks at once, those waiting
/// for a message as well as the claimable ones; other workers' affinities stay.
pub async fn forgetting_an_owner_frees_its_tasks(store: Store) {
    create(&store, "waiting").await;
    let task = claimed_by(&store, "a", 1)
        .await
        .pop()
        .expect("its first task");
    let mut c = completion(&task, vec![step("s")]);
    c.affinity = Some(Affinity::new("a", LEASE));
    store.complete_workflow_task(c).await.expect("commit");
    sticky_to(&store, "ready", "a", LEASE).await;
    sticky_to(&store, "other", "c", LEASE).await;
    assert!(claimed_by(&store, "b", 10).await.is_empty());
    store.forget_affinity("a").await.expect("forget");
    store
        .forget_affinity("nobody")
        .await
        .expect("an owner with nothing");
    assert_eq!(ids(&claimed_by(&store, "b", 10).await), ["ready"]);
    store
        .signal(&wid("waiting"), "go", Payload::NULL)
        .await
        .expect("signal");
    assert_eq!(ids(&claimed_by(&store, "b", 10).await), ["waiting"]);
    assert_eq!(ids(&claimed_by(&store, "c", 10).await), ["other"]);
    match store.forget_affinity("").await {
        Err(StorageError::InvalidArgument(_)) => {}
        other => panic!("an empty owner must be refused, got {other:?}"),
    }
}

/// An affinity must name an owner every store can hold; a refused commit writes nothing and
/// its lease still commits, with a window however long.
pub async fn an_affinity_must_name_an_owner(store: Store) {
    create(&store, "wf-1").await;
    let task = claimed_by(&store, "a", 1).await.pop().expect("first task");
    for (owner, why) in [("", "empty"), ("a\0b", "NUL")] {
        let mut c = completion(&task, vec![step("s")]);
        c.affinity = Some(Affinity::new(owner, LEASE));
        match store.complete_workflow_task(c).await {
            Err(StorageError::InvalidArgument(_)) => {}
            other => panic!("an {why} owner must be refused, got {other:?}"),
        }
    }
    assert_eq!(history_len(&store, "wf-1").await, 1, "nothing written");
    // The lease still commits; a window past any time the store can hold is held to the
    // latest one.
    commit_and_wake(&store, &task, Some(Affinity::new("a", Duration::MAX))).await;
    assert!(claimed_by(&store, "b", 10).await.is_empty());
    assert_eq!(ids(&claimed_by(&store, "a", 10).await), ["wf-1"]);
}
