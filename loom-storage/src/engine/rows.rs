//! The primitives on plain rows, for backends that keep records rather than run SQL:
//! `MemoryStorage` and redb implement [`Rows`] (get, put and delete of their records, with
//! their indexes kept in step) and get every primitive of [`Apply`] from [`RowApply`].

use loom_core::{ActivityId, Event, EventKind, LogRecord, Seq, TagValue, Timestamp, WorkflowId};
use serde::{Deserialize, Serialize};

use crate::engine::apply::{Apply, NewWorkflow, ResetRun};
use crate::engine::check::{TaskView, WorkflowView};
use crate::engine::op::{ActivitySpec, NewTask, StatusChange, WorkflowChange};
use crate::error::Result;
use crate::model::{
    ActivityTask, ClaimRequest, Lease, Message, MessageId, Pending, PendingTask, TaskId,
    WorkflowStatus, WorkflowSummary, WorkflowTask,
};

/// A workflow's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// What `describe` shows.
    pub summary: WorkflowSummary,
    /// Its workflow task, once inserted.
    pub task: Option<TaskId>,
}

/// A task's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its workflow.
    pub workflow: WorkflowId,
    /// `None` for the workflow task; what an activity task runs.
    pub activity: Option<ActivitySpec>,
    /// When it may be claimed; while a lease holds it, the lease's expiry (so a lapsed lease
    /// makes it claimable again untouched). `None`: not until a message arrives.
    pub visible_at: Option<Timestamp>,
    /// The claim holding it: fencing token and expiry. `None` once released.
    pub lease: Option<(u64, Timestamp)>,
    /// Times handed out without being completed or released.
    pub deliveries: u32,
    /// A workflow task's affinity: the worker it prefers, until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<(String, Timestamp)>,
}

impl TaskRecord {
    /// Whether it is an activity task.
    pub fn is_activity(&self) -> bool {
        self.activity.is_some()
    }

    fn view(&self) -> TaskView {
        TaskView {
            workflow: self.workflow.clone(),
            activity: self.activity.as_ref().map(|a| (a.activity_id, a.attempt)),
            token: self.lease.map_or(0, |l| l.0),
            lease_expires_at: self.lease.map(|l| l.1),
        }
    }

    /// Whether its affinity keeps it from `owner` at `now`: it names another worker and has
    /// not expired.
    pub fn kept_from(&self, owner: &str, now: Timestamp) -> bool {
        self.affinity
            .as_ref()
            .is_some_and(|(o, until)| o != owner && *until > now)
    }

    fn live_lease(&self, now: Timestamp) -> Option<Timestamp> {
        self.lease.map(|l| l.1).filter(|t| *t > now)
    }

    /// This task as [`Pending`] shows it.
    pub fn pending(&self, id: TaskId, now: Timestamp) -> PendingTask {
        PendingTask {
            id,
            activity: self
                .activity
                .as_ref()
                .map(|a| (a.activity_id, a.name.clone(), a.attempt)),
            visible_at: self.visible_at,
            leased_until: self.live_lease(now),
            deliveries: self.deliveries,
            preferred_by: self.affinity.clone(),
        }
    }
}

