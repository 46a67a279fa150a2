//! The records that cross the [`Storage`](crate::Storage) trait.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, Failure, LogRecord, Payload, Progress, Seq,
    TagValue, Tags, Timestamp, WorkflowId,
};
use serde::{Deserialize, Serialize};

/// A task's id, unique within one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task{}", self.0)
    }
}

/// A message's id, unique within one store; later messages have larger ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub u64);

/// A claim on a task until `expires_at`. `token` is the fencing token: it changes with every
/// claim, and every commit checks it, so a worker whose lease expired cannot commit even if
/// nobody else has claimed the task yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The task.
    pub task: TaskId,
    /// The fencing token of this claim.
    pub token: u64,
    /// When the claim lapses, by the store's clock.
    pub expires_at: Timestamp,
}

/// What a claim asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Who claims (a worker id), for people reading leases.
    pub owner: String,
    /// The most tasks to hand out.
    pub max: usize,
    /// How long the claim lasts unless renewed.
    pub lease: Duration,
}

impl ClaimRequest {
    /// A request by `owner` for up to `max` tasks, leased for `lease`.
    pub fn new(owner: impl Into<String>, max: usize, lease: Duration) -> Self {
        ClaimRequest {
            owner: owner.into(),
            max,
            lease,
        }
    }
}

/// A worker's first claim on a workflow's next task, asked for when it commits a workflow task
/// and keeps the workflow's machine in its cache: until `window` after the commit (by the
/// store's clock) no other worker claims that workflow's task, and `owner`'s own claims take
/// its tasks before the rest of the queue. After that anyone may; so a worker that died or is
/// too busy delays its workflows by `window` at most. Temporal's sticky task queues give the
/// same promise with a schedule-to-start timeout. See [`Op::ClaimWorkflowTasks`](crate::engine::Op::ClaimWorkflowTasks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affinity {
    /// The worker, as it names itself in its [`ClaimRequest`]s.
    pub owner: String,
    /// How long the preference lasts after the commit.
    pub window: Duration,
}

impl Affinity {
    /// A preference for `owner` lasting `window`.
    pub fn new(owner: impl Into<String>, window: Duration) -> Self {
        Affinity {
            owner: owner.into(),
            window,
        }
    }
}

/// An input waiting to be moved into a workflow's history by its next workflow task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Its id; consumed messages are named by it.
    pub id: MessageId,
    /// The input: an activity result, a fired timer, a signal, a cancel request.
    pub kind: EventKind,
    /// When it becomes deliverable (a timer's fire time; otherwise when it was sent).
    pub visible_at: Timestamp,
}

/// A claimed workflow task: run the workflow's code on its new messages.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowTask {
    /// The claim.
    pub lease: Lease,
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// Its type's name.
    pub workflow_name: String,
    /// Its current run: a runtime's cached machine is current only for this run.
    pub run: u32,
    /// The last event in its history at claim time: the `expected_last_seq` of the commit,
    /// and how a runtime knows whether a cached machine is current.
    pub last_seq: Seq,
    /// The messages due now, by `(visible_at, id)`.
    pub messages: Vec<Message>,
    /// How many times this task has been handed out without being completed or released,
    /// this claim included. A task that keeps crashing its worker shows a rising count.
    pub deliveries: u32,
    /// Since when the task could be claimed, by the store's clock: when the workflow was
    /// created or a message for it fell due, or when the last lease on it lapsed. Its
    /// schedule-to-start latency is `claimed_at` minus this.
    pub ready_at: Timestamp,
    /// The store's clock when the task was claimed: the time of the workflow task, stamped on
    /// its events and returned by `ctx.now()`, so that a worker whose own clock is off changes
    /// nothing in the history.
    pub claimed_at: Timestamp,
}

/// A claimed activity task: run one attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityTask {
    /// The claim.
    pub lease: Lease,
    /// The workflow that scheduled it.
    pub workflow_id: WorkflowId,
    /// The activity.
    pub activity_id: ActivityId,
    /// The activity type's name.
    pub name: String,
    /// Its input.
    pub input: Payload,
    /// Its options as scheduled.
    pub options: ActivityOptions,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// How many times this attempt has been handed out, this claim included.
    pub deliveries: u32,
    /// Since when the attempt could be claimed, by the store's clock: when it was scheduled,
    /// when its retry fell due, or when the last lease on it lapsed. Its schedule-to-start
    /// latency is `claimed_at` minus this.
    pub ready_at: Timestamp,
    /// The store's clock when the attempt was claimed.
    pub claimed_at: Timestamp,
}

