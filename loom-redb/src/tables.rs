//! The tables, their rows, and the records the engine's row primitives work on.
//!
//! Rows are JSON; keys are typed so that redb orders them: a history is a range of
//! `(workflow, seq)`, claimable tasks are a range of `(kind, visible_at, task)`, listings walk
//! `(created_at, id)` backwards. A write transaction implements [`Rows`], so every primitive
//! of the store is `loom_storage::engine::rows`'s; this file only keeps records and indexes.

use std::ops::Bound;
use std::path::Path;

use loom_core::{ActivityId, ActivityOptions, Event, LogRecord, Payload, Timestamp, WorkflowId};
use loom_storage::engine::ActivitySpec;
use loom_storage::engine::rows::{Rows, TaskRecord, WorkflowRecord};
use loom_storage::{Message, MessageId, Result, StorageError, TaskId};
use redb::{ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const WORKFLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("workflows");
pub(crate) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// The histories of earlier runs, by workflow, run and sequence number.
pub(crate) const PAST_EVENTS: TableDefinition<(&str, u32, u64), &[u8]> =
    TableDefinition::new("past_events");
pub(crate) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
pub(crate) const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
/// `(kind, visible_at, task)`: every task that has a `visible_at`, the claim index.
pub(crate) const READY: TableDefinition<(u8, i64, u64), ()> = TableDefinition::new("ready");
/// `(owner, visible_at, task)`: every workflow task that has an affinity (`i64::MAX` for no
/// `visible_at`), the index of its owner's claims.
pub(crate) const PREFERRED: TableDefinition<(&str, i64, u64), ()> =
    TableDefinition::new("preferred");
/// `(workflow, task)`: the activity tasks of each workflow.
pub(crate) const WF_ACTIVITIES: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("workflow_activities");
pub(crate) const BY_CREATED: TableDefinition<(i64, &str), ()> = TableDefinition::new("by_created");
pub(crate) const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");
/// Schedules by id, as JSON.
pub(crate) const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
/// `(wake_at, schedule)`: every schedule that has a `wake_at`.
pub(crate) const SCHEDULE_WAKES: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("schedule_wakes");

/// Creates every table, so that read transactions find them in a new file.
pub(crate) fn create_tables(
    tx: &redb::WriteTransaction,
) -> std::result::Result<(), redb::TableError> {
    tx.open_table(META)?;
    tx.open_table(WORKFLOWS)?;
    tx.open_table(EVENTS)?;
    tx.open_table(PAST_EVENTS)?;
    tx.open_table(MESSAGES)?;
    tx.open_table(TASKS)?;
    tx.open_table(READY)?;
    tx.open_table(PREFERRED)?;
    tx.open_table(WF_ACTIVITIES)?;
    tx.open_table(BY_CREATED)?;
    tx.open_table(LOGS)?;
    tx.open_table(SCHEDULES)?;
    tx.open_table(SCHEDULE_WAKES)?;
    Ok(())
}

/// The file format this build writes, stored under `meta["format"]`.
///
/// - 1: the first format.
/// - 2: runs: a workflow's current run in its record, the histories of earlier runs in
///   `past_events`. A format-1 file opens as format 2 (its workflows are on their first run);
///   a build that knows only format 1 then refuses it, since it would not know the runs.
/// - 3: affinity: a workflow task's preferred owner in its row, indexed in `preferred`. A
///   format-2 file opens as format 3 (none of its tasks has one); a build that knows only
///   format 2 then refuses it, since it would not keep that index.
pub(crate) const FORMAT: u64 = 3;

pub(crate) const WORKFLOW_TASK: u8 = 0;
pub(crate) const ACTIVITY_TASK: u8 = 1;

/// A task as format 1 stores it.
#[derive(Serialize, Deserialize)]
pub(crate) struct TaskRow {
    kind: TaskKind,
    /// When it may be claimed; while leased, the lease's expiry.
    visible_at: Option<i64>,
    lease: Option<HeldLease>,
    deliveries: u32,
    /// A workflow task's preferred owner and until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    affinity: Option<(String, i64)>,
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

impl From<TaskRow> for TaskRecord {
    fn from(row: TaskRow) -> Self {
        let (workflow, activity) = match row.kind {
            TaskKind::Workflow { workflow_id } => (workflow_id, None),
            TaskKind::Activity {
                workflow_id,
                activity_id,
                name,
                input,
                options,
                attempt,
            } => (
                workflow_id,
                Some(ActivitySpec {
                    activity_id,
                    name,
                    input,
                    options,
                    attempt,
                }),
            ),
        };
        TaskRecord {
            workflow,
            activity,
            visible_at: row.visible_at.map(Timestamp::from_millis),
            lease: row
                .lease
                .map(|l| (l.token, Timestamp::from_millis(l.expires_at))),
            deliveries: row.deliveries,
            affinity: row
                .affinity
                .map(|(owner, until)| (owner, Timestamp::from_millis(until))),
        }
    }
}

impl From<&TaskRecord> for TaskRow {
    fn from(task: &TaskRecord) -> Self {
        let kind = match &task.activity {
            None => TaskKind::Workflow {
                workflow_id: task.workflow.clone(),
            },
            Some(a) => TaskKind::Activity {
                workflow_id: task.workflow.clone(),
                activity_id: a.activity_id,
                name: a.name.clone(),
                input: a.input.clone(),
                options: a.options.clone(),
                attempt: a.attempt,
            },
        };
        TaskRow {
            kind,
            visible_at: task.visible_at.map(Timestamp::as_millis),
            lease: task.lease.map(|(token, expires)| HeldLease {
                token,
                expires_at: expires.as_millis(),
            }),
            deliveries: task.deliveries,
            affinity: task
                .affinity
                .as_ref()
                .map(|(owner, until)| (owner.clone(), until.as_millis())),
        }
    }
}

/// A task's key in [`PREFERRED`] (its owner and `visible_at`), if it belongs there.
fn preferred_key(task: &TaskRecord) -> Option<(&str, i64)> {
    let (owner, _) = task.affinity.as_ref()?;
    Some((
        owner.as_str(),
        task.visible_at.map_or(i64::MAX, Timestamp::as_millis),
    ))
}

fn slot(task: &TaskRecord) -> u8 {
    if task.is_activity() {
        ACTIVITY_TASK
    } else {
        WORKFLOW_TASK
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
        redb::Error::ValueTooLarge(_) => {
            StorageError::rejected(format!("a value is too large for {shown}"), e)
        }
        _ => StorageError::unavailable(format!("redb error on {shown}"), e),
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| StorageError::InvalidArgument(format!("cannot encode a value: {e}")))
}

/// One transaction and the file's path for errors.
pub(crate) struct Tx<'a, T> {
    pub(crate) tx: &'a T,
    pub(crate) path: &'a Path,
}

impl<T> Tx<'_, T> {
    pub(crate) fn err(&self, e: impl Into<redb::Error>) -> StorageError {
        redb_err(self.path, e)
    }

    pub(crate) fn decode<V: DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<V> {
        serde_json::from_slice(bytes).map_err(|e| {
            StorageError::corrupt(
                format!("{} in {} cannot be decoded", what(), self.path.display()),
                e,
            )
        })
    }
}