/// Records a row-keeping backend stores, in one transaction of its own.
pub trait Rows {
    /// A new id for a task, a message or a fencing token: unique in the store, increasing.
    fn next_id(&mut self) -> Result<u64>;
    /// A workflow's row.
    fn get_workflow(&mut self, id: &WorkflowId) -> Result<Option<WorkflowRecord>>;
    /// Stores a workflow's row (new or changed), keyed by its summary's id.
    fn put_workflow(&mut self, record: &WorkflowRecord) -> Result<()>;
    /// Appends events to a history.
    fn insert_events(&mut self, id: &WorkflowId, events: &[Event]) -> Result<()>;
    /// Moves a workflow's history, all of it, to the kept histories of its earlier runs, as
    /// run `run`'s; the history is then empty.
    fn archive_history(&mut self, id: &WorkflowId, run: u32) -> Result<()>;
    /// A task's row.
    fn get_task(&mut self, id: TaskId) -> Result<Option<TaskRecord>>;
    /// Stores a task's row (new or changed), keeping the claim index in step with its
    /// `visible_at` and the workflow's list of tasks with its existence.
    fn put_task(&mut self, id: TaskId, task: &TaskRecord) -> Result<()>;
    /// Deletes a task's row, with its index entries.
    fn delete_task(&mut self, id: TaskId) -> Result<()>;
    /// Every task of a workflow, by id.
    fn tasks_of(&mut self, id: &WorkflowId) -> Result<Vec<TaskId>>;
    /// Every message of a workflow, by id.
    fn messages_of(&mut self, id: &WorkflowId) -> Result<Vec<Message>>;
    /// Stores a new message.
    fn insert_message(&mut self, id: &WorkflowId, message: &Message) -> Result<()>;
    /// Deletes a message of a workflow (none if it is not there).
    fn delete_message(&mut self, id: &WorkflowId, message: MessageId) -> Result<()>;
    /// Appends log lines.
    fn insert_logs(&mut self, id: &WorkflowId, logs: &[LogRecord]) -> Result<()>;
    /// Up to `purge.limit` workflows that `purge` matches at `now`, those that ended first
    /// first (then by id).
    fn purgeable(&mut self, purge: &crate::Purge, now: Timestamp) -> Result<Vec<WorkflowId>>;
    /// Deletes a workflow's row, its histories (every run's), messages and logs, with their
    /// index entries (its tasks are deleted before, one by one).
    fn delete_workflow(&mut self, id: &WorkflowId) -> Result<()>;
    /// Up to `max` claimable tasks of one kind (`visible_at <= now`), by `(visible_at, id)`,
    /// those after `after` in that order.
    fn claimable(
        &mut self,
        activity: bool,
        now: Timestamp,
        after: Option<(Timestamp, TaskId)>,
        max: usize,
    ) -> Result<Vec<(Timestamp, TaskId)>>;
    /// Up to `max` workflow tasks whose affinity names `owner` (expired or not) and whose
    /// `visible_at` is at most `until`, by `(visible_at, id)`; a task without a `visible_at`
    /// counts as visible at `Timestamp::MAX`, so `until = MAX` finds them all. `put_task` and
    /// `delete_task` keep the index this reads in step.
    fn preferring(&mut self, owner: &str, until: Timestamp, max: usize) -> Result<Vec<TaskId>>;
    /// A schedule's record.
    fn get_schedule(&mut self, id: &str) -> Result<Option<crate::schedule::Schedule>>;
    /// Stores a schedule's record (new or changed), keeping the index of `wake_at` in step.
    fn put_schedule(&mut self, schedule: &crate::schedule::Schedule) -> Result<()>;
    /// Deletes a schedule's record, with its index entry.
    fn delete_schedule(&mut self, id: &str) -> Result<()>;
}

/// [`Apply`] on any [`Rows`]: the one implementation of the primitives for row stores.
pub struct RowApply<'a, R: ?Sized>(pub &'a mut R);