/// The commit of a workflow task: one atomic step.
///
/// The store appends `events` (numbered from `expected_last_seq + 1`), deletes the `consumed`
/// messages, creates the tasks the events imply (see [`TaskPlan`](crate::TaskPlan)), stores the
/// progress and logs, and releases the lease; all or nothing. It fails with `LeaseLost` if the
/// lease is not current and `Conflict` if the history moved on. See
/// [`engine::complete_workflow_task`](crate::engine::complete_workflow_task) for the rule.
#[derive(Clone, Debug)]
pub struct WorkflowTaskCompletion {
    /// The lease of the claimed task.
    pub lease: Lease,
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// The history's last sequence number as the task saw it.
    pub expected_last_seq: Seq,
    /// The new events.
    pub events: Vec<Event>,
    /// The messages the task moved into the history (or dropped as duplicates).
    pub consumed: Vec<MessageId>,
    /// Where the workflow stands after the task.
    pub progress: Option<Progress>,
    /// Lines the workflow code logged.
    pub logs: Vec<LogRecord>,
    /// When the events end with `WorkflowContinuedAsNew`: the next run's first event, its
    /// `WorkflowStarted` (see `WorkflowMachine::next_run`). The history of this run is then
    /// kept as the run's, and the next run starts with this event alone.
    pub next_run: Option<Event>,
    /// Also claim, in the same step, up to `eager.max` of the activity tasks this commit
    /// creates (eager dispatch): the committing worker starts them at once. The answer lists
    /// what was claimed, each exactly as by [`Storage::claim_activity_tasks`](crate::Storage::claim_activity_tasks).
    pub eager: Option<ClaimRequest>,
    /// The committing worker keeps the workflow cached and asks for its next task first
    /// (see [`Affinity`]); `None` leaves the next task to anyone.
    pub affinity: Option<Affinity>,
}

/// A workflow task decided ahead of its claim, from an activity's result alone: the worker
/// that ran the activity holds the workflow's machine and fed it the result. See
/// [`AfterActivity::Decide`].
#[derive(Clone, Debug)]
pub struct DecidedTask {
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// The history's last sequence number the decision started from.
    pub expected_last_seq: Seq,
    /// The new events: the result as an input event, then the commands it caused.
    pub events: Vec<Event>,
    /// Where the workflow stands after the task.
    pub progress: Option<Progress>,
    /// Lines the workflow code logged.
    pub logs: Vec<LogRecord>,
    /// As [`WorkflowTaskCompletion::affinity`], should the decision be committed.
    pub affinity: Option<Affinity>,
}

/// The commit of an activity attempt: its result becomes a message to the workflow, and a
/// failure with a `retry_after` schedules the next attempt, in one step. See
/// [`engine::complete_activity_task`](crate::engine::complete_activity_task) for the rule.
#[derive(Clone, Debug)]
pub struct ActivityTaskCompletion {
    /// The lease of the claimed task.
    pub lease: Lease,
    /// The workflow that scheduled the activity.
    pub workflow_id: WorkflowId,
    /// `ActivityCompleted`, `ActivityFailed` or `ActivityTimedOut` for the task's activity and
    /// attempt, with `retry_at` left `None`: the store writes it.
    pub result: EventKind,
    /// For a failure or timeout that is retried: how long after the commit the next attempt
    /// is due. The store computes the time from its own clock and records it as the result's
    /// `retry_at`.
    pub retry_after: Option<Duration>,
    /// What else the same step does.
    pub then: AfterActivity,
}

/// What an activity's commit does besides recording the result.
#[derive(Clone, Debug, Default)]
pub enum AfterActivity {
    /// Nothing: the result waits for the workflow's next task.
    #[default]
    Nothing,
    /// Also claim the workflow task the result wakes, unless a live lease holds it (eager
    /// dispatch); the answer is [`ActivityCommitted::WorkflowTask`] when it was claimed.
    ClaimWorkflowTask(ClaimRequest),
    /// Also commit the workflow task the result wakes, as `decided` by the caller from the
    /// result alone, if and only if that is exactly what a claim of that task would have
    /// handed out: the workflow is open, no lease holds its task, no other message is due,
    /// and its history still ends at `decided.expected_last_seq`. Then claim up to
    /// `claim.max` of the activities the decision scheduled
    /// ([`ActivityCommitted::Decided`]). Otherwise the result waits as a message, as with
    /// [`ClaimWorkflowTask`](Self::ClaimWorkflowTask) under `claim`.
    Decide {
        /// The decision.
        decided: Box<DecidedTask>,
        /// Who claims, for how long, and how many of the scheduled activities at most.
        claim: ClaimRequest,
    },
}

