//! The history model: immutable, numbered events, named in the past tense.
//!
//! A history is the append-only list of a workflow's events, numbered from [`Seq::FIRST`].
//! Events come in two roles:
//!
//! - **inputs** come from outside the workflow code: it was started, an activity attempt ended,
//!   a timer fired, a signal arrived, a cancel was requested. Storage backends hold them as
//!   messages until a workflow task moves them into the history.
//! - **commands** are what the code did: scheduled an activity, started a timer, wrote state,
//!   entered a step, recorded a value, finished. On replay each one is checked against what the
//!   code does now.
//!
//! The machine appends each input immediately followed by the commands the code issued in
//! reaction to it, so a history reads as `input, commands*, input, commands*, ...` and replay
//! can match it position by position.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::failure::Failure;
use crate::options::{ActivityOptions, ParentClosePolicy, RetryPolicy};
use crate::tags::{TagValue, Tags};
use crate::types::{ActivityId, ChildId, Payload, Seq, TimerId, Timestamp, WorkflowId};

/// The history format this build writes. Recorded in every `WorkflowStarted` event so that a
/// later change to how histories are encoded or replayed can keep old histories replaying
/// exactly as they were written. Numbers are never reused.
///
/// - 1: the first format.
/// - 2: a timer or activity whose future is dropped while it waits (the loser of a `select`,
///   the timer of `wait_signal_timeout`), or whose wait a cancel request ends, is cancelled
///   with a `TimerCancelled` or `ActivityCancelled` command. Runs of format 1 issue neither,
///   so their histories replay as written.
pub const HISTORY_FORMAT: u32 = 2;

/// The first history format in which dropped timers and activities are cancelled.
pub const FORMAT_CANCELS_DROPPED_WORK: u32 = 2;

/// One entry of a workflow's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its position in the history.
    pub seq: Seq,
    /// When it was appended (the time of the workflow task that appended it).
    pub at: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Whether an event came from outside the workflow code or was issued by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Delivered to the workflow: started, activity results, timer fired, signal, cancel.
    Input,
    /// Issued by the workflow code and checked on replay.
    Command,
}

