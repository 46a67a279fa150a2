//! The tables, their rows, and the operations of each `Storage` method on them.
//!
//! Rows are JSON; keys are typed so that redb orders them: a history is a range of
//! `(workflow, seq)`, ready tasks are a range of `(kind, visible_at, task)`, listings walk
//! `(created_at, id)` backwards.

use std::path::Path;
use std::time::Duration;

use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, LogRecord, Payload, Seq, Timestamp, WorkflowId,
};
use loom_storage::plan::{activity_result, check_append, started_fields};
use loom_storage::{
    ActivityTask, ActivityTaskCompletion, ClaimRequest, Lease, ListCursor, ListQuery, Message,
    MessageId, Page, Release, Result, Stats, StorageError, TaskId, TaskPlan, WorkflowStatus,
    WorkflowSummary, WorkflowTask, WorkflowTaskCompletion,
};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const WORKFLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("workflows");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
/// `(kind, visible_at, task)`: every task that has a `visible_at`, the claim index.
const READY: TableDefinition<(u8, i64, u64), ()> = TableDefinition::new("ready");
/// `(workflow, task)`: the activity tasks of each workflow, deleted when it ends.
const WF_ACTIVITIES: TableDefinition<(&str, u64), ()> = TableDefinition::new("workflow_activities");
const BY_CREATED: TableDefinition<(i64, &str), ()> = TableDefinition::new("by_created");
const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");

/// Creates every table, so that read transactions find them in a new file.
pub(crate) fn create_tables(
    tx: &redb::WriteTransaction,
) -> std::result::Result<(), redb::TableError> {
    tx.open_table(META)?;
    tx.open_table(WORKFLOWS)?;
    tx.open_table(EVENTS)?;
    tx.open_table(MESSAGES)?;
    tx.open_table(TASKS)?;
    tx.open_table(READY)?;
    tx.open_table(WF_ACTIVITIES)?;
    tx.open_table(BY_CREATED)?;
    tx.open_table(LOGS)?;
    Ok(())
}

/// The file format this build writes, stored under `meta["format"]`.
pub(crate) const FORMAT: u64 = 1;

const WORKFLOW_TASK: u8 = 0;
const ACTIVITY_TASK: u8 = 1;

#[derive(Serialize, Deserialize)]
struct WorkflowRow {
    summary: WorkflowSummary,
    task: u64,
}

#[derive(Serialize, Deserialize)]
struct TaskRow {
    kind: TaskKind,
    /// When it may be claimed; while leased, the lease's expiry.
    visible_at: Option<i64>,
    lease: Option<HeldLease>,
    deliveries: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct HeldLease {
    token: u64,
    expires_at: i64,
}

#[derive(Serialize, Deserialize, Clone)]
enum TaskKind {
    Workflow {
        workflow_id: WorkflowId,
    },
    Activity {
        workflow_id: WorkflowId,
        activity_id: ActivityId,
        name: String,
        input: Payload,
        options: ActivityOptions,
        attempt: u32,
    },
}

impl TaskRow {
    fn slot(&self) -> u8 {
        match self.kind {
            TaskKind::Workflow { .. } => WORKFLOW_TASK,
            TaskKind::Activity { .. } => ACTIVITY_TASK,
        }
    }

    fn live_lease(&self, now: i64) -> Option<HeldLease> {
        self.lease.filter(|l| l.expires_at > now)
    }

    fn workflow_id(&self) -> &WorkflowId {
        match &self.kind {
            TaskKind::Workflow { workflow_id } | TaskKind::Activity { workflow_id, .. } => {
                workflow_id
            }
        }
    }
}

/// Maps any redb error to a storage error naming the file.
pub(crate) fn redb_err(path: &Path, e: impl Into<redb::Error>) -> StorageError {
    let e: redb::Error = e.into();
    let shown = path.display();
    match e {
        redb::Error::Corrupted(_) => {
            StorageError::corrupt(format!("the redb database {shown} is damaged"), e)
        }
        redb::Error::DatabaseAlreadyOpen => StorageError::Unavailable {
            message: format!(
                "{shown} is already open in another process; redb allows one process per file. \
                 To share a database between processes use SQLite (sqlite://) or PostgreSQL"
            ),
            source: Some(Box::new(e)),
        },
        redb::Error::UpgradeRequired(_) => StorageError::Incompatible(format!(
            "{shown} was written by a different redb file format: {e}"
        )),
        _ => StorageError::unavailable(format!("redb error on {shown}"), e),
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| StorageError::InvalidArgument(format!("cannot encode a value: {e}")))
}

/// One transaction, the file's path for errors, and the time of the request.
pub(crate) struct Tx<'a, T> {
    pub(crate) tx: &'a T,
    pub(crate) path: &'a Path,
    pub(crate) now: Timestamp,
}

