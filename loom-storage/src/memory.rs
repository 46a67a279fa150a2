//! [`MemoryStorage`]: a complete backend in process memory, for tests and for embedding Loom
//! where durability across restarts is not needed.
//!
//! All state sits behind one mutex, held only for in-memory work and never across an await.
//! Claims read an ordered index of ready tasks, so they cost O(batch) however many workflows
//! wait; listing and stats scan (they are rare, and the database backends index them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, LogRecord, Payload, Seq, Timestamp, WorkflowId,
};

use crate::Storage;
use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StorageError};
use crate::model::{
    ActivityTask, ActivityTaskCompletion, ClaimRequest, Lease, ListCursor, ListQuery, Message,
    MessageId, Page, Release, Stats, TaskId, WorkflowStatus, WorkflowSummary, WorkflowTask,
    WorkflowTaskCompletion,
};
use crate::plan::{TaskPlan, activity_result, check_append, started_fields};

/// A complete in-memory backend. Cheap to create; everything is lost when it is dropped.
pub struct MemoryStorage {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct State {
    /// One counter for task ids, message ids and fencing tokens: all only need to grow.
    counter: u64,
    workflows: BTreeMap<WorkflowId, WorkflowRecord>,
    tasks: BTreeMap<TaskId, TaskRecord>,
    /// Every task with a `visible_at`, by kind (workflow tasks first) and time: the claim
    /// index. Kept in step with `TaskRecord::visible_at` by `insert_task`, `set_visible` and
    /// `remove_task`, the only writers of that field.
    ready: [BTreeSet<(Timestamp, TaskId)>; 2],
    events: u64,
}

struct WorkflowRecord {
    summary: WorkflowSummary,
    history: Vec<Event>,
    messages: BTreeMap<MessageId, Message>,
    logs: Vec<LogRecord>,
    task: TaskId,
    activities: BTreeSet<TaskId>,
}

struct TaskRecord {
    kind: TaskKind,
    /// When it may be claimed; `None`: not runnable (a workflow waiting for messages). While
    /// a lease is held this is the lease's expiry, so a lapsed lease makes the task claimable
    /// again without anyone touching it.
    visible_at: Option<Timestamp>,
    lease: Option<HeldLease>,
    deliveries: u32,
}

struct HeldLease {
    token: u64,
    expires_at: Timestamp,
}

enum TaskKind {
    Workflow(WorkflowId),
    Activity(ActivityRecord),
}

#[derive(Clone)]
struct ActivityRecord {
    workflow_id: WorkflowId,
    activity_id: ActivityId,
    name: String,
    input: Payload,
    options: ActivityOptions,
    attempt: u32,
}

impl TaskRecord {
    fn is_claimable(&self, now: Timestamp) -> bool {
        self.visible_at.is_some_and(|t| t <= now)
    }

    fn is_running(&self, now: Timestamp) -> bool {
        self.live_lease(now).is_some()
    }

    fn live_lease(&self, now: Timestamp) -> Option<&HeldLease> {
        self.lease.as_ref().filter(|l| l.expires_at > now)
    }

    fn slot(&self) -> usize {
        match self.kind {
            TaskKind::Workflow(_) => 0,
            TaskKind::Activity(_) => 1,
        }
    }
}

impl MemoryStorage {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store on the given clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStorage {
            state: Mutex::new(State::default()),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation validates first and then only does infallible in-memory work, so a
        // panic cannot leave the state half-changed: a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("MemoryStorage")
            .field("workflows", &st.workflows.len())
            .field("tasks", &st.tasks.len())
            .finish()
    }
}

impl State {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn workflow(&self, id: &WorkflowId) -> Result<&WorkflowRecord> {
        self.workflows
            .get(id)
            .ok_or_else(|| StorageError::NotFound(id.clone()))
    }

    /// The task under `lease`, if the lease is still the live one.
    fn held(&mut self, lease: &Lease, now: Timestamp) -> Result<&mut TaskRecord> {
        match self.tasks.get_mut(&lease.task) {
            Some(task)
                if task
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.token == lease.token && l.expires_at > now) =>
            {
                Ok(task)
            }
            _ => Err(StorageError::LeaseLost(lease.task)),
        }
    }

    fn insert_task(&mut self, kind: TaskKind, visible_at: Option<Timestamp>) -> TaskId {
        let id = TaskId(self.next());
        let task = TaskRecord {
            kind,
            visible_at,
            lease: None,
            deliveries: 0,
        };
        if let Some(v) = visible_at {
            self.ready[task.slot()].insert((v, id));
        }
        self.tasks.insert(id, task);
        id
    }