/// What an activity's commit claimed besides committing the result.
#[derive(Clone, Debug, PartialEq)]
pub enum ActivityCommitted {
    /// Nothing.
    Nothing,
    /// The workflow task the result woke, claimed for the caller.
    WorkflowTask(WorkflowTask),
    /// The decision made ahead was committed, with these activities claimed.
    Decided(Vec<ActivityTask>),
}

/// Ends a run from outside, at once, without running its code: `WorkflowTerminated` is
/// appended after `expected_last_seq`, the run closes `terminated`, its tasks and messages are
/// deleted (a worker holding its task can no longer commit, a running activity can no longer
/// report), its parent is told, and its children get their parent-close policies. See
/// [`engine::terminate`](crate::engine::terminate).
#[derive(Clone, Debug)]
pub struct Termination {
    /// The run.
    pub workflow_id: WorkflowId,
    /// The history's last sequence number as the caller read it: a run that moved on since
    /// is a `Conflict`, and the caller reads it again.
    pub expected_last_seq: Seq,
    /// Who ends it and why, recorded in the history.
    pub reason: String,
    /// The time to stamp on the event.
    pub at: Timestamp,
    /// The run's parent (whom to tell) and open children (whose policies to apply), as read
    /// with `expected_last_seq`.
    pub family: Progress,
}

/// Begins a new run of a workflow from a point of its current run's history, to run the
/// current code from there (see [`engine::reset`](crate::engine::reset)). The run may be open
/// or ended.
#[derive(Clone, Debug)]
pub struct Reset {
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// Its current run's whole history, as the caller read it: a run that moved on since is a
    /// `Conflict` (or `RunMoved`), and the caller reads it again.
    pub history: Vec<Event>,
    /// The last event the new run keeps: one of [`loom_core::history::reset_points`].
    pub to: Seq,
    /// Who resets it and why, recorded in both runs.
    pub reason: String,
    /// Whether the signals the run received after `to` are delivered to the new run again
    /// (and those still waiting kept).
    pub reapply_signals: bool,
    /// When the workflow was created: an execution timeout set at its start still counts
    /// from then.
    pub created_at: Timestamp,
    /// The run's open children, as read with `history`: an open run's end applies their
    /// parent-close policies.
    pub family: Progress,
    /// The time to stamp on the event that ends an open run.
    pub at: Timestamp,
}

/// How to give a claimed task back without completing it.
#[derive(Clone, Debug, Default)]
pub struct Release {
    /// How long after now, by the store's clock, it may be claimed again (zero: at once).
    pub after: Duration,
    /// For a workflow task: pause the workflow with this reason (a non-determinism error, a
    /// panic) until the task succeeds. Refused for an activity task.
    pub pause: Option<String>,
}

/// A workflow's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Started and not ended.
    Running,
    /// Its last workflow task could not be decided (non-determinism, a panic); it is retried
    /// and resumes when code that replays cleanly runs.
    Paused,
    /// Returned its output.
    Completed,
    /// Failed.
    Failed,
    /// Was cancelled.
    Cancelled,
    /// Was ended from outside without running its code (see [`Termination`]).
    Terminated,
    /// Ran past a timeout set at start.
    TimedOut,
}

impl WorkflowStatus {
    /// Every status, in display order.
    pub const ALL: [WorkflowStatus; 7] = [
        WorkflowStatus::Running,
        WorkflowStatus::Paused,
        WorkflowStatus::Completed,
        WorkflowStatus::Failed,
        WorkflowStatus::Cancelled,
        WorkflowStatus::Terminated,
        WorkflowStatus::TimedOut,
    ];

