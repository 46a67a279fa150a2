//! Continue-as-new: a run ends and the next run of the same workflow begins in one commit,
//! with the ended run's history kept, what came from outside carried over, and the rest of
//! the ended run's work dropped.

use loom_core::{CarriedSignal, ChildId, ParentClosePolicy, ParentRef, TimeoutScope};

use super::children::{advance_with, family, pending_child, termination, with_child};
use super::*;
use crate::StorageError;

/// The first event of run `run` of a `Conformance` workflow, with `input`.
fn next_started(run: u32, input: &str) -> Event {
    Event {
        seq: Seq::FIRST,
        at: wall_now(),
        kind: EventKind::WorkflowStarted {
            traceparent: None,
            tags: Default::default(),
            reset: None,
            attempt: 1,
            retry: None,
            name: "Conformance".into(),
            version: 1,
            input: json(input),
            format: HISTORY_FORMAT,
            parent: None,
            timeouts: Default::default(),
            run,
        },
    }
}

fn continued(input: &str, signals: Vec<CarriedSignal>) -> EventKind {
    EventKind::WorkflowContinuedAsNew {
        input: json(input),
        signals,
    }
}

/// A run that continues as new: the workflow stays open under its id on its next run, whose
/// history is its `WorkflowStarted` alone and whose task is ready at once; the ended run's
/// history is kept and listed; its activity and its timer are gone; the signal it had not
/// taken comes first in the next run, then the one that arrived during its last task.
pub async fn continue_as_new_starts_the_next_run(store: Store) {
    create(&store, "sub").await;
    advance(&store, vec![schedule("bill", 1), timer_after(HOUR)]).await;
    store
        .signal(&wid("sub"), "wake", json("taken"))
        .await
        .expect("a signal that wakes the task");
    let task = claim_workflow(&store).await;
    store
        .signal(&wid("sub"), "ping", json("during"))
        .await
        .expect("a signal during the task");
    let carried = CarriedSignal {
        name: "note".into(),
        payload: json("unread"),
    };
    let mut c = completion(&task, vec![continued("two", vec![carried])]);
    // A runtime stamps the task's events with the store's time at the claim.
    c.events[0].at = task.claimed_at;
    let mut next = next_started(2, "two");
    next.at = task.claimed_at;
    c.next_run = Some(next.clone());
    store
        .complete_workflow_task(c)
        .await
        .expect("continue as new");

    let summary = store.describe(&wid("sub")).await.expect("describe");
    assert_eq!(summary.run, 2);
    assert_eq!(summary.status, crate::WorkflowStatus::Running);
    assert_eq!(summary.input, json("two"));
    assert_eq!(summary.last_seq, Seq::FIRST);
    assert_eq!(summary.progress, None);
    let history = store
        .load_history(&wid("sub"), Seq::ZERO)
        .await
        .expect("history");
    assert_eq!(history, vec![next.clone()]);
    assert_eq!(
        store.load_run(&wid("sub"), 2).await.expect("run 2"),
        vec![next]
    );
    let first = store.load_run(&wid("sub"), 1).await.expect("run 1");
    assert_eq!(first.len(), 4, "{first:?}");
    assert!(matches!(
        first.last().map(|e| &e.kind),
        Some(EventKind::WorkflowContinuedAsNew { .. })
    ));
    let runs = store.runs(&wid("sub")).await.expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].run, 1);
    assert_eq!(runs[0].events, 4);
    assert_eq!(runs[0].started_at, first[0].at);
    assert_eq!(runs[0].ended_at, first[3].at);

    no_ready_activity_task(&store).await;
    let next_task = claim_workflow(&store).await;
    assert_eq!(next_task.workflow_id, wid("sub"));
    assert_eq!(next_task.run, 2);
    assert_eq!(next_task.last_seq, Seq::FIRST);
    let kinds: Vec<EventKind> = next_task.messages.iter().map(|m| m.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::SignalReceived {
                name: "note".into(),
                payload: json("unread"),
            },
            EventKind::SignalReceived {
                name: "ping".into(),
                payload: json("during"),
            },
        ],
        "the carried signal, then the one sent during the switch; not the consumed one, no timer"
    );
    let pending = store.pending(&wid("sub")).await.expect("pending");
    assert_eq!(pending.messages.len(), 2, "{:?}", pending.messages);
    assert!(pending.tasks.iter().all(|t| t.activity.is_none()));

    assert!(matches!(
        store.load_run(&wid("sub"), 3).await,
        Err(StorageError::InvalidArgument(m)) if m.contains("runs 1 to 2")
    ));
    assert!(matches!(
        store.load_run(&wid("nobody"), 1).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        store.runs(&wid("nobody")).await,
        Err(StorageError::NotFound(_))
    ));
    // A run of its own: nothing listed.
    create(&store, "single").await;
    assert!(store.runs(&wid("single")).await.expect("runs").is_empty());
}

