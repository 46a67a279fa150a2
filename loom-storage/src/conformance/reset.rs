//! Resetting a run: a new run from a workflow-task boundary of the current one.

use super::*;
use loom_core::Progress;

use crate::{Reset, StorageError, WorkflowStatus};

/// A reset of the current run of `id` to `to`, as a client builds it from what it read.
pub(super) async fn reset_to(store: &Store, id: &str, to: u64, signals: bool) -> Reset {
    let summary = store.describe(&wid(id)).await.expect("describe");
    Reset {
        workflow_id: wid(id),
        history: store
            .load_history(&wid(id), Seq::ZERO)
            .await
            .expect("history"),
        to: Seq::new(to),
        reason: "ops: fixed the label bug".into(),
        reapply_signals: signals,
        created_at: summary.created_at,
        family: Progress {
            run: summary.run,
            ..summary.progress.unwrap_or_default()
        },
        at: wall_now(),
    }
}

/// Claims the one ready workflow task and commits its messages as events, then `commands`:
/// a history as a worker writes it.
async fn take(store: &Store, commands: Vec<EventKind>) -> WorkflowTask {
    let task = claim_workflow(store).await;
    let mut kinds: Vec<EventKind> = task.messages.iter().map(|m| m.kind.clone()).collect();
    kinds.extend(commands);
    store
        .complete_workflow_task(completion(&task, kinds))
        .await
        .expect("complete");
    task
}

/// The attempt's final failure.
fn failed_for_good(task: &ActivityTask) -> ActivityTaskCompletion {
    ActivityTaskCompletion {
        lease: task.lease,
        workflow_id: task.workflow_id.clone(),
        result: EventKind::ActivityFailed {
            activity_id: task.activity_id,
            attempt: task.attempt,
            failure: loom_core::Failure::new("label", "the label printer rejected the address"),
            retry_at: None,
        },
        retry_after: None,
        then: AfterActivity::Nothing,
    }
}

