//! The rules: each storage operation, decided from its request alone.

use std::borrow::Cow;
use std::time::Duration;

use loom_core::history::reset_points;
use loom_core::{
    CarriedSignal, Event, EventKind, LogRecord, ParentClosePolicy, PendingActivity, PendingChild,
    PendingTimer, Progress, ResetOrigin, Seq, TimeoutScope, Timestamp, WorkflowId,
};

use crate::engine::check::Check;
use crate::engine::op::{
    ActivitySpec, NewTask, Op, StatusChange, Sync, When, WorkflowChange, WriteSet,
};
use crate::error::{Result, StorageError};
use crate::model::{
    ActivityTaskCompletion, Affinity, AfterActivity, ClaimRequest, Lease, MessageId, Release,
    Reset, TaskId, Termination, WorkflowTaskCompletion,
};
use crate::plan::{
    NewChild, ResetPlan, TaskPlan, activity_result, check_continues, started_fields,
};

/// Starts a workflow: if no workflow has the id, its row, its history's first event and its
/// first workflow task (claimable now), and, for each timeout `started` sets, a `TimeoutFired`
/// message due when it passes (by the store's clock). The id must be non-empty
/// text without NUL characters (which some databases cannot store), and `started` a
/// `WorkflowStarted` event numbered 1.
pub fn create(id: &WorkflowId, started: Event) -> Result<WriteSet> {
    id.check().map_err(StorageError::InvalidArgument)?;
    let (name, version, input) = started_fields(&started)?;
    if matches!(
        &started.kind,
        EventKind::WorkflowStarted {
            parent: Some(_),
            ..
        }
    ) {
        return Err(StorageError::InvalidArgument(
            "a workflow started from outside has no parent: only a parent's workflow task starts a child"
                .into(),
        ));
    }
    if name.contains('\0') {
        return Err(StorageError::InvalidArgument(
            "a workflow type's name cannot contain a NUL character".into(),
        ));
    }
    let (name, input) = (name.to_owned(), input.clone());
    let (timeouts, tags) = match &started.kind {
        EventKind::WorkflowStarted { timeouts, tags, .. } => (*timeouts, tags.clone()),
        _ => (loom_core::Timeouts::default(), loom_core::Tags::new()),
    };
    loom_core::tags::check_tags(&tags).map_err(StorageError::InvalidArgument)?;
    let mut ops = vec![
        Op::CreateWorkflow {
            id: id.clone(),
            name,
            version,
            input,
            started,
            parent: None,
        },
        Op::InsertTask {
            workflow: id.clone(),
            task: NewTask::Workflow,
            due: When::Now,
        },
    ];
    ops.extend(arm_timeouts(id, &timeouts));
    if !tags.is_empty() {
        ops.push(Op::SetTags {
            workflow: id.clone(),
            tags: tags.into_iter().collect(),
        });
    }
    Ok(WriteSet {
        checks: vec![Check::Absent {
            workflow: id.clone(),
        }],
        ops,
        sync: Sync::Durable,
    })
}

/// Commits a workflow task. The caller's lease must hold the workflow's task, the workflow
/// must be open, and its history must end where the task saw it; the events must continue it.
/// Then, in one step: the events are appended and the row updated (a paused workflow runs
/// again); what the events imply is created (an activity task per `ActivityScheduled`, due
/// now; a `TimerFired` message per `TimerScheduled`, due its duration after the commit by the
/// store's clock, or at its time for `sleep_until`; a child workflow per
/// `ChildWorkflowScheduled`, created with its first task claimable now, or, if its id is
/// taken, a `ChildWorkflowFailed` of kind `already_exists` for this workflow); a cancelled
/// timer's message is withdrawn and a cancelled activity's task deleted; the consumed
/// messages are deleted; the task is released and claimable again at its earliest remaining
/// message. A terminal event instead closes the workflow and deletes all of its tasks and
/// messages; if a parent started it (`progress.parent`), its end is posted to that parent
/// while the parent is open; each child still open (`progress.pending_children`) gets its
/// parent-close policy: a cancel request, a terminate request, or nothing. Log lines are kept
/// (NUL characters become U+FFFD). With `eager`, the new activity tasks are then claimed, up
/// to `eager.max`. With `affinity`, the released task prefers its owner until the window
/// after the commit (see [`Affinity`]); without, it prefers no one.
pub fn complete_workflow_task(c: WorkflowTaskCompletion) -> Result<WriteSet> {
    check_continues(c.expected_last_seq, &c.events)?;
    check_next_run(&c.events, c.next_run.as_ref())?;
    check_tags_set(&c.events)?;
    check_affinity(c.affinity.as_ref())?;
    let workflow = c.workflow_id;
    let checks = vec![
        Check::Leased {
            task: c.lease.task,
            token: c.lease.token,
        },
        Check::WorkflowTaskOf {
            task: c.lease.task,
            workflow: workflow.clone(),
        },
        Check::Open {
            workflow: workflow.clone(),
        },
        Check::LastSeq {
            workflow: workflow.clone(),
            expected: c.expected_last_seq,
        },
    ];
    let ops = decision_ops(
        &workflow,
        Decided {
            events: c.events,
            consumed: c.consumed,
            progress: c.progress,
            logs: c.logs,
            eager: c.eager,
            next_run: c.next_run.map(|started| (c.lease.task, started)),
            affinity: c.affinity,
        },
    );
    Ok(WriteSet {
        checks,
        ops,
        sync: Sync::Durable,
    })
}

/// Checks that a commit gives the next run's first event exactly when its events end the run
/// with `WorkflowContinuedAsNew` (the next run's input the one it gives) or with
/// `WorkflowFailed` retried (a later attempt under a retry policy), and that the event is a
/// `WorkflowStarted` numbered 1.
fn check_next_run(events: &[Event], next_run: Option<&Event>) -> Result<()> {
    let invalid = |m: &str| Err(StorageError::InvalidArgument(m.to_owned()));
    if let Some(i) = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::WorkflowContinuedAsNew { .. }))
        && i + 1 != events.len()
    {
        return invalid("WorkflowContinuedAsNew must be the last event of its run");
    }
    let Some(next) = next_run else {
        return match events.last().map(|e| &e.kind) {
            Some(EventKind::WorkflowContinuedAsNew { .. }) => {
                invalid("a WorkflowContinuedAsNew event needs the next run's WorkflowStarted")
            }
            _ => Ok(()),
        };
    };
    let (name, _, next_input) = started_fields(next)?;
    if name.contains('\0') {
        return invalid("a workflow type's name cannot contain a NUL character");
    }
    match (events.last().map(|e| &e.kind), &next.kind) {
        (Some(EventKind::WorkflowContinuedAsNew { input, .. }), _) if next_input != input => {
            invalid("the next run's input is not the one WorkflowContinuedAsNew gives")
        }
        (Some(EventKind::WorkflowContinuedAsNew { .. }), _) => Ok(()),
        (
            Some(EventKind::WorkflowFailed { .. }),
            EventKind::WorkflowStarted {
                retry: Some(_),
                attempt,
                ..
            },
        ) if *attempt > 1 => Ok(()),
        (Some(EventKind::WorkflowFailed { .. }), _) => {
            invalid("a failed run is retried only by a later attempt under a retry policy")
        }
        _ => invalid(
            "a next run is given only with WorkflowContinuedAsNew or a retried WorkflowFailed",
        ),
    }
}

