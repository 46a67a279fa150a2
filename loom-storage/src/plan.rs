//! What a batch of new events implies for the task queue, decided once for every backend.
//!
//! Backends do not interpret events on their own: they call [`TaskPlan::from_events`] and
//! store what it says, so the same history produces the same tasks on every backend.

use loom_core::{
    ActivityId, ActivityOptions, ChildId, Event, EventKind, Failure, HISTORY_FORMAT, ParentRef,
    Payload, Seq, TimerId, Timestamp, WorkflowId,
};

use crate::error::{Result, StorageError};
use crate::model::WorkflowStatus;

/// An activity task to create (attempt 1, due at once).
#[derive(Clone, Debug, PartialEq)]
pub struct NewActivity {
    /// The activity.
    pub activity_id: ActivityId,
    /// Its type's name.
    pub name: String,
    /// Its input.
    pub input: Payload,
    /// Its options.
    pub options: ActivityOptions,
}

/// A timer to arm: a `TimerFired` message that becomes visible at `fire_at`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTimer {
    /// The timer.
    pub timer_id: TimerId,
    /// When it fires.
    pub fire_at: Timestamp,
    /// The duration asked for, when the code used `sleep` (a backend with its own clock may
    /// arm the timer from its clock and this duration).
    pub duration_ms: Option<u64>,
}

impl NewTimer {
    /// The message to deliver when the timer fires.
    pub fn message(&self) -> EventKind {
        EventKind::TimerFired {
            timer_id: self.timer_id,
        }
    }
}

/// A child workflow to create, unless its id is taken.
#[derive(Clone, Debug, PartialEq)]
pub struct NewChild {
    /// Its handle in the parent's history.
    pub child: ChildId,
    /// Its workflow id.
    pub workflow_id: WorkflowId,
    /// Its workflow type.
    pub name: String,
    /// Its type's version.
    pub version: u32,
    /// Its input.
    pub input: Payload,
    /// The time of the parent's event that started it: the time of its own first event.
    pub at: Timestamp,
    /// Its timeouts, from its start.
    pub timeouts: loom_core::Timeouts,
    /// How a failed run of it is retried.
    pub retry: Option<loom_core::RetryPolicy>,
    /// The parent run's trace, which the child joins.
    pub traceparent: Option<String>,
}

impl NewChild {
    /// The child's first event: started, with run `parent_run` of `parent` as its parent.
    pub fn started(&self, parent: &WorkflowId, parent_run: u32) -> Event {
        Event {
            seq: Seq::FIRST,
            at: self.at,
            kind: EventKind::WorkflowStarted {
                traceparent: self.traceparent.clone(),
                tags: Default::default(),
                reset: None,
                attempt: 1,
                retry: self.retry.clone(),
                name: self.name.clone(),
                version: self.version,
                input: self.input.clone(),
                format: HISTORY_FORMAT,
                parent: Some(ParentRef {
                    workflow_id: parent.clone(),
                    child: self.child,
                    run: parent_run,
                }),
                timeouts: self.timeouts,
                run: 1,
            },
        }
    }

    /// The message the parent gets when the child cannot be created: its id is taken.
    pub fn already_exists(&self) -> EventKind {
        EventKind::ChildWorkflowFailed {
            child: self.child,
            failure: Failure::non_retryable(
                "already_exists",
                format!(
                    "a workflow with id \"{}\" already exists; the child was not started",
                    self.workflow_id
                ),
            ),
        }
    }
}

/// How the workflow ended, if these events end it.
#[derive(Clone, Debug, PartialEq)]
pub struct Terminal {
    /// The final status.
    pub status: WorkflowStatus,
    /// The output, when completed.
    pub output: Option<Payload>,
    /// The error, when failed.
    pub failure: Option<Failure>,
}