/// What happened. Serialized with a `type` tag naming the variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum EventKind {
    /// The workflow was started. Always the first event.
    WorkflowStarted {
        /// The workflow type's name.
        name: String,
        /// The workflow type's version at start; pinned for the life of the run.
        version: u32,
        /// The input, as given to `start`.
        input: Payload,
        /// The history format ([`HISTORY_FORMAT`]) the run was started with.
        format: u32,
        /// The workflow that started this one as its child, if one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentRef>,
        /// How long the run may take before it ends timed out.
        #[serde(default, skip_serializing_if = "Timeouts::is_none")]
        timeouts: Timeouts,
        /// Which run of the workflow this is: 1 for the run `start` began, one more for each
        /// run that a `WorkflowContinuedAsNew` or a retry began.
        #[serde(default = "first_run", skip_serializing_if = "is_first_run")]
        run: u32,
        /// How a run that fails is retried: as a new run of the same workflow, with the same
        /// input, after the policy's backoff. `None`: a failure is final.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry: Option<RetryPolicy>,
        /// Which attempt this run is under `retry`, from 1 (a run continued as new is the same
        /// attempt's).
        #[serde(default = "first_run", skip_serializing_if = "is_first_run")]
        attempt: u32,
        /// For a run an operator began by resetting an earlier run: which run, from where,
        /// and why. Its history then holds that run's history up to the point, after this
        /// event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reset: Option<ResetOrigin>,
        /// The tags the workflow was started with (a later run: those it had when the run
        /// before it ended).
        #[serde(default, skip_serializing_if = "Tags::is_empty")]
        tags: Tags,
        /// The trace the run belongs to, as a W3C `traceparent`: every workflow task,
        /// activity attempt and child workflow of the run joins it, on any worker. Set at
        /// start (from the starting span, or new); a child's is its parent's; a run continued
        /// as new or retried begins a trace of its own, derived from the run before it's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// The workflow returned its output.
    WorkflowCompleted {
        /// The output.
        output: Payload,
    },
    /// The workflow returned an error, or could not start (bad input).
    WorkflowFailed {
        /// The error.
        failure: Failure,
    },
    /// Somebody asked the workflow to cancel.
    CancelRequested {
        /// Why, if they said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The workflow ended because it was cancelled.
    WorkflowCancelled {},
    /// The run was ended from outside, at once, without running its code: by an operator
    /// (`loom terminate`) or by its parent's close (the `terminate` parent-close policy).
    WorkflowTerminated {
        /// Who ended it and why.
        reason: String,
    },
    /// The run was reset by an operator while it was open: run `run` goes on from this
    /// run's history up to `seq`, and this run's code is not run again. Always the last event
    /// of its run, which is kept as an earlier run of the workflow.
    WorkflowReset {
        /// The run that goes on from here.
        run: u32,
        /// The last event of this run that the new run's history keeps.
        point: Seq,
        /// Who reset it and why.
        reason: String,
    },
    /// A timeout set at start passed: the runtime that claims the run's next task ends it
    /// with `WorkflowTimedOut`, without running the code.
    TimeoutFired {
        /// Which timeout.
        scope: TimeoutScope,
    },
    /// The run ended because a timeout set at start passed; its code was not run again.
    WorkflowTimedOut {
        /// Which timeout.
        scope: TimeoutScope,
    },
    /// A request to terminate the run, posted by a parent that ended with the `terminate`
    /// policy; the runtime that claims the run's next task carries it out without running
    /// the code, by appending `WorkflowTerminated`.
    TerminateRequested {
        /// Who asked and why.
        reason: String,
    },
    /// The code entered a named step.
    StepStarted {
        /// The step's name.
        name: String,
    },
    /// The code left a named step.
    StepCompleted {
        /// The step's name.
        name: String,
    },
    /// One top-level field of the workflow state changed.
    StateSet {
        /// The field's name (`$` when the state is not a JSON object).
        key: String,
        /// Its new value.
        value: Payload,
    },
    /// Several top-level fields of the workflow state changed at once.
    StateUpdated {
        /// The changed fields and their new values.
        values: BTreeMap<String, Payload>,
    },
    /// The code scheduled an activity. Its id is this event's sequence number.
    ActivityScheduled {
        /// The activity type's name.
        name: String,
        /// The input.
        input: Payload,
        /// Retry policy and timeouts.
        options: ActivityOptions,
    },
    /// An activity attempt returned a result.
    ActivityCompleted {
        /// Which activity.
        activity_id: ActivityId,
        /// Which attempt (1-based).
        attempt: u32,
        /// The result.
        result: Payload,
    },
    /// An activity attempt failed.
    ActivityFailed {
        /// Which activity.
        activity_id: ActivityId,
        /// Which attempt (1-based).
        attempt: u32,
        /// The error.
        failure: Failure,
        /// When the next attempt is due; `None` when this failure is final.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<Timestamp>,
    },
    /// An activity attempt exceeded its start-to-close timeout.
    ActivityTimedOut {
        /// Which activity.
        activity_id: ActivityId,
        /// Which attempt (1-based).
        attempt: u32,
        /// When the next attempt is due; `None` when this timeout is final.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<Timestamp>,
    },
    /// The code ended this run and began the next run of the same workflow (continue-as-new):
    /// the next run starts with an empty history, under the same workflow id, with `input`.
    /// The run ends here; the workflow does not.
    WorkflowContinuedAsNew {
        /// The next run's input.
        input: Payload,
        /// Signals that had arrived and that the code had not taken, in the order they
        /// arrived: the next run receives them before any that arrive later.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        signals: Vec<CarriedSignal>,
    },
    /// The code started a durable timer. Its id is this event's sequence number.
    TimerScheduled {
        /// When it fires.
        fire_at: Timestamp,
        /// The duration asked for by `sleep`; `None` for `sleep_until`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// The code started a child workflow. Its handle ([`ChildId`]) is this event's sequence
    /// number. The store creates the child in the same commit that appends this event, unless
    /// a workflow with its id exists (then a `ChildWorkflowFailed` of kind `already_exists`
    /// arrives instead).
    ChildWorkflowScheduled {
        /// The child's workflow type.
        name: String,
        /// The child type's version, as the parent's code knows it.
        version: u32,
        /// The child's workflow id.
        workflow_id: WorkflowId,
        /// The child's input.
        input: Payload,
        /// What happens to the child if this workflow ends first.
        #[serde(default)]
        parent_close: ParentClosePolicy,
        /// The child's timeouts, from its start.
        #[serde(default, skip_serializing_if = "Timeouts::is_none")]
        timeouts: Timeouts,
        /// How the child is retried when a run of it fails; `None`: its first failure is
        /// final.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry: Option<RetryPolicy>,
        /// The parent run's trace, which the child joins (set by Loom, not compared on
        /// replay).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// A child workflow returned its output.
    ChildWorkflowCompleted {
        /// Which child.
        child: ChildId,
        /// Its output.
        output: Payload,
    },
    /// A child workflow failed, or could not be started.
    ChildWorkflowFailed {
        /// Which child.
        child: ChildId,
        /// Its error.
        failure: Failure,
    },
    /// A child workflow ended cancelled.
    ChildWorkflowCancelled {
        /// Which child.
        child: ChildId,
    },
    /// The code stopped waiting for a timer that had not fired: it never wakes the workflow.
    TimerCancelled {
        /// Which timer.
        timer_id: TimerId,
    },
    /// The code stopped waiting for an activity that had not ended: an attempt not yet
    /// started never runs, a running one is told through its context, and a result that
    /// arrives anyway is dropped.
    ActivityCancelled {
        /// Which activity.
        activity_id: ActivityId,
    },
    /// A durable timer fired.
    TimerFired {
        /// Which timer.
        timer_id: TimerId,
    },
    /// A signal arrived.
    SignalReceived {
        /// The signal's name.
        name: String,
        /// Its payload.
        payload: Payload,
    },
    /// The code asked for a non-deterministic value (time, randomness); this is what it got,
    /// and what it gets again on replay.
    ValueRecorded {
        /// The value.
        value: RecordedValue,
    },
    /// The code set one of the workflow's tags (`ctx.set_tag`): the store indexes it for
    /// `loom list --tag`.
    TagSet {
        /// The tag's key.
        key: String,
        /// Its new value.
        value: TagValue,
    },
    /// The code took the new branch of a versioned change (`ctx.patched(id)`).
    PatchMarked {
        /// The change's id.
        patch: String,
    },
    /// The workflow's first task ran and the code issued no command (it is waiting for a
    /// signal, say). Appended only then, so that a history holding nothing but
    /// `WorkflowStarted` always means the first task has not run: a replay of that history must
    /// not write the code's log lines a second time.
    WorkflowTaskCompleted {},
}

/// The timeouts of a run, set at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// The longest the workflow may take, across the runs that continue it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_ms: Option<u64>,
    /// The longest this run may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<u64>,
}

impl Timeouts {
    /// Whether none is set.
    pub fn is_none(&self) -> bool {
        self.execution_ms.is_none() && self.run_ms.is_none()
    }

    /// The timeout that passes first, and how long after the start: the run timeout when
    /// both are equal.
    pub fn first(&self) -> Option<(TimeoutScope, u64)> {
        match (self.execution_ms, self.run_ms) {
            (Some(e), Some(r)) if e < r => Some((TimeoutScope::Execution, e)),
            (_, Some(r)) => Some((TimeoutScope::Run, r)),
            (Some(e), None) => Some((TimeoutScope::Execution, e)),
            (None, None) => None,
        }
    }
}

/// Which timeout of a run passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutScope {
    /// The workflow's, across the runs that continue it.
    Execution,
    /// This run's.
    Run,
}

impl TimeoutScope {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutScope::Execution => "execution",
            TimeoutScope::Run => "run",
        }
    }
}