/// Checks that an affinity names an owner every store can hold.
fn check_affinity(affinity: Option<&Affinity>) -> Result<()> {
    match affinity {
        Some(a) if a.owner.is_empty() => Err(StorageError::InvalidArgument(
            "an affinity's owner cannot be empty".into(),
        )),
        Some(a) if a.owner.contains('\0') => Err(StorageError::InvalidArgument(
            "an affinity's owner cannot contain a NUL character".into(),
        )),
        _ => Ok(()),
    }
}

/// Checks that every tag the events set can be stored.
fn check_tags_set(events: &[Event]) -> Result<()> {
    for e in events {
        if let EventKind::TagSet { key, value } = &e.kind {
            loom_core::tags::check_tag(key, value).map_err(StorageError::InvalidArgument)?;
        }
    }
    Ok(())
}

/// What a decided workflow task writes, for [`decision_ops`].
struct Decided {
    events: Vec<Event>,
    consumed: Vec<MessageId>,
    progress: Option<Progress>,
    logs: Vec<LogRecord>,
    eager: Option<ClaimRequest>,
    /// For a run that continues as new or is retried: the workflow task to release, and the
    /// next run's first event.
    next_run: Option<(TaskId, Event)>,
    /// Who asks for the workflow's next task first.
    affinity: Option<Affinity>,
}

/// The messages that arm the timeouts in `timeouts` for a run starting now: one per
/// timeout, the execution timeout's carried from run to run.
fn arm_timeouts(workflow: &WorkflowId, timeouts: &loom_core::Timeouts) -> Vec<Op> {
    [
        (TimeoutScope::Execution, timeouts.execution_ms),
        (TimeoutScope::Run, timeouts.run_ms),
    ]
    .into_iter()
    .filter_map(|(scope, ms)| {
        Some(Op::Post {
            workflow: workflow.clone(),
            kind: EventKind::TimeoutFired { scope },
            visible: When::After(std::time::Duration::from_millis(ms?)),
            retry_at: None,
        })
    })
    .collect()
}

/// The writes of a decided workflow task (see [`complete_workflow_task`]), after its checks.
fn decision_ops(workflow: &WorkflowId, d: Decided) -> Vec<Op> {
    let Decided {
        events,
        consumed,
        progress,
        logs,
        eager,
        next_run,
        affinity,
    } = d;
    let plan = TaskPlan::from_events(&events);
    let last_seq = events.last().map(|e| e.seq);
    let mut ops = Vec::new();
    let (parent, open_children, run) = match &progress {
        Some(p) => (p.parent.clone(), p.pending_children.clone(), p.run),
        None => (None, Vec::new(), 1),
    };
    let carried: Vec<CarriedSignal> = match events.last().map(|e| (&e.kind, e.at)) {
        Some((EventKind::WorkflowContinuedAsNew { signals, .. }, _)) => signals.clone(),
        _ => Vec::new(),
    };
    let switched_at = events.last().map(|e| e.at);
    if !events.is_empty() {
        ops.push(Op::AppendEvents {
            workflow: workflow.clone(),
            events,
        });
    }
    if !plan.tags.is_empty() {
        // Each key once, with the last value the code set.
        let tags: loom_core::Tags = plan.tags.iter().cloned().collect();
        ops.push(Op::SetTags {
            workflow: workflow.clone(),
            tags: tags.into_iter().collect(),
        });
    }
    if let Some((task, started)) = next_run {
        // The run ends and the next begins, in this one commit. Children the task started
        // are created all the same (their parent-close policies apply at once); the consumed
        // messages go first, so that none of them is carried over.
        ops.extend(start_children(workflow, &plan.children, run));
        if !consumed.is_empty() {
            ops.push(Op::Consume {
                workflow: workflow.clone(),
                ids: consumed,
            });
        }
        // A retried run starts after its policy's backoff (its middle, without jitter: the
        // store decides nothing at random); one that continued as new starts at once.
        let (delay, reason) = match (&plan.terminal, &started.kind) {
            (
                Some(_),
                EventKind::WorkflowStarted {
                    retry: Some(policy),
                    attempt,
                    ..
                },
            ) => (
                policy.backoff(attempt.saturating_sub(1), 0.5),
                format!("its parent \"{workflow}\" failed and is retried"),
            ),
            _ => (
                Duration::ZERO,
                format!("its parent \"{workflow}\" continued as new"),
            ),
        };
        ops.extend(parent_close(workflow, open_children, &reason));
        let timeouts = match &started.kind {
            EventKind::WorkflowStarted { timeouts, .. } => timeouts.run_ms,
            _ => None,
        };
        ops.push(Op::NewRun {
            workflow: workflow.clone(),
            started,
        });
        // Signals the ended run had not taken come first in the next run: just before
        // anything that arrived during the switch (which arrived after this task's time).
        let before = Timestamp::from_millis(
            switched_at
                .unwrap_or(Timestamp::EPOCH)
                .as_millis()
                .saturating_sub(1),
        );
        for signal in carried {
            ops.push(Op::Post {
                workflow: workflow.clone(),
                kind: EventKind::SignalReceived {
                    name: signal.name,
                    payload: signal.payload,
                },
                visible: When::At(before),
                retry_at: None,
            });
        }
        if let Some(ms) = timeouts {
            ops.push(Op::Post {
                workflow: workflow.clone(),
                kind: EventKind::TimeoutFired {
                    scope: TimeoutScope::Run,
                },
                visible: When::After(delay + Duration::from_millis(ms)),
                retry_at: None,
            });
        }
        ops.push(Op::Release {
            task,
            due: When::After(delay),
        });
        ops.extend(log_ops(workflow, logs));
        return ops;
    }
    let ended = plan.terminal.clone();
    ops.push(Op::UpdateWorkflow {
        workflow: workflow.clone(),
        change: WorkflowChange {
            last_seq,
            progress,
            status: match plan.terminal {
                Some(end) => StatusChange::Close(end),
                None => StatusChange::Resume,
            },
        },
    });
    ops.extend(start_children(workflow, &plan.children, run));
    if let Some(end) = ended {
        if let Some(parent) = parent {
            // Only to the run that started this workflow: a later run of the parent does not
            // know it.
            ops.push(Op::If {
                all: vec![
                    Check::Open {
                        workflow: parent.workflow_id.clone(),
                    },
                    Check::Run {
                        workflow: parent.workflow_id.clone(),
                        run: parent.run,
                    },
                ],
                then: notify(&parent.workflow_id, end.report(parent.child)),
                otherwise: Vec::new(),
            });
        }
        let reason = format!("its parent \"{workflow}\" ended {}", end.status);
        ops.extend(parent_close(workflow, open_children, &reason));
        ops.push(Op::DeleteWork {
            workflow: workflow.clone(),
        });
    } else {
        let scheduled = plan.activities.len();
        for a in plan.activities {
            ops.push(Op::InsertTask {
                workflow: workflow.clone(),
                task: NewTask::Activity(ActivitySpec {
                    activity_id: a.activity_id,
                    name: a.name,
                    input: a.input,
                    options: a.options,
                    attempt: 1,
                }),
                due: When::Now,
            });
        }
        for t in &plan.timers {
            ops.push(Op::Post {
                workflow: workflow.clone(),
                kind: t.message(),
                visible: match t.duration_ms {
                    Some(ms) => When::After(std::time::Duration::from_millis(ms)),
                    None => When::At(t.fire_at),
                },
                retry_at: None,
            });
        }
        for timer_id in plan.cancelled_timers {
            ops.push(Op::Unpost {
                workflow: workflow.clone(),
                kind: EventKind::TimerFired { timer_id },
            });
        }
        for activity in plan.cancelled_activities {
            ops.push(Op::DeleteActivity {
                workflow: workflow.clone(),
                activity,
            });
        }
        if !consumed.is_empty() {
            ops.push(Op::Consume {
                workflow: workflow.clone(),
                ids: consumed,
            });
        }
        ops.push(Op::Settle {
            workflow: workflow.clone(),
            affinity,
        });
        if let Some(req) = eager.filter(|r| r.max > 0 && scheduled > 0) {
            ops.push(Op::ClaimActivityTasks {
                of: Some(workflow.clone()),
                req,
            });
        }
    }
    ops.extend(log_ops(workflow, logs));
    ops
}

