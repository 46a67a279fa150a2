//! The engine's primitives in SQL: each method is one or two statements and decides nothing
//! (see `loom_storage::engine::Op` for what each one means). A leased task's `visible_at` is
//! its lease's expiry, so "claimable" is `visible_at <= now`: one range scan of `tasks_ready`.
//!
//! ## Activity tasks born claimed
//!
//! A workflow task's commit usually inserts the activity tasks it scheduled and then claims
//! them for the worker that committed it (an eager claim of the workflow's claimable activity
//! tasks, `ClaimActivityTasks` with `of`). Inserted and then claimed, each such row would be
//! written twice, and the claim's update, with its index changes, would be the largest single
//! cost of the writer thread. So an activity task's insert is held back (`Db::pending`) until the
//! next primitive that could see it: the eager claim of its workflow writes the ones it takes
//! already leased (token 1, one delivery, as a claim of the fresh row would leave it) and the
//! others as they are, in the order they were inserted; any other primitive that reads or
//! writes activity tasks writes them all first, and so does the end of the write set. Which
//! tasks the claim takes is unchanged: a workflow's claimable tasks oldest first by
//! `(visible_at, id)`, where a held-back task's id, assigned when it is written, comes after
//! every row's.

use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, LogRecord, Seq, TagValue, Timestamp, WorkflowId,
};
use loom_storage::engine::{
    ActivitySpec, Apply, NewTask, NewWorkflow, ResetRun, StatusChange, TaskView, WorkflowChange,
    WorkflowView,
};
use loom_storage::{
    ActivityTask, ClaimRequest, Lease, Message, MessageId, Result, TaskId, WorkflowTask,
};
use rusqlite::{OptionalExtension, Params, params};

use crate::db::{ACTIVITY_TASK, Db, WORKFLOW_TASK, encode, id_i64, ms, seq, seq_i64, task_i64};

/// One task a claim took: its lease, workflow, deliveries, row id, since when it was ready,
/// and for an activity task what it runs (activity id, name, input, options, attempt), read
/// by the claim's own update.
struct Claim {
    lease: Lease,
    workflow: WorkflowId,
    deliveries: u32,
    row: i64,
    ready_at: Timestamp,
    activity: Option<(i64, String, String, String, u32)>,
}

/// An activity task a write set inserted, not yet written (see "Activity tasks born
/// claimed").
pub(crate) struct Pending {
    workflow: WorkflowId,
    spec: ActivitySpec,
    due: Timestamp,
}