impl<R: Rows + ?Sized> RowApply<'_, R> {
    fn workflow_record(&mut self, id: &WorkflowId) -> Result<WorkflowRecord> {
        self.0.get_workflow(id)?.ok_or_else(|| missing(id))
    }

    fn task_record(&mut self, id: TaskId) -> Result<TaskRecord> {
        self.0
            .get_task(id)?
            .ok_or_else(|| crate::StorageError::Unavailable {
                message: format!("{id} vanished inside its own transaction"),
                source: None,
            })
    }

    /// The workflow task's id and row, if the workflow has one.
    fn workflow_task_record(&mut self, id: &WorkflowId) -> Result<Option<(TaskId, TaskRecord)>> {
        let Some(task) = self.0.get_workflow(id)?.and_then(|w| w.task) else {
            return Ok(None);
        };
        Ok(self.0.get_task(task)?.map(|t| (task, t)))
    }

    /// Leases task `id` for `req` at `now`: a new token, deliveries plus one.
    fn lease(
        &mut self,
        id: TaskId,
        mut task: TaskRecord,
        now: Timestamp,
        req: &ClaimRequest,
    ) -> Result<(Lease, TaskRecord)> {
        let token = self.0.next_id()?;
        let expires_at = now.saturating_add(req.lease);
        task.lease = Some((token, expires_at));
        task.visible_at = Some(expires_at);
        task.deliveries += 1;
        self.0.put_task(id, &task)?;
        Ok((
            Lease {
                task: id,
                token,
                expires_at,
            },
            task,
        ))
    }

    /// The claimable tasks of one kind of workflow `of` that `owner` may claim, by
    /// `(visible_at, id)`.
    fn claimable_of(
        &mut self,
        of: &WorkflowId,
        activity: bool,
        now: Timestamp,
        owner: &str,
        max: usize,
    ) -> Result<Vec<TaskId>> {
        let mut found = Vec::new();
        for id in self.0.tasks_of(of)? {
            if let Some(task) = self.0.get_task(id)? {
                if task.is_activity() == activity
                    && !task.kept_from(owner, now)
                    && let Some(v) = task.visible_at.filter(|v| *v <= now)
                {
                    found.push((v, id));
                }
            }
        }
        found.sort();
        Ok(found.into_iter().take(max).map(|(_, id)| id).collect())
    }

    /// The workflow tasks a claim by `req` takes at `now`: those preferring its owner, then
    /// the rest of the queue without those another owner's affinity still keeps.
    fn claimable_workflow_tasks(
        &mut self,
        now: Timestamp,
        req: &ClaimRequest,
    ) -> Result<Vec<TaskId>> {
        let mut ids = self.0.preferring(&req.owner, now, req.max)?;
        let preferred = ids.len();
        let mut after = None;
        while ids.len() < req.max {
            let page = self.0.claimable(false, now, after, req.max - ids.len())?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(*last);
            for (_, id) in page {
                if ids[..preferred].contains(&id)
                    || self.task_record(id)?.kept_from(&req.owner, now)
                {
                    continue;
                }
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

fn missing(id: &WorkflowId) -> crate::StorageError {
    crate::StorageError::NotFound(id.clone())
}

impl<R: Rows + ?Sized> Apply for RowApply<'_, R> {
    fn task(&mut self, task: TaskId) -> Result<Option<TaskView>> {
        Ok(self.0.get_task(task)?.map(|t| t.view()))
    }

    fn workflow(&mut self, workflow: &WorkflowId) -> Result<Option<WorkflowView>> {
        Ok(self.0.get_workflow(workflow)?.map(|w| WorkflowView {
            status: w.summary.status,
            last_seq: w.summary.last_seq,
            parent: w.summary.parent,
            run: w.summary.run,
        }))
    }

    fn workflow_task(&mut self, workflow: &WorkflowId) -> Result<Option<TaskView>> {
        Ok(self.workflow_task_record(workflow)?.map(|(_, t)| t.view()))
    }

    fn earliest_message(&mut self, workflow: &WorkflowId) -> Result<Option<Timestamp>> {
        Ok(self
            .0
            .messages_of(workflow)?
            .iter()
            .map(|m| m.visible_at)
            .min())
    }

    fn schedule_version(&mut self, schedule: &str) -> Result<Option<u64>> {
        Ok(self.0.get_schedule(schedule)?.map(|s| s.version))
    }

    fn put_schedule(&mut self, schedule: &crate::schedule::Schedule, _new: bool) -> Result<()> {
        self.0.put_schedule(schedule)
    }

    fn delete_schedule(&mut self, schedule: &str) -> Result<()> {
        self.0.delete_schedule(schedule)
    }

    fn create_workflow(&mut self, now: Timestamp, new: NewWorkflow<'_>) -> Result<()> {
        let summary = WorkflowSummary {
            id: new.id.clone(),
            name: new.name.to_owned(),
            version: new.version,
            status: WorkflowStatus::Running,
            input: new.input.clone(),
            created_at: now,
            updated_at: now,
            closed_at: None,
            last_seq: Seq::FIRST,
            output: None,
            failure: None,
            pause_reason: None,
            progress: None,
            parent: new.parent.cloned(),
            run: 1,
            tags: loom_core::Tags::new(),
        };
        self.0.put_workflow(&WorkflowRecord {
            summary,
            task: None,
        })?;
        self.0
            .insert_events(new.id, std::slice::from_ref(new.started))
    }

    fn append_events(&mut self, workflow: &WorkflowId, events: &[Event]) -> Result<()> {
        self.0.insert_events(workflow, events)
    }

    fn update_workflow(
        &mut self,
        now: Timestamp,
        workflow: &WorkflowId,
        change: &WorkflowChange,
    ) -> Result<()> {
        let mut record = self.workflow_record(workflow)?;
        let s = &mut record.summary;
        if let Some(last) = change.last_seq {
            s.last_seq = last;
        }
        if let Some(progress) = &change.progress {
            s.progress = Some(progress.clone());
        }
        match &change.status {
            StatusChange::Keep => {}
            StatusChange::Resume => {
                if s.status == WorkflowStatus::Paused {
                    s.status = WorkflowStatus::Running;
                    s.pause_reason = None;
                }
            }
            StatusChange::Close(end) => {
                s.status = end.status;
                s.output.clone_from(&end.output);
                s.failure.clone_from(&end.failure);
                s.pause_reason = None;
                s.closed_at = Some(now);
            }
        }
        s.updated_at = now;
        self.0.put_workflow(&record)
    }

    fn insert_task(&mut self, workflow: &WorkflowId, task: &NewTask, due: Timestamp) -> Result<()> {
        let id = TaskId(self.0.next_id()?);
        let record = TaskRecord {
            workflow: workflow.clone(),
            activity: match task {
                NewTask::Workflow => None,
                NewTask::Activity(spec) => Some(spec.clone()),
            },
            visible_at: Some(due),
            lease: None,
            deliveries: 0,
            affinity: None,
        };
        self.0.put_task(id, &record)?;
        if matches!(task, NewTask::Workflow) {
            let mut wf = self.workflow_record(workflow)?;
            wf.task = Some(id);
            self.0.put_workflow(&wf)?;
        }
        Ok(())
    }

    fn delete_task(&mut self, task: TaskId) -> Result<()> {
        self.0.delete_task(task)
    }

    fn requeue(&mut self, task: TaskId, due: Timestamp) -> Result<()> {
        let mut record = self.task_record(task)?;
        if let Some(spec) = record.activity.as_mut() {
            spec.attempt += 1;
        }
        record.lease = None;
        record.deliveries = 0;
        record.visible_at = Some(due);
        self.0.put_task(task, &record)
    }

    fn post(&mut self, workflow: &WorkflowId, kind: &EventKind, visible: Timestamp) -> Result<()> {
        let message = Message {
            id: MessageId(self.0.next_id()?),
            kind: kind.clone(),
            visible_at: visible,
        };
        self.0.insert_message(workflow, &message)
    }

    fn wake(&mut self, now: Timestamp, workflow: &WorkflowId, at: Timestamp) -> Result<()> {
        let Some((id, mut task)) = self.workflow_task_record(workflow)? else {
            return Ok(());
        };
        let due = task.live_lease(now).map_or(at, |expires| at.max(expires));
        task.visible_at = Some(task.visible_at.map_or(due, |v| v.min(due)));
        self.0.put_task(id, &task)
    }

    fn consume(&mut self, workflow: &WorkflowId, ids: &[MessageId]) -> Result<()> {
        for id in ids {
            self.0.delete_message(workflow, *id)?;
        }
        Ok(())
    }

    fn unpost(&mut self, workflow: &WorkflowId, kind: &EventKind) -> Result<()> {
        for m in self.0.messages_of(workflow)? {
            if m.kind == *kind {
                self.0.delete_message(workflow, m.id)?;
            }
        }
        Ok(())
    }

    fn delete_activity(&mut self, workflow: &WorkflowId, activity: ActivityId) -> Result<()> {
        for id in self.0.tasks_of(workflow)? {
            let of_it = self
                .0
                .get_task(id)?
                .and_then(|t| t.activity)
                .is_some_and(|a| a.activity_id == activity);
            if of_it {
                self.0.delete_task(id)?;
            }
        }
        Ok(())
    }

    fn delete_work(&mut self, workflow: &WorkflowId) -> Result<()> {
        for id in self.0.tasks_of(workflow)? {
            self.0.delete_task(id)?;
        }
        for m in self.0.messages_of(workflow)? {
            self.0.delete_message(workflow, m.id)?;
        }
        Ok(())
    }

    fn new_run(&mut self, now: Timestamp, workflow: &WorkflowId, started: &Event) -> Result<()> {
        let mut record = self.workflow_record(workflow)?;
        self.0.archive_history(workflow, record.summary.run)?;
        self.0
            .insert_events(workflow, std::slice::from_ref(started))?;
        let s = &mut record.summary;
        if let EventKind::WorkflowStarted { version, input, .. } = &started.kind {
            s.version = *version;
            s.input = input.clone();
        }
        s.run += 1;
        s.last_seq = Seq::FIRST;
        s.progress = None;
        s.status = WorkflowStatus::Running;
        s.pause_reason = None;
        s.updated_at = now;
        self.0.put_workflow(&record)?;
        for id in self.0.tasks_of(workflow)? {
            if self.0.get_task(id)?.is_some_and(|t| t.is_activity()) {
                self.0.delete_task(id)?;
            }
        }
        for m in self.0.messages_of(workflow)? {
            if !m.kind.carries_over() {
                self.0.delete_message(workflow, m.id)?;
            }
        }
        Ok(())
    }

    fn reset_run(&mut self, now: Timestamp, reset: ResetRun<'_>) -> Result<()> {
        let (version, input) = reset.started()?;
        let workflow = reset.workflow;
        let mut record = self.workflow_record(workflow)?;
        self.0.archive_history(workflow, record.summary.run)?;
        self.0.insert_events(workflow, reset.events)?;
        for id in self.0.tasks_of(workflow)? {
            self.0.delete_task(id)?;
        }
        for m in self.0.messages_of(workflow)? {
            if !reset.keeps(&m.kind) {
                self.0.delete_message(workflow, m.id)?;
            }
        }
        record.task = None;
        let s = &mut record.summary;
        s.version = version;
        s.input = input.clone();
        s.run += 1;
        s.last_seq = reset.events.last().map_or(Seq::FIRST, |e| e.seq);
        s.progress = Some(reset.progress.clone());
        s.status = WorkflowStatus::Running;
        s.pause_reason = None;
        s.closed_at = None;
        s.output = None;
        s.failure = None;
        s.updated_at = now;
        self.0.put_workflow(&record)
    }

    fn append_logs(&mut self, workflow: &WorkflowId, logs: &[LogRecord]) -> Result<()> {
        self.0.insert_logs(workflow, logs)
    }

    fn set_tags(&mut self, workflow: &WorkflowId, tags: &[(String, TagValue)]) -> Result<()> {
        let mut record = self.workflow_record(workflow)?;
        for (key, value) in tags {
            record.summary.tags.insert(key.clone(), value.clone());
        }
        self.0.put_workflow(&record)
    }

    fn settle(&mut self, workflow: &WorkflowId, affinity: Option<(&str, Timestamp)>) -> Result<()> {
        let earliest = self.earliest_message(workflow)?;
        let Some((id, mut task)) = self.workflow_task_record(workflow)? else {
            return Ok(());
        };
        task.lease = None;
        task.deliveries = 0;
        task.visible_at = earliest;
        task.affinity = affinity.map(|(owner, until)| (owner.to_owned(), until));
        self.0.put_task(id, &task)
    }

    fn forget_affinity(&mut self, owner: &str) -> Result<()> {
        for id in self.0.preferring(owner, Timestamp::MAX, usize::MAX)? {
            let mut record = self.task_record(id)?;
            record.affinity = None;
            self.0.put_task(id, &record)?;
        }
        Ok(())
    }

    fn release(&mut self, task: TaskId, due: Timestamp) -> Result<()> {
        let mut record = self.task_record(task)?;
        record.lease = None;
        record.deliveries = 0;
        record.visible_at = Some(due);
        record.affinity = None;
        self.0.put_task(task, &record)
    }

    fn pause(&mut self, now: Timestamp, task: TaskId, reason: &str) -> Result<()> {
        let record = self.task_record(task)?;
        let mut wf = self.workflow_record(&record.workflow)?;
        wf.summary.status = WorkflowStatus::Paused;
        wf.summary.pause_reason = Some(reason.to_owned());
        wf.summary.updated_at = now;
        self.0.put_workflow(&wf)
    }

    fn purge(&mut self, now: Timestamp, purge: &crate::Purge) -> Result<Vec<WorkflowId>> {
        let ids = self.0.purgeable(purge, now)?;
        for id in &ids {
            for task in self.0.tasks_of(id)? {
                self.0.delete_task(task)?;
            }
            self.0.delete_workflow(id)?;
        }
        Ok(ids)
    }

    fn hold(&mut self, now: Timestamp, workflow: &WorkflowId, reason: &str) -> Result<()> {
        let mut wf = self.workflow_record(workflow)?;
        if let Some(task) = wf.task.take() {
            self.0.delete_task(task)?;
        }
        wf.summary.status = WorkflowStatus::Paused;
        wf.summary.pause_reason = Some(reason.to_owned());
        wf.summary.updated_at = now;
        self.0.put_workflow(&wf)
    }

    fn renew(&mut self, task: TaskId, until: Timestamp) -> Result<()> {
        let mut record = self.task_record(task)?;
        if let Some(lease) = record.lease.as_mut() {
            lease.1 = until;
        }
        record.visible_at = Some(until);
        self.0.put_task(task, &record)
    }

    fn claim_workflow_tasks(
        &mut self,
        now: Timestamp,
        of: Option<&WorkflowId>,
        req: &ClaimRequest,
    ) -> Result<Vec<WorkflowTask>> {
        let ids = match of {
            None => self.claimable_workflow_tasks(now, req)?,
            Some(wf) => self.claimable_of(wf, false, now, &req.owner, req.max)?,
        };
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let task = self.task_record(id)?;
            let ready_at = task.visible_at.unwrap_or(now);
            let (lease, task) = self.lease(id, task, now, req)?;
            let wf = self.workflow_record(&task.workflow)?;
            let mut messages: Vec<Message> = self
                .0
                .messages_of(&task.workflow)?
                .into_iter()
                .filter(|m| m.visible_at <= now)
                .collect();
            messages.sort_by_key(|m| (m.visible_at, m.id));
            claimed.push(WorkflowTask {
                lease,
                workflow_id: task.workflow,
                workflow_name: wf.summary.name,
                run: wf.summary.run,
                last_seq: wf.summary.last_seq,
                messages,
                deliveries: task.deliveries,
                ready_at,
                claimed_at: now,
            });
        }
        Ok(claimed)
    }

    fn claim_activity_tasks(
        &mut self,
        now: Timestamp,
        of: Option<&WorkflowId>,
        req: &ClaimRequest,
    ) -> Result<Vec<ActivityTask>> {
        let ids = match of {
            None => self
                .0
                .claimable(true, now, None, req.max)?
                .into_iter()
                .map(|(_, id)| id)
                .collect(),
            Some(wf) => self.claimable_of(wf, true, now, &req.owner, req.max)?,
        };
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let task = self.task_record(id)?;
            let ready_at = task.visible_at.unwrap_or(now);
            let (lease, task) = self.lease(id, task, now, req)?;
            let Some(spec) = task.activity else {
                continue;
            };
            claimed.push(ActivityTask {
                lease,
                workflow_id: task.workflow,
                activity_id: spec.activity_id,
                name: spec.name,
                input: spec.input,
                options: spec.options,
                attempt: spec.attempt,
                deliveries: task.deliveries,
                ready_at,
                claimed_at: now,
            });
        }
        Ok(claimed)
    }
}