/// What waits from outside survives the switch: a cancel request and the execution timeout,
/// as messages of the next run; the ended run's own timeout goes, and the next run gets its
/// own.
pub async fn the_next_run_keeps_what_came_from_outside(store: Store) {
    let mut first = started("Conformance", "sub");
    if let EventKind::WorkflowStarted { timeouts, .. } = &mut first.kind {
        timeouts.execution_ms = Some(3_600_000);
        timeouts.run_ms = Some(1_800_000);
    }
    store
        .create_workflow(&wid("sub"), first)
        .await
        .expect("create");
    let task = claim_workflow(&store).await;
    store
        .request_cancel(&wid("sub"), Some("stop".into()))
        .await
        .expect("cancel");
    let mut c = completion(&task, vec![continued("two", Vec::new())]);
    let mut next = next_started(2, "two");
    if let EventKind::WorkflowStarted { timeouts, .. } = &mut next.kind {
        timeouts.execution_ms = Some(3_600_000);
        timeouts.run_ms = Some(1_800_000);
    }
    c.next_run = Some(next);
    store
        .complete_workflow_task(c)
        .await
        .expect("continue as new");
    let pending = store.pending(&wid("sub")).await.expect("pending");
    let mut kinds: Vec<String> = pending
        .messages
        .iter()
        .map(|m| m.kind.to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "CancelRequested(reason=Some(\"stop\"))",
            "TimeoutFired(execution)",
            "TimeoutFired(run)"
        ]
    );
    let run_timeout = pending
        .messages
        .iter()
        .find(|m| {
            m.kind
                == EventKind::TimeoutFired {
                    scope: TimeoutScope::Run,
                }
        })
        .expect("the next run's timeout");
    let first_run = store.load_run(&wid("sub"), 1).await.expect("run 1");
    assert!(
        run_timeout.visible_at.as_millis() >= first_run[0].at.as_millis() + 1_800_000 - 5_000,
        "armed at the switch, not kept from the first run"
    );
}

/// A commit that continues as new must end with `WorkflowContinuedAsNew` and give the next
/// run's matching first event, and the reverse; a decision made ahead cannot continue.
/// Nothing is written by a refused commit.
pub async fn continue_as_new_is_checked(store: Store) {
    create(&store, "sub").await;
    let task = claim_workflow(&store).await;
    let refused = |c: WorkflowTaskCompletion| {
        let store = store.clone();
        async move {
            let r = store.complete_workflow_task(c).await;
            assert!(matches!(r, Err(StorageError::InvalidArgument(_))), "{r:?}");
        }
    };
    let mut no_next = completion(&task, vec![continued("two", Vec::new())]);
    no_next.next_run = None;
    refused(no_next).await;
    let mut stray_next = completion(&task, vec![step("s")]);
    stray_next.next_run = Some(next_started(2, "two"));
    refused(stray_next).await;
    let mut not_last = completion(&task, vec![continued("two", Vec::new()), step("s")]);
    not_last.next_run = Some(next_started(2, "two"));
    refused(not_last).await;
    let mut other_input = completion(&task, vec![continued("two", Vec::new())]);
    other_input.next_run = Some(next_started(2, "three"));
    refused(other_input).await;
    let mut not_started = completion(&task, vec![continued("two", Vec::new())]);
    not_started.next_run = Some(event(1, step("s")));
    refused(not_started).await;
    assert_eq!(history_len(&store, "sub").await, 1);
    assert_eq!(store.describe(&wid("sub")).await.expect("describe").run, 1);
    let mut ok = completion(&task, vec![continued("two", Vec::new())]);
    ok.next_run = Some(next_started(2, "two"));
    store
        .complete_workflow_task(ok)
        .await
        .expect("the lease still holds");
}

/// A child's end reaches only the run of its parent that started it; a later run, which
/// does not know the child, never hears of it. A termination read before a switch is
/// refused as `RunMoved`.
pub async fn a_childs_end_reaches_only_the_run_that_started_it(store: Store) {
    with_child(&store, "dad", "dad/2", ParentClosePolicy::Abandon).await;
    let child_task = claim_workflow(&store).await;
    assert_eq!(child_task.workflow_id, wid("dad/2"));
    store
        .complete_workflow_task(completion(&child_task, vec![step("working")]))
        .await
        .expect("the child runs");
    let before = store.describe(&wid("dad")).await.expect("describe");
    store
        .signal(&wid("dad"), "go", Payload::NULL)
        .await
        .expect("signal");
    let task = claim_workflow(&store).await;
    let mut c = completion(&task, vec![continued("two", Vec::new())]);
    c.next_run = Some(next_started(2, "two"));
    c.progress = Some(family(
        None,
        vec![pending_child(2, "dad/2", ParentClosePolicy::Abandon)],
    ));
    store
        .complete_workflow_task(c)
        .await
        .expect("continue as new");
    // The abandoned child ends after the switch: run 2 is not told.
    let run2 = claim_workflow(&store).await;
    assert_eq!(run2.workflow_id, wid("dad"));
    store
        .complete_workflow_task(completion(&run2, vec![step("waiting")]))
        .await
        .expect("run 2 waits");
    store
        .signal(&wid("dad/2"), "finish", Payload::NULL)
        .await
        .expect("signal the child");
    let mut child_progress = family(
        Some(ParentRef {
            workflow_id: wid("dad"),
            child: ChildId(Seq::new(2)),
            run: 1,
        }),
        Vec::new(),
    );
    child_progress.run = 1;
    advance_with(
        &store,
        "dad/2",
        vec![EventKind::WorkflowCompleted {
            output: json("done"),
        }],
        child_progress,
    )
    .await;
    no_ready_workflow_task(&store).await;
    let pending = store.pending(&wid("dad")).await.expect("pending");
    assert!(pending.messages.is_empty(), "{:?}", pending.messages);
    // A termination read on run 1 does not end run 2.
    assert!(matches!(
        store.terminate(termination(&before, "stale")).await,
        Err(StorageError::RunMoved {
            expected: 1,
            actual: 2,
            ..
        })
    ));
    let now = store.describe(&wid("dad")).await.expect("describe");
    store
        .terminate(termination(&now, "current"))
        .await
        .expect("terminate run 2");
}

