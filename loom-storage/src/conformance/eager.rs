//! Eager dispatch and decisions made ahead: a commit that also claims, or decides, the next
//! step. Every backend implements them; they are what makes one worker's hand-off from an
//! activity to the next one commit.

use loom_core::{EventKind, Seq};

use super::*;
use crate::{ActivityCommitted, DecidedTask, StorageError};

/// A workflow-task commit that claims eagerly hands out exactly what was asked of its own new
/// activities, each a real claim (its lease commits), and leaves the rest for any claimer.
pub async fn an_eager_commit_claims_only_its_own_activities(store: Store) {
    create(&store, "other").await;
    advance(&store, vec![schedule("other", 0)]).await;
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    let mut c = completion(&task, vec![schedule("a", 1), schedule("b", 2)]);
    c.eager = Some(claim(1));
    let eager = store
        .complete_workflow_task(c)
        .await
        .expect("complete and claim");
    assert_eq!(eager.len(), 1, "asked for one, got {eager:?}");
    let t = &eager[0];
    assert_eq!(
        t.workflow_id,
        wid("wf-1"),
        "only the committed workflow's activities"
    );
    assert_eq!(t.name, "a", "the first scheduled first");
    assert_eq!(t.deliveries, 1);
    store
        .complete_activity_task(completed(t, 1))
        .await
        .expect("the eager lease commits");
    let rest = store.claim_activity_tasks(&claim(10)).await.expect("claim");
    assert_eq!(rest.len(), 2, "the others wait for any claimer");
    assert_eq!(history_len(&store, "wf-1").await, 3);
    // A commit that schedules nothing claims nothing, whatever it asked.
    let wf = claim_workflow(&store).await;
    let mut c = completion(&wf, vec![step("quiet")]);
    c.eager = Some(claim(4));
    assert!(
        store
            .complete_workflow_task(c)
            .await
            .expect("commit")
            .is_empty()
    );
}

/// An eager claim takes the workflow's claimable activity tasks oldest first: one that was
/// already waiting before the tasks its own commit schedules, then those in the order they
/// were scheduled, up to what was asked. Each lease commits, and the rest wait for any
/// claimer.
pub async fn an_eager_claim_takes_the_oldest_first(store: Store) {
    create(&store, "wf-1").await;
    advance(&store, vec![schedule("waiting", 0)]).await;
    // A signal wakes the workflow task while "waiting" is still unclaimed.
    store
        .signal(&wid("wf-1"), "go", json(0))
        .await
        .expect("signal");
    let task = claim_workflow(&store).await;
    let mut c = completion(
        &task,
        vec![
            schedule("new-1", 1),
            schedule("new-2", 2),
            schedule("new-3", 3),
        ],
    );
    c.eager = Some(claim(3));
    let eager = store
        .complete_workflow_task(c)
        .await
        .expect("complete and claim");
    let names: Vec<&str> = eager.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["waiting", "new-1", "new-2"],
        "oldest first, up to three"
    );
    for t in &eager {
        assert_eq!(t.deliveries, 1, "{t:?}");
        assert_eq!(t.attempt, 1, "{t:?}");
        assert_eq!(t.workflow_id, wid("wf-1"));
        assert!(t.lease.expires_at > t.claimed_at, "{t:?}");
    }
    assert!(eager[0].ready_at <= eager[1].ready_at);
    assert_eq!(
        eager[1].ready_at, eager[1].claimed_at,
        "scheduled by this commit"
    );
    assert_eq!(eager[1].input, json(1), "the new task's input as scheduled");
    let mut ids: Vec<_> = eager.iter().map(|t| t.lease.task).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three different tasks: {eager:?}");
    let rest = store.claim_activity_tasks(&claim(10)).await.expect("claim");
    let rest: Vec<&str> = rest.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(rest, ["new-3"], "the one not taken waits for any claimer");
    for (i, t) in eager.iter().enumerate() {
        store
            .complete_activity_task(completed(t, i))
            .await
            .expect("each eager lease commits");
    }
    let again = store
        .complete_activity_task(completed(&eager[1], 9))
        .await
        .expect_err("a task is completed once");
    assert!(matches!(again, StorageError::LeaseLost(_)), "{again}");
}