/// Where a child workflow came from: its parent, and its handle in the parent's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent's workflow id.
    pub workflow_id: WorkflowId,
    /// The child's handle in the parent's history.
    pub child: ChildId,
    /// The parent's run that started the child: the child's end is reported to that run
    /// only, never to a later run of the parent, which does not know the child.
    #[serde(default = "first_run", skip_serializing_if = "is_first_run")]
    pub run: u32,
}

/// Where a run that an operator began by a reset came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetOrigin {
    /// The run that was reset.
    pub run: u32,
    /// The last event of that run's history that this run keeps: a workflow-task boundary
    /// (see [`crate::history::reset_points`]).
    pub point: Seq,
    /// Who reset it and why.
    pub reason: String,
}

/// A signal carried from one run to the next by continue-as-new.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CarriedSignal {
    /// The signal's name.
    pub name: String,
    /// Its payload.
    pub payload: Payload,
}

fn first_run() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_first_run(run: &u32) -> bool {
    *run == 1
}

/// A non-deterministic value recorded in history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum RecordedValue {
    /// `ctx.now()`.
    Now(Timestamp),
    /// `ctx.random_u64()`.
    Random(u64),
    /// `ctx.uuid()`.
    Uuid(uuid::Uuid),
}

impl RecordedValue {
    fn kind_name(&self) -> &'static str {
        match self {
            RecordedValue::Now(_) => "now",
            RecordedValue::Random(_) => "random",
            RecordedValue::Uuid(_) => "uuid",
        }
    }
}