/// A run that fails under a retry policy is retried as a new run of the workflow, with the
/// same input, after the policy's backoff by the store's clock: the workflow stays open, the
/// failed run's history is kept, and the next attempt's task is not claimable before then.
pub async fn a_failed_run_under_a_retry_policy_is_retried_as_a_new_run(store: Store) {
    create(&store, "flaky").await;
    let task = claim_workflow(&store).await;
    let policy = loom_core::RetryPolicy {
        max_attempts: 3,
        initial_interval: HOUR,
        ..loom_core::RetryPolicy::default()
    };
    let mut c = completion(
        &task,
        vec![EventKind::WorkflowFailed {
            failure: loom_core::Failure::new("flaky", "try again"),
        }],
    );
    let mut next = started("Conformance", "flaky");
    if let EventKind::WorkflowStarted {
        retry,
        attempt,
        run,
        ..
    } = &mut next.kind
    {
        *retry = Some(policy.clone());
        *attempt = 2;
        *run = 2;
    }
    c.next_run = Some(next.clone());
    // Without a policy, or as a first attempt, a failed run is not retried.
    let mut bad = c.clone();
    if let Some(EventKind::WorkflowStarted { attempt, .. }) =
        bad.next_run.as_mut().map(|e| &mut e.kind)
    {
        *attempt = 1;
    }
    assert!(matches!(
        store.complete_workflow_task(bad).await,
        Err(StorageError::InvalidArgument(_))
    ));
    store.complete_workflow_task(c).await.expect("retry");
    let summary = store.describe(&wid("flaky")).await.expect("describe");
    assert_eq!(summary.status, crate::WorkflowStatus::Running);
    assert_eq!(summary.run, 2);
    assert_eq!(summary.failure, None);
    assert_eq!(
        store
            .load_history(&wid("flaky"), Seq::ZERO)
            .await
            .expect("history"),
        vec![next]
    );
    let first = store.load_run(&wid("flaky"), 1).await.expect("run 1");
    assert!(matches!(
        first.last().map(|e| &e.kind),
        Some(EventKind::WorkflowFailed { .. })
    ));
    // The backoff after the first attempt: an hour (with no jitter) by the store's clock.
    no_ready_workflow_task(&store).await;
    let pending = store.pending(&wid("flaky")).await.expect("pending");
    let due = pending.tasks[0].visible_at.expect("due");
    let expected = policy.backoff(1, 0.5);
    let lower = wall_now().as_millis() + i64::try_from(expected.as_millis()).unwrap_or(0) - 60_000;
    assert!(due.as_millis() > lower, "due {due:?}, backoff {expected:?}");
}

/// A child started by the task that continues the run is created all the same, and gets its
/// parent-close policy at once: it is asked to cancel.
pub async fn a_child_started_as_the_run_ends_is_created_and_told(store: Store) {
    create(&store, "dad").await;
    let task = claim_workflow(&store).await;
    let mut c = completion(
        &task,
        vec![
            EventKind::ChildWorkflowScheduled {
                traceparent: None,
                name: "Child".into(),
                version: 1,
                workflow_id: wid("dad/2"),
                input: json(1),
                parent_close: ParentClosePolicy::RequestCancel,
                timeouts: Default::default(),
                retry: None,
            },
            continued("two", Vec::new()),
        ],
    );
    c.next_run = Some(next_started(2, "two"));
    c.progress = Some(family(
        None,
        vec![pending_child(2, "dad/2", ParentClosePolicy::RequestCancel)],
    ));
    store.complete_workflow_task(c).await.expect("continue");
    let child = store
        .describe(&wid("dad/2"))
        .await
        .expect("the child exists");
    assert_eq!(child.parent, Some(wid("dad")));
    let pending = store.pending(&wid("dad/2")).await.expect("pending");
    assert!(
        pending
            .messages
            .iter()
            .any(|m| matches!(m.kind, EventKind::CancelRequested { .. })),
        "{:?}",
        pending.messages
    );
    // The parent's next run did not get the child's start refused or reported.
    let parent = store.pending(&wid("dad")).await.expect("pending");
    assert!(parent.messages.is_empty(), "{:?}", parent.messages);
}
