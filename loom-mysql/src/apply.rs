//! The engine's primitives in SQL: each method is one or a few statements and decides nothing
//! (see `loom_storage::engine::Op` for what each one means). A leased task's `visible_at` is
//! its lease's expiry, so "claimable" is `visible_at <= now`: one range scan of `tasks_ready`.
//!
//! The reads the engine's checks make are locking reads (`FOR UPDATE`): under `READ
//! COMMITTED` they see the latest committed row and hold it until the commit, so nothing the
//! checks found can change before the writes that follow. A workflow's task is locked before
//! the workflow, the order every write set takes.

use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, LogRecord, Seq, TagValue, Timestamp, WorkflowId,
};
use loom_storage::engine::{
    Apply, NewTask, NewWorkflow, ResetRun, StatusChange, TaskView, WorkflowChange, WorkflowView,
};
use loom_storage::{
    ActivityTask, ClaimRequest, Lease, Message, MessageId, Result, StorageError, TaskId,
    WorkflowTask,
};
use sqlx::mysql::MySqlRow;

use crate::db::{
    ACTIVITY_TASK, Db, Q, WORKFLOW_TASK, b, encode, id_i64, level_str, ms, seq, seq_i64, task_i64,
};

/// One task a claim took: its lease, workflow, deliveries, since when it was ready, and for an
/// activity task the row that says what it runs.
struct Claim {
    lease: Lease,
    workflow: WorkflowId,
    deliveries: u32,
    ready_at: Timestamp,
    row: MySqlRow,
}

/// The columns a claim reads of each task, locked: id, visible_at, lease_token, deliveries,
/// workflow_id, then an activity's activity_id, name, input, options, attempt.
const CLAIMED: &str = "id, visible_at, lease_token, deliveries, workflow_id, activity_id, name, \
    input, options, attempt";