/// Starts each child the task scheduled, unless its id is taken (then the parent gets
/// `already_exists`): the child's row, first event, first task and timeouts.
fn start_children(workflow: &WorkflowId, children: &[NewChild], run: u32) -> Vec<Op> {
    let mut ops = Vec::new();
    for child in children {
        let timeout = arm_timeouts(&child.workflow_id, &child.timeouts);
        ops.push(Op::If {
            all: vec![Check::Absent {
                workflow: child.workflow_id.clone(),
            }],
            then: [
                Op::CreateWorkflow {
                    id: child.workflow_id.clone(),
                    name: child.name.clone(),
                    version: child.version,
                    input: child.input.clone(),
                    started: child.started(workflow, run),
                    parent: Some(workflow.clone()),
                },
                Op::InsertTask {
                    workflow: child.workflow_id.clone(),
                    task: NewTask::Workflow,
                    due: When::Now,
                },
            ]
            .into_iter()
            .chain(timeout)
            .collect(),
            otherwise: vec![Op::Post {
                workflow: workflow.clone(),
                kind: child.already_exists(),
                visible: When::Now,
                retry_at: None,
            }],
        });
    }
    ops
}

/// The parent-close policy of each child still open when `workflow`'s run ends: a cancel
/// request, a terminate request, or nothing; each reaches the child only while it is open and
/// the parent's child.
fn parent_close(workflow: &WorkflowId, open_children: Vec<PendingChild>, reason: &str) -> Vec<Op> {
    let mut ops = Vec::new();
    for child in open_children {
        let reason = reason.to_owned();
        let message = match child.parent_close {
            ParentClosePolicy::Abandon => continue,
            ParentClosePolicy::RequestCancel => EventKind::CancelRequested {
                reason: Some(reason),
            },
            ParentClosePolicy::Terminate => EventKind::TerminateRequested { reason },
        };
        ops.push(Op::If {
            all: vec![Check::OpenChildOf {
                workflow: child.workflow_id.clone(),
                parent: workflow.clone(),
            }],
            then: notify(&child.workflow_id, message),
            otherwise: Vec::new(),
        });
    }
    ops
}

/// The log lines of a task, kept (NUL characters become U+FFFD).
fn log_ops(workflow: &WorkflowId, logs: Vec<LogRecord>) -> Option<Op> {
    if logs.is_empty() {
        return None;
    }
    let logs = logs
        .into_iter()
        .map(|mut l| {
            if let Cow::Owned(text) = safe_log_text(&l.message) {
                l.message = text;
            }
            l
        })
        .collect();
    Some(Op::AppendLogs {
        workflow: workflow.clone(),
        logs,
    })
}

/// A message for a workflow, due now, which makes its task claimable now (or when a live lease
/// on it ends).
fn notify(workflow: &WorkflowId, kind: EventKind) -> Vec<Op> {
    vec![
        Op::Post {
            workflow: workflow.clone(),
            kind,
            visible: When::Now,
            retry_at: None,
        },
        Op::Wake {
            workflow: workflow.clone(),
            at: When::Now,
        },
    ]
}

/// A log line as every backend can store it: NUL characters become U+FFFD, so that a line
/// holding one can never make its workflow task's commit fail.
pub fn safe_log_text(message: &str) -> Cow<'_, str> {
    if message.contains('\0') {
        Cow::Owned(message.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(message)
    }
}

