//! Activity tasks: scheduling, results, retries.

use loom_core::{ActivityOptions, EventKind, Failure, Payload, Seq};

use super::*;
use crate::StorageError;

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
    assert_eq!(task.deliveries, 1);
    no_ready_activity_task(&store).await;
}

/// An activity's result wakes its workflow with the result as a message, in one step.
pub async fn an_activity_result_wakes_the_workflow(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    no_ready_workflow_task(&store).await;
    let task = claim_activity(&store).await;
    let done = completed(&task, true);
    let result = done.result.clone();
    let answer = store.complete_activity_task(done).await.expect("complete");
    assert_eq!(answer, crate::ActivityCommitted::Nothing);
    let wf = claim_workflow(&store).await;
    assert_eq!(wf.messages.len(), 1);
    assert_eq!(wf.messages[0].kind, result);
    assert_eq!(wf.last_seq, Seq::new(2));
    no_ready_activity_task(&store).await;
}

/// A failed attempt that is retried is delivered to the workflow with the time of its next
/// attempt, which the store computes from its own clock and the delay given; the next attempt
/// is not handed out before then. A retry due at once is handed out at once, as attempt 2.
pub async fn a_failed_attempt_schedules_the_next(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let failed = ActivityTaskCompletion {
        lease: task.lease,
        workflow_id: task.workflow_id.clone(),
        result: EventKind::ActivityFailed {
            activity_id: task.activity_id,
            attempt: 1,
            failure: Failure::new("network", "reset"),
            retry_at: None,
        },
        retry_after: Some(HOUR),
        then: AfterActivity::Nothing,
    };
    store
        .complete_activity_task(failed)
        .await
        .expect("complete");
    no_ready_activity_task(&store).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.activity_tasks_waiting, 1);
    let due = stats.next_due_at.expect("the retry waits");
    let offset = due.as_millis() - stats.at.as_millis();
    assert!(
        (HOUR_MS - 60_000..=HOUR_MS).contains(&offset),
        "the retry is due {offset} ms after the store's now; expected an hour"
    );
    let wf = claim_workflow(&store).await;
    match &wf.messages[0].kind {
        EventKind::ActivityFailed {
            attempt: 1,
            retry_at: Some(at),
            ..
        } => assert_eq!(*at, due, "the result records when the retry is due"),
        other => panic!("expected the failure with its retry time, got {other:?}"),
    }
    // The old attempt's lease is spent.
    assert!(matches!(
        store.complete_activity_task(completed(&task, 1)).await,
        Err(StorageError::LeaseLost(_))
    ));

    // A retry due already is handed out at once, as attempt 2.
    let id2 = with_scheduled_activity(&store, "wf-2").await;
    let task = claim_activity(&store).await;
    let timed_out = ActivityTaskCompletion {
        lease: task.lease,
        workflow_id: task.workflow_id.clone(),
        result: EventKind::ActivityTimedOut {
            activity_id: id2,
            attempt: 1,
            retry_at: None,
        },
        retry_after: Some(Duration::ZERO),
        then: AfterActivity::Nothing,
    };
    store
        .complete_activity_task(timed_out)
        .await
        .expect("complete");
    let retry = claim_activity(&store).await;
    assert_eq!(retry.workflow_id, wid("wf-2"));
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.activity_id, id2);
    assert_eq!(retry.deliveries, 1, "a new attempt starts its own count");
    assert_eq!(retry.input, json(5));
}

/// An activity result must name the task's workflow, activity and attempt, be a result, and
/// leave its retry time to the store; a refused result writes nothing and the lease holds.
pub async fn an_activity_result_must_match_its_task(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    let task = claim_activity(&store).await;
    let refused = |c: ActivityTaskCompletion| {
        let store = store.clone();
        async move {
            let err = store.complete_activity_task(c).await.expect_err("refused");
            assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
        }
    };
    let mut wrong = completed(&task, 1);
    wrong.result = EventKind::ActivityCompleted {
        activity_id: loom_core::ActivityId(Seq::new(99)),
        attempt: 1,
        result: Payload::NULL,
    };
    refused(wrong).await;
    let mut wrong_attempt = completed(&task, 1);
    wrong_attempt.result = EventKind::ActivityCompleted {
        activity_id: task.activity_id,
        attempt: 2,
        result: Payload::NULL,
    };
    refused(wrong_attempt).await;
    let mut not_a_result = completed(&task, 1);
    not_a_result.result = EventKind::SignalReceived {
        name: "x".into(),
        payload: Payload::NULL,
    };
    refused(not_a_result).await;
    let mut other_workflow = completed(&task, 1);
    other_workflow.workflow_id = wid("someone-else");
    refused(other_workflow).await;
    let mut own_retry_time = completed(&task, 1);
    own_retry_time.result = EventKind::ActivityTimedOut {
        activity_id: task.activity_id,
        attempt: 1,
        retry_at: Some(wall_now()),
    };
    refused(own_retry_time).await;
    let mut retried_success = completed(&task, 1);
    retried_success.retry_after = Some(Duration::ZERO);
    refused(retried_success).await;
    no_ready_workflow_task(&store).await;
    // The task is still held and can still complete properly.
    store
        .complete_activity_task(completed(&task, 1))
        .await
        .expect("complete");
}

