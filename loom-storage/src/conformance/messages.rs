//! Messages: timers, signals, cancel requests, and how a workflow ends.

use loom_core::{EventKind, Failure, Payload, Seq, TimerId, Timestamp};

use super::*;
use crate::{StorageError, WorkflowStatus};

/// A timer not yet due is not handed out; stats show it waiting.
pub async fn timers_not_due_are_not_handed_out(store: Store) {
    create(&store, "wf-1").await;
    let later = Timestamp::from_millis(wall_now().as_millis() + HOUR_MS);
    advance(&store, vec![timer_at(later)]).await;
    no_ready_workflow_task(&store).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.messages_waiting, 1);
    assert_eq!(stats.next_due_at, Some(later));
    assert_eq!(stats.workflow_tasks_ready, 0);
}

/// A timer set for a duration fires that long after the commit by the store's clock, not at
/// the time the caller computed: here the caller's `fire_at` is an hour early.
pub async fn timers_are_timed_by_the_store(store: Store) {
    create(&store, "wf-1").await;
    let mut timer = timer_after(HOUR);
    if let EventKind::TimerScheduled { fire_at, .. } = &mut timer {
        *fire_at = Timestamp::from_millis(wall_now().as_millis() - 1_000);
    }
    advance(&store, vec![timer]).await;
    no_ready_workflow_task(&store).await;
    let stats = store.stats().await.expect("stats");
    let due = stats.next_due_at.expect("the timer waits");
    let offset = due.as_millis() - stats.at.as_millis();
    assert!(
        (HOUR_MS - 60_000..=HOUR_MS).contains(&offset),
        "the timer fires {offset} ms after the store's now; expected an hour"
    );
    let pending = store.pending(&wid("wf-1")).await.expect("pending");
    assert_eq!(pending.messages.len(), 1);
    assert_eq!(pending.messages[0].visible_at, due);
    assert_eq!(
        pending.messages[0].kind,
        EventKind::TimerFired {
            timer_id: TimerId(Seq::new(2))
        }
    );
}

/// A due timer is delivered as a `TimerFired` message for its timer.
pub async fn due_timers_are_delivered(store: Store) {
    create(&store, "wf-1").await;
    let past = Timestamp::from_millis(wall_now().as_millis() - 1_000);
    advance(&store, vec![timer_at(past)]).await;
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
    let later = Timestamp::from_millis(wall_now().as_millis() + HOUR_MS);
    advance(&store, vec![timer_at(later)]).await;
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
    no_ready_workflow_task(&store).await;
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
    advance(&store, vec![]).await;
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

/// A terminal event closes the workflow: status, output, end time; its pending activities,
/// timers and messages are gone; signals and cancels are `Closed`.
pub async fn ending_a_workflow_closes_it(store: Store) {
    create(&store, "wf-1").await;
    let later = Timestamp::from_millis(wall_now().as_millis() + HOUR_MS);
    advance(&store, vec![schedule("a", 1), timer_at(later)]).await;
    store
        .signal(&wid("wf-1"), "s", Payload::NULL)
        .await
        .expect("signal");
    let done = EventKind::WorkflowCompleted {
        output: json("done"),
    };
    let task = advance(&store, vec![schedule("never", 1), done]).await;
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.status, WorkflowStatus::Completed);
    assert_eq!(s.output, Some(json("done")));
    assert!(s.closed_at.is_some());
    assert_eq!(s.last_seq, Seq::new(5));
    no_ready_activity_task(&store).await;
    no_ready_workflow_task(&store).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.messages_waiting, 0);
    assert_eq!(stats.activity_tasks_ready + stats.activity_tasks_waiting, 0);
    let pending = store.pending(&wid("wf-1")).await.expect("pending");
    assert!(pending.tasks.is_empty() && pending.messages.is_empty());
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
    // The spent lease of the ending task commits nothing more.
    let mut late = completion(&task, vec![]);
    late.expected_last_seq = s.last_seq;
    assert!(matches!(
        store.complete_workflow_task(late).await,
        Err(StorageError::LeaseLost(_))
    ));
}

/// A failure and a cancellation are recorded with their status; a failure keeps its error.
pub async fn failed_and_cancelled_are_recorded(store: Store) {
    create(&store, "wf-f").await;
    let failure = Failure::new("boom", "it broke");
    advance(
        &store,
        vec![EventKind::WorkflowFailed {
            failure: failure.clone(),
        }],
    )
    .await;
    let s = store.describe(&wid("wf-f")).await.expect("describe");
    assert_eq!(s.status, WorkflowStatus::Failed);
    assert_eq!(s.failure, Some(failure));
    create(&store, "wf-c").await;
    advance(&store, vec![EventKind::WorkflowCancelled {}]).await;
    assert_eq!(
        store.describe(&wid("wf-c")).await.expect("describe").status,
        WorkflowStatus::Cancelled
    );
}