/// Commits an activity attempt. The caller's lease must hold the task, and the result must be
/// for its workflow, activity and attempt, with `retry_at` unset. Then, in one step: a retried
/// failure turns the task into the next attempt, due `retry_after` after the commit by the
/// store's clock (the result records that time as its `retry_at`); otherwise the task is
/// deleted. The result waits as a message for the workflow, whose task becomes claimable now
/// (or when a live lease on it ends).
///
/// With [`AfterActivity::ClaimWorkflowTask`], that workflow task is then claimed if it can be.
/// With [`AfterActivity::Decide`], the caller's decision is committed instead of the message
/// if it is exactly what a claim would hand out (the workflow open, its task free, no message
/// due, its history where the decision started); then the activities it scheduled are claimed
/// up to `claim.max`. If not, the result waits as a message and the task is claimed as with
/// `ClaimWorkflowTask`. A decision must start with the result itself as its first event and
/// cannot be made from a retried failure (the retry time is the store's to record).
pub fn complete_activity_task(c: ActivityTaskCompletion) -> Result<WriteSet> {
    let (activity, attempt, retry_at) = activity_result(&c.result)?;
    if retry_at.is_some() {
        return Err(StorageError::InvalidArgument(
            "an activity result's retry_at is written by the store: pass retry_after instead"
                .into(),
        ));
    }
    if c.retry_after.is_some() && matches!(c.result, EventKind::ActivityCompleted { .. }) {
        return Err(StorageError::InvalidArgument(
            "a completed activity attempt has no retry".into(),
        ));
    }
    let workflow = c.workflow_id;
    let task = c.lease.task;
    let checks = vec![
        Check::Leased {
            task,
            token: c.lease.token,
        },
        Check::ActivityAttempt {
            task,
            workflow: workflow.clone(),
            activity,
            attempt,
        },
    ];
    let mut ops = vec![match c.retry_after {
        Some(d) => Op::Requeue {
            task,
            due: When::After(d),
        },
        None => Op::DeleteTask { task },
    }];
    let deliver = |result: EventKind, claim: Option<ClaimRequest>| {
        let mut ops = vec![
            Op::Post {
                workflow: workflow.clone(),
                kind: result,
                visible: When::Now,
                retry_at: c.retry_after.map(When::After),
            },
            Op::Wake {
                workflow: workflow.clone(),
                at: When::Now,
            },
        ];
        if let Some(req) = claim.filter(|r| r.max > 0) {
            ops.push(Op::ClaimWorkflowTasks {
                of: Some(workflow.clone()),
                req: ClaimRequest { max: 1, ..req },
            });
        }
        ops
    };
    let sync = match c.then {
        AfterActivity::Nothing => {
            ops.extend(deliver(c.result, None));
            Sync::Durable
        }
        AfterActivity::ClaimWorkflowTask(req) => {
            ops.extend(deliver(c.result, Some(req)));
            Sync::RelaxedIfClaimed
        }
        AfterActivity::Decide { decided, claim } => {
            if decided.workflow_id != workflow {
                return Err(StorageError::InvalidArgument(format!(
                    "the activity belongs to \"{workflow}\", the decision to \"{}\"",
                    decided.workflow_id
                )));
            }
            if c.retry_after.is_some() {
                return Err(StorageError::InvalidArgument(
                    "a workflow task cannot be decided ahead from a retried failure".into(),
                ));
            }
            check_continues(decided.expected_last_seq, &decided.events)?;
            check_tags_set(&decided.events)?;
            check_affinity(decided.affinity.as_ref())?;
            if decided
                .events
                .iter()
                .any(|e| matches!(e.kind, EventKind::WorkflowContinuedAsNew { .. }))
            {
                return Err(StorageError::InvalidArgument(
                    "a run cannot continue as new in a decision made ahead: commit it as a workflow task"
                        .into(),
                ));
            }
            if decided.events.first().map(|e| &e.kind) != Some(&c.result) {
                return Err(StorageError::InvalidArgument(
                    "a decision made ahead must start with the activity's result".into(),
                ));
            }
            // The run too: sequence numbers start again in every run, so a machine of an
            // earlier run can stand at the same position.
            let run = decided.progress.as_ref().map_or(1, |p| p.run);
            let conditions = vec![
                Check::Open {
                    workflow: workflow.clone(),
                },
                Check::Run {
                    workflow: workflow.clone(),
                    run,
                },
                Check::LastSeq {
                    workflow: workflow.clone(),
                    expected: decided.expected_last_seq,
                },
                Check::Free {
                    workflow: workflow.clone(),
                },
                Check::NothingDue {
                    workflow: workflow.clone(),
                },
            ];
            let then = decision_ops(
                &workflow,
                Decided {
                    events: decided.events,
                    consumed: Vec::new(),
                    progress: decided.progress,
                    logs: decided.logs,
                    eager: Some(claim.clone()),
                    next_run: None,
                    affinity: decided.affinity,
                },
            );
            ops.push(Op::If {
                all: conditions,
                then,
                otherwise: deliver(c.result, Some(claim)),
            });
            Sync::RelaxedIfClaimed
        }
    };
    Ok(WriteSet { checks, ops, sync })
}

/// Ends a run from outside (see [`Termination`]): the run must be open and its history must
/// end where the caller read it. Then, in one step, exactly what a workflow task that ended
/// the run with `WorkflowTerminated` would write: the event appended, the run closed
/// `terminated`, its tasks and messages deleted, its parent told, its children's policies
/// applied.
pub fn terminate(t: Termination) -> Result<WriteSet> {
    if t.reason.contains('\0') {
        return Err(StorageError::InvalidArgument(
            "a reason cannot contain a NUL character".into(),
        ));
    }
    let workflow = t.workflow_id;
    let event = Event {
        seq: t.expected_last_seq.next(),
        at: t.at,
        kind: EventKind::WorkflowTerminated { reason: t.reason },
    };
    let checks = vec![
        Check::Open {
            workflow: workflow.clone(),
        },
        Check::Run {
            workflow: workflow.clone(),
            run: t.family.run,
        },
        Check::LastSeq {
            workflow: workflow.clone(),
            expected: t.expected_last_seq,
        },
    ];
    let ops = decision_ops(
        &workflow,
        Decided {
            events: vec![event],
            consumed: Vec::new(),
            progress: Some(t.family),
            logs: Vec::new(),
            eager: None,
            next_run: None,
            affinity: None,
        },
    );
    Ok(WriteSet {
        checks,
        ops,
        sync: Sync::Durable,
    })
}