impl EventKind {
    /// The `WorkflowStarted` of a workflow started from outside, as `start` writes it: the
    /// first run, this build's history format, no parent, no timeouts.
    pub fn workflow_started(name: impl Into<String>, version: u32, input: Payload) -> EventKind {
        EventKind::WorkflowStarted {
            name: name.into(),
            version,
            input,
            format: HISTORY_FORMAT,
            parent: None,
            timeouts: Timeouts::default(),
            run: 1,
            retry: None,
            attempt: 1,
            reset: None,
            tags: Tags::new(),
            traceparent: None,
        }
    }

    /// Whether this event is an input or a command.
    pub fn role(&self) -> Role {
        match self {
            EventKind::WorkflowStarted { .. }
            | EventKind::WorkflowTaskCompleted {}
            | EventKind::CancelRequested { .. }
            | EventKind::WorkflowTerminated { .. }
            | EventKind::WorkflowReset { .. }
            | EventKind::TerminateRequested { .. }
            | EventKind::TimeoutFired { .. }
            | EventKind::WorkflowTimedOut { .. }
            | EventKind::ActivityCompleted { .. }
            | EventKind::ActivityFailed { .. }
            | EventKind::ActivityTimedOut { .. }
            | EventKind::TimerFired { .. }
            | EventKind::ChildWorkflowCompleted { .. }
            | EventKind::ChildWorkflowFailed { .. }
            | EventKind::ChildWorkflowCancelled { .. }
            | EventKind::SignalReceived { .. } => Role::Input,
            EventKind::WorkflowCompleted { .. }
            | EventKind::WorkflowFailed { .. }
            | EventKind::WorkflowCancelled {}
            | EventKind::StepStarted { .. }
            | EventKind::StepCompleted { .. }
            | EventKind::StateSet { .. }
            | EventKind::StateUpdated { .. }
            | EventKind::ActivityScheduled { .. }
            | EventKind::TimerScheduled { .. }
            | EventKind::TimerCancelled { .. }
            | EventKind::ActivityCancelled { .. }
            | EventKind::ChildWorkflowScheduled { .. }
            | EventKind::WorkflowContinuedAsNew { .. }
            | EventKind::ValueRecorded { .. }
            | EventKind::TagSet { .. }
            | EventKind::PatchMarked { .. } => Role::Command,
        }
    }