    /// Whether the workflow has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WorkflowStatus::Completed
                | WorkflowStatus::Failed
                | WorkflowStatus::Cancelled
                | WorkflowStatus::Terminated
                | WorkflowStatus::TimedOut
        )
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "running",
            WorkflowStatus::Paused => "paused",
            WorkflowStatus::Completed => "completed",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Cancelled => "cancelled",
            WorkflowStatus::Terminated => "terminated",
            WorkflowStatus::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkflowStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkflowStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}: expected running, paused, completed, failed, cancelled, terminated or timed_out"
                )
            })
    }
}

/// One workflow, as `describe` and `list` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSummary {
    /// Its id.
    pub id: WorkflowId,
    /// Its type's name.
    pub name: String,
    /// Its type's version at start.
    pub version: u32,
    /// Its status.
    pub status: WorkflowStatus,
    /// Its input.
    pub input: Payload,
    /// When it was created, by the store's clock.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it ended.
    pub closed_at: Option<Timestamp>,
    /// The last event in its history.
    pub last_seq: Seq,
    /// Its output, once completed.
    pub output: Option<Payload>,
    /// Its error, once failed.
    pub failure: Option<Failure>,
    /// Why it is paused.
    pub pause_reason: Option<String>,
    /// Where it stood after its last workflow task.
    pub progress: Option<Progress>,
    /// The workflow that started it as its child, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<WorkflowId>,
    /// Its current run: 1, and one more for each continue-as-new or retry. The status, input,
    /// history and progress are this run's; `created_at` is the first run's.
    #[serde(default = "first_run")]
    pub run: u32,
    /// Its tags: those it was started with and those its code set, the last value of each
    /// key.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
}

fn first_run() -> u32 {
    1
}

/// An earlier run of a workflow, ended by continue-as-new or a retried failure; its history
/// is kept (see [`Storage::load_run`](crate::Storage::load_run)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run.
    pub run: u32,
    /// The time of its first event.
    pub started_at: Timestamp,
    /// The time of its last event.
    pub ended_at: Timestamp,
    /// Its history's length.
    pub events: u64,
}

/// A position in a listing, newest first: the last item of the previous page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCursor {
    /// The last item's creation time.
    pub created_at: Timestamp,
    /// The last item's id.
    pub id: WorkflowId,
}

/// Which workflows to list. Results are newest first: by creation time, then id, descending.
#[derive(Clone, Debug)]
pub struct ListQuery {
    /// Only this status.
    pub status: Option<WorkflowStatus>,
    /// Only this workflow type.
    pub name: Option<String>,
    /// Only runs of this version of their type.
    pub version: Option<u32>,
    /// Only the children of this workflow.
    pub parent: Option<WorkflowId>,
    /// Only those created at or after.
    pub created_after: Option<Timestamp>,
    /// Only those created before.
    pub created_before: Option<Timestamp>,
    /// Only those that ended before (none that is open).
    pub closed_before: Option<Timestamp>,
    /// Only those whose tags pass every one of these.
    pub tags: Vec<TagFilter>,
    /// The most items in the page.
    pub limit: usize,
    /// Continue after this item.
    pub after: Option<ListCursor>,
}

/// How a [`TagFilter`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagCmp {
    /// The values are equal as text ([`TagValue::text`]).
    Eq,
    /// Less, as numbers ([`TagValue::number`]).
    Lt,
    /// Less or equal, as numbers.
    Le,
    /// Greater, as numbers.
    Gt,
    /// Greater or equal, as numbers.
    Ge,
}

impl TagCmp {
    /// The operator as written in a filter.
    pub fn as_str(self) -> &'static str {
        match self {
            TagCmp::Eq => "=",
            TagCmp::Lt => "<",
            TagCmp::Le => "<=",
            TagCmp::Gt => ">",
            TagCmp::Ge => ">=",
        }
    }
}

/// A condition on one tag: a workflow without the key never passes. Equality compares the
/// values as text, so `customer=42` finds the number 42 and the text "42"; the ranges compare
/// int and time tags as numbers (a time as its milliseconds) and never pass text or truth
/// values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagFilter {
    /// The key.
    pub key: String,
    /// How to compare.
    pub cmp: TagCmp,
    /// With what.
    pub value: TagValue,
}