/// An activity commit that claims eagerly claims the workflow task its result woke, with the
/// result among its messages; while another lease holds the workflow task, it claims nothing
/// and the result waits for the holder's next task.
pub async fn an_eager_activity_commit_claims_the_woken_task(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let mut done = completed(&task, true);
    let result = done.result.clone();
    done.then = AfterActivity::ClaimWorkflowTask(claim(1));
    let ActivityCommitted::WorkflowTask(wf) = store
        .complete_activity_task(done)
        .await
        .expect("complete and claim")
    else {
        panic!("the woken workflow task is claimed with the result");
    };
    no_ready_workflow_task(&store).await;
    assert_eq!(wf.workflow_id, wid("wf-1"));
    assert_eq!(wf.workflow_name, "Conformance");
    assert_eq!(wf.last_seq, Seq::new(2));
    assert_eq!(wf.deliveries, 1);
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
    let mut done = completed(&second, 2);
    done.then = AfterActivity::ClaimWorkflowTask(claim(1));
    let answer = store
        .complete_activity_task(done)
        .await
        .expect("complete while the workflow task is held");
    assert_eq!(
        answer,
        ActivityCommitted::Nothing,
        "a leased workflow task is not claimed again"
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

/// A workflow task's commit hands back the activity it scheduled, and that activity's commit
/// hands back the workflow task it woke, which nobody else can then claim.
pub async fn eager_claims_are_made(store: Store) {
    create(&store, "chain").await;
    let task = claim_workflow(&store).await;
    let mut c = completion(&task, vec![schedule("step", 1)]);
    c.eager = Some(claim(1));
    let mut activities = store
        .complete_workflow_task(c)
        .await
        .expect("commit and claim");
    assert_eq!(
        activities.len(),
        1,
        "the scheduled activity is claimed with the commit"
    );
    let activity = activities.remove(0);
    assert_eq!(activity.name, "step");
    no_ready_activity_task(&store).await;
    let mut done = completed(&activity, 2);
    done.then = AfterActivity::ClaimWorkflowTask(claim(1));
    let ActivityCommitted::WorkflowTask(woken) = store
        .complete_activity_task(done)
        .await
        .expect("complete and claim")
    else {
        panic!("the woken workflow task is claimed with the result");
    };
    assert_eq!(woken.workflow_id, wid("chain"));
    no_ready_workflow_task(&store).await;
    store
        .complete_workflow_task(completion(&woken, vec![]))
        .await
        .expect("the eager lease commits");
}

/// The activity's completion with `value`, and the decision a worker would make from it alone
/// on a history ending at `last`: record the result, schedule `next`.
fn decided(task: &ActivityTask, last: Seq, value: i64, next: &str) -> ActivityTaskCompletion {
    let mut done = completed(task, value);
    let decided = DecidedTask {
        workflow_id: task.workflow_id.clone(),
        expected_last_seq: last,
        events: vec![
            event(last.get() + 1, done.result.clone()),
            event(last.get() + 2, schedule(next, value)),
        ],
        progress: None,
        logs: Vec::new(),
        affinity: None,
    };
    done.then = AfterActivity::Decide {
        decided: Box::new(decided),
        claim: claim(1),
    };
    done
}

/// A decision made ahead from an activity's result, when nothing else waits, is committed
/// with the result: the history holds both, the result is never a message, and the activity
/// the decision scheduled is claimed with it.
pub async fn a_decision_ahead_is_applied(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let answer = store
        .complete_activity_task(decided(&task, Seq::new(2), 7, "next"))
        .await
        .expect("complete and decide");
    let ActivityCommitted::Decided(claimed) = answer else {
        panic!("the decision is applied: {answer:?}");
    };
    assert_eq!(
        claimed.len(),
        1,
        "the scheduled activity is claimed with the decision"
    );
    assert_eq!(claimed[0].name, "next");
    let history = store
        .load_history(&wid("wf-1"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(history.len(), 4);
    assert!(matches!(
        history[2].kind,
        EventKind::ActivityCompleted { .. }
    ));
    assert_eq!(
        store
            .describe(&wid("wf-1"))
            .await
            .expect("describe")
            .last_seq,
        Seq::new(4)
    );
    no_ready_workflow_task(&store).await;
    no_ready_activity_task(&store).await;
    let pending = store.pending(&wid("wf-1")).await.expect("pending");
    assert!(
        pending.messages.is_empty(),
        "the result was never a message"
    );
    // The claimed activity's lease commits.
    store
        .complete_activity_task(completed(&claimed[0], 8))
        .await
        .expect("the eager lease commits");
}

/// A decision made ahead is applied whole or not at all. From a stale history, or while
/// another message is due, or while another lease holds the workflow task, it is not: the
/// result waits as a message, and the woken task is claimed for the caller if it is free.
pub async fn a_decision_ahead_is_applied_whole_or_not_at_all(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    // From a stale history: not applied, the task is claimed instead with the result.
    let task = claim_activity(&store).await;
    let answer = store
        .complete_activity_task(decided(&task, Seq::FIRST, 8, "stale"))
        .await
        .expect("complete");
    let ActivityCommitted::WorkflowTask(wf) = answer else {
        panic!("a stale decision is not applied, and the task is claimed: {answer:?}");
    };
    assert_eq!(
        history_len(&store, "wf-1").await,
        2,
        "nothing of the decision is written"
    );
    assert_eq!(wf.messages.len(), 1, "the result arrived as a message");
    store
        .complete_workflow_task(completion(
            &wf,
            vec![wf.messages[0].kind.clone(), schedule("third", 3)],
        ))
        .await
        .expect("the normal path goes on");
    // A signal is due too: a decision from the result alone is not applied.
    store
        .signal(&wid("wf-1"), "poke", json(0))
        .await
        .expect("signal");
    let third = claim_activity(&store).await;
    let answer = store
        .complete_activity_task(decided(&third, Seq::new(4), 9, "blind"))
        .await
        .expect("complete");
    let ActivityCommitted::WorkflowTask(wf) = answer else {
        panic!("a decision that missed a signal is not applied: {answer:?}");
    };
    assert_eq!(
        wf.messages.len(),
        2,
        "the signal and the result wait together"
    );
    assert_eq!(history_len(&store, "wf-1").await, 4);
    // While another lease holds the workflow task: not applied, nothing claimed.
    store
        .complete_workflow_task(completion(&wf, vec![schedule("fourth", 4)]))
        .await
        .expect("complete");
    let fourth = claim_activity(&store).await;
    store
        .signal(&wid("wf-1"), "hold", json(1))
        .await
        .expect("signal");
    let held = claim_workflow(&store).await;
    let answer = store
        .complete_activity_task(decided(&fourth, Seq::new(5), 10, "held"))
        .await
        .expect("complete");
    assert_eq!(answer, ActivityCommitted::Nothing);
    store
        .complete_workflow_task(completion(&held, vec![]))
        .await
        .expect("the holder commits");
    let next = claim_workflow(&store).await;
    assert_eq!(
        next.messages.len(),
        1,
        "the result waited for the next task"
    );
}

/// A decision made ahead must be for the activity's own workflow, start with the result
/// itself, continue its history, and not come from a retried failure; anything else is
/// refused and writes nothing.
pub async fn a_decision_ahead_must_be_well_formed(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let refused = |c: ActivityTaskCompletion| {
        let store = store.clone();
        async move {
            let err = store.complete_activity_task(c).await.expect_err("refused");
            assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
        }
    };
    let with = |edit: &dyn Fn(&mut DecidedTask)| {
        let mut c = decided(&task, Seq::new(2), 7, "next");
        if let AfterActivity::Decide { decided, .. } = &mut c.then {
            edit(decided);
        }
        c
    };
    refused(with(&|d| d.workflow_id = wid("other"))).await;
    refused(with(&|d| {
        d.events.remove(0);
    }))
    .await;
    refused(with(&|d| {
        d.events[0].kind = step("not the result");
    }))
    .await;
    refused(with(&|d| d.events[1].seq = Seq::new(9))).await;
    let mut retried = with(&|_| {});
    retried.result = EventKind::ActivityFailed {
        activity_id: task.activity_id,
        attempt: 1,
        failure: loom_core::Failure::new("x", "y"),
        retry_at: None,
    };
    retried.retry_after = Some(Duration::from_secs(1));
    refused(retried).await;
    assert_eq!(history_len(&store, "wf-1").await, 2);
    no_ready_workflow_task(&store).await;
    store
        .complete_activity_task(completed(&task, 7))
        .await
        .expect("the lease still holds");
}
