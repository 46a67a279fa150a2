//! The vocabulary of primitive writes, and what an applied write set answers.

use std::time::Duration;

use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, LogRecord, Payload, Progress, Timestamp,
    WorkflowId,
};

use crate::engine::check::Check;
use crate::error::{Result, StorageError};
use crate::model::{
    ActivityCommitted, ActivityTask, Affinity, ClaimRequest, Lease, MessageId, TaskId, WorkflowTask,
};
use crate::plan::Terminal;

/// A time in a write set, resolved by the applier against the store's clock when it applies
/// the set: the worker passes durations, never its own idea of the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// The store's now.
    Now,
    /// The store's now plus this.
    After(Duration),
    /// This absolute time (a `sleep_until` in workflow code).
    At(Timestamp),
}

impl When {
    /// The time this is, at store time `now`.
    pub fn resolve(self, now: Timestamp) -> Timestamp {
        match self {
            When::Now => now,
            When::After(d) => now.saturating_add(d),
            When::At(t) => t,
        }
    }
}

/// A task to insert.
#[derive(Clone, Debug, PartialEq)]
pub enum NewTask {
    /// The workflow's one workflow task.
    Workflow,
    /// An activity attempt.
    Activity(ActivitySpec),
}

/// What an activity task runs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActivitySpec {
    /// The activity.
    pub activity_id: ActivityId,
    /// Its type's name.
    pub name: String,
    /// Its input.
    pub input: Payload,
    /// Its options as scheduled.
    pub options: ActivityOptions,
    /// The attempt, from 1.
    pub attempt: u32,
}

/// A change to a workflow's row. `updated_at` always becomes the store's now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkflowChange {
    /// The history's new last sequence number.
    pub last_seq: Option<loom_core::Seq>,
    /// Where the workflow stands now.
    pub progress: Option<Progress>,
    /// What happens to its status.
    pub status: StatusChange,
}

/// What a write does to a workflow's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum StatusChange {
    /// Nothing.
    #[default]
    Keep,
    /// A paused workflow runs again (its pause reason is cleared); others are unchanged.
    Resume,
    /// The workflow ends: status, output or failure, `closed_at` the store's now; a pause
    /// reason is cleared.
    Close(Terminal),
}