impl TagFilter {
    /// A filter as a person writes it: `key=value`, or `key` then `<`, `<=`, `>` or `>=` then
    /// a number or a time (values read by [`TagValue::parse`]), checked as [`check`](Self::check)
    /// does. The error says what is wrong.
    pub fn parse(text: &str) -> Result<TagFilter, String> {
        let Some(at) = text.find(['=', '<', '>']) else {
            return Err(format!(
                "tag filter {text:?} has no comparison: say key=value, key>N, key>=N, key<N or key<=N"
            ));
        };
        let (key, rest) = text.split_at(at);
        let (cmp, value) = if let Some(v) = rest.strip_prefix(">=") {
            (TagCmp::Ge, v)
        } else if let Some(v) = rest.strip_prefix("<=") {
            (TagCmp::Le, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (TagCmp::Gt, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (TagCmp::Lt, v)
        } else {
            (TagCmp::Eq, &rest[1..])
        };
        let filter = TagFilter {
            key: key.to_owned(),
            cmp,
            value: TagValue::parse(value),
        };
        filter.check()?;
        Ok(filter)
    }

    /// Whether a workflow with `tags` passes.
    pub fn matches(&self, tags: &Tags) -> bool {
        let Some(v) = tags.get(&self.key) else {
            return false;
        };
        if self.cmp == TagCmp::Eq {
            return v.text() == self.value.text();
        }
        let (Some(a), Some(b)) = (v.number(), self.value.number()) else {
            return false;
        };
        match self.cmp {
            TagCmp::Lt => a < b,
            TagCmp::Le => a <= b,
            TagCmp::Gt => a > b,
            TagCmp::Ge => a >= b,
            TagCmp::Eq => unreachable!("equality is compared above"),
        }
    }

    /// Whether a store can answer it: the key is one a tag may have, and a range compares
    /// with a number or a time. The error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        loom_core::tags::check_tag(&self.key, &self.value)?;
        if self.cmp != TagCmp::Eq && self.value.number().is_none() {
            return Err(format!(
                "tag filter {}{}{}: a range compares numbers and times, not {} values",
                self.key,
                self.cmp.as_str(),
                self.value.text(),
                self.value.kind()
            ));
        }
        Ok(())
    }
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            status: None,
            name: None,
            version: None,
            parent: None,
            created_after: None,
            created_before: None,
            closed_before: None,
            tags: Vec::new(),
            limit: 50,
            after: None,
        }
    }
}

/// Which closed workflows to delete, for retention: everything of theirs goes (summary,
/// histories of every run, logs). A workflow that is open is never purged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purge {
    /// Only those that ended at least this long ago, by the store's clock.
    pub older_than: Duration,
    /// Only this (terminal) status.
    pub status: Option<WorkflowStatus>,
    /// Only this workflow type.
    pub name: Option<String>,
    /// Not these workflow types (whose retention is set apart).
    pub except_names: Vec<String>,
    /// The most to delete in this call, oldest ended first: a batch small enough not to hold
    /// the store up.
    pub limit: usize,
}

impl Purge {
    /// Whether a workflow whose summary is `s` is purged by this at store time `now` (leaving
    /// aside whether it has open children: a workflow with an open child is never purged, so
    /// that its id is not taken again while the child may still report to it).
    pub fn matches(&self, s: &WorkflowSummary, now: Timestamp) -> bool {
        let before = now
            .as_millis()
            .saturating_sub(self.older_than.as_millis() as i64);
        s.status.is_terminal()
            && s.closed_at.is_some_and(|c| c.as_millis() < before)
            && self.status.is_none_or(|st| st == s.status)
            && self.name.as_deref().is_none_or(|n| n == s.name)
            && !self.except_names.contains(&s.name)
    }
}