/// Reads shared by read and write transactions.
macro_rules! reads {
    ($t:ty $(, $attr:meta)?) => {
        $(#[$attr])?
        impl Tx<'_, $t> {
            fn err(&self, e: impl Into<redb::Error>) -> StorageError {
                redb_err(self.path, e)
            }

            fn decode<T: DeserializeOwned>(&self, bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
                serde_json::from_slice(bytes).map_err(|e| {
                    StorageError::corrupt(format!("{} in {} cannot be decoded", what(), self.path.display()), e)
                })
            }

            fn workflow(&self, id: &WorkflowId) -> Result<WorkflowRow> {
                let table = self.tx.open_table(WORKFLOWS).map_err(|e| self.err(e))?;
                let row = table.get(id.as_str()).map_err(|e| self.err(e))?;
                match row {
                    Some(bytes) => self.decode(bytes.value(), || format!("workflow {id}")),
                    None => Err(StorageError::NotFound(id.clone())),
                }
            }

            pub(crate) fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
                self.workflow(id)?;
                let table = self.tx.open_table(EVENTS).map_err(|e| self.err(e))?;
                let start = after.get().saturating_add(1);
                let mut events = Vec::new();
                for entry in table.range((id.as_str(), start)..=(id.as_str(), u64::MAX)).map_err(|e| self.err(e))? {
                    let (key, value) = entry.map_err(|e| self.err(e))?;
                    let seq = key.value().1;
                    events.push(self.decode(value.value(), || format!("event #{seq} of workflow {id}"))?);
                }
                Ok(events)
            }

            pub(crate) fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
                Ok(self.workflow(id)?.summary)
            }

            pub(crate) fn list(&self, q: &ListQuery) -> Result<Page<WorkflowSummary>> {
                let index = self.tx.open_table(BY_CREATED).map_err(|e| self.err(e))?;
                let mut items = Vec::new();
                let mut more = false;
                let rows = match &q.after {
                    Some(c) => index.range(..(c.created_at.as_millis(), c.id.as_str())),
                    None => index.range::<(i64, &str)>(..),
                }
                .map_err(|e| self.err(e))?;
                for entry in rows.rev() {
                    let (key, ()) = entry.map(|(k, _)| (k, ())).map_err(|e| self.err(e))?;
                    let id = WorkflowId::new(key.value().1);
                    let summary = self.workflow(&id)?.summary;
                    if !q.matches(&summary) {
                        continue;
                    }
                    if items.len() == q.limit {
                        more = true;
                        break;
                    }
                    items.push(summary);
                }
                let next = match items.last() {
                    Some(last) if more => Some(ListCursor {
                        created_at: last.created_at,
                        id: last.id.clone(),
                    }),
                    _ => None,
                };
                Ok(Page { items, next })
            }

            pub(crate) fn stats(&self) -> Result<Stats> {
                let now = self.now.as_millis();
                let mut stats = Stats::default();
                let workflows = self.tx.open_table(WORKFLOWS).map_err(|e| self.err(e))?;
                for entry in workflows.iter().map_err(|e| self.err(e))? {
                    let (_, value) = entry.map_err(|e| self.err(e))?;
                    let row: WorkflowRow = self.decode(value.value(), || "a workflow".to_owned())?;
                    *stats.workflows.entry(row.summary.status).or_default() += 1;
                }
                let events = self.tx.open_table(EVENTS).map_err(|e| self.err(e))?;
                stats.events = events.len().map_err(|e| self.err(e))?;
                let messages = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
                for entry in messages.iter().map_err(|e| self.err(e))? {
                    let (_, value) = entry.map_err(|e| self.err(e))?;
                    let m: Message = self.decode(value.value(), || "a message".to_owned())?;
                    if m.visible_at.as_millis() > now {
                        stats.messages_waiting += 1;
                        stats.next_due_at = Some(stats.next_due_at.map_or(m.visible_at, |t| t.min(m.visible_at)));
                    }
                }
                let tasks = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
                for entry in tasks.iter().map_err(|e| self.err(e))? {
                    let (_, value) = entry.map_err(|e| self.err(e))?;
                    let task: TaskRow = self.decode(value.value(), || "a task".to_owned())?;
                    let workflow = task.slot() == WORKFLOW_TASK;
                    if task.live_lease(now).is_some() {
                        *if workflow { &mut stats.workflow_tasks_running } else { &mut stats.activity_tasks_running } += 1;
                    } else if let Some(v) = task.visible_at {
                        let at = Timestamp::from_millis(v);
                        if v <= now {
                            *if workflow { &mut stats.workflow_tasks_ready } else { &mut stats.activity_tasks_ready } += 1;
                            stats.oldest_ready_at = Some(stats.oldest_ready_at.map_or(at, |t| t.min(at)));
                        } else {
                            if !workflow {
                                stats.activity_tasks_waiting += 1;
                            }
                            stats.next_due_at = Some(stats.next_due_at.map_or(at, |t| t.min(at)));
                        }
                    }
                }
                Ok(stats)
            }

            pub(crate) fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
                self.workflow(id)?;
                let table = self.tx.open_table(LOGS).map_err(|e| self.err(e))?;
                let mut logs = Vec::new();
                for entry in table.range((id.as_str(), 0)..=(id.as_str(), u64::MAX)).map_err(|e| self.err(e))? {
                    let (_, value) = entry.map_err(|e| self.err(e))?;
                    logs.push(self.decode(value.value(), || format!("a log line of workflow {id}"))?);
                }
                Ok(logs)
            }
        }
    };
}