impl Rows for Tx<'_, redb::WriteTransaction> {
    fn get_schedule(&mut self, id: &str) -> Result<Option<loom_storage::Schedule>> {
        let table = self.tx.open_table(SCHEDULES).map_err(|e| self.err(e))?;
        let row = table.get(id).map_err(|e| self.err(e))?;
        row.map(|bytes| self.decode(bytes.value(), || format!("schedule {id}")))
            .transpose()
    }

    fn put_schedule(&mut self, schedule: &loom_storage::Schedule) -> Result<()> {
        self.delete_schedule(&schedule.id)?;
        let bytes = encode(schedule)?;
        {
            let mut table = self.tx.open_table(SCHEDULES).map_err(|e| self.err(e))?;
            table
                .insert(schedule.id.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        if let Some(w) = schedule.wake_at {
            let mut wakes = self
                .tx
                .open_table(SCHEDULE_WAKES)
                .map_err(|e| self.err(e))?;
            wakes
                .insert((w.as_millis(), schedule.id.as_str()), ())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn delete_schedule(&mut self, id: &str) -> Result<()> {
        let Some(old) = self.get_schedule(id)? else {
            return Ok(());
        };
        if let Some(w) = old.wake_at {
            let mut wakes = self
                .tx
                .open_table(SCHEDULE_WAKES)
                .map_err(|e| self.err(e))?;
            wakes.remove((w.as_millis(), id)).map_err(|e| self.err(e))?;
        }
        let mut table = self.tx.open_table(SCHEDULES).map_err(|e| self.err(e))?;
        table.remove(id).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn next_id(&mut self) -> Result<u64> {
        let mut meta = self.tx.open_table(META).map_err(|e| self.err(e))?;
        let next = meta
            .get("counter")
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value())
            + 1;
        meta.insert("counter", next).map_err(|e| self.err(e))?;
        Ok(next)
    }

    fn get_workflow(&mut self, id: &WorkflowId) -> Result<Option<WorkflowRecord>> {
        let table = self.tx.open_table(WORKFLOWS).map_err(|e| self.err(e))?;
        let row = table.get(id.as_str()).map_err(|e| self.err(e))?;
        row.map(|bytes| self.decode(bytes.value(), || format!("workflow {id}")))
            .transpose()
    }

    fn put_workflow(&mut self, record: &WorkflowRecord) -> Result<()> {
        let bytes = encode(record)?;
        let id = record.summary.id.as_str();
        let existed = {
            let mut table = self.tx.open_table(WORKFLOWS).map_err(|e| self.err(e))?;
            table
                .insert(id, bytes.as_slice())
                .map_err(|e| self.err(e))?
                .is_some()
        };
        if !existed {
            let mut index = self.tx.open_table(BY_CREATED).map_err(|e| self.err(e))?;
            index
                .insert((record.summary.created_at.as_millis(), id), ())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn insert_events(&mut self, id: &WorkflowId, events: &[Event]) -> Result<()> {
        let mut table = self.tx.open_table(EVENTS).map_err(|e| self.err(e))?;
        for e in events {
            let bytes = encode(e)?;
            table
                .insert((id.as_str(), e.seq.get()), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn archive_history(&mut self, id: &WorkflowId, run: u32) -> Result<()> {
        let mut events = self.tx.open_table(EVENTS).map_err(|e| self.err(e))?;
        let mut past = self.tx.open_table(PAST_EVENTS).map_err(|e| self.err(e))?;
        let moved = events
            .extract_from_if((id.as_str(), 0)..=(id.as_str(), u64::MAX), |_, _| true)
            .map_err(|e| self.err(e))?;
        for entry in moved {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            past.insert((id.as_str(), run, key.value().1), value.value())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn get_task(&mut self, id: TaskId) -> Result<Option<TaskRecord>> {
        let table = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
        let row = table.get(id.0).map_err(|e| self.err(e))?;
        row.map(|bytes| {
            self.decode::<TaskRow>(bytes.value(), || format!("{id}"))
                .map(TaskRecord::from)
        })
        .transpose()
    }

    fn put_task(&mut self, id: TaskId, task: &TaskRecord) -> Result<()> {
        let old = self.get_task(id)?;
        {
            let mut ready = self.tx.open_table(READY).map_err(|e| self.err(e))?;
            if let Some(old) = &old
                && let Some(v) = old.visible_at
            {
                ready
                    .remove((slot(old), v.as_millis(), id.0))
                    .map_err(|e| self.err(e))?;
            }
            if let Some(v) = task.visible_at {
                ready
                    .insert((slot(task), v.as_millis(), id.0), ())
                    .map_err(|e| self.err(e))?;
            }
        }
        let (was, is) = (old.as_ref().and_then(preferred_key), preferred_key(task));
        if was != is {
            let mut preferred = self.tx.open_table(PREFERRED).map_err(|e| self.err(e))?;
            if let Some((owner, v)) = was {
                preferred
                    .remove((owner, v, id.0))
                    .map_err(|e| self.err(e))?;
            }
            if let Some((owner, v)) = is {
                preferred
                    .insert((owner, v, id.0), ())
                    .map_err(|e| self.err(e))?;
            }
        }
        if old.is_none() && task.is_activity() {
            let mut index = self.tx.open_table(WF_ACTIVITIES).map_err(|e| self.err(e))?;
            index
                .insert((task.workflow.as_str(), id.0), ())
                .map_err(|e| self.err(e))?;
        }
        let bytes = encode(&TaskRow::from(task))?;
        let mut tasks = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
        tasks
            .insert(id.0, bytes.as_slice())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn delete_task(&mut self, id: TaskId) -> Result<()> {
        let Some(task) = self.get_task(id)? else {
            return Ok(());
        };
        if let Some(v) = task.visible_at {
            let mut ready = self.tx.open_table(READY).map_err(|e| self.err(e))?;
            ready
                .remove((slot(&task), v.as_millis(), id.0))
                .map_err(|e| self.err(e))?;
        }
        if let Some((owner, v)) = preferred_key(&task) {
            let mut preferred = self.tx.open_table(PREFERRED).map_err(|e| self.err(e))?;
            preferred
                .remove((owner, v, id.0))
                .map_err(|e| self.err(e))?;
        }
        if task.is_activity() {
            let mut index = self.tx.open_table(WF_ACTIVITIES).map_err(|e| self.err(e))?;
            index
                .remove((task.workflow.as_str(), id.0))
                .map_err(|e| self.err(e))?;
        }
        let mut tasks = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
        tasks.remove(id.0).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn tasks_of(&mut self, id: &WorkflowId) -> Result<Vec<TaskId>> {
        let mut tasks: Vec<TaskId> = {
            let index = self.tx.open_table(WF_ACTIVITIES).map_err(|e| self.err(e))?;
            let range = index
                .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
                .map_err(|e| self.err(e))?;
            range
                .map(|r| r.map(|(k, _)| TaskId(k.value().1)))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        if let Some(task) = self.get_workflow(id)?.and_then(|w| w.task)
            && self.get_task(task)?.is_some()
        {
            tasks.push(task);
        }
        tasks.sort();
        Ok(tasks)
    }

    fn messages_of(&mut self, id: &WorkflowId) -> Result<Vec<Message>> {
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

    fn insert_message(&mut self, id: &WorkflowId, message: &Message) -> Result<()> {
        let bytes = encode(message)?;
        let mut messages = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
        messages
            .insert((id.as_str(), message.id.0), bytes.as_slice())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn delete_message(&mut self, id: &WorkflowId, message: MessageId) -> Result<()> {
        let mut messages = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
        messages
            .remove((id.as_str(), message.0))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn insert_logs(&mut self, id: &WorkflowId, logs: &[LogRecord]) -> Result<()> {
        let mut table = self.tx.open_table(LOGS).map_err(|e| self.err(e))?;
        let first = {
            let last = table
                .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
                .map_err(|e| self.err(e))?
                .next_back()
                .transpose()
                .map_err(|e| self.err(e))?;
            last.map_or(0, |(k, _)| k.value().1 + 1)
        };
        for (n, line) in (first..).zip(logs) {
            let bytes = encode(line)?;
            table
                .insert((id.as_str(), n), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn purgeable(
        &mut self,
        purge: &loom_storage::Purge,
        now: Timestamp,
    ) -> Result<Vec<WorkflowId>> {
        // A scan of the workflows: retention runs in small batches, off the hot path.
        let table = self.tx.open_table(WORKFLOWS).map_err(|e| self.err(e))?;
        let mut summaries = Vec::new();
        for entry in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let record: WorkflowRecord =
                self.decode(value.value(), || format!("workflow {}", key.value()))?;
            // The candidates, and the open children that keep their parents.
            if purge.matches(&record.summary, now)
                || (record.summary.parent.is_some() && !record.summary.status.is_terminal())
            {
                summaries.push(record.summary);
            }
        }
        let all: Vec<&loom_storage::WorkflowSummary> = summaries.iter().collect();
        Ok(loom_storage::engine::rows::purgeable(&all, purge, now))
    }

    fn delete_workflow(&mut self, id: &WorkflowId) -> Result<()> {
        let Some(record) = self.get_workflow(id)? else {
            return Ok(());
        };
        let key = id.as_str();
        self.tx
            .open_table(WORKFLOWS)
            .and_then(|mut t| t.remove(key).map(drop).map_err(Into::into))
            .map_err(|e| self.err(e))?;
        self.tx
            .open_table(BY_CREATED)
            .and_then(|mut t| {
                t.remove((record.summary.created_at.as_millis(), key))
                    .map(drop)
                    .map_err(Into::into)
            })
            .map_err(|e| self.err(e))?;
        let mut events = self.tx.open_table(EVENTS).map_err(|e| self.err(e))?;
        events
            .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            .map_err(|e| self.err(e))?;
        let mut past = self.tx.open_table(PAST_EVENTS).map_err(|e| self.err(e))?;
        past.retain_in((key, 0, 0)..=(key, u32::MAX, u64::MAX), |_, _| false)
            .map_err(|e| self.err(e))?;
        let mut messages = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
        messages
            .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            .map_err(|e| self.err(e))?;
        let mut logs = self.tx.open_table(LOGS).map_err(|e| self.err(e))?;
        logs.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn claimable(
        &mut self,
        activity: bool,
        now: Timestamp,
        after: Option<(Timestamp, TaskId)>,
        max: usize,
    ) -> Result<Vec<(Timestamp, TaskId)>> {
        let slot = if activity {
            ACTIVITY_TASK
        } else {
            WORKFLOW_TASK
        };
        let ready = self.tx.open_table(READY).map_err(|e| self.err(e))?;
        let from = match after {
            Some((v, id)) => Bound::Excluded((slot, v.as_millis(), id.0)),
            None => Bound::Included((slot, i64::MIN, 0)),
        };
        let range = ready
            .range::<(u8, i64, u64)>((from, Bound::Included((slot, now.as_millis(), u64::MAX))))
            .map_err(|e| self.err(e))?;
        range
            .take(max)
            .map(|r| {
                r.map(|(k, _)| {
                    let (_, v, id) = k.value();
                    (Timestamp::from_millis(v), TaskId(id))
                })
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    fn preferring(&mut self, owner: &str, until: Timestamp, max: usize) -> Result<Vec<TaskId>> {
        let preferred = self.tx.open_table(PREFERRED).map_err(|e| self.err(e))?;
        let range = preferred
            .range((owner, i64::MIN, 0)..=(owner, until.as_millis(), u64::MAX))
            .map_err(|e| self.err(e))?;
        range
            .take(max)
            .map(|r| r.map(|(k, _)| TaskId(k.value().2)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }
}