impl ListQuery {
    /// Whether `s` passes the filters (not the cursor or limit).
    pub fn matches(&self, s: &WorkflowSummary) -> bool {
        self.status.is_none_or(|st| st == s.status)
            && self.name.as_deref().is_none_or(|n| n == s.name)
            && self.version.is_none_or(|v| v == s.version)
            && self
                .parent
                .as_ref()
                .is_none_or(|p| s.parent.as_ref() == Some(p))
            && self.created_after.is_none_or(|t| s.created_at >= t)
            && self.created_before.is_none_or(|t| s.created_at < t)
            && self
                .closed_before
                .is_none_or(|t| s.closed_at.is_some_and(|c| c < t))
            && self.tags.iter().all(|f| f.matches(&s.tags))
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts, if there is one.
    pub next: Option<ListCursor>,
}

impl Page<WorkflowSummary> {
    /// The page of a listing from the rows its query read, newest first: the first `limit` of
    /// them, and a cursor after the last if the query found more than `limit`. A backend
    /// reads `limit + 1` rows to know whether there is a next page.
    pub fn of_listing(mut rows: Vec<WorkflowSummary>, limit: usize) -> Self {
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = rows.last().filter(|_| more).map(|last| ListCursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        Page { items: rows, next }
    }
}

/// Counts over the whole store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Workflows by status (statuses with none are absent).
    pub workflows: BTreeMap<WorkflowStatus, u64>,
    /// Events in all histories, earlier runs' included.
    pub events: u64,
    /// Workflow tasks that can be claimed now.
    pub workflow_tasks_ready: u64,
    /// Workflow tasks held under a live lease.
    pub workflow_tasks_running: u64,
    /// Activity tasks that can be claimed now.
    pub activity_tasks_ready: u64,
    /// Activity tasks held under a live lease.
    pub activity_tasks_running: u64,
    /// Activity tasks waiting for a retry time.
    pub activity_tasks_waiting: u64,
    /// Messages not yet due (armed timers, mostly).
    pub messages_waiting: u64,
    /// Since when the oldest ready task has been ready.
    pub oldest_ready_at: Option<Timestamp>,
    /// When the next not-yet-due task or message becomes due.
    pub next_due_at: Option<Timestamp>,
    /// The store's clock when it counted.
    pub at: Timestamp,
}

/// The work waiting in the store, by kind of task: what metrics and health checks watch. It
/// reads only the open tasks, never the workflows or their histories, so it stays cheap
/// however many workflows the store keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// Workflow tasks.
    pub workflow_tasks: TaskBacklog,
    /// Activity tasks.
    pub activity_tasks: TaskBacklog,
    /// The store's clock when it counted.
    pub at: Timestamp,
}

/// What a backend counted of its own work since it opened, for metrics: how its commits were
/// grouped and how its connections are used. Backends without such machinery answer zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounters {
    /// Commits made: each holds one or more writes (group commit).
    pub group_commits: u64,
    /// Writes committed in them: `writes_committed / group_commits` is the mean batch size.
    pub writes_committed: u64,
    /// Open connections of a pool, and how many of them are idle: PostgreSQL's pool, SQLite's
    /// read connections (its one writer connection is not counted).
    pub connections: Option<(u32, u32)>,
}

/// The backlog of one kind of task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBacklog {
    /// Tasks that can be claimed now.
    pub ready: u64,
    /// Tasks held under a live lease.
    pub running: u64,
    /// Since when the oldest ready task has been ready.
    pub oldest_ready_at: Option<Timestamp>,
}

impl TaskBacklog {
    /// Counts a task at store time `now`: leased until `lease`, claimable from `visible_at`.
    pub fn count(
        &mut self,
        now: Timestamp,
        lease: Option<Timestamp>,
        visible_at: Option<Timestamp>,
    ) {
        if lease.is_some_and(|until| until > now) {
            self.running += 1;
        } else if let Some(v) = visible_at.filter(|v| *v <= now) {
            self.ready += 1;
            self.oldest_ready_at = Some(self.oldest_ready_at.map_or(v, |o| o.min(v)));
        }
    }
}

/// What one open workflow waits for in the store: its tasks and its messages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Its workflow task (if the workflow is open) and its activity tasks, by id.
    pub tasks: Vec<PendingTask>,
    /// Its messages (activity results, timers, signals, cancel requests), by id.
    pub messages: Vec<Message>,
}

/// One task of a workflow, as [`Pending`] shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingTask {
    /// Its id.
    pub id: TaskId,
    /// `None` for the workflow task; the activity, its name and attempt for an activity task.
    pub activity: Option<(ActivityId, String, u32)>,
    /// When it may be claimed (a live lease's expiry while one holds it); `None`: not until a
    /// message arrives.
    pub visible_at: Option<Timestamp>,
    /// When the lease that holds it lapses, if one does.
    pub leased_until: Option<Timestamp>,
    /// Times handed out without completing.
    pub deliveries: u32,
    /// A workflow task's affinity: the worker it goes to first, and until when (shown after
    /// that time too, until a claim's commit or a release replaces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_by: Option<(String, Timestamp)>,
}