/// An activity attempt whose lease expired cannot report; the attempt is handed out again.
pub async fn an_expired_activity_lease_cannot_report(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    let req = ClaimRequest::new("slow", 1, SHORT_LEASE);
    let task = store
        .claim_activity_tasks(&req)
        .await
        .expect("claim")
        .remove(0);
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let err = store
        .complete_activity_task(completed(&task, 1))
        .await
        .expect_err("expired");
    assert!(matches!(err, StorageError::LeaseLost(_)), "{err}");
    no_ready_workflow_task(&store).await;
    let again = claim_activity(&store).await;
    assert_eq!(again.attempt, 1);
    assert_eq!(again.deliveries, 2);
}

/// A workflow task says since when it could be claimed, by the store's clock: from the
/// workflow's creation while it waits, from its lapsed lease's end when it is taken again, and
/// from the commit that woke it when that commit claims it eagerly.
pub async fn a_workflow_task_says_since_when_it_was_ready(store: Store) {
    create(&store, "wf-1").await;
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let short = ClaimRequest::new("conformance", 1, SHORT_LEASE);
    let first = store.claim_workflow_tasks(&short).await.expect("claim");
    let first = first.first().expect("the workflow task is ready");
    let waited = first.claimed_at.as_millis() - first.ready_at.as_millis();
    assert!(
        (600..60_000).contains(&waited),
        "it waited {waited} ms between the workflow's creation and its claim; expected about 700"
    );
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let again = claim_workflow(&store).await;
    assert_eq!(
        again.ready_at, first.lease.expires_at,
        "taken again, it was ready from when the last lease lapsed"
    );
    store
        .complete_workflow_task(completion(&again, vec![schedule("a", 1)]))
        .await
        .expect("commit");
    let activity = claim_activity(&store).await;
    let mut done = completed(&activity, 1);
    done.then = AfterActivity::ClaimWorkflowTask(claim(1));
    let woken = store.complete_activity_task(done).await.expect("report");
    let crate::ActivityCommitted::WorkflowTask(woken) = woken else {
        panic!("the woken workflow task was not claimed: {woken:?}");
    };
    assert_eq!(
        woken.ready_at, woken.claimed_at,
        "woken and claimed in one commit"
    );
}

/// An attempt says since when it could be claimed, by the store's clock: from its scheduling
/// commit while it waits, from its lapsed lease's end when it is taken again, and from the
/// commit itself when that commit claims it eagerly.
pub async fn an_attempt_says_since_when_it_was_ready(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let short = ClaimRequest::new("conformance", 1, SHORT_LEASE);
    let first = store.claim_activity_tasks(&short).await.expect("claim");
    let first = first.first().expect("the activity is ready");
    let waited = first.claimed_at.as_millis() - first.ready_at.as_millis();
    assert!(
        (600..60_000).contains(&waited),
        "it waited {waited} ms between its scheduling and its claim; expected about 700"
    );
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let again = claim_activity(&store).await;
    assert_eq!(
        again.ready_at, first.lease.expires_at,
        "taken again, it was ready from when the last lease lapsed"
    );
    // Claimed by the commit that scheduled it: it never waited.
    create(&store, "wf-2").await;
    let task = claim_workflow(&store).await;
    let mut c = completion(&task, vec![schedule("a", 1)]);
    c.eager = Some(claim(1));
    let eager = store.complete_workflow_task(c).await.expect("commit");
    let eager = eager.first().expect("claimed eagerly");
    assert_eq!(eager.ready_at, eager.claimed_at);
}