/// One primitive write. Each names the rows it touches; none decides anything.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Inserts a running workflow (created and updated now) whose history is `started`.
    CreateWorkflow {
        /// Its id.
        id: WorkflowId,
        /// Its type's name.
        name: String,
        /// Its type's version.
        version: u32,
        /// Its input.
        input: Payload,
        /// Event 1.
        started: Event,
        /// The workflow that starts it as its child, if one does.
        parent: Option<WorkflowId>,
    },
    /// Appends events to a history (the row's `last_seq` is set by [`Op::UpdateWorkflow`]).
    AppendEvents {
        /// The workflow.
        workflow: WorkflowId,
        /// The events, numbered on from the history's last.
        events: Vec<Event>,
    },
    /// Changes a workflow's row.
    UpdateWorkflow {
        /// The workflow.
        workflow: WorkflowId,
        /// The change.
        change: WorkflowChange,
    },
    /// Inserts a task, unleased, never delivered, claimable from `due`.
    InsertTask {
        /// Its workflow.
        workflow: WorkflowId,
        /// What it is.
        task: NewTask,
        /// When it may be claimed.
        due: When,
    },
    /// Deletes a task.
    DeleteTask {
        /// The task.
        task: TaskId,
    },
    /// Turns an activity task into its next attempt: attempt plus one, lease cleared,
    /// deliveries zero, claimable from `due`.
    Requeue {
        /// The activity task.
        task: TaskId,
        /// When the next attempt is due.
        due: When,
    },
    /// Adds a message for a workflow, deliverable from `visible`. With `retry_at`, the
    /// message (an `ActivityFailed` or `ActivityTimedOut`) records that resolved time as its
    /// `retry_at`.
    Post {
        /// The workflow.
        workflow: WorkflowId,
        /// The input it carries.
        kind: EventKind,
        /// When it becomes deliverable.
        visible: When,
        /// When the next attempt of the activity it reports is due, to record in it.
        retry_at: Option<When>,
    },
    /// The workflow's task becomes claimable no later than `at`, but never while a live lease
    /// holds it: `visible_at = min(visible_at, max(at, live lease's expiry))`.
    Wake {
        /// The workflow.
        workflow: WorkflowId,
        /// When.
        at: When,
    },
    /// Deletes the workflow's messages that carry exactly this input (a cancelled timer's
    /// `TimerFired`).
    Unpost {
        /// The workflow.
        workflow: WorkflowId,
        /// The input.
        kind: EventKind,
    },
    /// Deletes the workflow's task of this activity, whatever its attempt and lease: an
    /// attempt not yet claimed never runs; a running one loses its lease, and with it the
    /// right to report.
    DeleteActivity {
        /// The workflow.
        workflow: WorkflowId,
        /// The activity.
        activity: ActivityId,
    },
    /// Deletes these messages of the workflow.
    Consume {
        /// The workflow.
        workflow: WorkflowId,
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// Deletes every task and message of a workflow that has ended.
    DeleteWork {
        /// The workflow.
        workflow: WorkflowId,
    },
    /// Continues a workflow as a new run: its current history is kept as the history of its
    /// current run, the run number goes up by one, and the history becomes `started` alone;
    /// the row takes the new run's input and version, `last_seq` 1, no progress, no pause
    /// (a paused workflow runs again), updated now. The workflow's activity tasks are deleted,
    /// and so are its messages that do not carry over ([`EventKind::carries_over`]). Its
    /// workflow task is left as it is.
    NewRun {
        /// The workflow.
        workflow: WorkflowId,
        /// The next run's `WorkflowStarted`, numbered 1.
        started: Event,
    },
    /// Begins a new run from a prefix of the current run's history (a reset): the current
    /// history is kept as the history of its current run, the run number goes up by one, and
    /// the history becomes `events`; the row is running again (its end time, output, failure
    /// and pause reason cleared) with the new run's input and version, `last_seq` the last of
    /// `events`, `progress`, updated now. Every task of the workflow is deleted (its workflow
    /// task too: a worker that holds it can no longer commit), and so are its messages that
    /// do not carry over ([`EventKind::carries_over`]), and its signals unless
    /// `keep_signals`.
    ResetRun {
        /// The workflow.
        workflow: WorkflowId,
        /// The new run's history: its `WorkflowStarted`, then the kept events.
        events: Vec<Event>,
        /// Where the new run stands.
        progress: Progress,
        /// Whether signals waiting for the old run wait for the new one.
        keep_signals: bool,
    },
    /// Sets tags of a workflow: each key (named once) takes its value; its other tags are
    /// kept.
    SetTags {
        /// The workflow.
        workflow: WorkflowId,
        /// The keys and values.
        tags: Vec<(String, loom_core::TagValue)>,
    },
    /// Appends log lines to a workflow's logs.
    AppendLogs {
        /// The workflow.
        workflow: WorkflowId,
        /// The lines, in order.
        logs: Vec<LogRecord>,
    },
    /// The workflow's task is released (no lease, deliveries zero) and becomes claimable at
    /// its earliest remaining message, or not at all if it has none. Reads the messages as
    /// the ops before it left them. Its affinity becomes `affinity`'s owner until the store's
    /// now plus its window, or none.
    Settle {
        /// The workflow.
        workflow: WorkflowId,
        /// Who claims the task first, for how long.
        affinity: Option<Affinity>,
    },
    /// A task is released (no lease, deliveries zero, no affinity) and claimable from `due`.
    Release {
        /// The task.
        task: TaskId,
        /// When.
        due: When,
    },
    /// The workflow is paused by an operator with a reason (updated now), and its workflow
    /// task is deleted: nothing claims it, and a worker holding it can no longer commit.
    /// Messages still arrive and wait.
    Hold {
        /// The workflow.
        workflow: WorkflowId,
        /// Why, and who.
        reason: String,
    },
    /// The workflow of this workflow task is paused with a reason (updated now).
    Pause {
        /// The workflow task.
        task: TaskId,
        /// Why.
        reason: String,
    },
    /// Every workflow task whose affinity names `owner` loses it (each stays claimable when
    /// it was).
    ForgetAffinity {
        /// The worker.
        owner: String,
    },
    /// The task's live lease now lapses at `until`; answered in [`Applied::renewed_until`].
    Renew {
        /// The task.
        task: TaskId,
        /// The new expiry.
        until: When,
    },
    /// Claims up to `req.max` claimable workflow tasks (of one workflow, with `of`): first
    /// those whose affinity names `req.owner` (expired or not), then the others, each group
    /// oldest first by `(visible_at, id)`, never one whose affinity names another owner and
    /// has not expired (`until > now`). Each gets a new fencing token, deliveries plus one,
    /// the lease lapsing at now plus `req.lease` (which is also when the task is claimable
    /// again if it is not renewed); its affinity is left as it is. Each is answered with its
    /// due messages by `(visible_at, id)`.
    ClaimWorkflowTasks {
        /// Only this workflow's task.
        of: Option<WorkflowId>,
        /// Who, how many, how long.
        req: ClaimRequest,
    },
    /// Claims up to `req.max` claimable activity tasks (of one workflow, with `of`), oldest
    /// first by `(visible_at, id)`, leased as [`ClaimWorkflowTasks`](Self::ClaimWorkflowTasks)
    /// leases (activity tasks have no affinity).
    ClaimActivityTasks {
        /// Only this workflow's tasks.
        of: Option<WorkflowId>,
        /// Who, how many, how long.
        req: ClaimRequest,
    },
    /// Deletes up to `purge.limit` closed workflows that `purge` matches at the store's now
    /// ([`Purge::matches`](crate::Purge::matches)), those that ended first first, with all of
    /// their rows; answered in [`Applied::purged`].
    Purge {
        /// Which.
        purge: crate::Purge,
    },
    /// Stores a schedule, new or replacing the one with its id, with its `wake_at` indexed.
    PutSchedule {
        /// The schedule, at its new version.
        schedule: Box<crate::schedule::Schedule>,
        /// Whether it is new (a create, whose check found no schedule with the id).
        new: bool,
    },
    /// Deletes a schedule (the workflows it started are left as they are).
    DeleteSchedule {
        /// Its id.
        schedule: String,
    },
    /// Applies `then` if every condition holds (evaluated as checks, without failing the
    /// write set), `otherwise` if not; [`Applied::decided`] says which, for the first `If`
    /// applied (one nested in the ops it chose does not change the answer).
    If {
        /// The conditions.
        all: Vec<Check>,
        /// Ops applied when they hold.
        then: Vec<Op>,
        /// Ops applied when one does not.
        otherwise: Vec<Op>,
    },
}

