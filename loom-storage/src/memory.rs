//! [`MemoryStorage`]: a complete backend in process memory, the reference every other backend
//! is held to, for tests and for embedding Loom where durability across restarts is not
//! needed.
//!
//! It is a small adapter: the rules are the [`engine`](crate::engine)'s and the primitives
//! are [`RowApply`](crate::engine::rows::RowApply)'s; this file keeps the records. All state
//! sits behind one mutex, held only for in-memory work and never across an await. Claims
//! read an ordered index of claimable tasks, so they cost O(batch) however many workflows
//! wait; listing and stats scan (they are rare, and the database backends index them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use loom_core::{Event, LogRecord, Seq, Timestamp, WorkflowId};

use crate::clock::{Clock, SystemClock};
use crate::engine::rows::{self, RowApply, Rows, TaskRecord, WorkflowRecord};
use crate::engine::{self, Applied, WriteSet};
use crate::error::{Result, StorageError};
use crate::model::{
    Backlog, ListQuery, Message, MessageId, Page, Pending, RunSummary, Stats, TaskId,
    WorkflowSummary,
};
use crate::schedule::Schedule;
use crate::transact::{Read, ReadJob, Transact};

/// A complete in-memory backend. Cheap to create; everything is lost when it is dropped.
pub struct MemoryStorage {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct State {
    /// One counter for task ids, message ids and fencing tokens: all only need to grow.
    counter: u64,
    workflows: BTreeMap<WorkflowId, Entry>,
    tasks: BTreeMap<TaskId, TaskRecord>,
    /// Every task with a `visible_at`, by kind (workflow tasks first) and time: the claim
    /// index, kept in step by `put_task` and `delete_task`, the only writers of tasks.
    ready: [BTreeSet<(Timestamp, TaskId)>; 2],
    /// Every task with an affinity, by owner and `visible_at` (`Timestamp::MAX` for none):
    /// the index of `preferring`, kept in step with `ready`.
    preferred: BTreeSet<(String, Timestamp, TaskId)>,
    events: u64,
    schedules: BTreeMap<String, Schedule>,
    /// Every schedule with a `wake_at`, by that time: kept in step by `put_schedule` and
    /// `delete_schedule`.
    wakes: BTreeSet<(Timestamp, String)>,
}

struct Entry {
    record: WorkflowRecord,
    history: Vec<Event>,
    /// The histories of earlier runs, by run.
    past: BTreeMap<u32, Vec<Event>>,
    messages: BTreeMap<MessageId, Message>,
    logs: Vec<LogRecord>,
    tasks: BTreeSet<TaskId>,
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
        // A write set's checks come before its writes, and the writes on records do not fail
        // once the checks passed, so a panic cannot leave the state half-changed by a failed
        // check: a poisoned lock is safe to reuse.
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

#[async_trait]
impl Transact for MemoryStorage {
    async fn transact(&self, ws: WriteSet) -> Result<Applied> {
        let now = self.clock.now();
        let mut st = self.lock();
        engine::apply(&mut RowApply(&mut *st), &ws, now)
    }

    async fn read<T: Send + 'static>(&self, read: ReadJob<T>) -> Result<T> {
        let now = self.clock.now();
        let mut st = self.lock();
        read(&mut *st, now)
    }
}

fn slot(task: &TaskRecord) -> usize {
    usize::from(task.is_activity())
}

impl State {
    fn entry(&self, id: &WorkflowId) -> Result<&Entry> {
        self.workflows
            .get(id)
            .ok_or_else(|| StorageError::NotFound(id.clone()))
    }

    fn entry_mut(&mut self, id: &WorkflowId) -> Result<&mut Entry> {
        self.workflows
            .get_mut(id)
            .ok_or_else(|| StorageError::NotFound(id.clone()))
    }
}

impl Rows for State {
    fn get_schedule(&mut self, id: &str) -> Result<Option<Schedule>> {
        Ok(self.schedules.get(id).cloned())
    }

    fn put_schedule(&mut self, schedule: &Schedule) -> Result<()> {
        self.unindex_schedule(&schedule.id);
        if let Some(w) = schedule.wake_at {
            self.wakes.insert((w, schedule.id.clone()));
        }
        self.schedules.insert(schedule.id.clone(), schedule.clone());
        Ok(())
    }

    fn delete_schedule(&mut self, id: &str) -> Result<()> {
        self.unindex_schedule(id);
        Ok(())
    }

    fn next_id(&mut self) -> Result<u64> {
        self.counter += 1;
        Ok(self.counter)
    }

    fn get_workflow(&mut self, id: &WorkflowId) -> Result<Option<WorkflowRecord>> {
        Ok(self.workflows.get(id).map(|e| e.record.clone()))
    }

    fn put_workflow(&mut self, record: &WorkflowRecord) -> Result<()> {
        match self.workflows.get_mut(&record.summary.id) {
            Some(entry) => entry.record = record.clone(),
            None => {
                self.workflows.insert(
                    record.summary.id.clone(),
                    Entry {
                        record: record.clone(),
                        history: Vec::new(),
                        past: BTreeMap::new(),
                        messages: BTreeMap::new(),
                        logs: Vec::new(),
                        tasks: BTreeSet::new(),
                    },
                );
            }
        }
        Ok(())
    }

