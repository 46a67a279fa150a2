//! The applier the embedded backends share: checks, then primitives, in one transaction of
//! the backend's.

use loom_core::{
    ActivityId, Event, EventKind, LogRecord, Payload, Progress, Timestamp, WorkflowId,
};

use crate::engine::check::{Check, Found, Subject, TaskView, WorkflowView};
use crate::engine::op::{Applied, NewTask, Op, WorkflowChange, WriteSet};
use crate::error::Result;
use crate::model::{ActivityTask, ClaimRequest, MessageId, TaskId, WorkflowTask};

/// A workflow to insert, as [`Op::CreateWorkflow`] names it.
#[derive(Clone, Copy, Debug)]
pub struct NewWorkflow<'a> {
    /// Its id.
    pub id: &'a WorkflowId,
    /// Its type's name.
    pub name: &'a str,
    /// Its type's version.
    pub version: u32,
    /// Its input.
    pub input: &'a Payload,
    /// Event 1 of its history.
    pub started: &'a Event,
    /// The workflow that starts it as its child, if one does.
    pub parent: Option<&'a WorkflowId>,
}

/// A new run from a prefix, as [`Op::ResetRun`] names it.
#[derive(Clone, Copy, Debug)]
pub struct ResetRun<'a> {
    /// The workflow.
    pub workflow: &'a WorkflowId,
    /// The new run's history, from its `WorkflowStarted`.
    pub events: &'a [Event],
    /// Where the new run stands.
    pub progress: &'a Progress,
    /// Whether waiting signals are kept.
    pub keep_signals: bool,
}

impl ResetRun<'_> {
    /// The new run's version and input, from its first event.
    pub fn started(&self) -> Result<(u32, &Payload)> {
        match self.events.first().map(|e| &e.kind) {
            Some(EventKind::WorkflowStarted { version, input, .. }) => Ok((*version, input)),
            _ => Err(crate::StorageError::InvalidArgument(
                "a reset run's history starts with a WorkflowStarted event".into(),
            )),
        }
    }

    /// Whether a message waiting for the old run waits for the new one.
    pub fn keeps(&self, kind: &EventKind) -> bool {
        kind.carries_over()
            && (self.keep_signals || !matches!(kind, EventKind::SignalReceived { .. }))
    }
}

/// The reads and primitive writes of one backend transaction. Each method does exactly what
/// its [`Op`] says and nothing else; the rules that choose them are the engine's.
///
/// `now` is the store's clock for the whole write set: the applier reads it once.
pub trait Apply {
    /// A task, for checks.
    fn task(&mut self, task: TaskId) -> Result<Option<TaskView>>;
    /// A workflow, for checks.
    fn workflow(&mut self, workflow: &WorkflowId) -> Result<Option<WorkflowView>>;
    /// A workflow's workflow task, for checks.
    fn workflow_task(&mut self, workflow: &WorkflowId) -> Result<Option<TaskView>>;
    /// The earliest `visible_at` among a workflow's messages.
    fn earliest_message(&mut self, workflow: &WorkflowId) -> Result<Option<Timestamp>>;
    /// A schedule's version, for checks.
    fn schedule_version(&mut self, schedule: &str) -> Result<Option<u64>>;
    /// [`Op::PutSchedule`]: `new` when its check found no schedule with the id, so that a
    /// backend whose checks cannot lock an absent row inserts it plainly and meets a
    /// concurrent create on the key.
    fn put_schedule(&mut self, schedule: &crate::schedule::Schedule, new: bool) -> Result<()>;
    /// [`Op::DeleteSchedule`].
    fn delete_schedule(&mut self, schedule: &str) -> Result<()>;

