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

/// Creates workflow `id` and ends its first task with `end`.
async fn ended(store: &Store, id: &str, end: EventKind) {
    create(store, id).await;
    advance(store, vec![step("work"), end]).await;
}

/// A purge deletes closed workflows that ended long enough ago, whole (summary, histories of
/// every run, logs), those that ended first first, a batch at a time, by status, type or
/// neither; an open workflow is never purged, whatever the filter; a bad filter is refused.
pub async fn purge_deletes_only_closed_workflows(store: Store) {
    let purge = |older_than: Duration, status, limit| crate::Purge {
        older_than,
        status,
        name: None,
        except_names: Vec::new(),
        limit,
    };
    ended(
        &store,
        "done-1",
        EventKind::WorkflowCompleted { output: json(1) },
    )
    .await;
    ended(
        &store,
        "failed-1",
        EventKind::WorkflowFailed {
            failure: loom_core::Failure::new("boom", "it broke"),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    // One that continued as new before it ended: both runs' histories go.
    create(&store, "chained").await;
    let task = claim_workflow(&store).await;
    let mut c = completion(
        &task,
        vec![EventKind::WorkflowContinuedAsNew {
            input: json(2),
            signals: Vec::new(),
        }],
    );
    let mut next = started("Conformance", 2);
    if let EventKind::WorkflowStarted { run, .. } = &mut next.kind {
        *run = 2;
    }
    c.next_run = Some(next);
    store.complete_workflow_task(c).await.expect("continue");
    advance(
        &store,
        vec![EventKind::WorkflowCompleted { output: json(3) }],
    )
    .await;
    // A parent that ended with an abandoned child still open is kept while the child runs:
    // its id must not be taken again while the child may report to it.
    super::children::with_child(
        &store,
        "parent",
        "parent/2",
        loom_core::ParentClosePolicy::Abandon,
    )
    .await;
    let child_task = claim_workflow(&store).await;
    assert_eq!(child_task.workflow_id, wid("parent/2"));
    store
        .signal(&wid("parent"), "end", json(0))
        .await
        .expect("signal");
    advance(
        &store,
        vec![EventKind::WorkflowCompleted { output: json(0) }],
    )
    .await;
    create(&store, "open").await;
    let before = store.stats().await.expect("stats").events;
    tokio::time::sleep(Duration::from_millis(50)).await;

    for bad in [
        purge(Duration::ZERO, Some(crate::WorkflowStatus::Running), 10),
        purge(Duration::ZERO, Some(crate::WorkflowStatus::Paused), 10),
        purge(Duration::ZERO, None, 0),
    ] {
        assert!(matches!(
            store.purge(&bad).await,
            Err(StorageError::InvalidArgument(_))
        ));
    }
    assert!(
        store
            .purge(&purge(HOUR, None, 10))
            .await
            .expect("purge")
            .is_empty(),
        "nothing ended an hour ago"
    );
    // What a listing of those that ended shows is what goes.
    let listed = store
        .list(&crate::ListQuery {
            closed_before: Some(wall_now()),
            ..crate::ListQuery::default()
        })
        .await
        .expect("list");
    let mut listed: Vec<String> = listed.items.iter().map(|s| s.id.to_string()).collect();
    listed.sort();
    assert_eq!(listed, ["chained", "done-1", "failed-1", "parent"]);

    let failed = store
        .purge(&purge(
            Duration::ZERO,
            Some(crate::WorkflowStatus::Failed),
            10,
        ))
        .await
        .expect("purge the failed");
    assert_eq!(failed, vec![wid("failed-1")]);
    let mut except = purge(Duration::ZERO, None, 10);
    except.except_names = vec!["Conformance".into()];
    assert!(store.purge(&except).await.expect("purge").is_empty());
    let first = store
        .purge(&purge(Duration::ZERO, None, 1))
        .await
        .expect("a batch of one");
    assert_eq!(first, vec![wid("done-1")], "the one that ended first");
    let rest = store
        .purge(&purge(Duration::ZERO, None, 10))
        .await
        .expect("the rest");
    assert_eq!(rest, vec![wid("chained")]);
    for id in ["done-1", "failed-1", "chained"] {
        assert!(matches!(
            store.describe(&wid(id)).await,
            Err(StorageError::NotFound(_))
        ));
        assert!(matches!(
            store.load_history(&wid(id), Seq::ZERO).await,
            Err(StorageError::NotFound(_))
        ));
        assert!(matches!(
            store.load_run(&wid(id), 1).await,
            Err(StorageError::NotFound(_))
        ));
        assert!(matches!(
            store.logs(&wid(id)).await,
            Err(StorageError::NotFound(_))
        ));
    }
    assert_eq!(
        store.describe(&wid("open")).await.expect("kept").status,
        WorkflowStatus::Running
    );
    let after = store.stats().await.expect("stats");
    assert_eq!(
        after.events,
        before - 3 - 3 - 2 - 2,
        "their events, every run's"
    );
    assert_eq!(
        store.describe(&wid("parent")).await.expect("kept").status,
        WorkflowStatus::Completed,
        "kept while its child runs"
    );
    assert_eq!(after.workflows.values().sum::<u64>(), 3);
    // Once the child ends, the parent goes too.
    store
        .complete_workflow_task(completion(
            &child_task,
            vec![EventKind::WorkflowCompleted { output: json(0) }],
        ))
        .await
        .expect("the child ends");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let gone = store
        .purge(&purge(Duration::ZERO, None, 10))
        .await
        .expect("purge");
    let mut gone: Vec<String> = gone.iter().map(ToString::to_string).collect();
    gone.sort();
    assert_eq!(gone, ["parent", "parent/2"]);
    claim_workflow(&store).await;
}