impl Terminal {
    /// The message that reports this end to the parent that started the workflow as its
    /// child `child`.
    pub fn report(&self, child: ChildId) -> EventKind {
        match self.status {
            WorkflowStatus::Completed => EventKind::ChildWorkflowCompleted {
                child,
                output: self.output.clone().unwrap_or_default(),
            },
            WorkflowStatus::Cancelled => EventKind::ChildWorkflowCancelled { child },
            // A terminated or timed-out child is a failure of that kind to its parent.
            _ => EventKind::ChildWorkflowFailed {
                child,
                failure: self
                    .failure
                    .clone()
                    .unwrap_or_else(|| Failure::new("failed", "the child workflow failed")),
            },
        }
    }
}

/// The tasks and status change implied by a batch of new events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskPlan {
    /// Activities to run.
    pub activities: Vec<NewActivity>,
    /// Timers to arm.
    pub timers: Vec<NewTimer>,
    /// Child workflows to start.
    pub children: Vec<NewChild>,
    /// Timers cancelled: their `TimerFired` messages are withdrawn.
    pub cancelled_timers: Vec<TimerId>,
    /// Activities cancelled: their tasks are deleted, running attempts included.
    pub cancelled_activities: Vec<ActivityId>,
    /// Set when the batch ends the workflow: every other pending task and message of the
    /// workflow is then deleted.
    pub terminal: Option<Terminal>,
    /// Tags the code set, in order.
    pub tags: Vec<(String, loom_core::TagValue)>,
}

impl TaskPlan {
    /// Reads the plan off the new events.
    pub fn from_events(events: &[Event]) -> Self {
        let mut plan = TaskPlan::default();
        for e in events {
            match &e.kind {
                EventKind::ActivityScheduled {
                    name,
                    input,
                    options,
                } => plan.activities.push(NewActivity {
                    activity_id: ActivityId(e.seq),
                    name: name.clone(),
                    input: input.clone(),
                    options: options.clone(),
                }),
                EventKind::TimerScheduled {
                    fire_at,
                    duration_ms,
                } => plan.timers.push(NewTimer {
                    timer_id: TimerId(e.seq),
                    fire_at: *fire_at,
                    duration_ms: *duration_ms,
                }),
                EventKind::TimerCancelled { timer_id } => plan.cancelled_timers.push(*timer_id),
                EventKind::TagSet { key, value } => plan.tags.push((key.clone(), value.clone())),
                EventKind::ActivityCancelled { activity_id } => {
                    plan.cancelled_activities.push(*activity_id);
                }
                EventKind::ChildWorkflowScheduled {
                    name,
                    version,
                    workflow_id,
                    input,
                    timeouts,
                    retry,
                    traceparent,
                    ..
                } => plan.children.push(NewChild {
                    traceparent: traceparent.clone(),
                    timeouts: *timeouts,
                    retry: retry.clone(),
                    child: ChildId(e.seq),
                    workflow_id: workflow_id.clone(),
                    name: name.clone(),
                    version: *version,
                    input: input.clone(),
                    at: e.at,
                }),
                EventKind::WorkflowCompleted { output } => {
                    plan.terminal = Some(Terminal {
                        status: WorkflowStatus::Completed,
                        output: Some(output.clone()),
                        failure: None,
                    });
                }
                EventKind::WorkflowFailed { failure } => {
                    plan.terminal = Some(Terminal {
                        status: WorkflowStatus::Failed,
                        output: None,
                        failure: Some(failure.clone()),
                    });
                }
                EventKind::WorkflowCancelled {} => {
                    plan.terminal = Some(Terminal {
                        status: WorkflowStatus::Cancelled,
                        output: None,
                        failure: None,
                    });
                }
                EventKind::WorkflowTimedOut { scope } => {
                    plan.terminal = Some(Terminal {
                        status: WorkflowStatus::TimedOut,
                        output: None,
                        failure: Some(Failure::non_retryable(
                            "timed_out",
                            format!("its {} timeout passed", scope.as_str()),
                        )),
                    });
                }
                EventKind::WorkflowTerminated { reason } => {
                    plan.terminal = Some(Terminal {
                        status: WorkflowStatus::Terminated,
                        output: None,
                        failure: Some(Failure::non_retryable("terminated", reason.clone())),
                    });
                }
                _ => {}
            }
        }
        plan
    }
}