/// Begins a new run from a point of the current run's history (see [`Reset`]): a reset. The
/// run must still be the workflow's current run and its history must end where the caller
/// read it; the point must be one of [`reset_points`]. Then, in one step: an open run ends
/// with `WorkflowReset` (its children get their parent-close policies); the run is kept as an
/// earlier run; the new run's history is its `WorkflowStarted` (run one more, naming the run,
/// point and reason in `reset`) and the events after it up to the point; the workflow is
/// running again, with a workflow task claimable now and a fresh start for the work the
/// prefix left open: an activity task for each open activity (its next attempt, due when the
/// last failure said), a `TimerFired` for each timer at its recorded time, the recorded end of
/// each child open at the point (one with no recorded end is refused), and, with
/// `reapply_signals`, each signal received after the point; these last in the history's
/// order, due just before the point's time, so before anything still waiting. Signals
/// still waiting are kept with `reapply_signals`, as are cancel and terminate requests; the
/// run timeout starts again; an execution timeout still counts from the workflow's creation.
pub fn reset(r: Reset) -> Result<WriteSet> {
    let invalid = |m: String| Err(StorageError::InvalidArgument(m));
    if r.reason.contains('\0') {
        return invalid("a reason cannot contain a NUL character".into());
    }
    let workflow = r.workflow_id;
    let (Some(first), Some(last)) = (r.history.first(), r.history.last()) else {
        return invalid(format!("\"{workflow}\" has no history to reset"));
    };
    let EventKind::WorkflowStarted {
        run,
        timeouts,
        parent,
        ..
    } = &first.kind
    else {
        return invalid(format!(
            "the history of \"{workflow}\" does not start with WorkflowStarted"
        ));
    };
    let (run, timeouts, parent) = (*run, *timeouts, parent.clone());
    let points = reset_points(&r.history);
    if !points.contains(&r.to) {
        if r.to < Seq::FIRST || r.to > last.seq {
            return invalid(format!(
                "run {run} of \"{workflow}\" has no event {}: its history runs from 1 to {}",
                r.to.get(),
                last.seq.get()
            ));
        }
        let before = points.iter().rev().find(|p| **p < r.to);
        let after = points.iter().find(|p| **p > r.to);
        let nearest = match (before, after) {
            (Some(b), Some(a)) => format!("the nearest are {} and {}", b.get(), a.get()),
            (Some(b), None) => format!("the nearest is {}", b.get()),
            (None, Some(a)) => format!("the nearest is {}", a.get()),
            (None, None) => "it has none".to_owned(),
        };
        return invalid(format!(
            "event {} of run {run} of \"{workflow}\" is not a workflow-task boundary, so the code cannot resume there ({nearest}; `loom inspect` lists them)",
            r.to.get()
        ));
    }
    let kept = usize::try_from(r.to.get()).unwrap_or(usize::MAX);
    let plan = ResetPlan::new(&r.history, kept)?;
    let next = run.saturating_add(1);
    let mut events: Vec<Event> = r.history[..kept].to_vec();
    if let EventKind::WorkflowStarted { run, reset, .. } = &mut events[0].kind {
        *run = next;
        *reset = Some(ResetOrigin {
            run: next - 1,
            point: r.to,
            reason: r.reason.clone(),
        });
    }
    let progress = Progress {
        pending_activities: plan
            .activities
            .iter()
            .map(|(a, attempt, _)| PendingActivity {
                id: a.activity_id,
                name: a.name.clone(),
                attempts: attempt - 1,
            })
            .collect(),
        pending_timers: plan
            .timers
            .iter()
            .map(|t| PendingTimer {
                id: t.timer_id,
                fire_at: t.fire_at,
            })
            .collect(),
        pending_children: plan.children.clone(),
        parent,
        run: next,
        ..Progress::default()
    };
    let checks = vec![
        Check::Run {
            workflow: workflow.clone(),
            run,
        },
        Check::LastSeq {
            workflow: workflow.clone(),
            expected: last.seq,
        },
    ];
    let mut ops = Vec::new();
    let open = !last.kind.is_terminal();
    if open {
        ops.push(Op::AppendEvents {
            workflow: workflow.clone(),
            events: vec![Event {
                seq: last.seq.next(),
                at: r.at,
                kind: EventKind::WorkflowReset {
                    run: next,
                    point: r.to,
                    reason: r.reason.clone(),
                },
            }],
        });
        let children_after: Vec<PendingChild> = r
            .family
            .pending_children
            .into_iter()
            .filter(|c| c.id.0 > r.to)
            .collect();
        let reason = format!("its parent \"{workflow}\" was reset");
        ops.extend(parent_close(&workflow, children_after, &reason));
    }
    ops.push(Op::ResetRun {
        workflow: workflow.clone(),
        events,
        progress,
        keep_signals: r.reapply_signals,
    });
    ops.push(Op::InsertTask {
        workflow: workflow.clone(),
        task: NewTask::Workflow,
        due: When::Now,
    });
    for (a, attempt, due) in plan.activities {
        ops.push(Op::InsertTask {
            workflow: workflow.clone(),
            task: NewTask::Activity(ActivitySpec {
                activity_id: a.activity_id,
                name: a.name,
                input: a.input,
                options: a.options,
                attempt,
            }),
            due: due.map_or(When::Now, When::At),
        });
    }
    let post = |kind: EventKind, visible: When| Op::Post {
        workflow: workflow.clone(),
        kind,
        visible,
        retry_at: None,
    };
    for t in &plan.timers {
        ops.push(post(t.message(), When::At(t.fire_at)));
    }
    // What is delivered again arrived before anything still waiting: all of it just before
    // the kept prefix's last event, in the order the history recorded it.
    let mut redelivered = plan.child_ends;
    if r.reapply_signals {
        redelivered.extend(plan.signals);
    }
    redelivered.sort_by_key(|e| e.seq);
    let before = Timestamp::from_millis(r.history[kept - 1].at.as_millis().saturating_sub(1));
    for e in redelivered {
        ops.push(post(e.kind, When::At(before)));
    }
    if let (false, Some(ms)) = (open, timeouts.execution_ms) {
        let at = r.created_at.saturating_add(Duration::from_millis(ms));
        ops.push(post(
            EventKind::TimeoutFired {
                scope: TimeoutScope::Execution,
            },
            When::At(at),
        ));
    }
    if let Some(ms) = timeouts.run_ms {
        ops.push(post(
            EventKind::TimeoutFired {
                scope: TimeoutScope::Run,
            },
            When::After(Duration::from_millis(ms)),
        ));
    }
    Ok(WriteSet {
        checks,
        ops,
        sync: Sync::Durable,
    })
}

/// Pauses a workflow from outside (an operator's pause): it must be open and `reason` text
/// without NUL characters. Then, in one step: the workflow is `paused` with the reason, and its
/// workflow task is deleted, so that no worker runs its code (one that holds the task can no
/// longer commit). Activities already running finish and report; their results, timers,
/// signals and cancel requests wait as messages until [`resume`].
pub fn pause(id: &WorkflowId, reason: &str) -> Result<WriteSet> {
    if reason.contains('\0') {
        return Err(StorageError::InvalidArgument(
            "a reason cannot contain a NUL character".into(),
        ));
    }
    Ok(WriteSet {
        checks: vec![Check::Open {
            workflow: id.clone(),
        }],
        ops: vec![Op::Hold {
            workflow: id.clone(),
            reason: reason.to_owned(),
        }],
        sync: Sync::Durable,
    })
}

/// Resumes a paused workflow: it must be open and paused (by an operator, or by a task that
/// could not be decided). Then, in one step: it is `running` again, and its workflow task is
/// claimable at once (re-created if an operator's pause deleted it), with every message that
/// waited, in order.
pub fn resume(id: &WorkflowId) -> Result<WriteSet> {
    Ok(WriteSet {
        checks: vec![
            Check::Open {
                workflow: id.clone(),
            },
            Check::Paused {
                workflow: id.clone(),
            },
        ],
        ops: vec![
            Op::UpdateWorkflow {
                workflow: id.clone(),
                change: WorkflowChange {
                    last_seq: None,
                    progress: None,
                    status: StatusChange::Resume,
                },
            },
            Op::If {
                all: vec![Check::NoWorkflowTask {
                    workflow: id.clone(),
                }],
                then: vec![Op::InsertTask {
                    workflow: id.clone(),
                    task: NewTask::Workflow,
                    due: When::Now,
                }],
                otherwise: vec![Op::Wake {
                    workflow: id.clone(),
                    at: When::Now,
                }],
            },
        ],
        sync: Sync::Durable,
    })
}

/// Deletes closed workflows for retention (see [`Purge`](crate::Purge)): a batch of at most
/// `limit`, never an open one, chosen and deleted in one step by the store's clock. A status
/// must be a terminal one; a limit at least 1.
pub fn purge(purge: &crate::Purge) -> Result<WriteSet> {
    if purge.limit == 0 {
        return Err(StorageError::InvalidArgument(
            "a purge deletes at least one workflow per batch (limit 0)".into(),
        ));
    }
    if let Some(status) = purge.status.filter(|s| !s.is_terminal()) {
        return Err(StorageError::InvalidArgument(format!(
            "a {status} workflow is open and is never purged; purge completed, failed, cancelled, terminated or timed_out ones"
        )));
    }
    Ok(WriteSet {
        checks: Vec::new(),
        ops: vec![Op::Purge {
            purge: purge.clone(),
        }],
        sync: Sync::Durable,
    })
}

