//! What an operator does to a running workflow: pause it and resume it.

use super::*;
use crate::{StorageError, WorkflowStatus};

/// A paused workflow gets no workflow task: a worker that held its task can no longer
/// commit, and nothing claims it; its activities still run and report, and their results,
/// signals and due timers wait. Resuming makes its task claimable at once, with all of them,
/// in order.
pub async fn a_paused_workflow_waits_until_resumed(store: Store) {
    create(&store, "wf-1").await;
    advance(&store, vec![schedule("charge", 1), timer_at(wall_now())]).await;
    store
        .signal(&wid("wf-1"), "first", json(1))
        .await
        .expect("signal");
    let held = claim_workflow(&store).await;
    store
        .pause(&wid("wf-1"), "ops: investigating a double charge")
        .await
        .expect("pause");
    let summary = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::Paused);
    assert_eq!(
        summary.pause_reason.as_deref(),
        Some("ops: investigating a double charge")
    );
    assert!(matches!(
        store
            .complete_workflow_task(completion(&held, vec![step("late")]))
            .await,
        Err(StorageError::LeaseLost(_))
    ));
    // The activity still runs and reports; a signal arrives; nothing wakes the workflow.
    let attempt = claim_activity(&store).await;
    store
        .complete_activity_task(completed(&attempt, "charged"))
        .await
        .expect("the result is kept");
    store
        .signal(&wid("wf-1"), "second", json(2))
        .await
        .expect("signal");
    no_ready_workflow_task(&store).await;
    assert_eq!(history_len(&store, "wf-1").await, 3, "nothing was appended");
    // Pausing again only changes the reason.
    store
        .pause(&wid("wf-1"), "ops: still looking")
        .await
        .expect("pause again");

    store.resume(&wid("wf-1")).await.expect("resume");
    let summary = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(summary.status, WorkflowStatus::Running);
    assert_eq!(summary.pause_reason, None);
    let task = claim_workflow(&store).await;
    let kinds: Vec<&str> = task.messages.iter().map(|m| m.kind.type_name()).collect();
    assert_eq!(
        kinds,
        [
            "TimerFired",
            "SignalReceived",
            "ActivityCompleted",
            "SignalReceived"
        ],
        "everything that waited, in order"
    );
    store
        .complete_workflow_task(completion(&task, vec![step("on")]))
        .await
        .expect("it runs again");
}

/// Resume also clears a pause that a task which could not be decided left: the task is
/// claimable at once instead of at its retry time.
pub async fn resume_retries_a_workflow_paused_by_its_code(store: Store) {
    create(&store, "wf-1").await;
    let task = claim_workflow(&store).await;
    store
        .release_task(
            &task.lease,
            crate::Release {
                after: HOUR,
                pause: Some("non-determinism at #2".into()),
            },
        )
        .await
        .expect("release");
    no_ready_workflow_task(&store).await;
    store.resume(&wid("wf-1")).await.expect("resume");
    assert_eq!(
        store.describe(&wid("wf-1")).await.expect("describe").status,
        WorkflowStatus::Running
    );
    claim_workflow(&store).await;
}

/// Pause and resume are checked: an unknown workflow is `NotFound`, an ended one `Closed`, a
/// reason with a NUL character and resuming a workflow that is not paused are
/// `InvalidArgument`; none of them writes anything.
pub async fn pause_and_resume_are_checked(store: Store) {
    assert!(matches!(
        store.pause(&wid("ghost"), "x").await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        store.resume(&wid("ghost")).await,
        Err(StorageError::NotFound(_))
    ));
    create(&store, "wf-1").await;
    assert!(matches!(
        store.pause(&wid("wf-1"), "bad\0reason").await,
        Err(StorageError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.resume(&wid("wf-1")).await,
        Err(StorageError::InvalidArgument(m)) if m.contains("running, not paused")
    ));
    assert_eq!(
        store.describe(&wid("wf-1")).await.expect("describe").status,
        WorkflowStatus::Running
    );
    advance(
        &store,
        vec![EventKind::WorkflowCompleted {
            output: json("done"),
        }],
    )
    .await;
    assert!(matches!(
        store.pause(&wid("wf-1"), "too late").await,
        Err(StorageError::Closed { .. })
    ));
    assert!(matches!(
        store.resume(&wid("wf-1")).await,
        Err(StorageError::Closed { .. })
    ));
}

/// A paused workflow can still be terminated: it ends at once, with nothing left to claim.
pub async fn a_paused_workflow_can_be_terminated(store: Store) {
    create(&store, "wf-1").await;
    store.pause(&wid("wf-1"), "ops").await.expect("pause");
    let summary = store.describe(&wid("wf-1")).await.expect("describe");
    store
        .terminate(super::children::termination(&summary, "give up"))
        .await
        .expect("terminate");
    assert_eq!(
        store.describe(&wid("wf-1")).await.expect("describe").status,
        WorkflowStatus::Terminated
    );
    no_ready_workflow_task(&store).await;
}