/// Checks an append of `events` to workflow `id`, whose history ends at `actual` and whose
/// status is `status`, by a caller that expects it to end at `expected`: an ended workflow
/// takes no more events (`Closed`), a moved history is a `Conflict`, and the events must
/// continue it (see [`check_continues`]). Every backend's append runs this one check.
pub fn check_append(
    id: &WorkflowId,
    actual: Seq,
    status: WorkflowStatus,
    expected: Seq,
    events: &[Event],
) -> Result<()> {
    if status.is_terminal() && !events.is_empty() {
        return Err(StorageError::Closed {
            id: id.clone(),
            status,
        });
    }
    if actual != expected {
        return Err(StorageError::Conflict {
            id: id.clone(),
            expected,
            actual,
        });
    }
    check_continues(expected, events)
}

/// Checks that `events` continue a history whose last event is `last`: numbered
/// `last + 1, last + 2, ...`, none of them a `WorkflowStarted`, every child they start one
/// that a store can create (see [`WorkflowId::check`]).
pub fn check_continues(last: Seq, events: &[Event]) -> Result<()> {
    let mut expected = last.next();
    for e in events {
        if e.seq != expected {
            return Err(StorageError::InvalidArgument(format!(
                "events must be numbered consecutively: expected {expected}, got {}",
                e.seq
            )));
        }
        if matches!(e.kind, EventKind::WorkflowStarted { .. }) {
            return Err(StorageError::InvalidArgument(format!(
                "{} is a WorkflowStarted event; only create_workflow writes one",
                e.seq
            )));
        }
        if let EventKind::ChildWorkflowScheduled {
            name, workflow_id, ..
        } = &e.kind
        {
            workflow_id.check().map_err(|reason| {
                StorageError::InvalidArgument(format!("the child started at {}: {reason}", e.seq))
            })?;
            if name.contains('\0') {
                return Err(StorageError::InvalidArgument(format!(
                    "the child started at {}: a workflow type's name cannot contain a NUL character",
                    e.seq
                )));
            }
        }
        expected = expected.next();
    }
    Ok(())
}

/// Reads the name, version and input off a `WorkflowStarted` event numbered 1.
pub fn started_fields(started: &Event) -> Result<(&str, u32, &Payload)> {
    match &started.kind {
        EventKind::WorkflowStarted {
            name,
            version,
            input,
            ..
        } if started.seq == Seq::FIRST => Ok((name, *version, input)),
        _ => Err(StorageError::InvalidArgument(
            "a workflow is created from a WorkflowStarted event numbered 1".into(),
        )),
    }
}

/// The activity a result message refers to, and when its next attempt is due, if any.
pub fn activity_result(result: &EventKind) -> Result<(ActivityId, u32, Option<Timestamp>)> {
    match result {
        EventKind::ActivityCompleted {
            activity_id,
            attempt,
            ..
        } => Ok((*activity_id, *attempt, None)),
        EventKind::ActivityFailed {
            activity_id,
            attempt,
            retry_at,
            ..
        }
        | EventKind::ActivityTimedOut {
            activity_id,
            attempt,
            retry_at,
        } => Ok((*activity_id, *attempt, *retry_at)),
        other => Err(StorageError::InvalidArgument(format!(
            "an activity result must be ActivityCompleted, ActivityFailed or ActivityTimedOut, not {}",
            other.type_name()
        ))),
    }
}

/// What a run begun by a reset has waiting when it begins, read off the reset run's history:
/// the work the kept prefix left open is started again, and what arrived from outside after
/// the point is delivered again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResetPlan {
    /// Activities open at the point, each with the attempt to run next and when it is due
    /// (the recorded retry time of its last failed attempt, if it had one).
    pub activities: Vec<(NewActivity, u32, Option<Timestamp>)>,
    /// Timers that had not fired by the point: each fires at its recorded time.
    pub timers: Vec<NewTimer>,
    /// Children open at the point, as the prefix records them.
    pub children: Vec<loom_core::PendingChild>,
    /// The recorded ends of those children, delivered to the new run again.
    pub child_ends: Vec<Event>,
    /// The signals received after the point, in order.
    pub signals: Vec<Event>,
}