/// Extends a live lease to `extend` after now by the store's clock. A claim's renewal that a
/// power cut erases only lets the lease lapse sooner, so it needs no sync of its own.
pub fn renew(lease: &Lease, extend: std::time::Duration) -> WriteSet {
    WriteSet {
        checks: vec![Check::Leased {
            task: lease.task,
            token: lease.token,
        }],
        ops: vec![Op::Renew {
            task: lease.task,
            until: When::After(extend),
        }],
        sync: Sync::Relaxed,
    }
}

/// Gives a claimed task back: claimable `release.after` from now by the store's clock, its
/// deliveries forgiven. A workflow task may pause its workflow with a reason (shown until its
/// next commit succeeds).
pub fn release(lease: &Lease, release: Release) -> WriteSet {
    let mut checks = vec![Check::Leased {
        task: lease.task,
        token: lease.token,
    }];
    let mut ops = vec![Op::Release {
        task: lease.task,
        due: When::After(release.after),
    }];
    if let Some(reason) = release.pause {
        checks.push(Check::IsWorkflowTask { task: lease.task });
        ops.push(Op::Pause {
            task: lease.task,
            reason,
        });
    }
    WriteSet {
        checks,
        ops,
        sync: Sync::Durable,
    }
}

/// Delivers a signal or a cancel request to an open workflow: a message, due now, which makes
/// its task claimable now (or when a live lease on it ends).
pub fn deliver(id: &WorkflowId, kind: EventKind) -> Result<WriteSet> {
    if !matches!(
        kind,
        EventKind::SignalReceived { .. } | EventKind::CancelRequested { .. }
    ) {
        return Err(StorageError::InvalidArgument(format!(
            "only a signal or a cancel request is delivered from outside, not {}",
            kind.type_name()
        )));
    }
    Ok(WriteSet {
        checks: vec![Check::Open {
            workflow: id.clone(),
        }],
        ops: notify(id, kind),
        sync: Sync::Durable,
    })
}

/// Writes a schedule: creates it (its id free), replaces it or deletes it (at the version the
/// caller read), and in the same step starts the workflows a tick decided on (each id free,
/// as [`create`] starts one: a taken id fails the whole write, so a fire never starts a
/// second workflow) and asks running ones to cancel or terminates them (each only while it
/// is open). The stored schedule's version is the one read plus one; a create's is
/// [`Schedule::first_version`](crate::schedule::Schedule::first_version).
pub fn write_schedule(w: crate::schedule::ScheduleWrite) -> Result<WriteSet> {
    crate::schedule::check_id(&w.id).map_err(StorageError::InvalidArgument)?;
    let mut checks = vec![Check::ScheduleVersion {
        schedule: w.id.clone(),
        expected: w.expected,
    }];
    let mut ops = Vec::new();
    match w.schedule {
        Some(mut schedule) => {
            if schedule.id != w.id {
                return Err(StorageError::InvalidArgument(format!(
                    "the write is for schedule {:?}, the record is {:?}",
                    w.id, schedule.id
                )));
            }
            schedule.version = w
                .expected
                .map_or_else(|| schedule.first_version(), |v| v + 1);
            ops.push(Op::PutSchedule {
                schedule: Box::new(schedule),
                new: w.expected.is_none(),
            });
        }
        None if w.expected.is_none() => {
            return Err(StorageError::InvalidArgument(
                "a schedule is deleted at the version read".into(),
            ));
        }
        None => ops.push(Op::DeleteSchedule { schedule: w.id }),
    }
    for (id, started) in w.starts {
        let start = create(&id, started)?;
        checks.extend(start.checks);
        ops.extend(start.ops);
    }
    let reach = |id: WorkflowId, kind: EventKind| Op::If {
        all: vec![Check::Open {
            workflow: id.clone(),
        }],
        then: notify(&id, kind),
        otherwise: Vec::new(),
    };
    for (id, reason) in w.cancel {
        ops.push(reach(
            id,
            EventKind::CancelRequested {
                reason: Some(reason),
            },
        ));
    }
    for (id, reason) in w.terminate {
        ops.push(reach(id, EventKind::TerminateRequested { reason }));
    }
    Ok(WriteSet {
        checks,
        ops,
        sync: Sync::Durable,
    })
}

/// Gives up a worker's affinities ([`Op::ForgetAffinity`]): what a worker that stops does,
/// so that the workflows it kept cached go to other workers at once instead of after the
/// window. Losing this write only makes them wait out the window, so it is not waited on
/// to reach the disk.
pub fn forget_affinity(owner: &str) -> Result<WriteSet> {
    check_affinity(Some(&Affinity::new(owner, Duration::ZERO)))?;
    Ok(WriteSet {
        checks: Vec::new(),
        ops: vec![Op::ForgetAffinity {
            owner: owner.to_owned(),
        }],
        sync: Sync::Relaxed,
    })
}

/// Claims up to `req.max` claimable workflow tasks (see [`Op::ClaimWorkflowTasks`]).
pub fn claim_workflow_tasks(req: &ClaimRequest) -> WriteSet {
    claim(req, |req| Op::ClaimWorkflowTasks { of: None, req })
}

/// Claims up to `req.max` claimable activity tasks (see [`Op::ClaimActivityTasks`]).
pub fn claim_activity_tasks(req: &ClaimRequest) -> WriteSet {
    claim(req, |req| Op::ClaimActivityTasks { of: None, req })
}