    /// The variant's name, as serialized in the `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::WorkflowStarted { .. } => "WorkflowStarted",
            EventKind::WorkflowCompleted { .. } => "WorkflowCompleted",
            EventKind::WorkflowFailed { .. } => "WorkflowFailed",
            EventKind::CancelRequested { .. } => "CancelRequested",
            EventKind::WorkflowCancelled {} => "WorkflowCancelled",
            EventKind::WorkflowTerminated { .. } => "WorkflowTerminated",
            EventKind::WorkflowReset { .. } => "WorkflowReset",
            EventKind::TerminateRequested { .. } => "TerminateRequested",
            EventKind::TimeoutFired { .. } => "TimeoutFired",
            EventKind::WorkflowTimedOut { .. } => "WorkflowTimedOut",
            EventKind::StepStarted { .. } => "StepStarted",
            EventKind::StepCompleted { .. } => "StepCompleted",
            EventKind::StateSet { .. } => "StateSet",
            EventKind::StateUpdated { .. } => "StateUpdated",
            EventKind::ActivityScheduled { .. } => "ActivityScheduled",
            EventKind::ActivityCompleted { .. } => "ActivityCompleted",
            EventKind::ActivityFailed { .. } => "ActivityFailed",
            EventKind::ActivityTimedOut { .. } => "ActivityTimedOut",
            EventKind::TimerScheduled { .. } => "TimerScheduled",
            EventKind::TimerFired { .. } => "TimerFired",
            EventKind::TimerCancelled { .. } => "TimerCancelled",
            EventKind::ActivityCancelled { .. } => "ActivityCancelled",
            EventKind::ChildWorkflowScheduled { .. } => "ChildWorkflowScheduled",
            EventKind::WorkflowContinuedAsNew { .. } => "WorkflowContinuedAsNew",
            EventKind::ChildWorkflowCompleted { .. } => "ChildWorkflowCompleted",
            EventKind::ChildWorkflowFailed { .. } => "ChildWorkflowFailed",
            EventKind::ChildWorkflowCancelled { .. } => "ChildWorkflowCancelled",
            EventKind::SignalReceived { .. } => "SignalReceived",
            EventKind::ValueRecorded { .. } => "ValueRecorded",
            EventKind::PatchMarked { .. } => "PatchMarked",
            EventKind::TagSet { .. } => "TagSet",
            EventKind::WorkflowTaskCompleted {} => "WorkflowTaskCompleted",
        }
    }

    /// The size in bytes of the largest payload this event carries (an input, an output, a
    /// result, a signal's payload, a state value, a failure's details), as stores keep it;
    /// zero when it carries none.
    pub fn largest_payload(&self) -> usize {
        let failure = |f: &Failure| f.details.as_ref().map_or(0, Payload::encoded_len);
        match self {
            EventKind::WorkflowStarted { input, .. }
            | EventKind::WorkflowContinuedAsNew { input, .. }
            | EventKind::ActivityScheduled { input, .. }
            | EventKind::ChildWorkflowScheduled { input, .. } => input.encoded_len(),
            EventKind::WorkflowCompleted { output }
            | EventKind::ChildWorkflowCompleted { output, .. } => output.encoded_len(),
            EventKind::ActivityCompleted { result, .. } => result.encoded_len(),
            EventKind::SignalReceived { payload, .. } => payload.encoded_len(),
            EventKind::StateSet { value, .. } => value.encoded_len(),
            EventKind::StateUpdated { values } => {
                values.values().map(Payload::encoded_len).max().unwrap_or(0)
            }
            EventKind::WorkflowFailed { failure: f }
            | EventKind::ActivityFailed { failure: f, .. }
            | EventKind::ChildWorkflowFailed { failure: f, .. } => failure(f),
            _ => 0,
        }
    }

    /// Whether this event ends the run: it ends the workflow ([`is_terminal`](Self::is_terminal)),
    /// continues it as a new run, or marks the run reset into a new one.
    pub fn ends_run(&self) -> bool {
        self.is_terminal()
            || matches!(
                self,
                EventKind::WorkflowContinuedAsNew { .. } | EventKind::WorkflowReset { .. }
            )
    }

    /// Whether this message, waiting for a run that continues as new, is carried over to the
    /// next run: what came from outside the run (a signal, a cancel or terminate request, the
    /// execution timeout that spans the runs). Everything else answers something the ended
    /// run did (an activity's result, a timer, a child's end, the run's own timeout) and is
    /// dropped with it.
    pub fn carries_over(&self) -> bool {
        matches!(
            self,
            EventKind::SignalReceived { .. }
                | EventKind::CancelRequested { .. }
                | EventKind::TerminateRequested { .. }
                | EventKind::TimeoutFired {
                    scope: TimeoutScope::Execution
                }
        )
    }

    /// Whether this event ends the workflow.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::WorkflowCompleted { .. }
                | EventKind::WorkflowFailed { .. }
                | EventKind::WorkflowCancelled {}
                | EventKind::WorkflowTerminated { .. }
                | EventKind::WorkflowTimedOut { .. }
        )
    }

    /// Whether this input may arrive as a message after the start (everything but
    /// `WorkflowStarted`, which only `create` writes, and `WorkflowTerminated`, which only a
    /// termination writes).
    pub fn is_message(&self) -> bool {
        self.role() == Role::Input
            && !matches!(
                self,
                EventKind::WorkflowStarted { .. }
                    | EventKind::WorkflowTaskCompleted {}
                    | EventKind::WorkflowTerminated { .. }
                    | EventKind::WorkflowReset { .. }
                    | EventKind::WorkflowTimedOut { .. }
            )
    }

    /// Whether a command issued by the code now is the same command as this recorded one.
    ///
    /// What is compared, per kind: activity name and input; timer duration (or fire time for
    /// `sleep_until`); state keys and values; step name; the kind of recorded value; patch id;
    /// the output of a completion and the error kind of a failure; a child's type, id and
    /// input. Activity options and a child's parent-close policy are not compared: tuning them
    /// must not break running workflows.
    pub fn same_command(&self, attempted: &EventKind) -> bool {
        use EventKind as K;
        match (self, attempted) {
            (
                K::ActivityScheduled { name, input, .. },
                K::ActivityScheduled {
                    name: n2,
                    input: i2,
                    ..
                },
            ) => name == n2 && input == i2,
            (
                K::TimerScheduled {
                    fire_at,
                    duration_ms,
                },
                K::TimerScheduled {
                    fire_at: f2,
                    duration_ms: d2,
                },
            ) => match (duration_ms, d2) {
                (Some(a), Some(b)) => a == b,
                (None, None) => fire_at == f2,
                _ => false,
            },
            (K::StepStarted { name }, K::StepStarted { name: n2 })
            | (K::StepCompleted { name }, K::StepCompleted { name: n2 }) => name == n2,
            (K::StateSet { key, value }, K::StateSet { key: k2, value: v2 }) => {
                key == k2 && value == v2
            }
            (K::StateUpdated { values }, K::StateUpdated { values: v2 }) => values == v2,
            (K::ValueRecorded { value }, K::ValueRecorded { value: v2 }) => {
                value.kind_name() == v2.kind_name()
            }
            (K::PatchMarked { patch }, K::PatchMarked { patch: p2 }) => patch == p2,
            (K::TagSet { key, value }, K::TagSet { key: k2, value: v2 }) => {
                key == k2 && value == v2
            }
            (K::TimerCancelled { timer_id }, K::TimerCancelled { timer_id: t2 }) => timer_id == t2,
            (K::ActivityCancelled { activity_id }, K::ActivityCancelled { activity_id: a2 }) => {
                activity_id == a2
            }
            (
                K::ChildWorkflowScheduled {
                    name,
                    workflow_id,
                    input,
                    ..
                },
                K::ChildWorkflowScheduled {
                    name: n2,
                    workflow_id: w2,
                    input: i2,
                    ..
                },
            ) => name == n2 && workflow_id == w2 && input == i2,
            (K::WorkflowCompleted { output }, K::WorkflowCompleted { output: o2 }) => output == o2,
            (K::WorkflowFailed { failure }, K::WorkflowFailed { failure: f2 }) => {
                failure.kind == f2.kind
            }
            (K::WorkflowCancelled {}, K::WorkflowCancelled {}) => true,
            (
                K::WorkflowContinuedAsNew { input, .. },
                K::WorkflowContinuedAsNew { input: i2, .. },
            ) => input == i2,
            _ => false,
        }
    }
}