impl Db<'_> {
    /// Writes the held-back activity tasks, in the order they were inserted.
    pub(crate) fn write_pending(&mut self) -> Result<()> {
        for p in std::mem::take(&mut self.pending) {
            self.write_activity(&p, None)?;
        }
        Ok(())
    }

    /// Writes one activity task, leased until `leased` to `owner` if given (as a claim of the
    /// fresh row would leave it); returns its row id.
    fn write_activity(&self, p: &Pending, leased: Option<(Timestamp, &str)>) -> Result<i64> {
        let a = &p.spec;
        let (visible_at, token, expires, owner, deliveries) = match leased {
            Some((until, owner)) => (ms(until), 1, Some(ms(until)), Some(owner), 1),
            None => (ms(p.due), 0, None, None, 0),
        };
        self.exec(
            "INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input, options, attempt,
                                lease_token, lease_expires_at, lease_owner, deliveries)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                ACTIVITY_TASK,
                p.workflow.as_str(),
                visible_at,
                seq_i64(a.activity_id.0),
                a.name,
                encode(&a.input)?,
                encode(&a.options)?,
                a.attempt,
                token,
                expires,
                owner,
                deliveries
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The eager claim of `workflow`'s activity tasks while some are held back: the claimable
    /// rows and the held-back tasks due by `now`, oldest first, up to `req.max`; the held-back
    /// ones are written (those taken already leased), then the rows taken are leased.
    fn claim_with_pending(
        &mut self,
        now: Timestamp,
        workflow: &WorkflowId,
        req: &ClaimRequest,
    ) -> Result<Vec<ActivityTask>> {
        /// A candidate: a row (by id) or a held-back task (by its place).
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Which {
            Row(i64),
            Held(usize),
        }
        let mut order: Vec<(i64, Which)> = self
            .claimable(now, ACTIVITY_TASK, req, Some(workflow))?
            .into_iter()
            .map(|(id, visible_at)| (visible_at, Which::Row(id)))
            .collect();
        order.extend(
            self.pending
                .iter()
                .enumerate()
                .filter(|(_, p)| p.workflow == *workflow && p.due <= now)
                .map(|(i, p)| (ms(p.due), Which::Held(i))),
        );
        // `Row` sorts before `Held`: at the same time, a row's id is the smaller.
        order.sort_unstable();
        order.truncate(req.max);
        let expires = now.saturating_add(req.lease);
        let pending = std::mem::take(&mut self.pending);
        let mut taken = vec![false; pending.len()];
        for &(_, w) in &order {
            if let Which::Held(i) = w {
                taken[i] = true;
            }
        }
        let mut written = Vec::with_capacity(pending.len());
        for (p, &taken) in pending.iter().zip(&taken) {
            let leased = taken.then_some((expires, req.owner.as_str()));
            written.push(self.write_activity(p, leased)?);
        }
        let rows: Vec<(i64, i64)> = order
            .iter()
            .filter_map(|&(visible_at, w)| match w {
                Which::Row(id) => Some((id, visible_at)),
                Which::Held(_) => None,
            })
            .collect();
        let mut leased = self.activity_tasks(now, req, rows)?.into_iter();
        let mut tasks = Vec::with_capacity(order.len());
        for (_, w) in order {
            match w {
                Which::Row(_) => tasks.extend(leased.next()),
                Which::Held(i) => {
                    let (p, row) = (&pending[i], written[i]);
                    tasks.push(ActivityTask {
                        lease: Lease {
                            task: TaskId(row.unsigned_abs()),
                            token: 1,
                            expires_at: expires,
                        },
                        workflow_id: p.workflow.clone(),
                        activity_id: p.spec.activity_id,
                        name: p.spec.name.clone(),
                        input: p.spec.input.clone(),
                        options: p.spec.options.clone(),
                        attempt: p.spec.attempt,
                        deliveries: 1,
                        ready_at: p.due,
                        claimed_at: now,
                    });
                }
            }
        }
        Ok(tasks)
    }

    /// Leases the activity task rows `ids` (with their ready times) and reads what each runs.
    fn activity_tasks(
        &self,
        now: Timestamp,
        req: &ClaimRequest,
        ids: Vec<(i64, i64)>,
    ) -> Result<Vec<ActivityTask>> {
        let mut tasks = Vec::with_capacity(ids.len());
        for claim in self.lease_rows(now, ACTIVITY_TASK, req, ids)? {
            let row = claim.row;
            let Some((activity, name, input, options, attempt)) = claim.activity else {
                return Err(loom_storage::StorageError::Corrupt {
                    message: format!("activity task {row} has no activity"),
                    source: None,
                });
            };
            let Claim {
                lease,
                workflow: workflow_id,
                deliveries,
                ready_at,
                ..
            } = claim;
            let options: ActivityOptions =
                self.decode(&options, || format!("the options of activity task {row}"))?;
            tasks.push(ActivityTask {
                lease,
                activity_id: ActivityId(seq(activity)),
                input: self.decode(&input, || format!("the input of activity task {row}"))?,
                options,
                workflow_id,
                name,
                attempt,
                deliveries,
                ready_at,
                claimed_at: now,
            });
        }
        Ok(tasks)
    }
}