impl ResetPlan {
    /// The plan for a reset of `history` (a whole run's) that keeps its first `kept` events.
    /// `InvalidArgument` when a child open at the point has no recorded end: the new run
    /// could never hear of it.
    pub fn new(history: &[Event], kept: usize) -> Result<ResetPlan> {
        use std::collections::BTreeMap;
        let (prefix, after) = history.split_at(kept.min(history.len()));
        let mut activities: BTreeMap<ActivityId, (NewActivity, u32, Option<Timestamp>)> =
            BTreeMap::new();
        let mut timers: BTreeMap<TimerId, NewTimer> = BTreeMap::new();
        let mut children: BTreeMap<ChildId, loom_core::PendingChild> = BTreeMap::new();
        for e in prefix {
            match &e.kind {
                EventKind::ActivityScheduled {
                    name,
                    input,
                    options,
                } => {
                    let activity = NewActivity {
                        activity_id: ActivityId(e.seq),
                        name: name.clone(),
                        input: input.clone(),
                        options: options.clone(),
                    };
                    activities.insert(ActivityId(e.seq), (activity, 1, None));
                }
                EventKind::ActivityCompleted { activity_id, .. }
                | EventKind::ActivityCancelled { activity_id } => {
                    activities.remove(activity_id);
                }
                EventKind::ActivityFailed {
                    activity_id,
                    attempt,
                    retry_at,
                    ..
                }
                | EventKind::ActivityTimedOut {
                    activity_id,
                    attempt,
                    retry_at,
                } => match retry_at {
                    None => {
                        activities.remove(activity_id);
                    }
                    Some(at) => {
                        if let Some(open) = activities.get_mut(activity_id) {
                            open.1 = attempt.saturating_add(1);
                            open.2 = Some(*at);
                        }
                    }
                },
                EventKind::TimerScheduled {
                    fire_at,
                    duration_ms,
                } => {
                    let timer = NewTimer {
                        timer_id: TimerId(e.seq),
                        fire_at: *fire_at,
                        duration_ms: *duration_ms,
                    };
                    timers.insert(TimerId(e.seq), timer);
                }
                EventKind::TimerFired { timer_id } | EventKind::TimerCancelled { timer_id } => {
                    timers.remove(timer_id);
                }
                EventKind::ChildWorkflowScheduled {
                    name,
                    workflow_id,
                    parent_close,
                    ..
                } => {
                    let child = loom_core::PendingChild {
                        id: ChildId(e.seq),
                        workflow_id: workflow_id.clone(),
                        name: name.clone(),
                        parent_close: *parent_close,
                    };
                    children.insert(ChildId(e.seq), child);
                }
                EventKind::ChildWorkflowCompleted { child, .. }
                | EventKind::ChildWorkflowFailed { child, .. }
                | EventKind::ChildWorkflowCancelled { child } => {
                    children.remove(child);
                }
                _ => {}
            }
        }
        let mut child_ends = Vec::new();
        for child in children.values() {
            let end = after.iter().find(|e| match &e.kind {
                EventKind::ChildWorkflowCompleted { child: c, .. }
                | EventKind::ChildWorkflowFailed { child: c, .. }
                | EventKind::ChildWorkflowCancelled { child: c } => *c == child.id,
                _ => false,
            });
            match end {
                Some(end) => child_ends.push(end.clone()),
                None => {
                    return Err(StorageError::InvalidArgument(format!(
                        "child workflow \"{}\" (started at {}) had not ended by the last event of the run, so a run reset to {} could never hear of its end: reset to before {}, or once the run has recorded the child's end",
                        child.workflow_id,
                        child.id.0.get(),
                        prefix.last().map_or(Seq::FIRST, |e| e.seq).get(),
                        child.id.0.get()
                    )));
                }
            }
        }
        child_ends.sort_by_key(|e| e.seq);
        Ok(ResetPlan {
            activities: activities.into_values().collect(),
            timers: timers.into_values().collect(),
            children: children.into_values().collect(),
            child_ends,
            signals: after
                .iter()
                .filter(|e| matches!(e.kind, EventKind::SignalReceived { .. }))
                .cloned()
                .collect(),
        })
    }
}