/// A run that failed is reset to a workflow-task boundary before the failure: the workflow is
/// running again in a new run whose history is the old one up to the point (its first event
/// naming the run, point and reason); the old run is kept whole; the activity the failure
/// came from runs again, a timer open at the point is armed again, and a signal received
/// after the point is delivered again.
pub async fn a_failed_run_is_reset_to_before_its_failure(store: Store) {
    create(&store, "wf-1").await;
    take(&store, vec![schedule("charge", 1)]).await; // 2
    let charge = claim_activity(&store).await;
    store
        .complete_activity_task(completed(&charge, "charged"))
        .await
        .expect("charged");
    let far = Timestamp::from_millis(wall_now().as_millis() + 3_600_000);
    // 3: ActivityCompleted, 4: ship scheduled, 5: a timer an hour away.
    take(&store, vec![schedule("ship", 2), timer_at(far)]).await;
    let ship = claim_activity(&store).await;
    store
        .complete_activity_task(failed_for_good(&ship))
        .await
        .expect("failed");
    store
        .signal(&wid("wf-1"), "note", json("gift wrap"))
        .await
        .expect("signal");
    // 6: ActivityFailed, 7: SignalReceived, 8: WorkflowFailed.
    take(
        &store,
        vec![EventKind::WorkflowFailed {
            failure: loom_core::Failure::new("label", "could not ship"),
        }],
    )
    .await;
    let old = store
        .load_history(&wid("wf-1"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(old.len(), 8, "{old:#?}");
    assert_eq!(
        store.describe(&wid("wf-1")).await.expect("describe").status,
        WorkflowStatus::Failed
    );

    store
        .reset(reset_to(&store, "wf-1", 5, true).await)
        .await
        .expect("reset");

    let summary = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::Running);
    assert_eq!(summary.run, 2);
    assert_eq!(summary.last_seq, Seq::new(5));
    assert_eq!((summary.closed_at, summary.failure), (None, None));
    let new = store
        .load_history(&wid("wf-1"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(new.len(), 5);
    assert_eq!(new[1..], old[1..5], "the prefix is kept as it was");
    match &new[0].kind {
        EventKind::WorkflowStarted {
            run,
            reset: Some(origin),
            ..
        } => {
            assert_eq!(*run, 2);
            assert_eq!((origin.run, origin.point), (1, Seq::new(5)));
            assert_eq!(origin.reason, "ops: fixed the label bug");
        }
        other => panic!("the new run starts with {other:?}"),
    }
    assert_eq!(
        store.load_run(&wid("wf-1"), 1).await.expect("run 1"),
        old,
        "the old run is kept whole"
    );
    let runs = store.runs(&wid("wf-1")).await.expect("runs");
    assert_eq!(runs.iter().map(|r| r.run).collect::<Vec<_>>(), [1]);

    // The shipment runs again; the signal comes again; the timer waits for its time.
    let again = claim_activity(&store).await;
    assert_eq!((again.name.as_str(), again.attempt), ("ship", 1));
    assert_eq!(again.activity_id, ActivityId(Seq::new(4)));
    let task = claim_workflow(&store).await;
    assert_eq!(task.run, 2);
    assert_eq!(task.last_seq, Seq::new(5));
    let kinds: Vec<&EventKind> = task.messages.iter().map(|m| &m.kind).collect();
    assert!(
        matches!(kinds[..], [EventKind::SignalReceived { name, .. }] if name == "note"),
        "{kinds:?}"
    );
    let pending = store.pending(&wid("wf-1")).await.expect("pending");
    assert!(
        pending
            .messages
            .iter()
            .any(|m| matches!(m.kind, EventKind::TimerFired { .. }) && m.visible_at == far),
        "the timer is armed at its recorded time: {pending:?}"
    );
    store
        .complete_workflow_task(completion(&task, vec![step("on")]))
        .await
        .expect("the new run goes on");
    store
        .complete_activity_task(completed(&again, "shipped"))
        .await
        .expect("the new attempt reports");
}

/// Resetting a run that is still open ends it with `WorkflowReset` (kept as the old run's last
/// event): the worker holding its task and the attempt in flight can no longer commit, and the
/// signals still waiting wait for the new run, after those re-delivered from the history.
pub async fn an_open_run_is_reset_and_fenced(store: Store) {
    create(&store, "wf-1").await;
    take(&store, vec![schedule("charge", 1)]).await; // 2
    let attempt = claim_activity(&store).await;
    store
        .signal(&wid("wf-1"), "first", json(1))
        .await
        .expect("signal");
    take(&store, vec![step("waiting")]).await; // 3: SignalReceived, 4: StepStarted
    store
        .signal(&wid("wf-1"), "second", json(2))
        .await
        .expect("signal");
    let held = claim_workflow(&store).await;

    store
        .reset(reset_to(&store, "wf-1", 2, true).await)
        .await
        .expect("reset");

    assert!(matches!(
        store
            .complete_workflow_task(completion(&held, vec![step("late")]))
            .await,
        Err(StorageError::LeaseLost(_) | StorageError::Conflict { .. })
    ));
    assert!(matches!(
        store
            .complete_activity_task(completed(&attempt, "late"))
            .await,
        Err(StorageError::LeaseLost(_))
    ));
    let old = store.load_run(&wid("wf-1"), 1).await.expect("run 1");
    assert_eq!(old.len(), 5);
    assert!(
        matches!(
            &old[4].kind,
            EventKind::WorkflowReset { run: 2, point, reason } if *point == Seq::new(2) && reason.contains("label")
        ),
        "{:?}",
        old[4]
    );
    let again = claim_activity(&store).await;
    assert_eq!((again.activity_id, again.attempt), (attempt.activity_id, 1));
    let task = claim_workflow(&store).await;
    let names: Vec<&str> = task
        .messages
        .iter()
        .map(|m| match &m.kind {
            EventKind::SignalReceived { name, .. } => name.as_str(),
            other => other.type_name(),
        })
        .collect();
    assert_eq!(names, ["first", "second"], "in the order they arrived");
}

/// With `reapply_signals` off, the signals after the point and those waiting are dropped;
/// an activity's next attempt after a retryable failure is the one that runs.
pub async fn a_reset_without_signals_drops_them(store: Store) {
    create(&store, "wf-1").await;
    take(&store, vec![schedule("charge", 1)]).await; // 2
    let first = claim_activity(&store).await;
    let mut failed = failed_for_good(&first);
    failed.retry_after = Some(Duration::ZERO);
    store
        .complete_activity_task(failed)
        .await
        .expect("failed once");
    store
        .signal(&wid("wf-1"), "first", json(1))
        .await
        .expect("signal");
    // 3: ActivityFailed (retried), 4: SignalReceived, 5: StepStarted
    take(&store, vec![step("waiting")]).await;
    store
        .signal(&wid("wf-1"), "second", json(2))
        .await
        .expect("signal");
    let second = claim_activity(&store).await;
    assert_eq!(second.attempt, 2);

    store
        .reset(reset_to(&store, "wf-1", 3, false).await)
        .await
        .expect("reset");

    let again = claim_activity(&store).await;
    assert_eq!(again.attempt, 2, "the attempt after the recorded failure");
    let task = claim_workflow(&store).await;
    assert!(task.messages.is_empty(), "{:?}", task.messages);
    assert_eq!(task.last_seq, Seq::new(3));
}

/// A reset is checked before anything is written: an unknown workflow is `NotFound`; a point
/// that is not a workflow-task boundary, or is past the history, or a reason with a NUL
/// character, is `InvalidArgument` naming the nearest boundaries; a history that moved on is
/// `Conflict`, a run that moved on `RunMoved`; a child open at the point whose end the run
/// never recorded is `InvalidArgument`.
pub async fn reset_is_checked(store: Store) {
    create(&store, "wf-1").await;
    // 2: StepStarted, 3: ActivityScheduled, then 4: ActivityCompleted, 5: StepCompleted.
    take(&store, vec![step("pay"), schedule("charge", 1)]).await;
    let attempt = claim_activity(&store).await;
    store
        .complete_activity_task(completed(&attempt, "ok"))
        .await
        .expect("report");
    take(
        &store,
        vec![EventKind::StepCompleted { name: "pay".into() }],
    )
    .await;

    let mut ghost = reset_to(&store, "wf-1", 3, true).await;
    ghost.workflow_id = wid("ghost");
    assert!(matches!(
        store.reset(ghost).await,
        Err(StorageError::NotFound(_))
    ));
    match store.reset(reset_to(&store, "wf-1", 2, true).await).await {
        Err(StorageError::InvalidArgument(m)) => {
            assert!(m.contains("not a workflow-task boundary"), "{m}");
            assert!(m.contains("the nearest are 1 and 3"), "{m}");
        }
        other => panic!("a reset inside a task: {other:?}"),
    }
    match store.reset(reset_to(&store, "wf-1", 9, true).await).await {
        Err(StorageError::InvalidArgument(m)) => assert!(m.contains("from 1 to 5"), "{m}"),
        other => panic!("a reset past the history: {other:?}"),
    }
    let mut nul = reset_to(&store, "wf-1", 3, true).await;
    nul.reason = "bad\0reason".into();
    assert!(matches!(
        store.reset(nul).await,
        Err(StorageError::InvalidArgument(_))
    ));
    let mut stale = reset_to(&store, "wf-1", 3, true).await;
    stale.history.pop();
    assert!(matches!(
        store.reset(stale).await,
        Err(StorageError::Conflict { .. })
    ));
    let mut moved = reset_to(&store, "wf-1", 3, true).await;
    if let EventKind::WorkflowStarted { run, .. } = &mut moved.history[0].kind {
        *run = 7;
    }
    assert!(matches!(
        store.reset(moved).await,
        Err(StorageError::RunMoved { .. })
    ));
    // A child started at 6 that has not ended.
    let child = EventKind::ChildWorkflowScheduled {
        traceparent: None,
        name: "Conformance".into(),
        version: 1,
        workflow_id: wid("wf-1/6"),
        input: json(0),
        parent_close: loom_core::ParentClosePolicy::Abandon,
        timeouts: Default::default(),
        retry: None,
    };
    store
        .signal(&wid("wf-1"), "go", json(0))
        .await
        .expect("signal");
    take(&store, vec![child]).await; // 6: SignalReceived, 7: ChildWorkflowScheduled
    let started = claim_workflow(&store).await;
    assert_eq!(started.workflow_id, wid("wf-1/6"), "the child runs");
    store
        .signal(&wid("wf-1"), "later", json(0))
        .await
        .expect("signal");
    take(&store, vec![step("more")]).await; // 8: SignalReceived, 9: StepStarted
    match store.reset(reset_to(&store, "wf-1", 7, true).await).await {
        Err(StorageError::InvalidArgument(m)) => {
            assert!(
                m.contains("\"wf-1/6\"") && m.contains("reset to before 7"),
                "{m}"
            );
        }
        other => panic!("a reset past an open child: {other:?}"),
    }
    // Nothing was written by any of them.
    let summary = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!((summary.run, summary.last_seq), (1, Seq::new(9)));
    assert!(store.runs(&wid("wf-1")).await.expect("runs").is_empty());
    // Before the child was started, the reset is allowed.
    store
        .reset(reset_to(&store, "wf-1", 5, true).await)
        .await
        .expect("reset before the child");
}
