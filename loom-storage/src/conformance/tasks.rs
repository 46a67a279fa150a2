//! Workflow tasks: claims, leases and fencing, commits, releases.

use std::collections::BTreeSet;

use loom_core::{Payload, Progress, Seq};

use super::*;
use crate::{ListQuery, Release, StorageError, WorkflowStatus};

/// A new workflow's first task is ready once; a claimed task is not handed out again.
pub async fn a_new_workflow_is_claimed_once(store: Store) {
    let before = wall_now();
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    assert_eq!(task.workflow_id, wid("wf-1"));
    assert_eq!(task.workflow_name, "Conformance");
    assert_eq!(task.last_seq, Seq::FIRST);
    assert!(task.messages.is_empty());
    assert_eq!(task.deliveries, 1);
    assert!(task.lease.expires_at > wall_now());
    // The claim's time is the store's; on this machine it is close to the wall clock.
    let slack = Duration::from_secs(5);
    assert!(
        task.claimed_at.saturating_add(slack) >= before
            && task.claimed_at <= wall_now().saturating_add(slack),
        "claimed at {} (wall clock {before})",
        task.claimed_at
    );
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
    let mut c = completion(&task, vec![step("a")]);
    c.progress = Some(Progress {
        run: 1,
        current_step: Some("a".into()),
        state: json(serde_json::json!({"x": 1})),
        pending_activities: vec![],
        pending_timers: vec![],
        pending_children: Vec::new(),
        parent: None,
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
    let mut c = completion(&tasks[0], vec![step("x")]);
    c.workflow_id = tasks[1].workflow_id.clone();
    let err = store.complete_workflow_task(c).await.expect_err("refused");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    assert_eq!(history_len(&store, "wf-1").await, 1);
    assert_eq!(history_len(&store, "wf-2").await, 1);
}

/// A released task is ready again at once, or after the given time; a pause shows in the
/// summary until the next successful commit. Only a workflow task can pause its workflow.
pub async fn release_and_pause(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    store
        .release_task(&task.lease, Release::default())
        .await
        .expect("release");
    let task = claim_workflow(&store).await;
    assert_eq!(task.deliveries, 1, "a release is not a failed delivery");
    let pause = Release {
        after: HOUR,
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
        .complete_workflow_task(completion(&task, vec![schedule("charge", 1)]))
        .await
        .expect("complete");
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.status, WorkflowStatus::Running);
    assert!(s.pause_reason.is_none());
    // An activity task cannot pause anything; the refusal writes nothing.
    let activity = claim_activity(&store).await;
    let err = store
        .release_task(
            &activity.lease,
            Release {
                after: Duration::ZERO,
                pause: Some("no".into()),
            },
        )
        .await
        .expect_err("not a workflow task");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    no_ready_activity_task(&store).await;
    assert_eq!(
        store.describe(&wid("wf-1")).await.expect("describe").status,
        WorkflowStatus::Running
    );
}

/// A release's delay runs on the store's clock: released for an hour, the task's next due
/// time is an hour after the release by the store, whatever the caller's clock says.
pub async fn release_is_timed_by_the_store(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    store
        .release_task(
            &task.lease,
            Release {
                after: HOUR,
                pause: None,
            },
        )
        .await
        .expect("release");
    let stats = store.stats().await.expect("stats");
    let due = stats.next_due_at.expect("the task waits");
    let offset = due.as_millis() - stats.at.as_millis();
    assert!(
        (HOUR_MS - 60_000..=HOUR_MS).contains(&offset),
        "due {offset} ms after the store's now; expected an hour"
    );
    let pending = store.pending(&wid("wf-1")).await.expect("pending");
    assert_eq!(pending.tasks.len(), 1);
    assert_eq!(pending.tasks[0].visible_at, Some(due));
    assert_eq!(pending.tasks[0].deliveries, 0);
    assert!(pending.tasks[0].leased_until.is_none());
}