/// An activity that reports after its workflow ended finds its lease gone; nothing changes.
pub async fn a_late_activity_result_after_the_end_is_refused(store: Store) {
    with_scheduled_activity(&store, "wf-1").await;
    let activity = claim_activity(&store).await;
    store
        .request_cancel(&wid("wf-1"), None)
        .await
        .expect("cancel");
    advance(&store, vec![EventKind::WorkflowCancelled {}]).await;
    let err = store
        .complete_activity_task(completed(&activity, 1))
        .await
        .expect_err("the workflow ended");
    assert!(matches!(err, StorageError::LeaseLost(_)), "{err}");
    // Started, scheduled, cancelled: the late result added nothing.
    assert_eq!(history_len(&store, "wf-1").await, 3);
    no_ready_workflow_task(&store).await;
}

/// A cancelled timer's message is withdrawn, whether the timer was started in an earlier
/// commit or in the same one: the workflow is never woken by it.
pub async fn a_cancelled_timer_never_wakes_the_workflow(store: Store) {
    create(&store, "wf-1").await;
    let soon = Timestamp::from_millis(wall_now().as_millis() + 500);
    advance(&store, vec![timer_at(soon)]).await;
    store
        .signal(&wid("wf-1"), "go", Payload::NULL)
        .await
        .expect("signal");
    let cancel = EventKind::TimerCancelled {
        timer_id: TimerId(Seq::new(2)),
    };
    // The same commit starts another timer and cancels it at once.
    let later = Timestamp::from_millis(wall_now().as_millis() + HOUR_MS);
    let cancel_new = EventKind::TimerCancelled {
        timer_id: TimerId(Seq::new(4)),
    };
    advance(&store, vec![cancel, timer_at(later), cancel_new]).await;
    let pending = store.pending(&wid("wf-1")).await.expect("pending");
    assert!(pending.messages.is_empty(), "{:?}", pending.messages);
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.messages_waiting, 0);
    assert_eq!(stats.next_due_at, None);
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    no_ready_workflow_task(&store).await;
}

/// A cancelled activity's task is deleted: an attempt not yet claimed never runs, and a
/// running one loses its lease, so it can neither renew nor report.
pub async fn a_cancelled_activity_is_not_run_and_a_running_one_loses_its_lease(store: Store) {
    create(&store, "wf-1").await;
    advance(&store, vec![schedule("a", 1), schedule("b", 2)]).await;
    let running = claim_activity(&store).await;
    assert_eq!(running.activity_id, loom_core::ActivityId(Seq::new(2)));
    let cancels = vec![
        EventKind::ActivityCancelled {
            activity_id: loom_core::ActivityId(Seq::new(2)),
        },
        EventKind::ActivityCancelled {
            activity_id: loom_core::ActivityId(Seq::new(3)),
        },
    ];
    store
        .signal(&wid("wf-1"), "stop", Payload::NULL)
        .await
        .expect("signal");
    advance(&store, cancels).await;
    no_ready_activity_task(&store).await;
    let pending = store.pending(&wid("wf-1")).await.expect("pending");
    assert!(
        pending.tasks.iter().all(|t| t.activity.is_none()),
        "{:?}",
        pending.tasks
    );
    assert!(matches!(
        store.renew_lease(&running.lease, LEASE).await,
        Err(StorageError::LeaseLost(_))
    ));
    assert!(matches!(
        store.complete_activity_task(completed(&running, 1)).await,
        Err(StorageError::LeaseLost(_))
    ));
    assert!(
        store
            .pending(&wid("wf-1"))
            .await
            .expect("pending")
            .messages
            .is_empty()
    );
}

/// A timeout set at start posts `TimeoutFired` for the first to pass, timed by the store's
/// clock: the workflow's task is ready for it then, and not before.
pub async fn a_timeout_set_at_start_fires_when_it_passes(store: Store) {
    let mut started = started("Conformance", "timed");
    if let EventKind::WorkflowStarted { timeouts, .. } = &mut started.kind {
        timeouts.run_ms = Some(u64::try_from(HOUR.as_millis()).unwrap_or(u64::MAX));
        timeouts.execution_ms = Some(300);
    }
    store
        .create_workflow(&wid("wf-1"), started)
        .await
        .expect("create");
    advance(&store, vec![step("waiting")]).await;
    no_ready_workflow_task(&store).await;
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let task = claim_workflow(&store).await;
    assert_eq!(
        task.messages
            .iter()
            .map(|m| m.kind.clone())
            .collect::<Vec<_>>(),
        vec![EventKind::TimeoutFired {
            scope: loom_core::TimeoutScope::Execution
        }]
    );
    let done = EventKind::WorkflowTimedOut {
        scope: loom_core::TimeoutScope::Execution,
    };
    store
        .complete_workflow_task(completion(&task, vec![done]))
        .await
        .expect("end");
    let s = store.describe(&wid("wf-1")).await.expect("describe");
    assert_eq!(s.status, WorkflowStatus::TimedOut);
    assert_eq!(s.failure.map(|f| f.kind).as_deref(), Some("timed_out"));
}