/// When a write must reach the disk before its caller hears of it. Backends with a cheaper,
/// non-durable commit (SQLite's `synchronous = NORMAL`, redb's `Durability::None`) use it for
/// writes that a power cut may erase without harm; the next durable commit carries them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sync {
    /// Always: it commits work.
    #[default]
    Durable,
    /// Never on its own: a claim or a renewal, whose loss only hands a task back.
    Relaxed,
    /// Only if it did not claim a workflow task: an activity's result whose woken workflow
    /// task the same caller runs next, and whose durable commit carries the result (a power
    /// cut in between runs the activity again, which at-least-once allows).
    RelaxedIfClaimed,
}

/// What the store must check and then write for one operation, decided by the engine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteSet {
    /// Conditions that must all hold, in order; the first that fails is the operation's
    /// error and nothing is written.
    pub checks: Vec<Check>,
    /// The writes, in order.
    pub ops: Vec<Op>,
    /// How durable the commit must be before the caller hears of it.
    pub sync: Sync,
}

impl WriteSet {
    /// The workflow this write set is about, when it names one: batching appliers order their
    /// items by it, so that concurrent batches lock rows in one order.
    pub fn workflow(&self) -> Option<&WorkflowId> {
        self.checks
            .iter()
            .find_map(Check::workflow)
            .or_else(|| self.ops.iter().find_map(Op::workflow))
    }

