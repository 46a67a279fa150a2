//! The reads, on a redb read transaction: histories, summaries, listings, stats, logs and
//! pending work.

use loom_core::{Event, LogRecord, Seq, Timestamp, WorkflowId};
use loom_storage::engine::rows::{TaskRecord, WorkflowRecord};
use loom_storage::{
    Backlog, ListQuery, Message, Page, Pending, Read, Result, RunSummary, Stats, StorageError,
    TaskId, WorkflowSummary,
};
use redb::{ReadableTable, ReadableTableMetadata};

use crate::tables::{
    BY_CREATED, EVENTS, LOGS, MESSAGES, PAST_EVENTS, SCHEDULE_WAKES, SCHEDULES, TASKS, TaskRow, Tx,
    WF_ACTIVITIES, WORKFLOWS,
};

impl Tx<'_, redb::ReadTransaction> {
    fn workflow(&self, id: &WorkflowId) -> Result<WorkflowRecord> {
        let table = self.tx.open_table(WORKFLOWS).map_err(|e| self.err(e))?;
        let row = table.get(id.as_str()).map_err(|e| self.err(e))?;
        match row {
            Some(bytes) => self.decode(bytes.value(), || format!("workflow {id}")),
            None => Err(StorageError::NotFound(id.clone())),
        }
    }

    fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        let table = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
        let row = table.get(id).map_err(|e| self.err(e))?;
        row.map(|bytes| {
            self.decode::<TaskRow>(bytes.value(), || format!("task{id}"))
                .map(TaskRecord::from)
        })
        .transpose()
    }
}