impl Db<'_> {
    fn task_view(&mut self, q: Q<'_>) -> Result<Option<TaskView>> {
        let Some(r) = self.row(q)? else {
            return Ok(None);
        };
        let workflow = self.text(&r, 0)?;
        let kind: i8 = self.get(&r, 1)?;
        let activity: Option<i64> = self.get(&r, 2)?;
        let attempt: Option<u32> = self.get(&r, 3)?;
        let token: i64 = self.get(&r, 4)?;
        let expires: Option<i64> = self.get(&r, 5)?;
        Ok(Some(TaskView {
            workflow: WorkflowId::new(workflow),
            activity: (i64::from(kind) == ACTIVITY_TASK)
                .then(|| (ActivityId(seq(activity.unwrap_or(0))), attempt.unwrap_or(1))),
            token: token.unsigned_abs(),
            lease_expires_at: expires.map(Timestamp::from_millis),
        }))
    }

    /// Claims up to `req.max` claimable tasks of `kind` (of one workflow, with `of`): a new
    /// token, the lease's expiry (also the time the task is claimable again), the owner, one
    /// more delivery. Workflow tasks preferring `req.owner` come first and those another
    /// owner's affinity keeps are passed over. Rows another transaction holds are skipped.
    fn claim(
        &mut self,
        now: Timestamp,
        kind: i64,
        req: &ClaimRequest,
        of: Option<&WorkflowId>,
    ) -> Result<Vec<Claim>> {
        let expires = now.saturating_add(req.lease);
        let max = i64::try_from(req.max).unwrap_or(i64::MAX);
        let owner = b(&req.owner);
        let rows = match (of, kind) {
            (None, ACTIVITY_TASK) => self.rows(
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {CLAIMED} FROM tasks WHERE kind = 1 AND visible_at <= ?
                     ORDER BY visible_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
                )))
                .bind(ms(now))
                .bind(max),
            )?,
            (None, _) => {
                // Its own first, by the index of preferred owners; then the queue, passing
                // over what another owner's affinity keeps (its own show up again there).
                let mut rows = self.rows(
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {CLAIMED} FROM tasks WHERE affinity_owner = ? AND visible_at <= ?
                         ORDER BY visible_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
                    )))
                    .bind(owner)
                    .bind(ms(now))
                    .bind(max),
                )?;
                let mut taken: Vec<i64> = Vec::with_capacity(rows.len());
                for r in &rows {
                    taken.push(self.get(r, 0)?);
                }
                if rows.len() < req.max {
                    for r in self.rows(
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "SELECT {CLAIMED} FROM tasks WHERE kind = 0 AND visible_at <= ?
                             AND (affinity_owner IS NULL OR affinity_owner = ? OR affinity_until <= ?)
                             ORDER BY visible_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
                        )))
                        .bind(ms(now))
                        .bind(owner)
                        .bind(ms(now))
                        .bind(max),
                    )? {
                        if rows.len() == req.max {
                            break;
                        }
                        let id: i64 = self.get(&r, 0)?;
                        if !taken.contains(&id) {
                            taken.push(id);
                            rows.push(r);
                        }
                    }
                }
                rows
            }
            (Some(id), ACTIVITY_TASK) => self.rows(
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {CLAIMED} FROM tasks WHERE workflow_id = ? AND kind = 1 AND visible_at <= ?
                     ORDER BY visible_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
                )))
                .bind(b(id.as_str()))
                .bind(ms(now))
                .bind(max),
            )?,
            (Some(id), _) => self.rows(
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {CLAIMED} FROM tasks WHERE wft_of = ? AND visible_at <= ?
                     AND (affinity_owner IS NULL OR affinity_owner = ? OR affinity_until <= ?)
                     LIMIT ? FOR UPDATE SKIP LOCKED"
                )))
                .bind(b(id.as_str()))
                .bind(ms(now))
                .bind(owner)
                .bind(ms(now))
                .bind(max),
            )?,
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = self.get(&r, 0)?;
            let ready_at: i64 = self.get(&r, 1)?;
            let token = self.get::<i64>(&r, 2)?.saturating_add(1);
            let deliveries = self.get::<u32>(&r, 3)?.saturating_add(1);
            let workflow = WorkflowId::new(self.text(&r, 4)?);
            self.exec(
                sqlx::query(
                    "UPDATE tasks SET lease_token = ?, lease_expires_at = ?, visible_at = ?,
                     lease_owner = ?, deliveries = ? WHERE id = ?",
                )
                .bind(token)
                .bind(ms(expires))
                .bind(ms(expires))
                .bind(owner)
                .bind(deliveries)
                .bind(id),
            )?;
            claimed.push(Claim {
                lease: Lease {
                    task: TaskId(id.unsigned_abs()),
                    token: token.unsigned_abs(),
                    expires_at: expires,
                },
                workflow,
                deliveries,
                ready_at: Timestamp::from_millis(ready_at),
                row: r,
            });
        }
        Ok(claimed)
    }

    /// A workflow's messages due at `now`, by `(visible_at, id)`.
    pub(crate) fn due_messages(&mut self, id: &WorkflowId, now: Timestamp) -> Result<Vec<Message>> {
        let rows = self.rows(
            sqlx::query(
                "SELECT id, visible_at, kind FROM messages WHERE workflow_id = ? AND visible_at <= ?
                 ORDER BY visible_at, id",
            )
            .bind(b(id.as_str()))
            .bind(ms(now)),
        )?;
        self.messages(id, &rows)
    }

    /// Messages from their `(id, visible_at, kind)` columns.
    pub(crate) fn messages(&mut self, id: &WorkflowId, rows: &[MySqlRow]) -> Result<Vec<Message>> {
        rows.iter()
            .map(|r| {
                let mid: i64 = self.get(r, 0)?;
                let visible_at: i64 = self.get(r, 1)?;
                Ok(Message {
                    id: MessageId(mid.unsigned_abs()),
                    kind: self.json(r, 2, || format!("message {mid} of workflow \"{id}\""))?,
                    visible_at: Timestamp::from_millis(visible_at),
                })
            })
            .collect()
    }

    /// Keeps the current run's history as the history of its run, and empties the current
    /// one.
    fn archive_history(&mut self, workflow: &WorkflowId) -> Result<()> {
        self.exec(
            sqlx::query(
                "INSERT INTO past_events (workflow_id, run, seq, at, kind)
                 SELECT e.workflow_id, w.run, e.seq, e.at, e.kind
                 FROM events e JOIN workflows w ON w.id = e.workflow_id
                 WHERE e.workflow_id = ?",
            )
            .bind(b(workflow.as_str())),
        )?;
        self.exec(
            sqlx::query("DELETE FROM events WHERE workflow_id = ?").bind(b(workflow.as_str())),
        )
        .map(drop)
    }

    /// Deletes the workflow's messages that `keep` refuses. Which messages a new run keeps is
    /// the engine's rule, read here off each message.
    fn delete_messages_unless(
        &mut self,
        workflow: &WorkflowId,
        keep: impl Fn(&EventKind) -> bool,
    ) -> Result<()> {
        let rows = self.rows(
            sqlx::query("SELECT id, visible_at, kind FROM messages WHERE workflow_id = ?")
                .bind(b(workflow.as_str())),
        )?;
        for m in self.messages(workflow, &rows)? {
            if !keep(&m.kind) {
                self.exec(sqlx::query("DELETE FROM messages WHERE id = ?").bind(id_i64(m.id.0)))?;
            }
        }
        Ok(())
    }

    /// Locks a workflow's workflow task, if it has one: the first lock any write to the
    /// workflow takes.
    fn lock_workflow_task(&mut self, workflow: &WorkflowId) -> Result<()> {
        self.rows(
            sqlx::query("SELECT id FROM tasks WHERE wft_of = ? FOR UPDATE")
                .bind(b(workflow.as_str())),
        )
        .map(drop)
    }
}