impl fmt::Display for EventKind {
    /// One line naming the kind and the fields that identify it, with long payloads cut.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CUT: usize = 60;
        let name = self.type_name();
        match self {
            EventKind::WorkflowStarted {
                name: wf,
                version,
                input,
                format,
                parent,
                timeouts,
                run,
                retry,
                attempt,
                reset,
                tags,
                traceparent: _,
            } => {
                write!(
                    f,
                    "{name}(name={wf:?}, version={version}, format={format}, input={}",
                    input.preview(CUT)
                )?;
                if *run > 1 {
                    write!(f, ", run={run}")?;
                }
                if !tags.is_empty() {
                    let shown: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, ", tags=[{}]", shown.join(", "))?;
                }
                if let Some(origin) = reset {
                    write!(
                        f,
                        ", reset_from=run {} at {}, reason={:?}",
                        origin.run, origin.point, origin.reason
                    )?;
                }
                if let Some(policy) = retry {
                    write!(f, ", attempt={attempt}/")?;
                    match policy.max_attempts {
                        0 => f.write_str("unlimited")?,
                        n => write!(f, "{n}")?,
                    }
                }
                if let Some(ms) = timeouts.execution_ms {
                    write!(f, ", execution_timeout={ms}ms")?;
                }
                if let Some(ms) = timeouts.run_ms {
                    write!(f, ", run_timeout={ms}ms")?;
                }
                match parent {
                    Some(p) => write!(f, ", parent={:?}/{})", p.workflow_id.as_str(), p.child),
                    None => f.write_str(")"),
                }
            }
            EventKind::WorkflowCompleted { output } => {
                write!(f, "{name}(output={})", output.preview(CUT))
            }
            EventKind::WorkflowFailed { failure } => write!(f, "{name}({failure})"),
            EventKind::CancelRequested { reason } => write!(f, "{name}(reason={reason:?})"),
            EventKind::WorkflowCancelled {} => write!(f, "{name}"),
            EventKind::WorkflowContinuedAsNew { input, signals } => {
                write!(f, "{name}(input={}", input.preview(CUT))?;
                if !signals.is_empty() {
                    write!(f, ", carried_signals={}", signals.len())?;
                }
                f.write_str(")")
            }
            EventKind::WorkflowTerminated { reason } | EventKind::TerminateRequested { reason } => {
                write!(f, "{name}(reason={reason:?})")
            }
            EventKind::WorkflowReset { run, point, reason } => {
                write!(f, "{name}(into run {run} from {point}, reason={reason:?})")
            }
            EventKind::TimeoutFired { scope } | EventKind::WorkflowTimedOut { scope } => {
                write!(f, "{name}({})", scope.as_str())
            }
            EventKind::StepStarted { name: step } | EventKind::StepCompleted { name: step } => {
                write!(f, "{name}({step:?})")
            }
            EventKind::StateSet { key, value } => {
                write!(f, "{name}({key:?} = {})", value.preview(CUT))
            }
            EventKind::StateUpdated { values } => {
                let keys: Vec<&str> = values.keys().map(String::as_str).collect();
                write!(f, "{name}(keys={keys:?})")
            }
            EventKind::ActivityScheduled {
                name: activity,
                input,
                ..
            } => write!(f, "{name}({activity:?}, input={})", input.preview(CUT)),
            EventKind::ActivityCompleted {
                activity_id,
                attempt,
                result,
            } => write!(
                f,
                "{name}({activity_id}, attempt={attempt}, result={})",
                result.preview(CUT)
            ),
            EventKind::ActivityFailed {
                activity_id,
                attempt,
                failure,
                retry_at,
            } => {
                write!(f, "{name}({activity_id}, attempt={attempt}, {failure}")?;
                match retry_at {
                    Some(at) => write!(f, ", retry_at={at})"),
                    None => write!(f, ", not retried)"),
                }
            }
            EventKind::ActivityTimedOut {
                activity_id,
                attempt,
                retry_at,
            } => {
                write!(f, "{name}({activity_id}, attempt={attempt}")?;
                match retry_at {
                    Some(at) => write!(f, ", retry_at={at})"),
                    None => write!(f, ", not retried)"),
                }
            }
            EventKind::TimerScheduled {
                fire_at,
                duration_ms,
            } => match duration_ms {
                Some(ms) => write!(
                    f,
                    "{name}(duration={}, fire_at={fire_at})",
                    humantime::format_duration(std::time::Duration::from_millis(*ms))
                ),
                None => write!(f, "{name}(until={fire_at})"),
            },
            EventKind::TimerFired { timer_id } | EventKind::TimerCancelled { timer_id } => {
                write!(f, "{name}({timer_id})")
            }
            EventKind::ActivityCancelled { activity_id } => write!(f, "{name}({activity_id})"),
            EventKind::ChildWorkflowScheduled {
                name: child,
                workflow_id,
                input,
                parent_close,
                ..
            } => write!(
                f,
                "{name}({child:?}, id={:?}, input={}, parent_close={})",
                workflow_id.as_str(),
                input.preview(CUT),
                parent_close.as_str()
            ),
            EventKind::ChildWorkflowCompleted { child, output } => {
                write!(f, "{name}({child}, output={})", output.preview(CUT))
            }
            EventKind::ChildWorkflowFailed { child, failure } => {
                write!(f, "{name}({child}, {failure})")
            }
            EventKind::ChildWorkflowCancelled { child } => write!(f, "{name}({child})"),
            EventKind::SignalReceived {
                name: signal,
                payload,
            } => {
                write!(f, "{name}({signal:?}, payload={})", payload.preview(CUT))
            }
            EventKind::ValueRecorded { value } => write!(f, "{name}({})", value.kind_name()),
            EventKind::PatchMarked { patch } => write!(f, "{name}({patch:?})"),
            EventKind::TagSet { key, value } => write!(f, "{name}({key}={value})"),
            EventKind::WorkflowTaskCompleted {} => write!(f, "{name}"),
        }
    }
}