impl Read for Tx<'_, redb::ReadTransaction> {
    fn schedule(&mut self, id: &str) -> Result<Option<loom_storage::Schedule>> {
        let table = self.tx.open_table(SCHEDULES).map_err(|e| self.err(e))?;
        let row = table.get(id).map_err(|e| self.err(e))?;
        row.map(|bytes| self.decode(bytes.value(), || format!("schedule {id}")))
            .transpose()
    }

    fn schedules(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<loom_storage::Schedule>> {
        let table = self.tx.open_table(SCHEDULES).map_err(|e| self.err(e))?;
        let range = match after {
            Some(a) => {
                table.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => table.range::<&str>(..),
        }
        .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            out.push(self.decode(value.value(), || format!("schedule {}", key.value()))?);
        }
        Ok(out)
    }

    fn due_schedules(
        &mut self,
        now: Timestamp,
        limit: usize,
    ) -> Result<(Vec<loom_storage::Schedule>, Option<Timestamp>)> {
        let ids: Vec<String> = {
            let wakes = self
                .tx
                .open_table(SCHEDULE_WAKES)
                .map_err(|e| self.err(e))?;
            let mut ids = Vec::new();
            for entry in wakes
                .range::<(i64, &str)>((i64::MIN, "")..)
                .map_err(|e| self.err(e))?
            {
                let (key, _) = entry.map_err(|e| self.err(e))?;
                let (at, id) = key.value();
                if at > now.as_millis() || ids.len() >= limit {
                    break;
                }
                ids.push(id.to_owned());
            }
            ids
        };
        let next = {
            let wakes = self
                .tx
                .open_table(SCHEDULE_WAKES)
                .map_err(|e| self.err(e))?;
            let mut range = wakes
                .range::<(i64, &str)>((now.as_millis().saturating_add(1), "")..)
                .map_err(|e| self.err(e))?;
            match range.next() {
                Some(entry) => Some(Timestamp::from_millis(
                    entry.map_err(|e| self.err(e))?.0.value().0,
                )),
                None => None,
            }
        };
        let mut due = Vec::new();
        for id in ids {
            if let Some(s) = Read::schedule(self, &id)? {
                due.push(s);
            }
        }
        Ok((due, next))
    }

    fn load_history(&mut self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        self.workflow(id)?;
        let table = self.tx.open_table(EVENTS).map_err(|e| self.err(e))?;
        let start = after.get().saturating_add(1);
        let mut events = Vec::new();
        for entry in table
            .range((id.as_str(), start)..=(id.as_str(), u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let seq = key.value().1;
            events.push(self.decode(value.value(), || format!("event #{seq} of workflow {id}"))?);
        }
        Ok(events)
    }

    fn load_run(&mut self, id: &WorkflowId, run: u32) -> Result<Vec<Event>> {
        let current = self.workflow(id)?.summary.run;
        if run == current {
            return self.load_history(id, Seq::ZERO);
        }
        let table = self.tx.open_table(PAST_EVENTS).map_err(|e| self.err(e))?;
        let mut events = Vec::new();
        for entry in table
            .range((id.as_str(), run, 0)..=(id.as_str(), run, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let seq = key.value().2;
            events.push(self.decode(value.value(), || {
                format!("event #{seq} of run {run} of workflow {id}")
            })?);
        }
        if events.is_empty() {
            return Err(StorageError::no_such_run(id, run, current));
        }
        Ok(events)
    }

    fn runs(&mut self, id: &WorkflowId) -> Result<Vec<RunSummary>> {
        self.workflow(id)?;
        let table = self.tx.open_table(PAST_EVENTS).map_err(|e| self.err(e))?;
        let mut runs: Vec<RunSummary> = Vec::new();
        for entry in table
            .range((id.as_str(), 0, 0)..=(id.as_str(), u32::MAX, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let (_, run, seq) = key.value();
            let event: Event = self.decode(value.value(), || {
                format!("event #{seq} of run {run} of workflow {id}")
            })?;
            match runs.last_mut() {
                Some(last) if last.run == run => {
                    last.ended_at = event.at;
                    last.events += 1;
                }
                _ => runs.push(RunSummary {
                    run,
                    started_at: event.at,
                    ended_at: event.at,
                    events: 1,
                }),
            }
        }
        Ok(runs)
    }

    fn describe(&mut self, id: &WorkflowId) -> Result<WorkflowSummary> {
        Ok(self.workflow(id)?.summary)
    }

    fn list(&mut self, q: &ListQuery) -> Result<Page<WorkflowSummary>> {
        let index = self.tx.open_table(BY_CREATED).map_err(|e| self.err(e))?;
        let mut items = Vec::new();
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
            items.push(summary);
            if items.len() > q.limit {
                break;
            }
        }
        Ok(Page::of_listing(items, q.limit))
    }

    fn backlog(&mut self, now: Timestamp) -> Result<Backlog> {
        let mut backlog = Backlog {
            at: now,
            ..Backlog::default()
        };
        let tasks = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
        for entry in tasks.iter().map_err(|e| self.err(e))? {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            let task: TaskRecord = self
                .decode::<TaskRow>(value.value(), || "a task".to_owned())?
                .into();
            let kind = if task.is_activity() {
                &mut backlog.activity_tasks
            } else {
                &mut backlog.workflow_tasks
            };
            kind.count(now, task.lease.map(|(_, until)| until), task.visible_at);
        }
        Ok(backlog)
    }

    fn stats(&mut self, now: Timestamp) -> Result<Stats> {
        let mut stats = Stats {
            at: now,
            ..Stats::default()
        };
        let now = now.as_millis();
        let workflows = self.tx.open_table(WORKFLOWS).map_err(|e| self.err(e))?;
        for entry in workflows.iter().map_err(|e| self.err(e))? {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            let row: WorkflowRecord = self.decode(value.value(), || "a workflow".to_owned())?;
            *stats.workflows.entry(row.summary.status).or_default() += 1;
        }
        let events = self.tx.open_table(EVENTS).map_err(|e| self.err(e))?;
        let past = self.tx.open_table(PAST_EVENTS).map_err(|e| self.err(e))?;
        stats.events =
            events.len().map_err(|e| self.err(e))? + past.len().map_err(|e| self.err(e))?;
        let messages = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
        for entry in messages.iter().map_err(|e| self.err(e))? {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            let m: Message = self.decode(value.value(), || "a message".to_owned())?;
            if m.visible_at.as_millis() > now {
                stats.messages_waiting += 1;
                stats.next_due_at = Some(
                    stats
                        .next_due_at
                        .map_or(m.visible_at, |t| t.min(m.visible_at)),
                );
            }
        }
        let tasks = self.tx.open_table(TASKS).map_err(|e| self.err(e))?;
        for entry in tasks.iter().map_err(|e| self.err(e))? {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            let task: TaskRecord = self
                .decode::<TaskRow>(value.value(), || "a task".to_owned())?
                .into();
            let workflow = !task.is_activity();
            if task.lease.is_some_and(|(_, until)| until.as_millis() > now) {
                *if workflow {
                    &mut stats.workflow_tasks_running
                } else {
                    &mut stats.activity_tasks_running
                } += 1;
            } else if let Some(at) = task.visible_at {
                let v = at.as_millis();
                if v <= now {
                    *if workflow {
                        &mut stats.workflow_tasks_ready
                    } else {
                        &mut stats.activity_tasks_ready
                    } += 1;
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

    fn logs(&mut self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        self.workflow(id)?;
        let table = self.tx.open_table(LOGS).map_err(|e| self.err(e))?;
        let mut logs = Vec::new();
        for entry in table
            .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            logs.push(self.decode(value.value(), || format!("a log line of workflow {id}"))?);
        }
        Ok(logs)
    }

    fn pending(&mut self, id: &WorkflowId, now: Timestamp) -> Result<Pending> {
        let workflow = self.workflow(id)?;
        let mut ids: Vec<u64> = {
            let index = self.tx.open_table(WF_ACTIVITIES).map_err(|e| self.err(e))?;
            let range = index
                .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
                .map_err(|e| self.err(e))?;
            range
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        ids.extend(workflow.task.map(|t| t.0));
        ids.sort_unstable();
        let mut tasks = Vec::new();
        for task in ids {
            if let Some(record) = self.task(task)? {
                tasks.push(record.pending(TaskId(task), now));
            }
        }
        let table = self.tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
        let mut messages: Vec<Message> = Vec::new();
        for entry in table
            .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            messages.push(self.decode(value.value(), || format!("a message of workflow {id}"))?);
        }
        Ok(Pending { tasks, messages })
    }
}