    fn insert_events(&mut self, id: &WorkflowId, events: &[Event]) -> Result<()> {
        self.entry_mut(id)?.history.extend_from_slice(events);
        self.events += events.len() as u64;
        Ok(())
    }

    fn archive_history(&mut self, id: &WorkflowId, run: u32) -> Result<()> {
        let entry = self.entry_mut(id)?;
        let history = std::mem::take(&mut entry.history);
        entry.past.insert(run, history);
        Ok(())
    }

    fn get_task(&mut self, id: TaskId) -> Result<Option<TaskRecord>> {
        Ok(self.tasks.get(&id).cloned())
    }

    fn put_task(&mut self, id: TaskId, task: &TaskRecord) -> Result<()> {
        if let Some(old) = self.tasks.get(&id) {
            if let Some(v) = old.visible_at {
                self.ready[slot(old)].remove(&(v, id));
            }
            if let Some(key) = preferred_key(old, id) {
                self.preferred.remove(&key);
            }
        }
        if let Some(v) = task.visible_at {
            self.ready[slot(task)].insert((v, id));
        }
        if let Some(key) = preferred_key(task, id) {
            self.preferred.insert(key);
        }
        self.entry_mut(&task.workflow)?.tasks.insert(id);
        self.tasks.insert(id, task.clone());
        Ok(())
    }

    fn delete_task(&mut self, id: TaskId) -> Result<()> {
        if let Some(task) = self.tasks.remove(&id) {
            if let Some(v) = task.visible_at {
                self.ready[slot(&task)].remove(&(v, id));
            }
            if let Some(key) = preferred_key(&task, id) {
                self.preferred.remove(&key);
            }
            if let Some(entry) = self.workflows.get_mut(&task.workflow) {
                entry.tasks.remove(&id);
            }
        }
        Ok(())
    }

    fn tasks_of(&mut self, id: &WorkflowId) -> Result<Vec<TaskId>> {
        Ok(self
            .workflows
            .get(id)
            .map(|e| e.tasks.iter().copied().collect())
            .unwrap_or_default())
    }

    fn messages_of(&mut self, id: &WorkflowId) -> Result<Vec<Message>> {
        Ok(self
            .workflows
            .get(id)
            .map(|e| e.messages.values().cloned().collect())
            .unwrap_or_default())
    }

    fn insert_message(&mut self, id: &WorkflowId, message: &Message) -> Result<()> {
        self.entry_mut(id)?
            .messages
            .insert(message.id, message.clone());
        Ok(())
    }

    fn delete_message(&mut self, id: &WorkflowId, message: MessageId) -> Result<()> {
        if let Some(entry) = self.workflows.get_mut(id) {
            entry.messages.remove(&message);
        }
        Ok(())
    }

    fn insert_logs(&mut self, id: &WorkflowId, logs: &[LogRecord]) -> Result<()> {
        self.entry_mut(id)?.logs.extend_from_slice(logs);
        Ok(())
    }

    fn purgeable(&mut self, purge: &crate::Purge, now: Timestamp) -> Result<Vec<WorkflowId>> {
        let all: Vec<&WorkflowSummary> =
            self.workflows.values().map(|e| &e.record.summary).collect();
        Ok(rows::purgeable(&all, purge, now))
    }

    fn delete_workflow(&mut self, id: &WorkflowId) -> Result<()> {
        if let Some(entry) = self.workflows.remove(id) {
            let past: usize = entry.past.values().map(Vec::len).sum();
            self.events = self
                .events
                .saturating_sub((entry.history.len() + past) as u64);
        }
        Ok(())
    }

    fn claimable(
        &mut self,
        activity: bool,
        now: Timestamp,
        after: Option<(Timestamp, TaskId)>,
        max: usize,
    ) -> Result<Vec<(Timestamp, TaskId)>> {
        let from = match after {
            Some(key) => std::ops::Bound::Excluded(key),
            None => std::ops::Bound::Unbounded,
        };
        Ok(self.ready[usize::from(activity)]
            .range((from, std::ops::Bound::Unbounded))
            .take_while(|(v, _)| *v <= now)
            .take(max)
            .copied()
            .collect())
    }

    fn preferring(&mut self, owner: &str, until: Timestamp, max: usize) -> Result<Vec<TaskId>> {
        let from = (
            owner.to_owned(),
            Timestamp::from_millis(i64::MIN),
            TaskId(0),
        );
        Ok(self
            .preferred
            .range(from..)
            .take_while(|(o, v, _)| o == owner && *v <= until)
            .take(max)
            .map(|(_, _, id)| *id)
            .collect())
    }
}

/// A task's key in [`State::preferred`], if it belongs there.
fn preferred_key(task: &TaskRecord, id: TaskId) -> Option<(String, Timestamp, TaskId)> {
    let (owner, _) = task.affinity.as_ref()?;
    Some((owner.clone(), task.visible_at.unwrap_or(Timestamp::MAX), id))
}

impl State {
    fn unindex_schedule(&mut self, id: &str) {
        if let Some(old) = self.schedules.remove(id)
            && let Some(w) = old.wake_at
        {
            self.wakes.remove(&(w, old.id));
        }
    }
}

impl Read for State {
    fn schedule(&mut self, id: &str) -> Result<Option<Schedule>> {
        Ok(self.schedules.get(id).cloned())
    }