/// How loud a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Fine detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the workflow handled.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The level's name as stored and shown: `debug`, `info`, `warn` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    /// The level named by [`LogLevel::as_str`].
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            other => Err(format!("no log level is named {other:?}")),
        }
    }
}

/// A line written by workflow code through its replay-safe logger.
///
/// Logged once: lines written while the code replays recorded history are dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The last event of the history when the line was written.
    pub seq: Seq,
    /// The time of the workflow task that wrote it.
    pub at: Timestamp,
    /// How loud.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_a_type_tag_and_round_trip() {
        let e = Event {
            seq: Seq::new(3),
            at: Timestamp::from_millis(42),
            kind: EventKind::ActivityFailed {
                activity_id: ActivityId(Seq::new(2)),
                attempt: 1,
                failure: Failure::new("network", "reset"),
                retry_at: Some(Timestamp::from_millis(1_042)),
            },
        };
        let json = serde_json::to_value(&e).expect("serialize");
        assert_eq!(json["type"], "ActivityFailed");
        assert_eq!(json["seq"], 3);
        assert_eq!(json["activity_id"], 2);
        let back: Event = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, e);
    }

    #[test]
    fn every_kind_has_a_role_and_display() {
        let kinds = [
            EventKind::CancelRequested { reason: None },
            EventKind::WorkflowCancelled {},
            EventKind::ValueRecorded {
                value: RecordedValue::Random(7),
            },
            EventKind::TimerScheduled {
                fire_at: Timestamp::from_millis(5),
                duration_ms: None,
            },
        ];
        assert_eq!(kinds[0].role(), Role::Input);
        assert!(kinds[0].is_message());
        assert_eq!(kinds[1].role(), Role::Command);
        assert!(kinds[1].is_terminal());
        assert_eq!(kinds[2].to_string(), "ValueRecorded(random)");
        assert_eq!(
            kinds[3].to_string(),
            "TimerScheduled(until=1970-01-01T00:00:00.005Z)",
            "times in RFC 3339, never raw milliseconds or Debug text"
        );
    }

    #[test]
    fn a_failed_attempt_shows_when_it_is_retried_or_that_it_is_not() {
        let failed = |retry_at| EventKind::ActivityFailed {
            activity_id: ActivityId(Seq::new(2)),
            attempt: 1,
            failure: Failure::new("network", "reset"),
            retry_at,
        };
        let retried = failed(Some(Timestamp::from_millis(1_042))).to_string();
        assert!(
            retried.ends_with(", retry_at=1970-01-01T00:00:01.042Z)"),
            "{retried}"
        );
        let last = failed(None).to_string();
        assert!(last.ends_with(", not retried)"), "{last}");
        let timed_out = EventKind::ActivityTimedOut {
            activity_id: ActivityId(Seq::new(2)),
            attempt: 3,
            retry_at: None,
        };
        assert_eq!(
            timed_out.to_string(),
            "ActivityTimedOut(activity#2, attempt=3, not retried)"
        );
    }

    #[test]
    fn command_identity_ignores_options_but_not_input() {
        let a = EventKind::ActivityScheduled {
            name: "charge".into(),
            input: Payload::encode(&1).expect("encode"),
            options: ActivityOptions::default(),
        };
        let mut tuned = ActivityOptions::default();
        tuned.retry.max_attempts = 9;
        let same = EventKind::ActivityScheduled {
            name: "charge".into(),
            input: Payload::encode(&1).expect("encode"),
            options: tuned,
        };
        let other_input = EventKind::ActivityScheduled {
            name: "charge".into(),
            input: Payload::encode(&2).expect("encode"),
            options: ActivityOptions::default(),
        };
        assert!(a.same_command(&same));
        assert!(!a.same_command(&other_input));
        assert!(!a.same_command(&EventKind::WorkflowCancelled {}));
    }
}