    /// [`Op::CreateWorkflow`].
    fn create_workflow(&mut self, now: Timestamp, new: NewWorkflow<'_>) -> Result<()>;
    /// [`Op::AppendEvents`].
    fn append_events(&mut self, workflow: &WorkflowId, events: &[Event]) -> Result<()>;
    /// [`Op::UpdateWorkflow`].
    fn update_workflow(
        &mut self,
        now: Timestamp,
        workflow: &WorkflowId,
        change: &WorkflowChange,
    ) -> Result<()>;
    /// [`Op::InsertTask`].
    fn insert_task(&mut self, workflow: &WorkflowId, task: &NewTask, due: Timestamp) -> Result<()>;
    /// [`Op::DeleteTask`].
    fn delete_task(&mut self, task: TaskId) -> Result<()>;
    /// [`Op::Requeue`].
    fn requeue(&mut self, task: TaskId, due: Timestamp) -> Result<()>;
    /// [`Op::Post`], with `retry_at` already written into `kind`.
    fn post(&mut self, workflow: &WorkflowId, kind: &EventKind, visible: Timestamp) -> Result<()>;
    /// [`Op::Wake`].
    fn wake(&mut self, now: Timestamp, workflow: &WorkflowId, at: Timestamp) -> Result<()>;
    /// [`Op::Unpost`].
    fn unpost(&mut self, workflow: &WorkflowId, kind: &EventKind) -> Result<()>;
    /// [`Op::DeleteActivity`].
    fn delete_activity(&mut self, workflow: &WorkflowId, activity: ActivityId) -> Result<()>;
    /// [`Op::Consume`].
    fn consume(&mut self, workflow: &WorkflowId, ids: &[MessageId]) -> Result<()>;
    /// [`Op::DeleteWork`].
    fn delete_work(&mut self, workflow: &WorkflowId) -> Result<()>;
    /// [`Op::NewRun`].
    fn new_run(&mut self, now: Timestamp, workflow: &WorkflowId, started: &Event) -> Result<()>;
    /// [`Op::ResetRun`].
    fn reset_run(&mut self, now: Timestamp, reset: ResetRun<'_>) -> Result<()>;
    /// [`Op::SetTags`].
    fn set_tags(
        &mut self,
        workflow: &WorkflowId,
        tags: &[(String, loom_core::TagValue)],
    ) -> Result<()>;
    /// [`Op::AppendLogs`].
    fn append_logs(&mut self, workflow: &WorkflowId, logs: &[LogRecord]) -> Result<()>;
    /// [`Op::Settle`], with the affinity's owner and its expiry resolved.
    fn settle(&mut self, workflow: &WorkflowId, affinity: Option<(&str, Timestamp)>) -> Result<()>;
    /// [`Op::Release`].
    fn release(&mut self, task: TaskId, due: Timestamp) -> Result<()>;
    /// [`Op::Hold`].
    fn hold(&mut self, now: Timestamp, workflow: &WorkflowId, reason: &str) -> Result<()>;
    /// [`Op::Purge`]: the ids deleted.
    fn purge(&mut self, now: Timestamp, purge: &crate::Purge) -> Result<Vec<WorkflowId>>;
    /// [`Op::Pause`].
    fn pause(&mut self, now: Timestamp, task: TaskId, reason: &str) -> Result<()>;
    /// [`Op::ForgetAffinity`].
    fn forget_affinity(&mut self, owner: &str) -> Result<()>;
    /// [`Op::Renew`].
    fn renew(&mut self, task: TaskId, until: Timestamp) -> Result<()>;
    /// [`Op::ClaimWorkflowTasks`].
    fn claim_workflow_tasks(
        &mut self,
        now: Timestamp,
        of: Option<&WorkflowId>,
        req: &ClaimRequest,
    ) -> Result<Vec<WorkflowTask>>;
    /// [`Op::ClaimActivityTasks`].
    fn claim_activity_tasks(
        &mut self,
        now: Timestamp,
        of: Option<&WorkflowId>,
        req: &ClaimRequest,
    ) -> Result<Vec<ActivityTask>>;
}

/// Applies `ws` at store time `now`: every check, then every op. A failed check is the
/// answer, with nothing written; so is an error of the backend's, after which the caller must
/// roll its transaction back.
pub fn apply(store: &mut dyn Apply, ws: &WriteSet, now: Timestamp) -> Result<Applied> {
    holds(store, &ws.checks, now)??;
    let mut applied = Applied::default();
    run(store, &ws.ops, now, &mut applied)?;
    Ok(applied)
}

/// Evaluates `checks` in order: the first that fails (`Ok(Err(_))`), or none. Checks of one
/// row follow each other (a lease, then that task's kind; a workflow's status, run and last
/// event); the row is read once for them.
fn holds(store: &mut dyn Apply, checks: &[Check], now: Timestamp) -> Result<Result<()>> {
    let mut last: Option<(Subject<'_>, Found)> = None;
    for check in checks {
        let subject = check.subject();
        let found = match last.take() {
            Some((s, found)) if s == subject => found,
            _ => read(store, check)?,
        };
        if let Err(e) = check.verdict(&found, now) {
            return Ok(Err(e));
        }
        last = Some((subject, found));
    }
    Ok(Ok(()))
}

/// Reads what `check` needs.
fn read(store: &mut dyn Apply, check: &Check) -> Result<Found> {
    Ok(match check.subject() {
        Subject::Task(task) => Found::Task(store.task(task)?),
        Subject::Workflow(id) => Found::Workflow(store.workflow(id)?),
        Subject::WorkflowTask(id) => Found::Task(store.workflow_task(id)?),
        Subject::Messages(id) => Found::EarliestMessage(store.earliest_message(id)?),
        Subject::Schedule(id) => Found::ScheduleVersion(store.schedule_version(id)?),
    })
}

fn run(store: &mut dyn Apply, ops: &[Op], now: Timestamp, applied: &mut Applied) -> Result<()> {
    for op in ops {
        match op {
            Op::CreateWorkflow {
                id,
                name,
                version,
                input,
                started,
                parent,
            } => store.create_workflow(
                now,
                NewWorkflow {
                    id,
                    name,
                    version: *version,
                    input,
                    started,
                    parent: parent.as_ref(),
                },
            )?,
            Op::AppendEvents { workflow, events } => store.append_events(workflow, events)?,
            Op::UpdateWorkflow { workflow, change } => {
                store.update_workflow(now, workflow, change)?;
            }
            Op::InsertTask {
                workflow,
                task,
                due,
            } => store.insert_task(workflow, task, due.resolve(now))?,
            Op::DeleteTask { task } => store.delete_task(*task)?,
            Op::Requeue { task, due } => store.requeue(*task, due.resolve(now))?,
            Op::Post {
                workflow,
                kind,
                visible,
                retry_at,
            } => {
                let kind = match retry_at {
                    Some(at) => with_retry_at(kind, at.resolve(now)),
                    None => kind.clone(),
                };
                store.post(workflow, &kind, visible.resolve(now))?;
            }
            Op::Wake { workflow, at } => store.wake(now, workflow, at.resolve(now))?,
            Op::Consume { workflow, ids } => store.consume(workflow, ids)?,
            Op::Unpost { workflow, kind } => store.unpost(workflow, kind)?,
            Op::DeleteActivity { workflow, activity } => {
                store.delete_activity(workflow, *activity)?;
            }
            Op::DeleteWork { workflow } => store.delete_work(workflow)?,
            Op::NewRun { workflow, started } => store.new_run(now, workflow, started)?,
            Op::ResetRun {
                workflow,
                events,
                progress,
                keep_signals,
            } => store.reset_run(
                now,
                ResetRun {
                    workflow,
                    events,
                    progress,
                    keep_signals: *keep_signals,
                },
            )?,
            Op::AppendLogs { workflow, logs } => store.append_logs(workflow, logs)?,
            Op::SetTags { workflow, tags } => store.set_tags(workflow, tags)?,
            Op::Settle { workflow, affinity } => store.settle(
                workflow,
                affinity
                    .as_ref()
                    .map(|a| (a.owner.as_str(), now.saturating_add(a.window))),
            )?,
            Op::PutSchedule { schedule, new } => store.put_schedule(schedule, *new)?,
            Op::DeleteSchedule { schedule } => store.delete_schedule(schedule)?,
            Op::Release { task, due } => store.release(*task, due.resolve(now))?,
            Op::Pause { task, reason } => store.pause(now, *task, reason)?,
            Op::Hold { workflow, reason } => store.hold(now, workflow, reason)?,
            Op::Purge { purge } => {
                let purged = store.purge(now, purge)?;
                applied.purged.extend(purged);
            }
            Op::ForgetAffinity { owner } => store.forget_affinity(owner)?,
            Op::Renew { task, until } => {
                let until = until.resolve(now);
                store.renew(*task, until)?;
                applied.renewed_until = Some(until);
            }
            Op::ClaimWorkflowTasks { of, req } => {
                let claimed = store.claim_workflow_tasks(now, of.as_ref(), req)?;
                applied.workflow_tasks.extend(claimed);
            }
            Op::ClaimActivityTasks { of, req } => {
                let claimed = store.claim_activity_tasks(now, of.as_ref(), req)?;
                applied.activity_tasks.extend(claimed);
            }
            Op::If {
                all,
                then,
                otherwise,
            } => {
                let holds = holds(store, all, now)?.is_ok();
                // The first condition decides the answer: an `If` nested in the ops it
                // chose (a child's start within a decision made ahead) does not.
                applied.decided.get_or_insert(holds);
                run(store, if holds { then } else { otherwise }, now, applied)?;
            }
        }
    }
    Ok(())
}

/// `kind` (an `ActivityFailed` or `ActivityTimedOut`) recording `at` as its `retry_at`.
pub(crate) fn with_retry_at(kind: &EventKind, at: Timestamp) -> EventKind {
    let mut kind = kind.clone();
    if let EventKind::ActivityFailed { retry_at, .. }
    | EventKind::ActivityTimedOut { retry_at, .. } = &mut kind
    {
        *retry_at = Some(at);
    }
    kind
}