/// A workflow's tasks and messages, for [`Storage::pending`](crate::Storage::pending), from
/// any [`Rows`].
pub fn pending<R: Rows + ?Sized>(rows: &mut R, id: &WorkflowId, now: Timestamp) -> Result<Pending> {
    if rows.get_workflow(id)?.is_none() {
        return Err(missing(id));
    }
    let mut tasks = Vec::new();
    for task in rows.tasks_of(id)? {
        if let Some(record) = rows.get_task(task)? {
            tasks.push(record.pending(task, now));
        }
    }
    tasks.sort_by_key(|t| t.id);
    let mut messages = rows.messages_of(id)?;
    messages.sort_by_key(|m| m.id);
    Ok(Pending { tasks, messages })
}

/// The workflows `purge` matches among `summaries` (all of a store's) at `now`, those that
/// ended first first, leaving out any with an open child: the selection of
/// [`Rows::purgeable`] for row stores that scan their workflows.
pub fn purgeable(
    summaries: &[&WorkflowSummary],
    purge: &crate::Purge,
    now: Timestamp,
) -> Vec<WorkflowId> {
    let parents: std::collections::BTreeSet<&WorkflowId> = summaries
        .iter()
        .filter(|s| !s.status.is_terminal())
        .filter_map(|s| s.parent.as_ref())
        .collect();
    let mut found: Vec<(Timestamp, &WorkflowId)> = summaries
        .iter()
        .filter(|s| purge.matches(s, now) && !parents.contains(&s.id))
        .filter_map(|s| Some((s.closed_at?, &s.id)))
        .collect();
    found.sort();
    found
        .into_iter()
        .take(purge.limit)
        .map(|(_, id)| id.clone())
        .collect()
}