    fn set_visible(&mut self, id: TaskId, visible_at: Option<Timestamp>) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let slot = task.slot();
        if let Some(old) = task.visible_at {
            self.ready[slot].remove(&(old, id));
        }
        task.visible_at = visible_at;
        if let Some(v) = visible_at {
            self.ready[slot].insert((v, id));
        }
    }

    fn remove_task(&mut self, id: TaskId) {
        if let Some(task) = self.tasks.remove(&id) {
            if let Some(v) = task.visible_at {
                self.ready[task.slot()].remove(&(v, id));
            }
        }
    }

    fn post(&mut self, id: &WorkflowId, kind: EventKind, visible_at: Timestamp, now: Timestamp) {
        let message_id = MessageId(self.next());
        let Some(wf) = self.workflows.get_mut(id) else {
            return;
        };
        wf.messages.insert(
            message_id,
            Message {
                id: message_id,
                kind,
                visible_at,
            },
        );
        let task_id = wf.task;
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        // A leased task stays invisible until its lease lapses or its holder commits.
        let due = match task.live_lease(now) {
            Some(l) => visible_at.max(l.expires_at),
            None => visible_at,
        };
        let next = task.visible_at.map_or(due, |t| t.min(due));
        self.set_visible(task_id, Some(next));
    }

    fn add_activity(&mut self, record: ActivityRecord, visible_at: Timestamp) {
        let workflow = record.workflow_id.clone();
        let id = self.insert_task(TaskKind::Activity(record), Some(visible_at));
        if let Some(wf) = self.workflows.get_mut(&workflow) {
            wf.activities.insert(id);
        }
    }

    /// Validates an append without changing anything.
    fn check_append(&self, id: &WorkflowId, expected: Seq, events: &[Event]) -> Result<()> {
        let wf = self.workflow(id)?;
        check_append(id, wf.summary.last_seq, wf.summary.status, expected, events)
    }

    /// Appends checked events and applies their plan. Infallible: call `check_append` first.
    fn apply_append(&mut self, id: &WorkflowId, events: Vec<Event>, now: Timestamp) {
        let plan = TaskPlan::from_events(&events);
        let Some(wf) = self.workflows.get_mut(id) else {
            return;
        };
        if let Some(last) = events.last() {
            wf.summary.last_seq = last.seq;
        }
        self.events += events.len() as u64;
        wf.history.extend(events);
        wf.summary.updated_at = now;
        for a in plan.activities {
            let record = ActivityRecord {
                workflow_id: id.clone(),
                activity_id: a.activity_id,
                name: a.name,
                input: a.input,
                options: a.options,
                attempt: 1,
            };
            self.add_activity(record, now);
        }
        for t in &plan.timers {
            self.post(id, t.message(), t.fire_at, now);
        }
        if let Some(end) = plan.terminal {
            let Some(wf) = self.workflows.get_mut(id) else {
                return;
            };
            wf.summary.status = end.status;
            wf.summary.output = end.output;
            wf.summary.failure = end.failure;
            wf.summary.pause_reason = None;
            wf.summary.closed_at = Some(now);
            wf.messages.clear();
            let doomed: Vec<TaskId> = std::mem::take(&mut wf.activities)
                .into_iter()
                .chain([wf.task])
                .collect();
            for task in doomed {
                self.remove_task(task);
            }
        }
    }

    /// Makes an unleased workflow task ready at its earliest message, or not ready if it has
    /// none. A leased one is left alone: its holder's commit refreshes it.
    fn refresh(&mut self, id: &WorkflowId, now: Timestamp) {
        let Some(wf) = self.workflows.get(id) else {
            return;
        };
        let earliest = wf.messages.values().map(|m| m.visible_at).min();
        let task = wf.task;
        if self
            .tasks
            .get(&task)
            .is_some_and(|t| t.live_lease(now).is_none())
        {
            self.set_visible(task, earliest);
        }
    }

    fn claimable(&self, now: Timestamp, max: usize, workflow: bool) -> Vec<TaskId> {
        let slot = usize::from(!workflow);
        self.ready[slot]
            .iter()
            .take_while(|(v, _)| *v <= now)
            .take(max)
            .map(|(_, id)| *id)
            .collect()
    }

    fn lease(&mut self, id: TaskId, now: Timestamp, duration: Duration) -> Option<(Lease, u32)> {
        let token = self.next();
        let expires_at = now.saturating_add(duration);
        self.set_visible(id, Some(expires_at));
        let task = self.tasks.get_mut(&id)?;
        task.lease = Some(HeldLease { token, expires_at });
        task.deliveries += 1;
        Some((
            Lease {
                task: id,
                token,
                expires_at,
            },
            task.deliveries,
        ))
    }

    fn signal_target(&self, id: &WorkflowId) -> Result<()> {
        let wf = self.workflow(id)?;
        if wf.summary.status.is_terminal() {
            return Err(StorageError::Closed {
                id: id.clone(),
                status: wf.summary.status,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()> {
        let (name, version, input) = started_fields(&started)?;
        if id.as_str().is_empty() {
            return Err(StorageError::InvalidArgument(
                "a workflow id cannot be empty".into(),
            ));
        }
        let now = self.clock.now();
        let mut st = self.lock();
        if let Some(existing) = st.workflows.get(id) {
            return Err(StorageError::AlreadyExists {
                id: id.clone(),
                status: existing.summary.status,
            });
        }
        let summary = WorkflowSummary {
            id: id.clone(),
            name: name.to_owned(),
            version,
            status: WorkflowStatus::Running,
            input: input.clone(),
            created_at: now,
            updated_at: now,
            closed_at: None,
            last_seq: Seq::FIRST,
            output: None,
            failure: None,
            pause_reason: None,
            progress: None,
        };
        let task = st.insert_task(TaskKind::Workflow(id.clone()), Some(now));
        st.events += 1;
        st.workflows.insert(
            id.clone(),
            WorkflowRecord {
                summary,
                history: vec![started],
                messages: BTreeMap::new(),
                logs: Vec::new(),
                task,
                activities: BTreeSet::new(),
            },
        );
        Ok(())
    }

    async fn append_events(
        &self,
        id: &WorkflowId,
        expected_last_seq: Seq,
        events: Vec<Event>,
    ) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        st.check_append(id, expected_last_seq, &events)?;
        st.apply_append(id, events, now);
        st.refresh(id, now);
        Ok(())
    }

    async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        let st = self.lock();
        let wf = st.workflow(id)?;
        Ok(wf
            .history
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect())
    }

    async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
        let now = self.clock.now();
        let mut st = self.lock();
        let mut claimed = Vec::new();
        for id in st.claimable(now, req.max, true) {
            let Some(TaskKind::Workflow(workflow_id)) = st.tasks.get(&id).map(|t| &t.kind) else {
                continue;
            };
            let workflow_id = workflow_id.clone();
            let Some((lease, deliveries)) = st.lease(id, now, req.lease) else {
                continue;
            };
            let wf = st.workflow(&workflow_id)?;
            let mut messages: Vec<Message> = wf
                .messages
                .values()
                .filter(|m| m.visible_at <= now)
                .cloned()
                .collect();
            messages.sort_by_key(|m| (m.visible_at, m.id));
            claimed.push(WorkflowTask {
                lease,
                workflow_name: wf.summary.name.clone(),
                last_seq: wf.summary.last_seq,
                workflow_id,
                messages,
                deliveries,
            });
        }
        Ok(claimed)
    }

    async fn complete_workflow_task(&self, c: WorkflowTaskCompletion) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        let task = st.held(&c.lease, now)?;
        match &task.kind {
            TaskKind::Workflow(id) if *id == c.workflow_id => {}
            _ => {
                return Err(StorageError::InvalidArgument(format!(
                    "{} is not the workflow task of \"{}\"",
                    c.lease.task, c.workflow_id
                )));
            }
        }
        st.check_append(&c.workflow_id, c.expected_last_seq, &c.events)?;
        st.apply_append(&c.workflow_id, c.events, now);
        let Some(wf) = st.workflows.get_mut(&c.workflow_id) else {
            return Err(StorageError::NotFound(c.workflow_id));
        };
        for id in &c.consumed {
            wf.messages.remove(id);
        }
        wf.logs.extend(c.logs);
        if c.progress.is_some() {
            wf.summary.progress = c.progress;
        }
        if wf.summary.status == WorkflowStatus::Paused {
            wf.summary.status = WorkflowStatus::Running;
            wf.summary.pause_reason = None;
        }
        wf.summary.updated_at = now;
        if let Some(task) = st.tasks.get_mut(&c.lease.task) {
            task.lease = None;
            task.deliveries = 0;
        }
        st.refresh(&c.workflow_id, now);
        Ok(())
    }

    async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
        let now = self.clock.now();
        let mut st = self.lock();
        let mut claimed = Vec::new();
        for id in st.claimable(now, req.max, false) {
            let Some(TaskKind::Activity(record)) = st.tasks.get(&id).map(|t| &t.kind) else {
                continue;
            };
            let record = record.clone();
            let Some((lease, deliveries)) = st.lease(id, now, req.lease) else {
                continue;
            };
            claimed.push(ActivityTask {
                lease,
                workflow_id: record.workflow_id,
                activity_id: record.activity_id,
                name: record.name,
                input: record.input,
                options: record.options,
                attempt: record.attempt,
                deliveries,
            });
        }
        Ok(claimed)
    }

    async fn complete_activity_task(&self, c: ActivityTaskCompletion) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        let task = st.held(&c.lease, now)?;
        let TaskKind::Activity(record) = &task.kind else {
            return Err(StorageError::InvalidArgument(format!(
                "{} is not an activity task",
                c.lease.task
            )));
        };
        let record = record.clone();
        let (activity_id, attempt, retry_at) = activity_result(&c.result)?;
        if activity_id != record.activity_id || attempt != record.attempt {
            return Err(StorageError::InvalidArgument(format!(
                "the result is for {activity_id} attempt {attempt}, the task is {} attempt {}",
                record.activity_id, record.attempt
            )));
        }
        st.remove_task(c.lease.task);
        if let Some(wf) = st.workflows.get_mut(&record.workflow_id) {
            wf.activities.remove(&c.lease.task);
        }
        st.post(&record.workflow_id, c.result, now, now);
        if let Some(at) = retry_at {
            let next = ActivityRecord {
                attempt: attempt + 1,
                ..record
            };
            st.add_activity(next, at);
        }
        Ok(())
    }

    async fn renew_lease(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        let now = self.clock.now();
        let mut st = self.lock();
        let task = st.held(lease, now)?;
        let expires_at = now.saturating_add(extend);
        if let Some(held) = task.lease.as_mut() {
            held.expires_at = expires_at;
        }
        st.set_visible(lease.task, Some(expires_at));
        Ok(Lease {
            expires_at,
            ..*lease
        })
    }

    async fn release_task(&self, lease: &Lease, release: Release) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        let task = st.held(lease, now)?;
        task.lease = None;
        task.deliveries = 0;
        let workflow = match &task.kind {
            TaskKind::Workflow(id) => Some(id.clone()),
            TaskKind::Activity(_) => None,
        };
        st.set_visible(lease.task, Some(release.visible_at.unwrap_or(now)));
        if let (Some(id), Some(reason)) = (workflow, release.pause) {
            if let Some(wf) = st.workflows.get_mut(&id) {
                wf.summary.status = WorkflowStatus::Paused;
                wf.summary.pause_reason = Some(reason);
                wf.summary.updated_at = now;
            }
        }
        Ok(())
    }

    async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        st.signal_target(id)?;
        let kind = EventKind::SignalReceived {
            name: name.to_owned(),
            payload,
        };
        st.post(id, kind, now, now);
        Ok(())
    }

    async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        st.signal_target(id)?;
        st.post(id, EventKind::CancelRequested { reason }, now, now);
        Ok(())
    }

    async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
        Ok(self.lock().workflow(id)?.summary.clone())
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>> {
        let st = self.lock();
        let mut rows: Vec<&WorkflowSummary> = st
            .workflows
            .values()
            .map(|w| &w.summary)
            .filter(|s| query.matches(s))
            .filter(|s| {
                query
                    .after
                    .as_ref()
                    .is_none_or(|c| (s.created_at, &s.id) < (c.created_at, &c.id))
            })
            .collect();
        rows.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        let more = rows.len() > query.limit;
        let items: Vec<WorkflowSummary> = rows.into_iter().take(query.limit).cloned().collect();
        let next = match items.last() {
            Some(last) if more => Some(ListCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            }),
            _ => None,
        };
        Ok(Page { items, next })
    }

    async fn stats(&self) -> Result<Stats> {
        let now = self.clock.now();
        let st = self.lock();
        let mut stats = Stats {
            events: st.events,
            ..Stats::default()
        };
        for wf in st.workflows.values() {
            *stats.workflows.entry(wf.summary.status).or_default() += 1;
            for m in wf.messages.values().filter(|m| m.visible_at > now) {
                stats.messages_waiting += 1;
                stats.next_due_at = Some(
                    stats
                        .next_due_at
                        .map_or(m.visible_at, |t| t.min(m.visible_at)),
                );
            }
        }
        for task in st.tasks.values() {
            let workflow = matches!(task.kind, TaskKind::Workflow(_));
            if task.is_running(now) {
                *if workflow {
                    &mut stats.workflow_tasks_running
                } else {
                    &mut stats.activity_tasks_running
                } += 1;
            } else if task.is_claimable(now) {
                *if workflow {
                    &mut stats.workflow_tasks_ready
                } else {
                    &mut stats.activity_tasks_ready
                } += 1;
                if let Some(v) = task.visible_at {
                    stats.oldest_ready_at = Some(stats.oldest_ready_at.map_or(v, |t| t.min(v)));
                }
            } else if let Some(v) = task.visible_at.filter(|v| *v > now) {
                if !workflow {
                    stats.activity_tasks_waiting += 1;
                }
                stats.next_due_at = Some(stats.next_due_at.map_or(v, |t| t.min(v)));
            }
        }
        Ok(stats)
    }

    async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        Ok(self.lock().workflow(id)?.logs.clone())
    }
}