fn claim(req: &ClaimRequest, op: impl FnOnce(ClaimRequest) -> Op) -> WriteSet {
    WriteSet {
        checks: Vec::new(),
        ops: if req.max == 0 {
            Vec::new()
        } else {
            vec![op(req.clone())]
        },
        sync: Sync::Relaxed,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loom_core::{
        ActivityId, ActivityOptions, Failure, HISTORY_FORMAT, LogLevel, Payload, Timestamp,
    };

    use super::*;
    use crate::model::{DecidedTask, TaskId};
    use loom_core::Seq;

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            seq: Seq::new(seq),
            at: Timestamp::from_millis(0),
            kind,
        }
    }

    fn lease() -> Lease {
        Lease {
            task: TaskId(9),
            token: 4,
            expires_at: Timestamp::from_millis(0),
        }
    }

    fn commit(events: Vec<EventKind>) -> WorkflowTaskCompletion {
        WorkflowTaskCompletion {
            next_run: None,
            lease: lease(),
            workflow_id: WorkflowId::new("wf"),
            expected_last_seq: Seq::new(3),
            events: events
                .into_iter()
                .enumerate()
                .map(|(i, k)| event(4 + i as u64, k))
                .collect(),
            consumed: vec![MessageId(1)],
            progress: None,
            logs: Vec::new(),
            eager: None,
            affinity: None,
        }
    }

    fn schedule(name: &str) -> EventKind {
        EventKind::ActivityScheduled {
            name: name.into(),
            input: Payload::NULL,
            options: ActivityOptions::default(),
        }
    }

    #[test]
    fn an_id_a_database_cannot_hold_is_refused() {
        let started = event(
            1,
            EventKind::WorkflowStarted {
                traceparent: None,
                tags: Default::default(),
                reset: None,
                attempt: 1,
                retry: None,
                run: 1,
                name: "W".into(),
                version: 1,
                input: Payload::NULL,
                format: HISTORY_FORMAT,
                timeouts: Default::default(),
                parent: None,
            },
        );
        for id in ["", "a\0b"] {
            assert!(matches!(
                create(&WorkflowId::new(id), started.clone()),
                Err(StorageError::InvalidArgument(_))
            ));
        }
        assert!(create(&WorkflowId::new("ok"), started).is_ok());
    }

    #[test]
    fn a_commit_checks_its_lease_then_the_workflow() {
        let ws = complete_workflow_task(commit(vec![schedule("a")])).unwrap();
        let subjects: Vec<_> = ws.checks.iter().map(Check::subject).collect();
        assert_eq!(
            subjects,
            [
                crate::engine::check::Subject::Task(TaskId(9)),
                crate::engine::check::Subject::Task(TaskId(9)),
                crate::engine::check::Subject::Workflow(&WorkflowId::new("wf")),
                crate::engine::check::Subject::Workflow(&WorkflowId::new("wf")),
            ]
        );
        assert!(matches!(ws.checks[0], Check::Leased { token: 4, .. }));
    }

    #[test]
    fn a_commit_creates_what_its_events_imply() {
        let mut c = commit(vec![
            schedule("a"),
            EventKind::TimerScheduled {
                fire_at: Timestamp::from_millis(5_000),
                duration_ms: Some(5_000),
            },
            EventKind::TimerScheduled {
                fire_at: Timestamp::from_millis(7_000),
                duration_ms: None,
            },
        ]);
        c.eager = Some(ClaimRequest::new("w", 1, Duration::from_secs(30)));
        let ops = complete_workflow_task(c).unwrap().ops;
        let kinds: Vec<_> = ops.iter().map(op_name).collect();
        assert_eq!(
            kinds,
            [
                "AppendEvents",
                "UpdateWorkflow",
                "InsertTask",
                "Post",
                "Post",
                "Consume",
                "Settle",
                "ClaimActivityTasks"
            ]
        );
        // A timer set by `sleep` is due its duration after the commit, by the store's clock.
        assert!(matches!(
            ops[3],
            Op::Post { visible: When::After(d), .. } if d == Duration::from_secs(5)
        ));
        assert!(matches!(
            ops[4],
            Op::Post { visible: When::At(t), .. } if t == Timestamp::from_millis(7_000)
        ));
        assert!(matches!(
            &ops[1],
            Op::UpdateWorkflow { change, .. }
                if change.status == StatusChange::Resume && change.last_seq == Some(Seq::new(6))
        ));
    }

    #[test]
    fn an_ending_commit_closes_and_schedules_nothing() {
        let ops = complete_workflow_task(commit(vec![
            schedule("late"),
            EventKind::WorkflowCompleted {
                output: Payload::NULL,
            },
        ]))
        .unwrap()
        .ops;
        let kinds: Vec<_> = ops.iter().map(op_name).collect();
        assert_eq!(kinds, ["AppendEvents", "UpdateWorkflow", "DeleteWork"]);
    }

    #[test]
    fn events_must_continue_the_history() {
        let mut c = commit(vec![schedule("a")]);
        c.events[0].seq = Seq::new(7);
        assert!(matches!(
            complete_workflow_task(c),
            Err(StorageError::InvalidArgument(_))
        ));
    }

    #[test]
    fn log_lines_lose_their_nul_characters() {
        let mut c = commit(vec![]);
        c.logs = vec![LogRecord {
            seq: Seq::new(3),
            at: Timestamp::from_millis(0),
            level: LogLevel::Info,
            message: "a\0b".into(),
        }];
        let ops = complete_workflow_task(c).unwrap().ops;
        assert!(ops.iter().any(|op| matches!(
            op,
            Op::AppendLogs { logs, .. } if logs[0].message == "a\u{FFFD}b"
        )));
    }

    fn result(retry_after: Option<Duration>, then: AfterActivity) -> ActivityTaskCompletion {
        let kind = match retry_after {
            Some(_) => EventKind::ActivityFailed {
                activity_id: ActivityId(Seq::new(2)),
                attempt: 1,
                failure: Failure::new("x", "y"),
                retry_at: None,
            },
            None => EventKind::ActivityCompleted {
                activity_id: ActivityId(Seq::new(2)),
                attempt: 1,
                result: Payload::NULL,
            },
        };
        ActivityTaskCompletion {
            lease: lease(),
            workflow_id: WorkflowId::new("wf"),
            result: kind,
            retry_after,
            then,
        }
    }

    #[test]
    fn a_retried_failure_requeues_the_task_on_the_store_clock() {
        let ws =
            complete_activity_task(result(Some(Duration::from_secs(2)), AfterActivity::Nothing))
                .unwrap();
        assert!(matches!(
            ws.ops[0],
            Op::Requeue { due: When::After(d), .. } if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            ws.ops[1],
            Op::Post { retry_at: Some(When::After(d)), .. } if d == Duration::from_secs(2)
        ));
        assert_eq!(ws.sync, Sync::Durable);
    }

    #[test]
    fn the_worker_does_not_write_retry_at() {
        let mut c = result(Some(Duration::from_secs(1)), AfterActivity::Nothing);
        if let EventKind::ActivityFailed { retry_at, .. } = &mut c.result {
            *retry_at = Some(Timestamp::from_millis(1));
        }
        assert!(complete_activity_task(c).is_err());
        let done = result(None, AfterActivity::Nothing);
        let retried_success = ActivityTaskCompletion {
            retry_after: Some(Duration::from_secs(1)),
            ..done
        };
        assert!(complete_activity_task(retried_success).is_err());
    }

    #[test]
    fn a_decision_ahead_must_start_with_its_result() {
        let claim = ClaimRequest::new("w", 1, Duration::from_secs(30));
        let decided = |first: EventKind| DecidedTask {
            workflow_id: WorkflowId::new("wf"),
            expected_last_seq: Seq::new(3),
            events: vec![event(4, first), event(5, schedule("next"))],
            progress: None,
            logs: Vec::new(),
            affinity: None,
        };
        let ok = result(None, AfterActivity::Nothing).result;
        let ws = complete_activity_task(result(
            None,
            AfterActivity::Decide {
                decided: Box::new(decided(ok)),
                claim: claim.clone(),
            },
        ))
        .unwrap();
        assert!(matches!(&ws.ops[1], Op::If { all, .. } if all.len() == 5));
        // Its run among the conditions: sequence numbers start again in every run.
        assert!(matches!(
            &ws.ops[1],
            Op::If { all, .. } if all.iter().any(|c| matches!(c, Check::Run { run: 1, .. }))
        ));
        let other = EventKind::SignalReceived {
            name: "s".into(),
            payload: Payload::NULL,
        };
        assert!(
            complete_activity_task(result(
                None,
                AfterActivity::Decide {
                    decided: Box::new(decided(other)),
                    claim,
                },
            ))
            .is_err()
        );
    }

    #[test]
    fn only_signals_and_cancels_are_delivered() {
        let id = WorkflowId::new("wf");
        assert!(
            deliver(
                &id,
                EventKind::SignalReceived {
                    name: "s".into(),
                    payload: Payload::NULL
                }
            )
            .is_ok()
        );
        assert!(deliver(&id, EventKind::CancelRequested { reason: None }).is_ok());
        assert!(
            deliver(
                &id,
                EventKind::TimerFired {
                    timer_id: loom_core::TimerId(Seq::new(2))
                }
            )
            .is_err()
        );
    }

    #[test]
    fn a_claim_of_none_writes_nothing() {
        let ws = claim_activity_tasks(&ClaimRequest::new("w", 0, Duration::from_secs(1)));
        assert!(ws.ops.is_empty() && ws.checks.is_empty());
    }

    #[test]
    fn cancellations_go_before_the_task_settles() {
        let ops = complete_workflow_task(commit(vec![
            EventKind::TimerCancelled {
                timer_id: loom_core::TimerId(Seq::new(2)),
            },
            EventKind::ActivityCancelled {
                activity_id: loom_core::ActivityId(Seq::new(3)),
            },
        ]))
        .unwrap()
        .ops;
        let kinds: Vec<_> = ops.iter().map(op_name).collect();
        assert_eq!(
            kinds,
            [
                "AppendEvents",
                "UpdateWorkflow",
                "Unpost",
                "DeleteActivity",
                "Consume",
                "Settle"
            ]
        );
        assert!(matches!(
            &ops[2],
            Op::Unpost { kind: EventKind::TimerFired { timer_id }, .. } if timer_id.0 == Seq::new(2)
        ));
    }

    #[test]
    fn a_child_is_started_only_if_its_id_is_free_and_a_closing_child_reports_to_its_parent() {
        let start = EventKind::ChildWorkflowScheduled {
            traceparent: None,
            retry: None,
            name: "Kid".into(),
            version: 2,
            workflow_id: WorkflowId::new("wf/6"),
            input: Payload::NULL,
            parent_close: loom_core::ParentClosePolicy::RequestCancel,
            timeouts: loom_core::Timeouts {
                execution_ms: None,
                run_ms: Some(5_000),
            },
        };
        let ops = complete_workflow_task(commit(vec![start])).unwrap().ops;
        let Op::If {
            all,
            then,
            otherwise,
        } = &ops[2]
        else {
            panic!("expected an If, got {:?}", ops[2]);
        };
        assert_eq!(
            all,
            &[Check::Absent {
                workflow: WorkflowId::new("wf/6")
            }]
        );
        assert!(matches!(
            &then[0],
            Op::CreateWorkflow { parent: Some(p), version: 2, .. } if p.as_str() == "wf"
        ));
        // Its timeout is armed with it, and recorded in its first event.
        assert!(matches!(
            &then[2],
            Op::Post { workflow, kind: EventKind::TimeoutFired { .. }, visible: When::After(d), .. }
                if workflow.as_str() == "wf/6" && *d == Duration::from_secs(5)
        ));
        assert!(matches!(
            &then[0],
            Op::CreateWorkflow { started, .. }
                if matches!(&started.kind, EventKind::WorkflowStarted { timeouts, .. } if timeouts.run_ms == Some(5_000))
        ));
        assert!(matches!(
            &otherwise[0],
            Op::Post { kind: EventKind::ChildWorkflowFailed { failure, .. }, .. }
                if failure.kind == "already_exists"
        ));
        // A child's end goes to its parent while the parent is open.
        let mut c = commit(vec![EventKind::WorkflowCompleted {
            output: Payload::NULL,
        }]);
        let mut progress = Progress {
            run: 1,
            current_step: None,
            state: Payload::NULL,
            pending_activities: Vec::new(),
            pending_timers: Vec::new(),
            pending_children: Vec::new(),
            parent: Some(loom_core::ParentRef {
                run: 1,
                workflow_id: WorkflowId::new("boss"),
                child: loom_core::ChildId(Seq::new(6)),
            }),
            awaiting_signals: Vec::new(),
            buffered_signals: Default::default(),
            outcome: None,
        };
        c.progress = Some(progress.clone());
        let ops = complete_workflow_task(c).unwrap().ops;
        let report = ops
            .iter()
            .find_map(|op| match op {
                Op::If { all, then, .. } => Some((all.clone(), then.clone())),
                _ => None,
            })
            .expect("a report");
        assert_eq!(
            report.0,
            [
                Check::Open {
                    workflow: WorkflowId::new("boss")
                },
                Check::Run {
                    workflow: WorkflowId::new("boss"),
                    run: 1
                }
            ],
            "only to the run that started the child"
        );
        assert!(matches!(
            &report.1[0],
            Op::Post { workflow, kind: EventKind::ChildWorkflowCompleted { .. }, .. }
                if workflow.as_str() == "boss"
        ));
        // Without a parent, nothing is reported.
        progress.parent = None;
        let mut c = commit(vec![EventKind::WorkflowCompleted {
            output: Payload::NULL,
        }]);
        c.progress = Some(progress);
        let ops = complete_workflow_task(c).unwrap().ops;
        assert!(!ops.iter().any(|op| matches!(op, Op::If { .. })));
    }

    fn op_name(op: &Op) -> &'static str {
        match op {
            Op::CreateWorkflow { .. } => "CreateWorkflow",
            Op::AppendEvents { .. } => "AppendEvents",
            Op::UpdateWorkflow { .. } => "UpdateWorkflow",
            Op::InsertTask { .. } => "InsertTask",
            Op::DeleteTask { .. } => "DeleteTask",
            Op::Requeue { .. } => "Requeue",
            Op::Post { .. } => "Post",
            Op::Wake { .. } => "Wake",
            Op::Consume { .. } => "Consume",
            Op::Unpost { .. } => "Unpost",
            Op::DeleteActivity { .. } => "DeleteActivity",
            Op::DeleteWork { .. } => "DeleteWork",
            Op::NewRun { .. } => "NewRun",
            Op::ResetRun { .. } => "ResetRun",
            Op::SetTags { .. } => "SetTags",
            Op::AppendLogs { .. } => "AppendLogs",
            Op::Settle { .. } => "Settle",
            Op::ForgetAffinity { .. } => "ForgetAffinity",
            Op::Release { .. } => "Release",
            Op::Pause { .. } => "Pause",
            Op::Hold { .. } => "Hold",
            Op::Purge { .. } => "Purge",
            Op::Renew { .. } => "Renew",
            Op::ClaimWorkflowTasks { .. } => "ClaimWorkflowTasks",
            Op::ClaimActivityTasks { .. } => "ClaimActivityTasks",
            Op::PutSchedule { .. } => "PutSchedule",
            Op::DeleteSchedule { .. } => "DeleteSchedule",
            Op::If { .. } => "If",
        }
    }
}