reads!(redb::ReadTransaction);
reads!(
    redb::WriteTransaction,
    expect(
        dead_code,
        reason = "writes use the private helpers; the public reads run on read transactions"
    )
);

impl Tx<'_, redb::WriteTransaction> {
    fn next_id(&self) -> Result<u64> {
        let mut meta = self.tx.open_table(META).map_err(|e| self.err(e))?;
        let next = meta
            .get("counter")
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value())
            + 1;
        meta.insert("counter", next).map_err(|e| self.err(e))?;
        Ok(next)
    }

    fn put_workflow(&self, id: &WorkflowId, row: &WorkflowRow) -> Result<()> {
        let bytes = encode(row)?;
        let mut table = self.tx.open_table(WORKFLOWS).map_err(|e| self.err(e))?;
        table
            .insert(id.as_str(), bytes.as_slice())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn task(&self, id: u64) -> Result<Option<TaskRow>> {
        let table = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
        let row = table.get(id).map_err(|e| self.err(e))?;
        row.map(|bytes| self.decode(bytes.value(), || format!("task {id}")))
            .transpose()
    }

    /// Stores a task, keeping the ready index in step with its `visible_at`.
    fn save_task(&self, id: u64, row: &TaskRow) -> Result<()> {
        let old = self.task(id)?;
        let mut ready = self.tx.open_table(READY).map_err(|e| self.err(e))?;
        if let Some(v) = old.as_ref().and_then(|o| o.visible_at) {
            ready.remove((row.slot(), v, id)).map_err(|e| self.err(e))?;
        }
        if let Some(v) = row.visible_at {
            ready
                .insert((row.slot(), v, id), ())
                .map_err(|e| self.err(e))?;
        }
        drop(ready);
        let bytes = encode(row)?;
        let mut tasks = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
        tasks
            .insert(id, bytes.as_slice())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn delete_task(&self, id: u64) -> Result<()> {
        if let Some(row) = self.task(id)? {
            let mut ready = self.tx.open_table(READY).map_err(|e| self.err(e))?;
            if let Some(v) = row.visible_at {
                ready.remove((row.slot(), v, id)).map_err(|e| self.err(e))?;
            }
            drop(ready);
            if let TaskKind::Activity { workflow_id, .. } = &row.kind {
                let mut index = self.tx.open_table(WF_ACTIVITIES).map_err(|e| self.err(e))?;
                index
                    .remove((workflow_id.as_str(), id))
                    .map_err(|e| self.err(e))?;
            }
            let mut tasks = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
            tasks.remove(id).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn add_activity(&self, kind: TaskKind, visible_at: Timestamp) -> Result<()> {
        let id = self.next_id()?;
        let workflow = kind_workflow(&kind).clone();
        let row = TaskRow {
            kind,
            visible_at: Some(visible_at.as_millis()),
            lease: None,
            deliveries: 0,
        };
        self.save_task(id, &row)?;
        let mut index = self.tx.open_table(WF_ACTIVITIES).map_err(|e| self.err(e))?;
        index
            .insert((workflow.as_str(), id), ())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Adds a message and makes the workflow task ready by its time, unless a live lease holds
    /// it (then it stays visible at the lease's expiry).
    fn post(&self, id: &WorkflowId, kind: EventKind, visible_at: Timestamp) -> Result<()> {
        let mid = self.next_id()?;
        let message = Message {
            id: MessageId(mid),
            kind,
            visible_at,
        };
        let bytes = encode(&message)?;
        {
            let mut messages = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            messages
                .insert((id.as_str(), mid), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        let task_id = self.workflow(id)?.task;
        let Some(mut task) = self.task(task_id)? else {
            return Ok(());
        };
        let v = visible_at.as_millis();
        let due = match task.live_lease(self.now.as_millis()) {
            Some(l) => v.max(l.expires_at),
            None => v,
        };
        task.visible_at = Some(task.visible_at.map_or(due, |t| t.min(due)));
        self.save_task(task_id, &task)
    }

    fn messages(&self, id: &WorkflowId) -> Result<Vec<Message>> {
        let table = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in table
            .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            out.push(self.decode(value.value(), || format!("a message of workflow {id}"))?);
        }
        Ok(out)
    }

    /// Makes an unleased workflow task ready at its earliest message, or not ready.
    fn refresh(&self, id: &WorkflowId) -> Result<()> {
        let task_id = self.workflow(id)?.task;
        let Some(mut task) = self.task(task_id)? else {
            return Ok(());
        };
        if task.live_lease(self.now.as_millis()).is_some() {
            return Ok(());
        }
        task.visible_at = self
            .messages(id)?
            .iter()
            .map(|m| m.visible_at.as_millis())
            .min();
        self.save_task(task_id, &task)
    }

    pub(crate) fn create_workflow(&self, id: &WorkflowId, started: &Event) -> Result<()> {
        let (name, version, input) = started_fields(started)?;
        if id.as_str().is_empty() {
            return Err(StorageError::InvalidArgument(
                "a workflow id cannot be empty".into(),
            ));
        }
        match self.workflow(id) {
            Ok(existing) => {
                return Err(StorageError::AlreadyExists {
                    id: id.clone(),
                    status: existing.summary.status,
                });
            }
            Err(StorageError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let task = self.next_id()?;
        let summary = WorkflowSummary {
            id: id.clone(),
            name: name.to_owned(),
            version,
            status: WorkflowStatus::Running,
            input: input.clone(),
            created_at: self.now,
            updated_at: self.now,
            closed_at: None,
            last_seq: Seq::FIRST,
            output: None,
            failure: None,
            pause_reason: None,
            progress: None,
        };
        self.put_workflow(id, &WorkflowRow { summary, task })?;
        self.insert_events(id, std::slice::from_ref(started))?;
        let row = TaskRow {
            kind: TaskKind::Workflow {
                workflow_id: id.clone(),
            },
            visible_at: Some(self.now.as_millis()),
            lease: None,
            deliveries: 0,
        };
        self.save_task(task, &row)?;
        let mut index = self.tx.open_table(BY_CREATED).map_err(|e| self.err(e))?;
        index
            .insert((self.now.as_millis(), id.as_str()), ())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn insert_events(&self, id: &WorkflowId, events: &[Event]) -> Result<()> {
        let mut table = self.tx.open_table(EVENTS).map_err(|e| self.err(e))?;
        for e in events {
            let bytes = encode(e)?;
            table
                .insert((id.as_str(), e.seq.get()), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Checks and appends events and stores what they imply.
    fn append(&self, id: &WorkflowId, expected: Seq, events: &[Event]) -> Result<()> {
        let mut row = self.workflow(id)?;
        check_append(
            id,
            row.summary.last_seq,
            row.summary.status,
            expected,
            events,
        )?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        self.insert_events(id, events)?;
        row.summary.last_seq = last.seq;
        row.summary.updated_at = self.now;
        let plan = TaskPlan::from_events(events);
        if let Some(end) = &plan.terminal {
            row.summary.status = end.status;
            row.summary.output = end.output.clone();
            row.summary.failure = end.failure.clone();
            row.summary.pause_reason = None;
            row.summary.closed_at = Some(self.now);
        }
        self.put_workflow(id, &row)?;
        for a in plan.activities {
            let kind = TaskKind::Activity {
                workflow_id: id.clone(),
                activity_id: a.activity_id,
                name: a.name,
                input: a.input,
                options: a.options,
                attempt: 1,
            };
            self.add_activity(kind, self.now)?;
        }
        for t in &plan.timers {
            self.post(id, t.message(), t.fire_at)?;
        }
        if plan.terminal.is_some() {
            self.close(id, row.task)?;
        }
        Ok(())
    }

    /// Deletes an ended workflow's messages and tasks.
    fn close(&self, id: &WorkflowId, workflow_task: u64) -> Result<()> {
        let message_keys: Vec<u64> = {
            let table = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            let range = table
                .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
                .map_err(|e| self.err(e))?;
            range
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        {
            let mut table = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            for m in message_keys {
                table.remove((id.as_str(), m)).map_err(|e| self.err(e))?;
            }
        }
        let activity_tasks: Vec<u64> = {
            let index = self.tx.open_table(WF_ACTIVITIES).map_err(|e| self.err(e))?;
            let range = index
                .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
                .map_err(|e| self.err(e))?;
            range
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        for task in activity_tasks.into_iter().chain([workflow_task]) {
            self.delete_task(task)?;
        }
        Ok(())
    }

    pub(crate) fn append_events(
        &self,
        id: &WorkflowId,
        expected: Seq,
        events: &[Event],
    ) -> Result<()> {
        self.append(id, expected, events)?;
        self.refresh(id)
    }

    pub(crate) fn signal(&self, id: &WorkflowId, kind: EventKind) -> Result<()> {
        let row = self.workflow(id)?;
        if row.summary.status.is_terminal() {
            return Err(StorageError::Closed {
                id: id.clone(),
                status: row.summary.status,
            });
        }
        self.post(id, kind, self.now)
    }

    /// The task under `lease` if the lease is live.
    fn held(&self, lease: &Lease) -> Result<TaskRow> {
        match self.task(lease.task.0)? {
            Some(row)
                if row
                    .live_lease(self.now.as_millis())
                    .is_some_and(|l| l.token == lease.token) =>
            {
                Ok(row)
            }
            _ => Err(StorageError::LeaseLost(lease.task)),
        }
    }

    fn claim(&self, slot: u8, req: &ClaimRequest) -> Result<Vec<(u64, TaskRow, Lease, u32)>> {
        let now = self.now.as_millis();
        let ids: Vec<u64> = {
            let ready = self.tx.open_table(READY).map_err(|e| self.err(e))?;
            let range = ready
                .range((slot, i64::MIN, 0)..=(slot, now, u64::MAX))
                .map_err(|e| self.err(e))?;
            range
                .take(req.max)
                .map(|r| r.map(|(k, _)| k.value().2))
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        let expires = self.now.saturating_add(req.lease);
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(mut row) = self.task(id)? else {
                continue;
            };
            let token = self.next_id()?;
            row.lease = Some(HeldLease {
                token,
                expires_at: expires.as_millis(),
            });
            row.visible_at = Some(expires.as_millis());
            row.deliveries += 1;
            self.save_task(id, &row)?;
            let lease = Lease {
                task: TaskId(id),
                token,
                expires_at: expires,
            };
            let deliveries = row.deliveries;
            claimed.push((id, row, lease, deliveries));
        }
        Ok(claimed)
    }

    pub(crate) fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
        let mut tasks = Vec::new();
        for (_, row, lease, deliveries) in self.claim(WORKFLOW_TASK, req)? {
            let workflow_id = row.workflow_id().clone();
            let summary = self.workflow(&workflow_id)?.summary;
            let mut messages: Vec<Message> = self
                .messages(&workflow_id)?
                .into_iter()
                .filter(|m| m.visible_at <= self.now)
                .collect();
            messages.sort_by_key(|m| (m.visible_at, m.id));
            tasks.push(WorkflowTask {
                lease,
                workflow_id,
                workflow_name: summary.name,
                last_seq: summary.last_seq,
                messages,
                deliveries,
            });
        }
        Ok(tasks)
    }

    pub(crate) fn complete_workflow_task(&self, c: &WorkflowTaskCompletion) -> Result<()> {
        let task = self.held(&c.lease)?;
        if !matches!(&task.kind, TaskKind::Workflow { workflow_id } if *workflow_id == c.workflow_id)
        {
            return Err(StorageError::InvalidArgument(format!(
                "{} is not the workflow task of {}",
                c.lease.task, c.workflow_id
            )));
        }
        let id = &c.workflow_id;
        self.append(id, c.expected_last_seq, &c.events)?;
        {
            let mut messages = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            for m in &c.consumed {
                messages
                    .remove((id.as_str(), m.0))
                    .map_err(|e| self.err(e))?;
            }
        }
        if !c.logs.is_empty() {
            let first = {
                let logs = self.tx.open_table(LOGS).map_err(|e| self.err(e))?;
                let last = logs
                    .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
                    .map_err(|e| self.err(e))?
                    .next_back()
                    .transpose()
                    .map_err(|e| self.err(e))?;
                last.map_or(0, |(k, _)| k.value().1 + 1)
            };
            let mut logs = self.tx.open_table(LOGS).map_err(|e| self.err(e))?;
            for (n, line) in (first..).zip(&c.logs) {
                let bytes = encode(line)?;
                logs.insert((id.as_str(), n), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        let mut row = self.workflow(id)?;
        if c.progress.is_some() {
            row.summary.progress.clone_from(&c.progress);
        }
        if row.summary.status == WorkflowStatus::Paused {
            row.summary.status = WorkflowStatus::Running;
            row.summary.pause_reason = None;
        }
        row.summary.updated_at = self.now;
        self.put_workflow(id, &row)?;
        if let Some(mut task) = self.task(c.lease.task.0)? {
            task.lease = None;
            task.deliveries = 0;
            self.save_task(c.lease.task.0, &task)?;
            self.refresh(id)?;
        }
        Ok(())
    }

    pub(crate) fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
        let mut tasks = Vec::new();
        for (_, row, lease, deliveries) in self.claim(ACTIVITY_TASK, req)? {
            if let TaskKind::Activity {
                workflow_id,
                activity_id,
                name,
                input,
                options,
                attempt,
            } = row.kind
            {
                tasks.push(ActivityTask {
                    lease,
                    workflow_id,
                    activity_id,
                    name,
                    input,
                    options,
                    attempt,
                    deliveries,
                });
            }
        }
        Ok(tasks)
    }

    pub(crate) fn complete_activity_task(&self, c: &ActivityTaskCompletion) -> Result<()> {
        let task = self.held(&c.lease)?;
        let TaskKind::Activity {
            workflow_id,
            activity_id,
            name,
            input,
            options,
            attempt,
        } = task.kind.clone()
        else {
            return Err(StorageError::InvalidArgument(format!(
                "{} is not an activity task",
                c.lease.task
            )));
        };
        let (result_for, result_attempt, retry_at) = activity_result(&c.result)?;
        if result_for != activity_id || result_attempt != attempt {
            return Err(StorageError::InvalidArgument(format!(
                "the result is for {result_for} attempt {result_attempt}, the task is {activity_id} attempt {attempt}"
            )));
        }
        self.delete_task(c.lease.task.0)?;
        self.post(&workflow_id, c.result.clone(), self.now)?;
        if let Some(at) = retry_at {
            let next = TaskKind::Activity {
                workflow_id,
                activity_id,
                name,
                input,
                options,
                attempt: attempt + 1,
            };
            self.add_activity(next, at)?;
        }
        Ok(())
    }

    pub(crate) fn renew_lease(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        let mut task = self.held(lease)?;
        let expires_at = self.now.saturating_add(extend);
        if let Some(l) = task.lease.as_mut() {
            l.expires_at = expires_at.as_millis();
        }
        task.visible_at = Some(expires_at.as_millis());
        self.save_task(lease.task.0, &task)?;
        Ok(Lease {
            expires_at,
            ..*lease
        })
    }

    pub(crate) fn release_task(&self, lease: &Lease, release: &Release) -> Result<()> {
        let mut task = self.held(lease)?;
        task.lease = None;
        task.deliveries = 0;
        task.visible_at = Some(release.visible_at.unwrap_or(self.now).as_millis());
        self.save_task(lease.task.0, &task)?;
        if let (TaskKind::Workflow { workflow_id }, Some(reason)) = (&task.kind, &release.pause) {
            let mut row = self.workflow(workflow_id)?;
            row.summary.status = WorkflowStatus::Paused;
            row.summary.pause_reason = Some(reason.clone());
            row.summary.updated_at = self.now;
            self.put_workflow(workflow_id, &row)?;
        }
        Ok(())
    }
}

fn kind_workflow(kind: &TaskKind) -> &WorkflowId {
    match kind {
        TaskKind::Workflow { workflow_id } | TaskKind::Activity { workflow_id, .. } => workflow_id,
    }
}
