//! Child workflows: started with their parent's commit, their end reported to the parent, and
//! the parent-close policy applied when the parent ends first.

use loom_core::{
    ChildId, EventKind, Failure, ParentClosePolicy, ParentRef, PendingChild, Progress, Seq,
};

use super::*;
use crate::{ListQuery, StorageError, WorkflowStatus};

fn start_child(id: &str, policy: ParentClosePolicy) -> EventKind {
    EventKind::ChildWorkflowScheduled {
        traceparent: None,
        retry: None,
        name: "Child".into(),
        version: 3,
        workflow_id: wid(id),
        input: json(id),
        parent_close: policy,
        timeouts: Default::default(),
    }
}

/// Where a workflow stands, as far as the store's rules for children read it.
pub(super) fn family(parent: Option<ParentRef>, children: Vec<PendingChild>) -> Progress {
    Progress {
        run: 1,
        current_step: None,
        state: Payload::NULL,
        pending_activities: Vec::new(),
        pending_timers: Vec::new(),
        pending_children: children,
        parent,
        awaiting_signals: Vec::new(),
        buffered_signals: Default::default(),
        outcome: None,
    }
}

pub(super) fn pending_child(seq: u64, id: &str, policy: ParentClosePolicy) -> PendingChild {
    PendingChild {
        id: ChildId(Seq::new(seq)),
        workflow_id: wid(id),
        name: "Child".into(),
        parent_close: policy,
    }
}

/// Claims the one ready workflow task, which must be `id`'s, and commits `kinds` with
/// `progress`.
pub(super) async fn advance_with(
    store: &Store,
    id: &str,
    kinds: Vec<EventKind>,
    progress: Progress,
) {
    let task = claim_workflow(store).await;
    assert_eq!(task.workflow_id, wid(id), "the ready task is {id}'s");
    let mut c = completion(&task, kinds);
    c.progress = Some(progress);
    store.complete_workflow_task(c).await.expect("complete");
}

/// Starts `parent` and commits its first task, which starts child `child` (event 2) with
/// `policy`; the child's first task is then the one ready task.
pub(super) async fn with_child(
    store: &Store,
    parent: &str,
    child: &str,
    policy: ParentClosePolicy,
) {
    create(store, parent).await;
    let children = vec![pending_child(2, child, policy)];
    advance_with(
        store,
        parent,
        vec![start_child(child, policy)],
        family(None, children),
    )
    .await;
}

pub(super) fn child_ref(parent: &str) -> ParentRef {
    ParentRef {
        run: 1,
        workflow_id: wid(parent),
        child: ChildId(Seq::new(2)),
    }
}