    /// Whether the caller should be answered only once the commit is durable, given what it
    /// answered.
    pub fn needs_sync(&self, applied: &Applied) -> bool {
        match self.sync {
            Sync::Durable => true,
            Sync::Relaxed => false,
            Sync::RelaxedIfClaimed => applied.workflow_tasks.is_empty(),
        }
    }

    /// Whether applying it may make work claimable for other processes (a new activity task,
    /// a message): backends that notify idle workers do so after such a commit.
    pub fn wakes(&self) -> bool {
        fn any(ops: &[Op]) -> bool {
            ops.iter().any(|op| match op {
                Op::InsertTask { .. }
                | Op::Post { .. }
                | Op::Requeue { .. }
                | Op::Release { .. }
                | Op::ForgetAffinity { .. }
                | Op::Wake { .. } => true,
                Op::If {
                    then, otherwise, ..
                } => any(then) || any(otherwise),
                _ => false,
            })
        }
        any(&self.ops)
    }
}

impl Op {
    /// The workflow the op names, if it names one directly.
    pub fn workflow(&self) -> Option<&WorkflowId> {
        match self {
            Op::CreateWorkflow { id, .. } => Some(id),
            Op::AppendEvents { workflow, .. }
            | Op::UpdateWorkflow { workflow, .. }
            | Op::InsertTask { workflow, .. }
            | Op::Post { workflow, .. }
            | Op::Wake { workflow, .. }
            | Op::Consume { workflow, .. }
            | Op::Unpost { workflow, .. }
            | Op::DeleteActivity { workflow, .. }
            | Op::DeleteWork { workflow }
            | Op::NewRun { workflow, .. }
            | Op::ResetRun { workflow, .. }
            | Op::SetTags { workflow, .. }
            | Op::Hold { workflow, .. }
            | Op::AppendLogs { workflow, .. }
            | Op::Settle { workflow, .. } => Some(workflow),
            Op::ClaimWorkflowTasks { of, .. } | Op::ClaimActivityTasks { of, .. } => of.as_ref(),
            Op::If { all, then, .. } => all
                .iter()
                .find_map(Check::workflow)
                .or_else(|| then.iter().find_map(Op::workflow)),
            Op::DeleteTask { .. }
            | Op::PutSchedule { .. }
            | Op::DeleteSchedule { .. }
            | Op::Purge { .. }
            | Op::Requeue { .. }
            | Op::Release { .. }
            | Op::Pause { .. }
            | Op::ForgetAffinity { .. }
            | Op::Renew { .. } => None,
        }
    }
}

/// What applying a write set answered besides "done".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// Workflow tasks claimed, in claim order.
    pub workflow_tasks: Vec<WorkflowTask>,
    /// Activity tasks claimed, in claim order.
    pub activity_tasks: Vec<ActivityTask>,
    /// For a write set with an [`Op::If`]: whether the conditions of the first one applied
    /// held.
    pub decided: Option<bool>,
    /// The new expiry of a renewed lease, for an [`Op::Renew`].
    pub renewed_until: Option<Timestamp>,
    /// The workflows an [`Op::Purge`] deleted, those that ended first first.
    pub purged: Vec<WorkflowId>,
}

impl Applied {
    /// The answer to an activity's commit.
    pub fn activity_committed(mut self) -> ActivityCommitted {
        if self.decided == Some(true) {
            return ActivityCommitted::Decided(self.activity_tasks);
        }
        match self.workflow_tasks.pop() {
            Some(task) => ActivityCommitted::WorkflowTask(task),
            None => ActivityCommitted::Nothing,
        }
    }

    /// The answer to a lease's renewal.
    pub fn renewed(&self, lease: &Lease) -> Result<Lease> {
        match self.renewed_until {
            Some(expires_at) => Ok(Lease {
                expires_at,
                ..*lease
            }),
            None => Err(StorageError::Unavailable {
                message: format!("the renewal of {} answered no expiry", lease.task),
                source: None,
            }),
        }
    }
}