    fn schedules(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<Schedule>> {
        let range = match after {
            Some(a) => self
                .schedules
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.schedules.range::<str, _>(..),
        };
        Ok(range.take(limit).map(|(_, s)| s.clone()).collect())
    }

    fn due_schedules(
        &mut self,
        now: Timestamp,
        limit: usize,
    ) -> Result<(Vec<Schedule>, Option<Timestamp>)> {
        let due = self
            .wakes
            .iter()
            .take_while(|(w, _)| *w <= now)
            .take(limit)
            .filter_map(|(_, id)| self.schedules.get(id).cloned())
            .collect();
        let next = self.wakes.iter().map(|(w, _)| *w).find(|w| *w > now);
        Ok((due, next))
    }

    fn load_history(&mut self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        Ok(self
            .entry(id)?
            .history
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect())
    }

    fn load_run(&mut self, id: &WorkflowId, run: u32) -> Result<Vec<Event>> {
        let entry = self.entry(id)?;
        let current = entry.record.summary.run;
        if run == current {
            return Ok(entry.history.clone());
        }
        entry
            .past
            .get(&run)
            .cloned()
            .ok_or_else(|| StorageError::no_such_run(id, run, current))
    }

    fn runs(&mut self, id: &WorkflowId) -> Result<Vec<RunSummary>> {
        Ok(self
            .entry(id)?
            .past
            .iter()
            .filter_map(|(run, history)| {
                Some(RunSummary {
                    run: *run,
                    started_at: history.first()?.at,
                    ended_at: history.last()?.at,
                    events: history.len() as u64,
                })
            })
            .collect())
    }

    fn describe(&mut self, id: &WorkflowId) -> Result<WorkflowSummary> {
        Ok(self.entry(id)?.record.summary.clone())
    }

    fn list(&mut self, query: &ListQuery) -> Result<Page<WorkflowSummary>> {
        let mut rows: Vec<&WorkflowSummary> = self
            .workflows
            .values()
            .map(|w| &w.record.summary)
            .filter(|s| query.matches(s))
            .filter(|s| {
                query
                    .after
                    .as_ref()
                    .is_none_or(|c| (s.created_at, &s.id) < (c.created_at, &c.id))
            })
            .collect();
        rows.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        // Only one row past the page is needed to know that there is a next page.
        let items = rows
            .into_iter()
            .take(query.limit.saturating_add(1))
            .cloned()
            .collect();
        Ok(Page::of_listing(items, query.limit))
    }

    fn stats(&mut self, now: Timestamp) -> Result<Stats> {
        let mut stats = Stats {
            events: self.events,
            at: now,
            ..Stats::default()
        };
        let earlier = |a: Option<Timestamp>, b: Timestamp| Some(a.map_or(b, |a| a.min(b)));
        for wf in self.workflows.values() {
            *stats.workflows.entry(wf.record.summary.status).or_default() += 1;
            for m in wf.messages.values().filter(|m| m.visible_at > now) {
                stats.messages_waiting += 1;
                stats.next_due_at = earlier(stats.next_due_at, m.visible_at);
            }
        }
        for task in self.tasks.values() {
            let activity = task.is_activity();
            let leased = task.lease.is_some_and(|(_, until)| until > now);
            if leased {
                *if activity {
                    &mut stats.activity_tasks_running
                } else {
                    &mut stats.workflow_tasks_running
                } += 1;
            } else if let Some(v) = task.visible_at {
                if v <= now {
                    *if activity {
                        &mut stats.activity_tasks_ready
                    } else {
                        &mut stats.workflow_tasks_ready
                    } += 1;
                    stats.oldest_ready_at = earlier(stats.oldest_ready_at, v);
                } else {
                    if activity {
                        stats.activity_tasks_waiting += 1;
                    }
                    stats.next_due_at = earlier(stats.next_due_at, v);
                }
            }
        }
        Ok(stats)
    }

    fn backlog(&mut self, now: Timestamp) -> Result<Backlog> {
        let mut backlog = Backlog {
            at: now,
            ..Backlog::default()
        };
        for task in self.tasks.values() {
            let kind = if task.is_activity() {
                &mut backlog.activity_tasks
            } else {
                &mut backlog.workflow_tasks
            };
            kind.count(now, task.lease.map(|(_, until)| until), task.visible_at);
        }
        Ok(backlog)
    }

    fn logs(&mut self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        Ok(self.entry(id)?.logs.clone())
    }

    fn pending(&mut self, id: &WorkflowId, now: Timestamp) -> Result<Pending> {
        rows::pending(self, id, now)
    }
}