impl Db<'_> {
    fn exec(&self, sql: &'static str, params: impl Params) -> Result<usize> {
        self.prepared(sql)
            .and_then(|mut s| s.execute(params))
            .map_err(|e| self.sql(e))
    }

    fn task_view(&self, sql: &'static str, key: impl Params) -> Result<Option<TaskView>> {
        type Row = (String, i64, Option<i64>, Option<u32>, i64, Option<i64>);
        let row: Option<Row> = self
            .prepared(sql)
            .and_then(|mut s| {
                s.query_row(key, |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| self.sql(e))?;
        Ok(row.map(
            |(workflow, kind, activity, attempt, token, expires)| TaskView {
                workflow: WorkflowId::new(workflow),
                activity: (kind == ACTIVITY_TASK)
                    .then(|| (ActivityId(seq(activity.unwrap_or(0))), attempt.unwrap_or(1))),
                token: token.unsigned_abs(),
                lease_expires_at: expires.map(Timestamp::from_millis),
            },
        ))
    }

    /// Claims up to `req.max` claimable tasks of `kind` (of one workflow, with `of`): a new
    /// token, the lease's expiry (also the time the task is claimable again), the owner, one
    /// more delivery. Workflow tasks preferring `req.owner` come first and those another
    /// owner's affinity keeps are passed over. Returns each lease, workflow, delivery count
    /// and row id.
    fn claim(
        &self,
        now: Timestamp,
        kind: i64,
        req: &ClaimRequest,
        of: Option<&WorkflowId>,
    ) -> Result<Vec<Claim>> {
        let ids = self.claimable(now, kind, req, of)?;
        self.lease_rows(now, kind, req, ids)
    }

    /// The row ids and ready times of the tasks [`claim`](Self::claim) would take, in order.
    fn claimable(
        &self,
        now: Timestamp,
        kind: i64,
        req: &ClaimRequest,
        of: Option<&WorkflowId>,
    ) -> Result<Vec<(i64, i64)>> {
        let max = i64::try_from(req.max).unwrap_or(i64::MAX);
        let rows = |sql: &'static str, p: &[&dyn rusqlite::ToSql]| -> Result<Vec<(i64, i64)>> {
            self.prepared(sql)
                .and_then(|mut s| s.query_map(p, |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(|e| self.sql(e))
        };
        let owner = req.owner.as_str();
        let ids: Vec<(i64, i64)> = match (of, kind) {
            // The kind is written into the SQL, not bound, so that the planner can prove a
            // partial index's condition (`tasks_workflow_task`'s `kind = 0`) from it.
            (None, ACTIVITY_TASK) => rows(
                "SELECT id, visible_at FROM tasks WHERE kind = 1 AND visible_at <= ?1
                 ORDER BY visible_at, id LIMIT ?2",
                params![ms(now), max],
            )?,
            (None, _) => {
                // Its own first, by the index of preferred owners; then the queue, passing
                // over what another owner's affinity keeps (its own show up again there).
                let mut ids = rows(
                    "SELECT id, visible_at FROM tasks WHERE affinity_owner = ?1 AND visible_at <= ?2
                     ORDER BY visible_at, id LIMIT ?3",
                    params![owner, ms(now), max],
                )?;
                let preferred = ids.len();
                for row in rows(
                    "SELECT id, visible_at FROM tasks WHERE kind = 0 AND visible_at <= ?1
                     AND (affinity_owner IS NULL OR affinity_owner = ?3 OR affinity_until <= ?1)
                     ORDER BY visible_at, id LIMIT ?2",
                    params![ms(now), max, owner],
                )? {
                    if ids.len() == req.max {
                        break;
                    }
                    if !ids[..preferred].contains(&row) {
                        ids.push(row);
                    }
                }
                ids
            }
            // The unary `+` keeps SQLite on the by-workflow indexes (the unique
            // `tasks_workflow_task` for the workflow task): on `tasks_ready` it would walk
            // every claimable task of the kind. A workflow's activity tasks are ordered and
            // cut here, not by `ORDER BY ... LIMIT`: that index does not hold `visible_at`,
            // so SQLite would build a temporary B-tree to sort them on every eager claim,
            // the largest part of its cost.
            (Some(id), ACTIVITY_TASK) => {
                let mut ids = rows(
                    "SELECT id, visible_at FROM tasks WHERE workflow_id = ?2 AND +kind = 1 AND +visible_at <= ?1",
                    params![ms(now), id.as_str()],
                )?;
                ids.sort_unstable_by_key(|&(id, visible_at)| (visible_at, id));
                ids.truncate(req.max);
                ids
            }
            (Some(id), _) => rows(
                "SELECT id, visible_at FROM tasks WHERE workflow_id = ?3 AND kind = 0 AND +visible_at <= ?1
                 AND (affinity_owner IS NULL OR affinity_owner = ?4 OR affinity_until <= ?1)
                 ORDER BY visible_at, id LIMIT ?2",
                params![ms(now), max, id.as_str(), owner],
            )?,
        };
        Ok(ids)
    }

    /// Leases the rows `ids` (with their ready times) as [`claim`](Self::claim) does.
    fn lease_rows(
        &self,
        now: Timestamp,
        kind: i64,
        req: &ClaimRequest,
        ids: Vec<(i64, i64)>,
    ) -> Result<Vec<Claim>> {
        let expires = now.saturating_add(req.lease);
        // An update, then a read of the row by its id: SQLite answers `RETURNING` through a
        // temporary table it builds for every statement, which makes an update with it cost
        // more than twice the update alone.
        let mut lease = self
            .prepared(
                "UPDATE tasks SET lease_token = lease_token + 1, lease_expires_at = ?2, visible_at = ?2,
                 lease_owner = ?3, deliveries = deliveries + 1 WHERE id = ?1",
            )
            .map_err(|e| self.sql(e))?;
        let mut read = self
            .prepared(
                "SELECT lease_token, deliveries, workflow_id, activity_id, name, input, options, attempt
                 FROM tasks WHERE id = ?1",
            )
            .map_err(|e| self.sql(e))?;
        let mut claimed = Vec::with_capacity(ids.len());
        for (id, ready_at) in ids {
            let updated = lease
                .execute(params![id, ms(expires), req.owner])
                .map_err(|e| self.sql(e))?;
            if updated != 1 {
                return Err(loom_storage::StorageError::Corrupt {
                    message: format!("task {id}, just found claimable, is gone"),
                    source: None,
                });
            }
            claimed.push(
                read.query_row([id], |r| {
                    let activity = match (kind, r.get::<_, Option<i64>>(3)?) {
                        (ACTIVITY_TASK, Some(activity)) => {
                            Some((activity, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
                        }
                        _ => None,
                    };
                    Ok(Claim {
                        lease: Lease {
                            task: TaskId(id.unsigned_abs()),
                            token: r.get::<_, i64>(0)?.unsigned_abs(),
                            expires_at: expires,
                        },
                        deliveries: r.get(1)?,
                        workflow: WorkflowId::new(r.get::<_, String>(2)?),
                        row: id,
                        ready_at: Timestamp::from_millis(ready_at),
                        activity,
                    })
                })
                .map_err(|e| self.sql(e))?,
            );
        }
        Ok(claimed)
    }

    /// A workflow's messages due at `now`, by `(visible_at, id)`.
    pub(crate) fn due_messages(&self, id: &WorkflowId, now: Timestamp) -> Result<Vec<Message>> {
        let rows: Vec<(i64, i64, String)> = self
            .prepared(
                "SELECT id, visible_at, kind FROM messages WHERE workflow_id = ?1 AND visible_at <= ?2
                 ORDER BY visible_at, id",
            )
            .and_then(|mut s| {
                s.query_map(params![id.as_str(), ms(now)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        rows.into_iter()
            .map(|(mid, visible_at, kind)| {
                Ok(Message {
                    id: MessageId(mid.unsigned_abs()),
                    kind: self.decode(&kind, || format!("message {mid} of workflow \"{id}\""))?,
                    visible_at: Timestamp::from_millis(visible_at),
                })
            })
            .collect()
    }
}

impl Db<'_> {
    /// Keeps the current run's history as the history of its run, and empties the current
    /// one.
    fn archive_history(&mut self, workflow: &WorkflowId) -> Result<()> {
        self.exec(
            "INSERT INTO past_events (workflow_id, run, seq, at, kind)
             SELECT e.workflow_id, w.run, e.seq, e.at, e.kind
             FROM events e JOIN workflows w ON w.id = e.workflow_id
             WHERE e.workflow_id = ?1",
            [workflow.as_str()],
        )?;
        self.exec(
            "DELETE FROM events WHERE workflow_id = ?1",
            [workflow.as_str()],
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
        let messages: Vec<(i64, String)> = self
            .prepared("SELECT id, kind FROM messages WHERE workflow_id = ?1")
            .and_then(|mut s| {
                s.query_map([workflow.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(|e| self.sql(e))?;
        for (id, kind) in messages {
            let kind: EventKind =
                self.decode(&kind, || format!("message {id} of workflow \"{workflow}\""))?;
            if !keep(&kind) {
                self.exec("DELETE FROM messages WHERE id = ?1", [id])?;
            }
        }
        Ok(())
    }
}

impl Apply for Db<'_> {
    fn task(&mut self, task: TaskId) -> Result<Option<TaskView>> {
        self.write_pending()?;
        self.task_view(
            "SELECT workflow_id, kind, activity_id, attempt, lease_token, lease_expires_at
             FROM tasks WHERE id = ?1",
            [task_i64(task)],
        )
    }

    fn workflow(&mut self, workflow: &WorkflowId) -> Result<Option<WorkflowView>> {
        let row: Option<(i64, String, Option<String>, u32)> = self
            .prepared("SELECT last_seq, status, parent_id, run FROM workflows WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([workflow.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            })
            .map_err(|e| self.sql(e))?;
        row.map(|(last, status, parent, run)| {
            Ok(WorkflowView {
                status: self.status(&status, workflow.as_str())?,
                last_seq: seq(last),
                parent: parent.map(WorkflowId::new),
                run,
            })
        })
        .transpose()
    }

    fn workflow_task(&mut self, workflow: &WorkflowId) -> Result<Option<TaskView>> {
        self.task_view(
            "SELECT workflow_id, kind, activity_id, attempt, lease_token, lease_expires_at
             FROM tasks WHERE workflow_id = ?1 AND kind = 0",
            [workflow.as_str()],
        )
    }

    fn earliest_message(&mut self, workflow: &WorkflowId) -> Result<Option<Timestamp>> {
        let earliest: Option<i64> = self
            .prepared("SELECT MIN(visible_at) FROM messages WHERE workflow_id = ?1")
            .and_then(|mut s| s.query_row([workflow.as_str()], |r| r.get(0)))
            .map_err(|e| self.sql(e))?;
        Ok(earliest.map(Timestamp::from_millis))
    }

    fn schedule_version(&mut self, schedule: &str) -> Result<Option<u64>> {
        let version: Option<i64> = self
            .prepared("SELECT version FROM schedules WHERE id = ?1")
            .and_then(|mut s| s.query_row([schedule], |r| r.get(0)).optional())
            .map_err(|e| self.sql(e))?;
        Ok(version.map(i64::unsigned_abs))
    }

    fn put_schedule(&mut self, schedule: &loom_storage::Schedule, _new: bool) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "INSERT INTO schedules (id, version, wake_at, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version,
                 wake_at = excluded.wake_at, body = excluded.body",
            params![
                schedule.id,
                i64::try_from(schedule.version).unwrap_or(i64::MAX),
                schedule.wake_at.map(Timestamp::as_millis),
                encode(schedule)?
            ],
        )
        .map(drop)
    }

    fn delete_schedule(&mut self, schedule: &str) -> Result<()> {
        self.write_pending()?;
        self.exec("DELETE FROM schedules WHERE id = ?1", [schedule])
            .map(drop)
    }

    fn create_workflow(&mut self, now: Timestamp, new: NewWorkflow<'_>) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "INSERT INTO workflows (id, name, version, status, input, created_at, updated_at,
                                    last_seq, parent_id)
             VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?5, 1, ?6)",
            params![
                new.id.as_str(),
                new.name,
                new.version,
                encode(new.input)?,
                ms(now),
                new.parent.map(WorkflowId::as_str)
            ],
        )?;
        self.append_events(new.id, std::slice::from_ref(new.started))
    }

    fn append_events(&mut self, workflow: &WorkflowId, events: &[Event]) -> Result<()> {
        let mut stmt = self
            .prepared("INSERT INTO events (workflow_id, seq, at, kind) VALUES (?1, ?2, ?3, ?4)")
            .map_err(|e| self.sql(e))?;
        for e in events {
            stmt.execute(params![
                workflow.as_str(),
                seq_i64(e.seq),
                ms(e.at),
                encode(&e.kind)?
            ])
            .map_err(|e| self.sql(e))?;
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
        let id = workflow.as_str();
        match &change.status {
            StatusChange::Keep => self.exec(
                "UPDATE workflows SET last_seq = COALESCE(?2, last_seq),
                 progress = COALESCE(?3, progress), updated_at = ?4 WHERE id = ?1",
                params![id, last, progress, ms(now)],
            )?,
            // Almost always the workflow is not paused: then this is a `Keep`. A statement
            // that assigns `status`, even its own value, rewrites the row's entry in
            // `workflows_by_status`, so the assigning one runs only for a paused row.
            StatusChange::Resume => match self.exec(
                "UPDATE workflows SET last_seq = COALESCE(?2, last_seq),
                 progress = COALESCE(?3, progress), updated_at = ?4
                 WHERE id = ?1 AND status <> 'paused'",
                params![id, last, progress, ms(now)],
            )? {
                0 => self.exec(
                    "UPDATE workflows SET last_seq = COALESCE(?2, last_seq),
                     progress = COALESCE(?3, progress), updated_at = ?4,
                     pause_reason = NULL, status = 'running'
                     WHERE id = ?1 AND status = 'paused'",
                    params![id, last, progress, ms(now)],
                )?,
                n => n,
            },
            StatusChange::Close(end) => self.exec(
                "UPDATE workflows SET last_seq = COALESCE(?2, last_seq),
                 progress = COALESCE(?3, progress), updated_at = ?4, closed_at = ?4,
                 status = ?5, output = ?6, failure = ?7, pause_reason = NULL WHERE id = ?1",
                params![
                    id,
                    last,
                    progress,
                    ms(now),
                    end.status.as_str(),
                    end.output.as_ref().map(encode).transpose()?,
                    end.failure.as_ref().map(encode).transpose()?
                ],
            )?,
        };
        Ok(())
    }

    fn insert_task(&mut self, workflow: &WorkflowId, task: &NewTask, due: Timestamp) -> Result<()> {
        match task {
            NewTask::Workflow => {
                self.write_pending()?;
                self.exec(
                    "INSERT INTO tasks (kind, workflow_id, visible_at) VALUES (?1, ?2, ?3)",
                    params![WORKFLOW_TASK, workflow.as_str(), ms(due)],
                )?;
            }
            // Held back until something could see it (see "Activity tasks born claimed").
            NewTask::Activity(spec) => self.pending.push(Pending {
                workflow: workflow.clone(),
                spec: spec.clone(),
                due,
            }),
        }
        Ok(())
    }

    fn delete_task(&mut self, task: TaskId) -> Result<()> {
        self.write_pending()?;
        self.exec("DELETE FROM tasks WHERE id = ?1", [task_i64(task)])
            .map(drop)
    }

    fn requeue(&mut self, task: TaskId, due: Timestamp) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "UPDATE tasks SET attempt = attempt + 1, lease_expires_at = NULL, lease_owner = NULL,
             deliveries = 0, visible_at = ?2 WHERE id = ?1",
            params![task_i64(task), ms(due)],
        )
        .map(drop)
    }

    fn post(&mut self, workflow: &WorkflowId, kind: &EventKind, visible: Timestamp) -> Result<()> {
        self.exec(
            "INSERT INTO messages (workflow_id, visible_at, kind) VALUES (?1, ?2, ?3)",
            params![workflow.as_str(), ms(visible), encode(kind)?],
        )
        .map(drop)
    }

    fn wake(&mut self, now: Timestamp, workflow: &WorkflowId, at: Timestamp) -> Result<()> {
        self.exec(
            "UPDATE tasks SET visible_at = MIN(COALESCE(visible_at, ?2),
                 CASE WHEN lease_expires_at > ?3 THEN MAX(?2, lease_expires_at) ELSE ?2 END)
             WHERE workflow_id = ?1 AND kind = 0",
            params![workflow.as_str(), ms(at), ms(now)],
        )
        .map(drop)
    }

    fn consume(&mut self, workflow: &WorkflowId, ids: &[MessageId]) -> Result<()> {
        let mut stmt = self
            .prepared("DELETE FROM messages WHERE id = ?1 AND workflow_id = ?2")
            .map_err(|e| self.sql(e))?;
        for m in ids {
            stmt.execute(params![id_i64(m.0), workflow.as_str()])
                .map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    fn unpost(&mut self, workflow: &WorkflowId, kind: &EventKind) -> Result<()> {
        self.exec(
            "DELETE FROM messages WHERE workflow_id = ?1 AND kind = ?2",
            params![workflow.as_str(), encode(kind)?],
        )?;
        Ok(())
    }

    fn delete_activity(&mut self, workflow: &WorkflowId, activity: ActivityId) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "DELETE FROM tasks WHERE workflow_id = ?1 AND kind = 1 AND activity_id = ?2",
            params![workflow.as_str(), seq_i64(activity.0)],
        )?;
        Ok(())
    }

    fn delete_work(&mut self, workflow: &WorkflowId) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "DELETE FROM messages WHERE workflow_id = ?1",
            [workflow.as_str()],
        )?;
        self.exec(
            "DELETE FROM tasks WHERE workflow_id = ?1",
            [workflow.as_str()],
        )
        .map(drop)
    }

    fn new_run(&mut self, now: Timestamp, workflow: &WorkflowId, started: &Event) -> Result<()> {
        self.write_pending()?;
        let (version, input) = match &started.kind {
            EventKind::WorkflowStarted { version, input, .. } => (*version, encode(input)?),
            _ => {
                return Err(loom_storage::StorageError::InvalidArgument(
                    "a new run starts with a WorkflowStarted event".into(),
                ));
            }
        };
        self.archive_history(workflow)?;
        self.append_events(workflow, std::slice::from_ref(started))?;
        self.exec(
            "UPDATE workflows SET run = run + 1, version = ?2, input = ?3, last_seq = 1,
                 progress = NULL, status = 'running', pause_reason = NULL, updated_at = ?4
             WHERE id = ?1",
            params![workflow.as_str(), version, input, ms(now)],
        )?;
        self.exec(
            "DELETE FROM tasks WHERE workflow_id = ?1 AND kind = 1",
            [workflow.as_str()],
        )?;
        self.delete_messages_unless(workflow, EventKind::carries_over)
    }

    fn reset_run(&mut self, now: Timestamp, reset: ResetRun<'_>) -> Result<()> {
        self.write_pending()?;
        let (version, input) = reset.started()?;
        let workflow = reset.workflow;
        let last_seq = reset.events.last().map_or(1, |e| e.seq.get());
        self.archive_history(workflow)?;
        self.append_events(workflow, reset.events)?;
        self.exec(
            "UPDATE workflows SET run = run + 1, version = ?2, input = ?3, last_seq = ?4,
                 progress = ?5, status = 'running', pause_reason = NULL, closed_at = NULL,
                 output = NULL, failure = NULL, updated_at = ?6
             WHERE id = ?1",
            params![
                workflow.as_str(),
                version,
                encode(input)?,
                seq_i64(Seq::new(last_seq)),
                encode(reset.progress)?,
                ms(now)
            ],
        )?;
        self.exec(
            "DELETE FROM tasks WHERE workflow_id = ?1",
            [workflow.as_str()],
        )?;
        self.delete_messages_unless(workflow, |kind| reset.keeps(kind))
    }

    fn set_tags(&mut self, workflow: &WorkflowId, tags: &[(String, TagValue)]) -> Result<()> {
        for (key, value) in tags {
            self.exec(
                "INSERT INTO tags (workflow_id, key, value, text, num, created_at)
                 SELECT ?1, ?2, ?3, ?4, ?5, created_at FROM workflows WHERE id = ?1
                 ON CONFLICT (workflow_id, key) DO UPDATE
                 SET value = excluded.value, text = excluded.text, num = excluded.num",
                params![
                    workflow.as_str(),
                    key,
                    encode(value)?,
                    value.text(),
                    value.number()
                ],
            )?;
        }
        Ok(())
    }

    fn append_logs(&mut self, workflow: &WorkflowId, logs: &[LogRecord]) -> Result<()> {
        let mut stmt = self
            .prepared(
                "INSERT INTO logs (workflow_id, seq, at, level, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(|e| self.sql(e))?;
        for l in logs {
            stmt.execute(params![
                workflow.as_str(),
                seq_i64(l.seq),
                ms(l.at),
                l.level.as_str(),
                l.message
            ])
            .map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    fn settle(&mut self, workflow: &WorkflowId, affinity: Option<(&str, Timestamp)>) -> Result<()> {
        self.exec(
            "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
             visible_at = (SELECT MIN(visible_at) FROM messages WHERE workflow_id = ?1),
             affinity_owner = ?2, affinity_until = ?3
             WHERE workflow_id = ?1 AND kind = 0",
            params![
                workflow.as_str(),
                affinity.map(|a| a.0),
                affinity.map(|a| ms(a.1))
            ],
        )
        .map(drop)
    }

    fn forget_affinity(&mut self, owner: &str) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "UPDATE tasks SET affinity_owner = NULL, affinity_until = NULL WHERE affinity_owner = ?1",
            [owner],
        )
        .map(drop)
    }

    fn release(&mut self, task: TaskId, due: Timestamp) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0,
             visible_at = ?2, affinity_owner = NULL, affinity_until = NULL WHERE id = ?1",
            params![task_i64(task), ms(due)],
        )
        .map(drop)
    }

    fn pause(&mut self, now: Timestamp, task: TaskId, reason: &str) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "UPDATE workflows SET status = 'paused', pause_reason = ?2, updated_at = ?3
             WHERE id = (SELECT workflow_id FROM tasks WHERE id = ?1)",
            params![task_i64(task), reason, ms(now)],
        )
        .map(drop)
    }

    fn purge(&mut self, now: Timestamp, purge: &loom_storage::Purge) -> Result<Vec<WorkflowId>> {
        self.write_pending()?;
        let before =
            ms(now).saturating_sub(i64::try_from(purge.older_than.as_millis()).unwrap_or(i64::MAX));
        let except = serde_json::to_string(&purge.except_names)
            .map_err(|e| loom_storage::StorageError::InvalidArgument(e.to_string()))?;
        let ids: Vec<String> = self
            .prepared(
                // Terminal statuses only, whatever the filter: an open workflow is never purged,
                // nor one with an open child (its id must not be taken again while the child
                // may report to it).
                "SELECT id FROM workflows
                 WHERE closed_at < ?1
                   AND status IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out')
                   AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR name = ?3)
                   AND name NOT IN (SELECT value FROM json_each(?4))
                   AND NOT EXISTS (
                       SELECT 1 FROM workflows c WHERE c.parent_id = workflows.id
                         AND c.status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'timed_out'))
                 ORDER BY closed_at, id LIMIT ?5",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![
                        before,
                        purge.status.map(|st| st.as_str()),
                        purge.name,
                        except,
                        i64::try_from(purge.limit).unwrap_or(i64::MAX)
                    ],
                    |r| r.get(0),
                )?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        // Every row of the workflow's goes with it, table by table: the schema's foreign keys
        // are not enforced (see `conn.rs`), so nothing cascades.
        for id in &ids {
            self.exec("DELETE FROM events WHERE workflow_id = ?1", [id])?;
            self.exec("DELETE FROM past_events WHERE workflow_id = ?1", [id])?;
            self.exec("DELETE FROM messages WHERE workflow_id = ?1", [id])?;
            self.exec("DELETE FROM tasks WHERE workflow_id = ?1", [id])?;
            self.exec("DELETE FROM logs WHERE workflow_id = ?1", [id])?;
            self.exec("DELETE FROM tags WHERE workflow_id = ?1", [id])?;
            self.exec("DELETE FROM workflows WHERE id = ?1", [id])?;
        }
        Ok(ids.into_iter().map(WorkflowId::new).collect())
    }

    fn hold(&mut self, now: Timestamp, workflow: &WorkflowId, reason: &str) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "UPDATE workflows SET status = 'paused', pause_reason = ?2, updated_at = ?3 WHERE id = ?1",
            params![workflow.as_str(), reason, ms(now)],
        )?;
        self.exec(
            "DELETE FROM tasks WHERE workflow_id = ?1 AND kind = 0",
            [workflow.as_str()],
        )
        .map(drop)
    }

    fn renew(&mut self, task: TaskId, until: Timestamp) -> Result<()> {
        self.write_pending()?;
        self.exec(
            "UPDATE tasks SET lease_expires_at = ?2, visible_at = ?2 WHERE id = ?1",
            params![task_i64(task), ms(until)],
        )
        .map(drop)
    }

    fn claim_workflow_tasks(
        &mut self,
        now: Timestamp,
        of: Option<&WorkflowId>,
        req: &ClaimRequest,
    ) -> Result<Vec<WorkflowTask>> {
        self.write_pending()?;
        let mut tasks = Vec::new();
        for Claim {
            lease,
            workflow: workflow_id,
            deliveries,
            ready_at,
            ..
        } in self.claim(now, WORKFLOW_TASK, req, of)?
        {
            let (name, last, run): (String, i64, u32) = self
                .prepared("SELECT name, last_seq, run FROM workflows WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([workflow_id.as_str()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                })
                .map_err(|e| self.sql(e))?;
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
        match of {
            Some(workflow) if !self.pending.is_empty() => {
                self.claim_with_pending(now, workflow, req)
            }
            _ => {
                self.write_pending()?;
                let ids = self.claimable(now, ACTIVITY_TASK, req, of)?;
                self.activity_tasks(now, req, ids)
            }
        }
    }
}