/// A child is created by its parent's commit: running, linked to its parent, its history's
/// first event naming the parent, its first task ready; listed among the parent's children.
pub async fn a_child_is_started_with_its_parents_commit(store: Store) {
    with_child(
        &store,
        "parent",
        "parent/2",
        ParentClosePolicy::RequestCancel,
    )
    .await;
    let child = store.describe(&wid("parent/2")).await.expect("the child");
    assert_eq!(child.status, WorkflowStatus::Running);
    assert_eq!(child.name, "Child");
    assert_eq!(child.version, 3);
    assert_eq!(child.input, json("parent/2"));
    assert_eq!(child.parent, Some(wid("parent")));
    let history = store
        .load_history(&wid("parent/2"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(history.len(), 1);
    match &history[0].kind {
        EventKind::WorkflowStarted { name, parent, .. } => {
            assert_eq!(name, "Child");
            assert_eq!(parent.as_ref(), Some(&child_ref("parent")));
        }
        other => panic!("the child's first event is {other:?}"),
    }
    let parent = store.describe(&wid("parent")).await.expect("the parent");
    assert_eq!(parent.parent, None);
    let task = claim_workflow(&store).await;
    assert_eq!(task.workflow_id, wid("parent/2"), "only the child is ready");
    no_ready_workflow_task(&store).await;
    let children = store
        .list(&ListQuery {
            parent: Some(wid("parent")),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    let ids: Vec<_> = children.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec!["parent/2"]);
    let none = store
        .list(&ListQuery {
            parent: Some(wid("parent/2")),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert!(none.items.is_empty());
}

/// A child whose id is taken is not started, and the workflow that holds the id is left as it
/// was: the parent gets a `ChildWorkflowFailed` of kind `already_exists` instead, in the same
/// commit, and its task is ready for it.
pub async fn a_child_whose_id_is_taken_is_refused_to_its_parent(store: Store) {
    create(&store, "taken").await;
    let other = claim_workflow(&store).await;
    store
        .complete_workflow_task(completion(&other, vec![step("mine")]))
        .await
        .expect("complete");
    create(&store, "parent").await;
    advance_with(
        &store,
        "parent",
        vec![start_child("taken", ParentClosePolicy::RequestCancel)],
        family(None, Vec::new()),
    )
    .await;
    let taken = store.describe(&wid("taken")).await.expect("describe");
    assert_eq!(taken.parent, None);
    assert_eq!(taken.name, "Conformance");
    assert_eq!(history_len(&store, "taken").await, 2);
    let task = claim_workflow(&store).await;
    assert_eq!(task.workflow_id, wid("parent"));
    assert_eq!(task.messages.len(), 1);
    match &task.messages[0].kind {
        EventKind::ChildWorkflowFailed { child, failure } => {
            assert_eq!(*child, ChildId(Seq::new(2)));
            assert_eq!(failure.kind, "already_exists");
            assert!(failure.non_retryable);
        }
        other => panic!("the parent got {other:?}"),
    }
}

/// A child's end (completed, failed or cancelled) is posted to its parent, whose task becomes
/// ready for it.
pub async fn a_childs_end_is_reported_to_its_parent(store: Store) {
    let ends = [
        (
            EventKind::WorkflowCompleted {
                output: json("shipped"),
            },
            EventKind::ChildWorkflowCompleted {
                child: ChildId(Seq::new(2)),
                output: json("shipped"),
            },
        ),
        (
            EventKind::WorkflowFailed {
                failure: Failure::new("lost", "the parcel is lost"),
            },
            EventKind::ChildWorkflowFailed {
                child: ChildId(Seq::new(2)),
                failure: Failure::new("lost", "the parcel is lost"),
            },
        ),
        (
            EventKind::WorkflowCancelled {},
            EventKind::ChildWorkflowCancelled {
                child: ChildId(Seq::new(2)),
            },
        ),
    ];
    for (n, (end, report)) in ends.into_iter().enumerate() {
        let parent = format!("parent-{n}");
        let child = format!("{parent}/2");
        with_child(&store, &parent, &child, ParentClosePolicy::RequestCancel).await;
        advance_with(
            &store,
            &child,
            vec![end],
            family(Some(child_ref(&parent)), Vec::new()),
        )
        .await;
        let task = claim_workflow(&store).await;
        assert_eq!(task.workflow_id, wid(&parent));
        assert_eq!(task.messages.len(), 1);
        assert_eq!(task.messages[0].kind, report);
        store
            .complete_workflow_task(completion(&task, vec![]))
            .await
            .expect("the parent takes the report");
    }
}

/// A child that ends after its parent ended reports to nobody, and its end is not refused.
pub async fn a_child_outliving_its_parent_reports_to_nobody(store: Store) {
    with_child(&store, "parent", "parent/2", ParentClosePolicy::Abandon).await;
    // The parent ends before the child has run: it claims nothing, the child is abandoned.
    let child_task = claim_workflow(&store).await;
    store
        .signal(&wid("parent"), "stop", Payload::NULL)
        .await
        .expect("signal");
    let children = vec![pending_child(2, "parent/2", ParentClosePolicy::Abandon)];
    advance_with(
        &store,
        "parent",
        vec![EventKind::WorkflowCompleted {
            output: json("gave up"),
        }],
        family(None, children),
    )
    .await;
    let child = store.describe(&wid("parent/2")).await.expect("describe");
    assert_eq!(
        child.status,
        WorkflowStatus::Running,
        "abandoned, not stopped"
    );
    let mut c = completion(
        &child_task,
        vec![EventKind::WorkflowCompleted {
            output: json("late"),
        }],
    );
    c.progress = Some(family(Some(child_ref("parent")), Vec::new()));
    store
        .complete_workflow_task(c)
        .await
        .expect("the child ends");
    let parent = store.describe(&wid("parent")).await.expect("describe");
    assert_eq!(parent.status, WorkflowStatus::Completed);
    let pending = store.pending(&wid("parent")).await.expect("pending");
    assert!(pending.messages.is_empty() && pending.tasks.is_empty());
    no_ready_workflow_task(&store).await;
}

/// When a parent ends, each child still open with the `request_cancel` policy gets a cancel
/// request that names the parent; an abandoned child gets nothing; a workflow the parent
/// lists as its child but did not start (its id was taken) is never touched.
pub async fn a_closing_parent_applies_each_childs_policy(store: Store) {
    create(&store, "stranger").await;
    let stranger = claim_workflow(&store).await;
    store
        .complete_workflow_task(completion(&stranger, vec![step("mine")]))
        .await
        .expect("complete");
    create(&store, "parent").await;
    let children = vec![
        pending_child(2, "parent/2", ParentClosePolicy::RequestCancel),
        pending_child(3, "parent/3", ParentClosePolicy::Abandon),
        pending_child(4, "stranger", ParentClosePolicy::RequestCancel),
    ];
    advance_with(
        &store,
        "parent",
        vec![
            start_child("parent/2", ParentClosePolicy::RequestCancel),
            start_child("parent/3", ParentClosePolicy::Abandon),
            start_child("stranger", ParentClosePolicy::RequestCancel),
            EventKind::WorkflowFailed {
                failure: Failure::new("boom", "the parent failed"),
            },
        ],
        family(None, children),
    )
    .await;
    let parent = store.describe(&wid("parent")).await.expect("describe");
    assert_eq!(parent.status, WorkflowStatus::Failed);
    let cancelled = store.pending(&wid("parent/2")).await.expect("pending");
    assert_eq!(cancelled.messages.len(), 1);
    match &cancelled.messages[0].kind {
        EventKind::CancelRequested {
            reason: Some(reason),
        } => assert!(
            reason.contains("parent") && reason.contains("failed"),
            "{reason}"
        ),
        other => panic!("the child got {other:?}"),
    }
    let abandoned = store.pending(&wid("parent/3")).await.expect("pending");
    assert!(abandoned.messages.is_empty());
    let untouched = store.pending(&wid("stranger")).await.expect("pending");
    assert!(untouched.messages.is_empty(), "{untouched:?}");
    assert_eq!(
        store
            .describe(&wid("stranger"))
            .await
            .expect("describe")
            .status,
        WorkflowStatus::Running
    );
}

/// A child's start that no store can hold (an empty id, a NUL character) is refused with the
/// whole commit, writing nothing; a workflow started from outside cannot claim a parent.
pub async fn a_child_start_is_checked(store: Store) {
    create(&store, "parent").await;
    let task = claim_workflow(&store).await;
    for bad in ["", "nul\0id"] {
        let c = completion(
            &task,
            vec![start_child(bad, ParentClosePolicy::RequestCancel)],
        );
        assert!(
            matches!(
                store.complete_workflow_task(c).await,
                Err(StorageError::InvalidArgument(_))
            ),
            "child id {bad:?}"
        );
    }
    assert_eq!(history_len(&store, "parent").await, 1);
    let mut forged = started("Child", 1);
    if let EventKind::WorkflowStarted { parent, .. } = &mut forged.kind {
        *parent = Some(child_ref("parent"));
    }
    assert!(matches!(
        store.create_workflow(&wid("forged"), forged).await,
        Err(StorageError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.describe(&wid("forged")).await,
        Err(StorageError::NotFound(_))
    ));
}

pub(super) fn termination(
    store_summary: &crate::WorkflowSummary,
    reason: &str,
) -> crate::Termination {
    crate::Termination {
        workflow_id: store_summary.id.clone(),
        expected_last_seq: store_summary.last_seq,
        reason: reason.into(),
        at: wall_now(),
        family: Progress {
            run: store_summary.run,
            ..store_summary.progress.clone().unwrap_or_default()
        },
    }
}

/// Terminating a run ends it at once: `WorkflowTerminated` is appended, the run is closed
/// `terminated` with the reason, and the worker holding its task and the activity attempt in
/// flight can no longer commit; nothing of it is left to claim.
pub async fn terminate_ends_a_run_at_once(store: Store) {
    create(&store, "wf-1").await;
    advance(&store, vec![schedule("charge", 1)]).await;
    let attempt = claim_activity(&store).await;
    store
        .signal(&wid("wf-1"), "poke", Payload::NULL)
        .await
        .expect("signal");
    let held = claim_workflow(&store).await;
    let summary = store.describe(&wid("wf-1")).await.expect("describe");
    store
        .terminate(termination(&summary, "ops: stuck on a bad deploy"))
        .await
        .expect("terminate");
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.status, WorkflowStatus::Terminated);
    assert!(s.closed_at.is_some());
    let failure = s.failure.expect("the reason is kept");
    assert_eq!(failure.kind, "terminated");
    assert_eq!(failure.message, "ops: stuck on a bad deploy");
    let history = store
        .load_history(&wid("wf-1"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(
        history.last().map(|e| (e.seq, e.kind.clone())),
        Some((
            Seq::new(3),
            EventKind::WorkflowTerminated {
                reason: "ops: stuck on a bad deploy".into()
            }
        ))
    );
    assert!(
        store
            .complete_workflow_task(completion(&held, vec![step("late")]))
            .await
            .is_err(),
        "the held workflow task cannot commit"
    );
    assert!(matches!(
        store.complete_activity_task(completed(&attempt, 1)).await,
        Err(StorageError::LeaseLost(_))
    ));
    assert_eq!(history_len(&store, "wf-1").await, 3);
    no_ready_workflow_task(&store).await;
    no_ready_activity_task(&store).await;
    let pending = store.pending(&wid("wf-1")).await.expect("pending");
    assert!(pending.tasks.is_empty() && pending.messages.is_empty());
}

/// A termination is refused, writing nothing, for an unknown run, a run that has ended, a run
/// whose history moved on since the caller read it, and a reason no store can hold.
pub async fn terminate_is_checked(store: Store) {
    let ghost = crate::WorkflowSummary {
        run: 1,
        id: wid("ghost"),
        name: "Conformance".into(),
        version: 1,
        status: WorkflowStatus::Running,
        input: Payload::NULL,
        created_at: wall_now(),
        updated_at: wall_now(),
        closed_at: None,
        last_seq: Seq::FIRST,
        output: None,
        failure: None,
        pause_reason: None,
        progress: None,
        parent: None,
        tags: Default::default(),
    };
    assert!(matches!(
        store.terminate(termination(&ghost, "x")).await,
        Err(StorageError::NotFound(_))
    ));
    create(&store, "wf-1").await;
    let read = store.describe(&wid("wf-1")).await.expect("describe");
    advance(&store, vec![step("moved")]).await;
    assert!(matches!(
        store.terminate(termination(&read, "stale")).await,
        Err(StorageError::Conflict { .. })
    ));
    let now = store.describe(&wid("wf-1")).await.expect("describe");
    assert!(matches!(
        store.terminate(termination(&now, "bad\0reason")).await,
        Err(StorageError::InvalidArgument(_))
    ));
    assert_eq!(history_len(&store, "wf-1").await, 2);
    store
        .terminate(termination(&now, "first"))
        .await
        .expect("terminate");
    let ended = store.describe(&wid("wf-1")).await.expect("describe");
    assert!(matches!(
        store.terminate(termination(&ended, "again")).await,
        Err(StorageError::Closed {
            status: WorkflowStatus::Terminated,
            ..
        })
    ));
    assert_eq!(history_len(&store, "wf-1").await, 3);
}

/// A terminated child is reported to its parent as a failure of kind `terminated`; a parent
/// that ends sends each open child with the `terminate` policy a terminate request.
pub async fn termination_reaches_parents_and_children(store: Store) {
    with_child(&store, "parent", "parent/2", ParentClosePolicy::Terminate).await;
    let summary = store.describe(&wid("parent/2")).await.expect("describe");
    let mut t = termination(&summary, "ops");
    t.family.parent = Some(child_ref("parent"));
    store.terminate(t).await.expect("terminate the child");
    let task = claim_workflow(&store).await;
    assert_eq!(task.workflow_id, wid("parent"));
    match &task.messages[..] {
        [m] => assert!(
            matches!(&m.kind, EventKind::ChildWorkflowFailed { failure, .. } if failure.kind == "terminated"),
            "{:?}",
            m.kind
        ),
        other => panic!("the parent got {other:?}"),
    }
    // The parent starts another child with the `terminate` policy, then ends.
    let children = vec![pending_child(5, "parent/5", ParentClosePolicy::Terminate)];
    let mut c = completion(
        &task,
        vec![
            start_child("parent/5", ParentClosePolicy::Terminate),
            EventKind::WorkflowCompleted {
                output: json("done"),
            },
        ],
    );
    c.progress = Some(family(None, children));
    store
        .complete_workflow_task(c)
        .await
        .expect("the parent ends");
    let pending = store.pending(&wid("parent/5")).await.expect("pending");
    assert!(
        pending.messages.iter().any(|m| matches!(
            &m.kind,
            EventKind::TerminateRequested { reason } if reason.contains("parent")
        )),
        "{:?}",
        pending.messages
    );
}
