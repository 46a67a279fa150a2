//! The engine's primitives in SQL: each method is one or a few statements and decides nothing
//! (see `loom_storage::engine::Op` for what each one means). A leased task's `visible_at` is
//! its lease's expiry, so "claimable" is `visible_at <= now`: one range scan of `tasks_ready`.
//!
//! The reads the engine's checks make are locking reads (`FOR UPDATE`): under `READ
//! COMMITTED` they see the latest committed row and hold it until the commit, so nothing the
//! checks found can change before the writes that follow. A workflow's task is locked before
//! the workflow, the order every write set takes. Writes are kept and sent with the next read,
//! or with the batch's `COMMIT` (see [`Db::write`]).

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
use sqlx::Row as _;
use sqlx::mysql::MySqlRow;

use crate::db::{
    ACTIVITY_TASK, Db, V, WORKFLOW_TASK, b, encode, id_i64, ms, seq, seq_i64, task_i64,
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
macro_rules! claimed {
    ($rest:literal) => {
        concat!(
            "SELECT id, visible_at, lease_token, deliveries, workflow_id, activity_id, name, \
             input, options, attempt FROM tasks ",
            $rest
        )
    };
}

impl Db<'_> {
    /// The task in `rows` (the columns [`TASK`] names), if there is one.
    fn task_view(&mut self, rows: &[MySqlRow]) -> Result<Option<TaskView>> {
        let Some(r) = rows.iter().find(|r| r.len() == 6) else {
            return Ok(None);
        };
        let workflow = WorkflowId::new(self.text(r, 0)?);
        let kind: i8 = self.get(r, 1)?;
        let activity: Option<i64> = self.get(r, 2)?;
        let attempt: Option<u32> = self.get(r, 3)?;
        let token: i64 = self.get(r, 4)?;
        let expires: Option<i64> = self.get(r, 5)?;
        if i64::from(kind) == WORKFLOW_TASK {
            self.locked_wft(&workflow);
        }
        Ok(Some(TaskView {
            workflow,
            activity: (i64::from(kind) == ACTIVITY_TASK)
                .then(|| (ActivityId(seq(activity.unwrap_or(0))), attempt.unwrap_or(1))),
            token: token.unsigned_abs(),
            lease_expires_at: expires.map(Timestamp::from_millis),
        }))
    }

    /// Notes that this transaction holds `workflow`'s workflow task.
    fn locked_wft(&mut self, workflow: &WorkflowId) {
        if !self.locked.contains(workflow) {
            self.locked.push(workflow.clone());
        }
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
        let now_ms = ms(now);
        let rows = match (of, kind) {
            (None, ACTIVITY_TASK) => self.select(
                claimed!(
                    "WHERE kind = 1 AND visible_at <= ?
                     ORDER BY visible_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                &[V::I(now_ms), V::I(max)],
            )?,
            (None, _) => {
                // Every row a claim locks is a row it takes: `FOR UPDATE` holds a row until the
                // batch commits and a concurrent claim skips it, so a row locked for nothing
                // is kept from another claimer for nothing. Its own first: found by the index
                // of preferred owners without a lock (a locking scan there would also lock
                // the next owner's first entry, where the scan ends), then locked by their
                // ids, which locks those rows alone.
                let own = self.select(
                    "SELECT id FROM tasks WHERE affinity_owner = ? AND visible_at <= ?
                     ORDER BY visible_at, id LIMIT ?",
                    &[V::B(owner), V::I(now_ms), V::I(max)],
                )?;
                let mut rows = Vec::with_capacity(req.max);
                if !own.is_empty() {
                    let mut args = Vec::with_capacity(own.len() + 2);
                    for r in &own {
                        args.push(V::I(self.get(r, 0)?));
                    }
                    args.extend([V::B(owner), V::I(now_ms)]);
                    let sql = format!(
                        "{} WHERE id IN ({}) AND affinity_owner = ? AND visible_at <= ?
                         FOR UPDATE SKIP LOCKED",
                        claimed!("FORCE INDEX (PRIMARY)"),
                        vec!["?"; own.len()].join(", ")
                    );
                    rows = self.select(&sql, &args)?;
                    // In the queue's order, as the index gave them.
                    let mut keyed = Vec::with_capacity(rows.len());
                    for r in rows {
                        keyed.push(((self.get::<i64>(&r, 1)?, self.get::<i64>(&r, 0)?), r));
                    }
                    keyed.sort_by_key(|(k, _)| *k);
                    rows = keyed.into_iter().map(|(_, r)| r).collect();
                }
                // Then the queue for the rest, passing over what another owner's affinity
                // keeps and its own (found above).
                if rows.len() < req.max {
                    let rest = i64::try_from(req.max - rows.len()).unwrap_or(i64::MAX);
                    rows.extend(self.select(
                        claimed!(
                            "WHERE kind = 0 AND visible_at <= ?
                             AND (affinity_owner IS NULL OR (affinity_owner <> ? AND affinity_until <= ?))
                             ORDER BY visible_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
                        ),
                        &[V::I(now_ms), V::B(owner), V::I(now_ms), V::I(rest)],
                    )?);
                }
                rows
            }
            (Some(id), ACTIVITY_TASK) => self.select(
                claimed!(
                    "WHERE workflow_id = ? AND kind = 1 AND visible_at <= ?
                     ORDER BY visible_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                &[V::B(b(id.as_str())), V::I(now_ms), V::I(max)],
            )?,
            (Some(id), _) => self.select(
                claimed!(
                    "WHERE wft_of = ? AND visible_at <= ?
                     AND (affinity_owner IS NULL OR affinity_owner = ? OR affinity_until <= ?)
                     LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                &[
                    V::B(b(id.as_str())),
                    V::I(now_ms),
                    V::B(owner),
                    V::I(now_ms),
                    V::I(max),
                ],
            )?,
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = self.get(&r, 0)?;
            let ready_at: i64 = self.get(&r, 1)?;
            let token = self.get::<i64>(&r, 2)?.saturating_add(1);
            let deliveries = self.get::<u32>(&r, 3)?.saturating_add(1);
            let workflow = WorkflowId::new(self.text(&r, 4)?);
            if kind == WORKFLOW_TASK {
                self.locked_wft(&workflow);
            }
            self.write(
                "UPDATE tasks SET lease_token = ?, lease_expires_at = ?, visible_at = ?,
                 lease_owner = ?, deliveries = ? WHERE id = ?",
                &[
                    V::I(token),
                    V::I(ms(expires)),
                    V::I(ms(expires)),
                    V::B(owner),
                    deliveries.into(),
                    V::I(id),
                ],
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

    /// Messages from their `(id, visible_at, kind)` columns, at `from` in each row.
    pub(crate) fn messages<'r>(
        &mut self,
        id: &WorkflowId,
        rows: impl IntoIterator<Item = &'r MySqlRow>,
        from: usize,
    ) -> Result<Vec<Message>> {
        rows.into_iter()
            .map(|r| {
                let mid: i64 = self.get(r, from)?;
                let visible_at: i64 = self.get(r, from + 1)?;
                Ok(Message {
                    id: MessageId(mid.unsigned_abs()),
                    kind: self.json(r, from + 2, || {
                        format!("message {mid} of workflow \"{id}\"")
                    })?,
                    visible_at: Timestamp::from_millis(visible_at),
                })
            })
            .collect()
    }

    /// Keeps the current run's history as the history of its run, and empties the current
    /// one.
    fn archive_history(&mut self, workflow: &WorkflowId) -> Result<()> {
        let id = V::B(b(workflow.as_str()));
        self.write(
            "INSERT INTO past_events (workflow_id, run, seq, at, kind)
             SELECT e.workflow_id, w.run, e.seq, e.at, e.kind
             FROM events e JOIN workflows w ON w.id = e.workflow_id
             WHERE e.workflow_id = ?",
            &[id],
        )?;
        self.write("DELETE FROM events WHERE workflow_id = ?", &[id])
    }

    /// Deletes the workflow's messages that `keep` refuses. Which messages a new run keeps is
    /// the engine's rule, read here off each message.
    fn delete_messages_unless(
        &mut self,
        workflow: &WorkflowId,
        keep: impl Fn(&EventKind) -> bool,
    ) -> Result<()> {
        let rows = self.select(
            "SELECT id, visible_at, kind FROM messages WHERE workflow_id = ?",
            &[V::B(b(workflow.as_str()))],
        )?;
        for m in self.messages(workflow, &rows, 0)? {
            if !keep(&m.kind) {
                self.write("DELETE FROM messages WHERE id = ?", &[V::I(id_i64(m.id.0))])?;
            }
        }
        Ok(())
    }

    /// Marks a workflow paused with `reason`.
    fn hold_status(&mut self, now: Timestamp, workflow: &str, reason: &str) -> Result<()> {
        self.write(
            "UPDATE workflows SET status = 'paused', pause_reason = ?, updated_at = ? WHERE id = ?",
            &[V::B(b(reason)), V::I(ms(now)), V::B(b(workflow))],
        )
    }
}

/// The columns of a task that checks read, in [`Db::task_view`]'s order.
const TASK: &str = "SELECT workflow_id, kind, activity_id, attempt, lease_token, lease_expires_at \
    FROM tasks";

impl Apply for Db<'_> {
    fn task(&mut self, task: TaskId) -> Result<Option<TaskView>> {
        let rows = self.select(
            &format!("{TASK} WHERE id = ? FOR UPDATE"),
            &[V::I(task_i64(task))],
        )?;
        self.task_view(&rows)
    }

    fn workflow(&mut self, workflow: &WorkflowId) -> Result<Option<WorkflowView>> {
        let id = V::B(b(workflow.as_str()));
        // The workflow's task first (unless this transaction holds it already), then the
        // workflow: one round trip.
        let rows = if self.locked.contains(workflow) {
            self.select(
                "SELECT last_seq, status, parent_id, run FROM workflows WHERE id = ? FOR UPDATE",
                &[id],
            )?
        } else {
            self.select(
                "SELECT id FROM tasks WHERE wft_of = ? FOR UPDATE;
                 SELECT last_seq, status, parent_id, run FROM workflows WHERE id = ? FOR UPDATE",
                &[id, id],
            )?
        };
        if rows.iter().any(|r| r.len() == 1) {
            self.locked_wft(workflow);
        }
        let Some(r) = rows.iter().find(|r| r.len() == 4) else {
            return Ok(None);
        };
        let last: i64 = self.get(r, 0)?;
        let status = self.text(r, 1)?;
        Ok(Some(WorkflowView {
            status: self.status(&status, workflow.as_str())?,
            last_seq: seq(last),
            parent: self.text_opt(r, 2)?.map(WorkflowId::new),
            run: self.get(r, 3)?,
        }))
    }

    fn workflow_task(&mut self, workflow: &WorkflowId) -> Result<Option<TaskView>> {
        let rows = self.select(
            &format!("{TASK} WHERE wft_of = ? FOR UPDATE"),
            &[V::B(b(workflow.as_str()))],
        )?;
        self.task_view(&rows)
    }

    fn earliest_message(&mut self, workflow: &WorkflowId) -> Result<Option<Timestamp>> {
        let rows = self.select(
            "SELECT MIN(visible_at) FROM messages WHERE workflow_id = ?",
            &[V::B(b(workflow.as_str()))],
        )?;
        let earliest: Option<i64> = match rows.first() {
            Some(r) => self.get(r, 0)?,
            None => None,
        };
        Ok(earliest.map(Timestamp::from_millis))
    }

    fn schedule_version(&mut self, schedule: &str) -> Result<Option<u64>> {
        let rows = self.select(
            "SELECT version FROM schedules WHERE id = ? FOR UPDATE",
            &[V::B(b(schedule))],
        )?;
        Ok(match rows.first() {
            Some(r) => Some(self.get::<i64>(r, 0)?.unsigned_abs()),
            None => None,
        })
    }

    fn put_schedule(&mut self, schedule: &loom_storage::Schedule, new: bool) -> Result<()> {
        let body = encode(schedule)?;
        // A new schedule is a plain insert: its check could lock no row, so a concurrent
        // create of the same id meets this one on the key (and the batch runs again, where
        // the check finds it). A change updates the row its check locked.
        let sql = if new {
            "INSERT INTO schedules (id, version, wake_at, body) VALUES (?, ?, ?, ?)"
        } else {
            "UPDATE schedules SET version = ?, wake_at = ?, body = ? WHERE id = ?"
        };
        if !new {
            return self.write(
                sql,
                &[
                    V::I(i64::try_from(schedule.version).unwrap_or(i64::MAX)),
                    schedule.wake_at.map(Timestamp::as_millis).into(),
                    V::B(&body),
                    V::B(b(&schedule.id)),
                ],
            );
        }
        self.write(
            sql,
            &[
                V::B(b(&schedule.id)),
                V::I(i64::try_from(schedule.version).unwrap_or(i64::MAX)),
                schedule.wake_at.map(Timestamp::as_millis).into(),
                V::B(&body),
            ],
        )
    }

    fn delete_schedule(&mut self, schedule: &str) -> Result<()> {
        self.write("DELETE FROM schedules WHERE id = ?", &[V::B(b(schedule))])
    }

    fn create_workflow(&mut self, now: Timestamp, new: NewWorkflow<'_>) -> Result<()> {
        let input = encode(new.input)?;
        self.write(
            "INSERT INTO workflows (id, name, version, status, input, created_at, updated_at,
                                    last_seq, parent_id)
             VALUES (?, ?, ?, 'running', ?, ?, ?, 1, ?)",
            &[
                V::B(b(new.id.as_str())),
                V::B(b(new.name)),
                new.version.into(),
                V::B(&input),
                V::I(ms(now)),
                V::I(ms(now)),
                new.parent.map(|p| b(p.as_str())).into(),
            ],
        )?;
        self.append_events(new.id, std::slice::from_ref(new.started))
    }

    fn append_events(&mut self, workflow: &WorkflowId, events: &[Event]) -> Result<()> {
        for e in events {
            let kind = encode(&e.kind)?;
            self.write(
                "INSERT INTO events (workflow_id, seq, at, kind) VALUES (?, ?, ?, ?)",
                &[
                    V::B(b(workflow.as_str())),
                    V::I(seq_i64(e.seq)),
                    V::I(ms(e.at)),
                    V::B(&kind),
                ],
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
        let last: V<'_> = change.last_seq.map(seq_i64).into();
        let progress = change.progress.as_ref().map(encode).transpose()?;
        let progress: V<'_> = progress.as_ref().into();
        let id = V::B(b(workflow.as_str()));
        match &change.status {
            StatusChange::Keep => self.write(
                "UPDATE workflows SET last_seq = COALESCE(?, last_seq),
                 progress = COALESCE(?, progress), updated_at = ? WHERE id = ?",
                &[last, progress, V::I(ms(now)), id],
            ),
            // `status` is set last: MySQL evaluates SET assignments left to right, and the
            // pause reason's test reads the status before it changes.
            StatusChange::Resume => self.write(
                "UPDATE workflows SET last_seq = COALESCE(?, last_seq),
                 progress = COALESCE(?, progress), updated_at = ?,
                 pause_reason = CASE WHEN status = 'paused' THEN NULL ELSE pause_reason END,
                 status = CASE WHEN status = 'paused' THEN 'running' ELSE status END
                 WHERE id = ?",
                &[last, progress, V::I(ms(now)), id],
            ),
            StatusChange::Close(end) => {
                let output = end.output.as_ref().map(encode).transpose()?;
                let failure = end.failure.as_ref().map(encode).transpose()?;
                self.write(
                    "UPDATE workflows SET last_seq = COALESCE(?, last_seq),
                     progress = COALESCE(?, progress), updated_at = ?, closed_at = ?,
                     status = ?, output = ?, failure = ?, pause_reason = NULL WHERE id = ?",
                    &[
                        last,
                        progress,
                        V::I(ms(now)),
                        V::I(ms(now)),
                        V::B(b(end.status.as_str())),
                        output.as_ref().into(),
                        failure.as_ref().into(),
                        id,
                    ],
                )
            }
        }
    }

    fn insert_task(&mut self, workflow: &WorkflowId, task: &NewTask, due: Timestamp) -> Result<()> {
        let id = V::B(b(workflow.as_str()));
        match task {
            NewTask::Workflow => {
                self.locked_wft(workflow);
                self.write(
                    "INSERT INTO tasks (kind, workflow_id, visible_at) VALUES (0, ?, ?)",
                    &[id, V::I(ms(due))],
                )
            }
            NewTask::Activity(a) => {
                let input = encode(&a.input)?;
                let options = encode(&a.options)?;
                self.write(
                    "INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input,
                                        options, attempt)
                     VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                    &[
                        id,
                        V::I(ms(due)),
                        V::I(seq_i64(a.activity_id.0)),
                        V::B(b(&a.name)),
                        V::B(&input),
                        V::B(&options),
                        a.attempt.into(),
                    ],
                )
            }
        }
    }

    fn delete_task(&mut self, task: TaskId) -> Result<()> {
        self.write("DELETE FROM tasks WHERE id = ?", &[V::I(task_i64(task))])
    }

    fn requeue(&mut self, task: TaskId, due: Timestamp) -> Result<()> {
        self.write(
            "UPDATE tasks SET attempt = attempt + 1, lease_expires_at = NULL, lease_owner = NULL,
             deliveries = 0, visible_at = ? WHERE id = ?",
            &[V::I(ms(due)), V::I(task_i64(task))],
        )
    }

    fn post(&mut self, workflow: &WorkflowId, kind: &EventKind, visible: Timestamp) -> Result<()> {
        let kind = encode(kind)?;
        self.write(
            "INSERT INTO messages (workflow_id, visible_at, kind) VALUES (?, ?, ?)",
            &[V::B(b(workflow.as_str())), V::I(ms(visible)), V::B(&kind)],
        )
    }

    fn wake(&mut self, now: Timestamp, workflow: &WorkflowId, at: Timestamp) -> Result<()> {
        self.write(
            "UPDATE tasks SET visible_at = LEAST(COALESCE(visible_at, ?),
                 CASE WHEN lease_expires_at > ? THEN GREATEST(?, lease_expires_at) ELSE ? END)
             WHERE wft_of = ?",
            &[
                V::I(ms(at)),
                V::I(ms(now)),
                V::I(ms(at)),
                V::I(ms(at)),
                V::B(b(workflow.as_str())),
            ],
        )
    }

    fn consume(&mut self, workflow: &WorkflowId, ids: &[MessageId]) -> Result<()> {
        for m in ids {
            self.write(
                "DELETE FROM messages WHERE id = ? AND workflow_id = ?",
                &[V::I(id_i64(m.0)), V::B(b(workflow.as_str()))],
            )?;
        }
        Ok(())
    }

    fn unpost(&mut self, workflow: &WorkflowId, kind: &EventKind) -> Result<()> {
        let kind = encode(kind)?;
        self.write(
            "DELETE FROM messages WHERE workflow_id = ? AND kind = ?",
            &[V::B(b(workflow.as_str())), V::B(&kind)],
        )
    }

    fn delete_activity(&mut self, workflow: &WorkflowId, activity: ActivityId) -> Result<()> {
        self.write(
            "DELETE FROM tasks WHERE workflow_id = ? AND kind = 1 AND activity_id = ?",
            &[V::B(b(workflow.as_str())), V::I(seq_i64(activity.0))],
        )
    }

    fn delete_work(&mut self, workflow: &WorkflowId) -> Result<()> {
        let id = V::B(b(workflow.as_str()));
        self.write("DELETE FROM messages WHERE workflow_id = ?", &[id])?;
        self.write("DELETE FROM tasks WHERE workflow_id = ?", &[id])
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
        let id = V::B(b(workflow.as_str()));
        self.archive_history(workflow)?;
        self.append_events(workflow, std::slice::from_ref(started))?;
        self.write(
            "UPDATE workflows SET run = run + 1, version = ?, input = ?, last_seq = 1,
                 progress = NULL, status = 'running', pause_reason = NULL, updated_at = ?
             WHERE id = ?",
            &[version.into(), V::B(&input), V::I(ms(now)), id],
        )?;
        self.write(
            "DELETE FROM tasks WHERE workflow_id = ? AND kind = 1",
            &[id],
        )?;
        self.delete_messages_unless(workflow, EventKind::carries_over)
    }

    fn reset_run(&mut self, now: Timestamp, reset: ResetRun<'_>) -> Result<()> {
        let (version, input) = reset.started()?;
        let input = encode(input)?;
        let progress = encode(reset.progress)?;
        let workflow = reset.workflow;
        let id = V::B(b(workflow.as_str()));
        let last_seq = reset.events.last().map_or(1, |e| e.seq.get());
        self.archive_history(workflow)?;
        self.append_events(workflow, reset.events)?;
        self.write(
            "UPDATE workflows SET run = run + 1, version = ?, input = ?, last_seq = ?,
                 progress = ?, status = 'running', pause_reason = NULL, closed_at = NULL,
                 output = NULL, failure = NULL, updated_at = ?
             WHERE id = ?",
            &[
                version.into(),
                V::B(&input),
                V::I(seq_i64(Seq::new(last_seq))),
                V::B(&progress),
                V::I(ms(now)),
                id,
            ],
        )?;
        self.write("DELETE FROM tasks WHERE workflow_id = ?", &[id])?;
        self.delete_messages_unless(workflow, |kind| reset.keeps(kind))
    }

    fn set_tags(&mut self, workflow: &WorkflowId, tags: &[(String, TagValue)]) -> Result<()> {
        for (key, value) in tags {
            let json = encode(value)?;
            let text = value.text();
            self.write(
                "INSERT INTO tags (workflow_id, tag_key, tag_value, tag_text, num, created_at)
                 SELECT id, ?, ?, ?, ?, created_at FROM workflows WHERE id = ?
                 ON DUPLICATE KEY UPDATE tag_value = VALUES(tag_value),
                     tag_text = VALUES(tag_text), num = VALUES(num)",
                &[
                    V::B(b(key)),
                    V::B(&json),
                    V::B(b(&text)),
                    value.number().into(),
                    V::B(b(workflow.as_str())),
                ],
            )?;
        }
        Ok(())
    }

    fn append_logs(&mut self, workflow: &WorkflowId, logs: &[LogRecord]) -> Result<()> {
        for l in logs {
            self.write(
                "INSERT INTO logs (workflow_id, seq, at, level, message) VALUES (?, ?, ?, ?, ?)",
                &[
                    V::B(b(workflow.as_str())),
                    V::I(seq_i64(l.seq)),
                    V::I(ms(l.at)),
                    V::B(b(l.level.as_str())),
                    V::B(b(&l.message)),
                ],
            )?;
        }
        Ok(())
    }

    fn settle(&mut self, workflow: &WorkflowId, affinity: Option<(&str, Timestamp)>) -> Result<()> {
        let id = V::B(b(workflow.as_str()));
        self.write(
            "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
             visible_at = (SELECT MIN(visible_at) FROM messages WHERE workflow_id = ?),
             affinity_owner = ?, affinity_until = ?
             WHERE wft_of = ?",
            &[
                id,
                affinity.map(|a| b(a.0)).into(),
                affinity.map(|a| ms(a.1)).into(),
                id,
            ],
        )
    }

    fn forget_affinity(&mut self, owner: &str) -> Result<()> {
        self.write(
            "UPDATE tasks SET affinity_owner = NULL, affinity_until = NULL
             WHERE affinity_owner = ?",
            &[V::B(b(owner))],
        )
    }

    fn release(&mut self, task: TaskId, due: Timestamp) -> Result<()> {
        self.write(
            "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
             visible_at = ?, affinity_owner = NULL, affinity_until = NULL WHERE id = ?",
            &[V::I(ms(due)), V::I(task_i64(task))],
        )
    }

    fn pause(&mut self, now: Timestamp, task: TaskId, reason: &str) -> Result<()> {
        self.write(
            "UPDATE workflows SET status = 'paused', pause_reason = ?, updated_at = ?
             WHERE id = (SELECT workflow_id FROM tasks WHERE id = ?)",
            &[V::B(b(reason)), V::I(ms(now)), V::I(task_i64(task))],
        )
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
        // Locked, so that a reset reopening one of them waits for this purge or is passed over.
        sql.push_str(" ORDER BY closed_at, id LIMIT ? FOR UPDATE SKIP LOCKED");
        let status: V<'_> = purge.status.map(|st| b(st.as_str())).into();
        let name: V<'_> = purge.name.as_deref().map(b).into();
        let mut args = vec![V::I(before), status, status, name, name];
        args.extend(purge.except_names.iter().map(|n| V::B(b(n))));
        args.push(V::I(i64::try_from(purge.limit).unwrap_or(i64::MAX)));
        let rows = self.select(&sql, &args)?;
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
                self.write(table, &[V::B(b(id))])?;
            }
        }
        Ok(ids.into_iter().map(WorkflowId::new).collect())
    }

    fn hold(&mut self, now: Timestamp, workflow: &WorkflowId, reason: &str) -> Result<()> {
        self.hold_status(now, workflow.as_str(), reason)?;
        self.write(
            "DELETE FROM tasks WHERE wft_of = ?",
            &[V::B(b(workflow.as_str()))],
        )
    }

    fn renew(&mut self, task: TaskId, until: Timestamp) -> Result<()> {
        self.write(
            "UPDATE tasks SET lease_expires_at = ?, visible_at = ? WHERE id = ?",
            &[V::I(ms(until)), V::I(ms(until)), V::I(task_i64(task))],
        )
    }

    fn claim_workflow_tasks(
        &mut self,
        now: Timestamp,
        of: Option<&WorkflowId>,
        req: &ClaimRequest,
    ) -> Result<Vec<WorkflowTask>> {
        let claims = self.claim(now, WORKFLOW_TASK, req, of)?;
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // The claimed workflows and their due messages, in one round trip with the claims'
        // updates: a workflow's row has four columns, a message's five.
        let marks = vec!["?"; claims.len()].join(", ");
        let sql = format!(
            "SELECT id, name, last_seq, run FROM workflows WHERE id IN ({marks});
             SELECT workflow_id, id, visible_at, kind, 0 FROM messages
             WHERE workflow_id IN ({marks}) AND visible_at <= ? ORDER BY visible_at, id"
        );
        let mut args: Vec<V<'_>> = Vec::with_capacity(claims.len() * 2 + 1);
        args.extend(claims.iter().map(|c| V::B(b(c.workflow.as_str()))));
        args.extend(claims.iter().map(|c| V::B(b(c.workflow.as_str()))));
        args.push(V::I(ms(now)));
        let rows = self.select(&sql, &args)?;
        // Each workflow's row and its messages (in their order), found by its id once.
        type Found<'r> = (Option<&'r MySqlRow>, Vec<&'r MySqlRow>);
        let mut by_workflow: std::collections::HashMap<String, Found<'_>> =
            std::collections::HashMap::with_capacity(claims.len());
        for r in &rows {
            let found = by_workflow.entry(self.text(r, 0)?).or_default();
            if r.len() == 4 {
                found.0 = Some(r);
            } else {
                found.1.push(r);
            }
        }
        let mut tasks = Vec::with_capacity(claims.len());
        for Claim {
            lease,
            workflow: workflow_id,
            deliveries,
            ready_at,
            ..
        } in claims
        {
            let (workflow, messages) = by_workflow.remove(workflow_id.as_str()).unwrap_or_default();
            let Some(row) = workflow else {
                return Err(StorageError::Corrupt {
                    message: format!("workflow task {} has no workflow", lease.task.0),
                    source: None,
                });
            };
            let name = self.text(row, 1)?;
            let last: i64 = self.get(row, 2)?;
            let run: u32 = self.get(row, 3)?;
            let messages = self.messages(&workflow_id, messages, 1)?;
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