impl Apply for Db<'_> {
    fn task(&mut self, task: TaskId) -> Result<Option<TaskView>> {
        self.task_view(
            sqlx::query(
                "SELECT workflow_id, kind, activity_id, attempt, lease_token, lease_expires_at
                 FROM tasks WHERE id = ? FOR UPDATE",
            )
            .bind(task_i64(task)),
        )
    }

    fn workflow(&mut self, workflow: &WorkflowId) -> Result<Option<WorkflowView>> {
        self.lock_workflow_task(workflow)?;
        let Some(r) = self.row(
            sqlx::query(
                "SELECT last_seq, status, parent_id, run FROM workflows WHERE id = ? FOR UPDATE",
            )
            .bind(b(workflow.as_str())),
        )?
        else {
            return Ok(None);
        };
        let last: i64 = self.get(&r, 0)?;
        let status = self.text(&r, 1)?;
        Ok(Some(WorkflowView {
            status: self.status(&status, workflow.as_str())?,
            last_seq: seq(last),
            parent: self.text_opt(&r, 2)?.map(WorkflowId::new),
            run: self.get(&r, 3)?,
        }))
    }

    fn workflow_task(&mut self, workflow: &WorkflowId) -> Result<Option<TaskView>> {
        self.task_view(
            sqlx::query(
                "SELECT workflow_id, kind, activity_id, attempt, lease_token, lease_expires_at
                 FROM tasks WHERE wft_of = ? FOR UPDATE",
            )
            .bind(b(workflow.as_str())),
        )
    }

    fn earliest_message(&mut self, workflow: &WorkflowId) -> Result<Option<Timestamp>> {
        let rows = self.rows(
            sqlx::query("SELECT MIN(visible_at) FROM messages WHERE workflow_id = ?")
                .bind(b(workflow.as_str())),
        )?;
        let earliest: Option<i64> = match rows.first() {
            Some(r) => self.get(r, 0)?,
            None => None,
        };
        Ok(earliest.map(Timestamp::from_millis))
    }

    fn schedule_version(&mut self, schedule: &str) -> Result<Option<u64>> {
        let row = self.row(
            sqlx::query("SELECT version FROM schedules WHERE id = ? FOR UPDATE").bind(b(schedule)),
        )?;
        Ok(match row {
            Some(r) => Some(self.get::<i64>(&r, 0)?.unsigned_abs()),
            None => None,
        })
    }

    fn put_schedule(&mut self, schedule: &loom_storage::Schedule) -> Result<()> {
        self.exec(
            sqlx::query(
                "INSERT INTO schedules (id, version, wake_at, body) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE version = VALUES(version), wake_at = VALUES(wake_at),
                     body = VALUES(body)",
            )
            .bind(b(&schedule.id))
            .bind(i64::try_from(schedule.version).unwrap_or(i64::MAX))
            .bind(schedule.wake_at.map(Timestamp::as_millis))
            .bind(encode(schedule)?),
        )
        .map(drop)
    }

    fn delete_schedule(&mut self, schedule: &str) -> Result<()> {
        self.exec(sqlx::query("DELETE FROM schedules WHERE id = ?").bind(b(schedule)))
            .map(drop)
    }

    fn create_workflow(&mut self, now: Timestamp, new: NewWorkflow<'_>) -> Result<()> {
        self.exec(
            sqlx::query(
                "INSERT INTO workflows (id, name, version, status, input, created_at, updated_at,
                                        last_seq, parent_id)
                 VALUES (?, ?, ?, 'running', ?, ?, ?, 1, ?)",
            )
            .bind(b(new.id.as_str()))
            .bind(b(new.name))
            .bind(new.version)
            .bind(encode(new.input)?)
            .bind(ms(now))
            .bind(ms(now))
            .bind(new.parent.map(|p| b(p.as_str()))),
        )?;
        self.append_events(new.id, std::slice::from_ref(new.started))
    }

    fn append_events(&mut self, workflow: &WorkflowId, events: &[Event]) -> Result<()> {
        for e in events {
            self.exec(
                sqlx::query("INSERT INTO events (workflow_id, seq, at, kind) VALUES (?, ?, ?, ?)")
                    .bind(b(workflow.as_str()))
                    .bind(seq_i64(e.seq))
                    .bind(ms(e.at))
                    .bind(encode(&e.kind)?),
            )?;
        }
        Ok(())
    }

    fn update_workflow(
        &mut self,
        now: Timestamp,
        workflow: &WorkflowId,
        change: &WorkflowChange,
    ) -> Result<()> {
        let last = change.last_seq.map(seq_i64);
        let progress = change.progress.as_ref().map(encode).transpose()?;
        let id = b(workflow.as_str());
        match &change.status {
            StatusChange::Keep => self.exec(
                sqlx::query(
                    "UPDATE workflows SET last_seq = COALESCE(?, last_seq),
                     progress = COALESCE(?, progress), updated_at = ? WHERE id = ?",
                )
                .bind(last)
                .bind(progress)
                .bind(ms(now))
                .bind(id),
            )?,
            StatusChange::Resume => self.exec(
                // `status` is set last: MySQL evaluates SET assignments left to right, and
                // the pause reason's test reads the status before it changes.
                sqlx::query(
                    "UPDATE workflows SET last_seq = COALESCE(?, last_seq),
                     progress = COALESCE(?, progress), updated_at = ?,
                     pause_reason = CASE WHEN status = 'paused' THEN NULL ELSE pause_reason END,
                     status = CASE WHEN status = 'paused' THEN 'running' ELSE status END
                     WHERE id = ?",
                )
                .bind(last)
                .bind(progress)
                .bind(ms(now))
                .bind(id),
            )?,
            StatusChange::Close(end) => self.exec(
                sqlx::query(
                    "UPDATE workflows SET last_seq = COALESCE(?, last_seq),
                     progress = COALESCE(?, progress), updated_at = ?, closed_at = ?,
                     status = ?, output = ?, failure = ?, pause_reason = NULL WHERE id = ?",
                )
                .bind(last)
                .bind(progress)
                .bind(ms(now))
                .bind(ms(now))
                .bind(b(end.status.as_str()))
                .bind(end.output.as_ref().map(encode).transpose()?)
                .bind(end.failure.as_ref().map(encode).transpose()?)
                .bind(id),
            )?,
        };
        Ok(())
    }

    fn insert_task(&mut self, workflow: &WorkflowId, task: &NewTask, due: Timestamp) -> Result<()> {
        match task {
            NewTask::Workflow => self.exec(
                sqlx::query("INSERT INTO tasks (kind, workflow_id, visible_at) VALUES (?, ?, ?)")
                    .bind(WORKFLOW_TASK)
                    .bind(b(workflow.as_str()))
                    .bind(ms(due)),
            )?,
            NewTask::Activity(a) => self.exec(
                sqlx::query(
                    "INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input,
                                        options, attempt)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(ACTIVITY_TASK)
                .bind(b(workflow.as_str()))
                .bind(ms(due))
                .bind(seq_i64(a.activity_id.0))
                .bind(b(&a.name))
                .bind(encode(&a.input)?)
                .bind(encode(&a.options)?)
                .bind(a.attempt),
            )?,
        };
        Ok(())
    }

    fn delete_task(&mut self, task: TaskId) -> Result<()> {
        self.exec(sqlx::query("DELETE FROM tasks WHERE id = ?").bind(task_i64(task)))
            .map(drop)
    }

    fn requeue(&mut self, task: TaskId, due: Timestamp) -> Result<()> {
        self.exec(
            sqlx::query(
                "UPDATE tasks SET attempt = attempt + 1, lease_expires_at = NULL, lease_owner = NULL,
                 deliveries = 0, visible_at = ? WHERE id = ?",
            )
            .bind(ms(due))
            .bind(task_i64(task)),
        )
        .map(drop)
    }

    fn post(&mut self, workflow: &WorkflowId, kind: &EventKind, visible: Timestamp) -> Result<()> {
        self.exec(
            sqlx::query("INSERT INTO messages (workflow_id, visible_at, kind) VALUES (?, ?, ?)")
                .bind(b(workflow.as_str()))
                .bind(ms(visible))
                .bind(encode(kind)?),
        )
        .map(drop)
    }

    fn wake(&mut self, now: Timestamp, workflow: &WorkflowId, at: Timestamp) -> Result<()> {
        self.exec(
            sqlx::query(
                "UPDATE tasks SET visible_at = LEAST(COALESCE(visible_at, ?),
                     CASE WHEN lease_expires_at > ? THEN GREATEST(?, lease_expires_at) ELSE ? END)
                 WHERE wft_of = ?",
            )
            .bind(ms(at))
            .bind(ms(now))
            .bind(ms(at))
            .bind(ms(at))
            .bind(b(workflow.as_str())),
        )
        .map(drop)
    }

    fn consume(&mut self, workflow: &WorkflowId, ids: &[MessageId]) -> Result<()> {
        for m in ids {
            self.exec(
                sqlx::query("DELETE FROM messages WHERE id = ? AND workflow_id = ?")
                    .bind(id_i64(m.0))
                    .bind(b(workflow.as_str())),
            )?;
        }
        Ok(())
    }

    fn unpost(&mut self, workflow: &WorkflowId, kind: &EventKind) -> Result<()> {
        self.exec(
            sqlx::query("DELETE FROM messages WHERE workflow_id = ? AND kind = ?")
                .bind(b(workflow.as_str()))
                .bind(encode(kind)?),
        )
        .map(drop)
    }

    fn delete_activity(&mut self, workflow: &WorkflowId, activity: ActivityId) -> Result<()> {
        self.exec(
            sqlx::query("DELETE FROM tasks WHERE workflow_id = ? AND kind = 1 AND activity_id = ?")
                .bind(b(workflow.as_str()))
                .bind(seq_i64(activity.0)),
        )
        .map(drop)
    }

    fn delete_work(&mut self, workflow: &WorkflowId) -> Result<()> {
        self.exec(
            sqlx::query("DELETE FROM messages WHERE workflow_id = ?").bind(b(workflow.as_str())),
        )?;
        self.exec(sqlx::query("DELETE FROM tasks WHERE workflow_id = ?").bind(b(workflow.as_str())))
            .map(drop)
    }

    fn new_run(&mut self, now: Timestamp, workflow: &WorkflowId, started: &Event) -> Result<()> {
        let (version, input) = match &started.kind {
            EventKind::WorkflowStarted { version, input, .. } => (*version, encode(input)?),
            _ => {
                return Err(StorageError::InvalidArgument(
                    "a new run starts with a WorkflowStarted event".into(),
                ));
            }
        };
        self.archive_history(workflow)?;
        self.append_events(workflow, std::slice::from_ref(started))?;
        self.exec(
            sqlx::query(
                "UPDATE workflows SET run = run + 1, version = ?, input = ?, last_seq = 1,
                     progress = NULL, status = 'running', pause_reason = NULL, updated_at = ?
                 WHERE id = ?",
            )
            .bind(version)
            .bind(input)
            .bind(ms(now))
            .bind(b(workflow.as_str())),
        )?;
        self.exec(
            sqlx::query("DELETE FROM tasks WHERE workflow_id = ? AND kind = 1")
                .bind(b(workflow.as_str())),
        )?;
        self.delete_messages_unless(workflow, EventKind::carries_over)
    }

    fn reset_run(&mut self, now: Timestamp, reset: ResetRun<'_>) -> Result<()> {
        let (version, input) = reset.started()?;
        let workflow = reset.workflow;
        let last_seq = reset.events.last().map_or(1, |e| e.seq.get());
        self.archive_history(workflow)?;
        self.append_events(workflow, reset.events)?;
        self.exec(
            sqlx::query(
                "UPDATE workflows SET run = run + 1, version = ?, input = ?, last_seq = ?,
                     progress = ?, status = 'running', pause_reason = NULL, closed_at = NULL,
                     output = NULL, failure = NULL, updated_at = ?
                 WHERE id = ?",
            )
            .bind(version)
            .bind(encode(input)?)
            .bind(seq_i64(Seq::new(last_seq)))
            .bind(encode(reset.progress)?)
            .bind(ms(now))
            .bind(b(workflow.as_str())),
        )?;
        self.exec(
            sqlx::query("DELETE FROM tasks WHERE workflow_id = ?").bind(b(workflow.as_str())),
        )?;
        self.delete_messages_unless(workflow, |kind| reset.keeps(kind))
    }

    fn set_tags(&mut self, workflow: &WorkflowId, tags: &[(String, TagValue)]) -> Result<()> {
        for (key, value) in tags {
            self.exec(
                sqlx::query(
                    "INSERT INTO tags (workflow_id, tag_key, tag_value, tag_text, num, created_at)
                     SELECT id, ?, ?, ?, ?, created_at FROM workflows WHERE id = ?
                     ON DUPLICATE KEY UPDATE tag_value = VALUES(tag_value),
                         tag_text = VALUES(tag_text), num = VALUES(num)",
                )
                .bind(b(key))
                .bind(encode(value)?)
                .bind(value.text().into_bytes())
                .bind(value.number())
                .bind(b(workflow.as_str())),
            )?;
        }
        Ok(())
    }

    fn append_logs(&mut self, workflow: &WorkflowId, logs: &[LogRecord]) -> Result<()> {
        for l in logs {
            self.exec(
                sqlx::query(
                    "INSERT INTO logs (workflow_id, seq, at, level, message) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(b(workflow.as_str()))
                .bind(seq_i64(l.seq))
                .bind(ms(l.at))
                .bind(b(level_str(l.level)))
                .bind(b(&l.message)),
            )?;
        }
        Ok(())
    }

    fn settle(&mut self, workflow: &WorkflowId, affinity: Option<(&str, Timestamp)>) -> Result<()> {
        self.exec(
            sqlx::query(
                "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
                 visible_at = (SELECT MIN(visible_at) FROM messages WHERE workflow_id = ?),
                 affinity_owner = ?, affinity_until = ?
                 WHERE wft_of = ?",
            )
            .bind(b(workflow.as_str()))
            .bind(affinity.map(|a| b(a.0)))
            .bind(affinity.map(|a| ms(a.1)))
            .bind(b(workflow.as_str())),
        )
        .map(drop)
    }

    fn forget_affinity(&mut self, owner: &str) -> Result<()> {
        self.exec(
            sqlx::query(
                "UPDATE tasks SET affinity_owner = NULL, affinity_until = NULL
                 WHERE affinity_owner = ?",
            )
            .bind(b(owner)),
        )
        .map(drop)
    }

    fn release(&mut self, task: TaskId, due: Timestamp) -> Result<()> {
        self.exec(
            sqlx::query(
                "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
                 visible_at = ?, affinity_owner = NULL, affinity_until = NULL WHERE id = ?",
            )
            .bind(ms(due))
            .bind(task_i64(task)),
        )
        .map(drop)
    }

    fn pause(&mut self, now: Timestamp, task: TaskId, reason: &str) -> Result<()> {
        let row = self
            .row(sqlx::query("SELECT workflow_id FROM tasks WHERE id = ?").bind(task_i64(task)))?;
        let Some(row) = row else {
            return Ok(());
        };
        let workflow = self.text(&row, 0)?;
        self.hold_status(now, &workflow, reason)
    }

    fn purge(&mut self, now: Timestamp, purge: &loom_storage::Purge) -> Result<Vec<WorkflowId>> {
        let before =
            ms(now).saturating_sub(i64::try_from(purge.older_than.as_millis()).unwrap_or(i64::MAX));
        // Terminal statuses only, whatever the filter: an open workflow is never purged, nor
        // one with an open child (its id must not be taken again while the child may report
        // to it).
        let mut sql = String::from(
            "SELECT id FROM workflows
             WHERE closed_at < ?
               AND status IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
               AND (? IS NULL OR status = ?) AND (? IS NULL OR name = ?)
               AND NOT EXISTS (
                   SELECT 1 FROM workflows c WHERE c.parent_id = workflows.id
                     AND c.status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out'))",
        );
        if !purge.except_names.is_empty() {
            sql.push_str(" AND name NOT IN (");
            sql.push_str(&vec!["?"; purge.except_names.len()].join(", "));
            sql.push(')');
        }
        sql.push_str(" ORDER BY closed_at, id LIMIT ?");
        let status = purge.status.map(|st| b(st.as_str()));
        let name = purge.name.as_deref().map(b);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before)
            .bind(status)
            .bind(status)
            .bind(name)
            .bind(name);
        for except in &purge.except_names {
            q = q.bind(b(except));
        }
        let rows = self.rows(q.bind(i64::try_from(purge.limit).unwrap_or(i64::MAX)))?;
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            ids.push(self.text(r, 0)?);
        }
        for id in &ids {
            for table in [
                "DELETE FROM events WHERE workflow_id = ?",
                "DELETE FROM past_events WHERE workflow_id = ?",
                "DELETE FROM messages WHERE workflow_id = ?",
                "DELETE FROM tasks WHERE workflow_id = ?",
                "DELETE FROM logs WHERE workflow_id = ?",
                "DELETE FROM tags WHERE workflow_id = ?",
                "DELETE FROM workflows WHERE id = ?",
            ] {
                self.exec(sqlx::query(table).bind(b(id)))?;
            }
        }
        Ok(ids.into_iter().map(WorkflowId::new).collect())
    }

    fn hold(&mut self, now: Timestamp, workflow: &WorkflowId, reason: &str) -> Result<()> {
        self.hold_status(now, workflow.as_str(), reason)?;
        self.exec(sqlx::query("DELETE FROM tasks WHERE wft_of = ?").bind(b(workflow.as_str())))
            .map(drop)
    }

    fn renew(&mut self, task: TaskId, until: Timestamp) -> Result<()> {
        self.exec(
            sqlx::query("UPDATE tasks SET lease_expires_at = ?, visible_at = ? WHERE id = ?")
                .bind(ms(until))
                .bind(ms(until))
                .bind(task_i64(task)),
        )
        .map(drop)
    }

    fn claim_workflow_tasks(
        &mut self,
        now: Timestamp,
        of: Option<&WorkflowId>,
        req: &ClaimRequest,
    ) -> Result<Vec<WorkflowTask>> {
        let mut tasks = Vec::new();
        for Claim {
            lease,
            workflow: workflow_id,
            deliveries,
            ready_at,
            ..
        } in self.claim(now, WORKFLOW_TASK, req, of)?
        {
            let row = self.row(
                sqlx::query("SELECT name, last_seq, run FROM workflows WHERE id = ?")
                    .bind(b(workflow_id.as_str())),
            )?;
            let Some(row) = row else {
                return Err(StorageError::Corrupt {
                    message: format!("workflow task {} has no workflow", lease.task.0),
                    source: None,
                });
            };
            let name = self.text(&row, 0)?;
            let last: i64 = self.get(&row, 1)?;
            let run: u32 = self.get(&row, 2)?;
            let messages = self.due_messages(&workflow_id, now)?;
            tasks.push(WorkflowTask {
                lease,
                workflow_id,
                workflow_name: name,
                run,
                last_seq: seq(last),
                messages,
                deliveries,
                ready_at,
                claimed_at: now,
            });
        }
        Ok(tasks)
    }

    fn claim_activity_tasks(
        &mut self,
        now: Timestamp,
        of: Option<&WorkflowId>,
        req: &ClaimRequest,
    ) -> Result<Vec<ActivityTask>> {
        let mut tasks = Vec::new();
        for claim in self.claim(now, ACTIVITY_TASK, req, of)? {
            let r = &claim.row;
            let task = claim.lease.task.0;
            let activity: Option<i64> = self.get(r, 5)?;
            let Some(activity) = activity else {
                return Err(StorageError::Corrupt {
                    message: format!("activity task {task} has no activity"),
                    source: None,
                });
            };
            let name = self.text_opt(r, 6)?.unwrap_or_default();
            let input = self.json(r, 7, || format!("the input of activity task {task}"))?;
            let options: ActivityOptions =
                self.json(r, 8, || format!("the options of activity task {task}"))?;
            let attempt: Option<u32> = self.get(r, 9)?;
            tasks.push(ActivityTask {
                lease: claim.lease,
                activity_id: ActivityId(seq(activity)),
                input,
                options,
                workflow_id: claim.workflow,
                name,
                attempt: attempt.unwrap_or(1),
                deliveries: claim.deliveries,
                ready_at: claim.ready_at,
                claimed_at: now,
            });
        }
        Ok(tasks)
    }
}

impl Db<'_> {
    /// Marks a workflow paused with `reason`.
    fn hold_status(&mut self, now: Timestamp, workflow: &str, reason: &str) -> Result<()> {
        self.exec(
            sqlx::query(
                "UPDATE workflows SET status = 'paused', pause_reason = ?, updated_at = ? WHERE id = ?",
            )
            .bind(b(reason))
            .bind(ms(now))
            .bind(b(workflow)),
        )
        .map(drop)
    }
}
