//! The reads: histories, summaries, listings, stats, logs and pending work, in one snapshot.

use loom_core::{Event, LogLevel, LogRecord, Seq, Timestamp, WorkflowId};
use loom_storage::{
    Backlog, ListQuery, Page, Pending, PendingTask, Read, Result, RunSummary, Stats, StorageError,
    TagCmp, TaskId, WorkflowStatus, WorkflowSummary,
};
use sqlx::mysql::MySqlRow;

use crate::db::{ACTIVITY_TASK, Db, SUMMARY, b, ms, seq, seq_i64};

/// A value bound to a listing's statement.
enum Arg {
    Bytes(Vec<u8>),
    Int(i64),
    Null,
}

impl Db<'_> {
    fn schedule_rows(&mut self, rows: Vec<MySqlRow>) -> Result<Vec<loom_storage::Schedule>> {
        rows.iter()
            .map(|r| {
                let id = self.text(r, 0)?;
                self.json(r, 1, || format!("schedule {id:?}"))
            })
            .collect()
    }

    /// `NotFound` unless the workflow exists.
    fn exists(&mut self, id: &WorkflowId) -> Result<()> {
        match self.row(sqlx::query("SELECT 1 FROM workflows WHERE id = ?").bind(b(id.as_str())))? {
            Some(_) => Ok(()),
            None => Err(StorageError::NotFound(id.clone())),
        }
    }

    /// Events from their `(seq, at, kind)` columns; `what` names event `n` in an error.
    fn events(&mut self, rows: &[MySqlRow], what: impl Fn(i64) -> String) -> Result<Vec<Event>> {
        rows.iter()
            .map(|r| {
                let n: i64 = self.get(r, 0)?;
                let at: i64 = self.get(r, 1)?;
                Ok(Event {
                    seq: seq(n),
                    at: Timestamp::from_millis(at),
                    kind: self.json(r, 2, || what(n))?,
                })
            })
            .collect()
    }

    /// A count or a least time: one value of one row, NULL for none.
    fn one(&mut self, rows: &[MySqlRow]) -> Result<Option<i64>> {
        match rows.first() {
            Some(r) => self.get(r, 0),
            None => Ok(None),
        }
    }
}

impl Read for Db<'_> {
    fn load_history(&mut self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        self.exists(id)?;
        let rows = self.rows(
            sqlx::query(
                "SELECT seq, at, kind FROM events WHERE workflow_id = ? AND seq > ? ORDER BY seq",
            )
            .bind(b(id.as_str()))
            .bind(seq_i64(after)),
        )?;
        self.events(&rows, |n| format!("event #{n} of workflow \"{id}\""))
    }

    fn load_run(&mut self, id: &WorkflowId, run: u32) -> Result<Vec<Event>> {
        let row =
            self.row(sqlx::query("SELECT run FROM workflows WHERE id = ?").bind(b(id.as_str())))?;
        let current: u32 = match row {
            Some(r) => self.get(&r, 0)?,
            None => return Err(StorageError::NotFound(id.clone())),
        };
        if run == current {
            return self.load_history(id, Seq::ZERO);
        }
        let rows = self.rows(
            sqlx::query(
                "SELECT seq, at, kind FROM past_events WHERE workflow_id = ? AND run = ? ORDER BY seq",
            )
            .bind(b(id.as_str()))
            .bind(run),
        )?;
        if rows.is_empty() {
            return Err(StorageError::no_such_run(id, run, current));
        }
        self.events(&rows, |n| {
            format!("event #{n} of run {run} of workflow \"{id}\"")
        })
    }

    fn runs(&mut self, id: &WorkflowId) -> Result<Vec<RunSummary>> {
        self.exists(id)?;
        let rows = self.rows(
            sqlx::query(
                "SELECT run, MIN(at), MAX(at), COUNT(*) FROM past_events WHERE workflow_id = ?
                 GROUP BY run ORDER BY run",
            )
            .bind(b(id.as_str())),
        )?;
        rows.iter()
            .map(|r| {
                let started: i64 = self.get(r, 1)?;
                let ended: i64 = self.get(r, 2)?;
                let events: i64 = self.get(r, 3)?;
                Ok(RunSummary {
                    run: self.get(r, 0)?,
                    started_at: Timestamp::from_millis(started),
                    ended_at: Timestamp::from_millis(ended),
                    events: events.unsigned_abs(),
                })
            })
            .collect()
    }

    fn describe(&mut self, id: &WorkflowId) -> Result<WorkflowSummary> {
        let sql = format!("SELECT {SUMMARY} FROM workflows WHERE id = ?");
        match self.row(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(b(id.as_str())))? {
            Some(r) => self.summary(&r),
            None => Err(StorageError::NotFound(id.clone())),
        }
    }

    fn list(&mut self, q: &ListQuery) -> Result<Page<WorkflowSummary>> {
        // With an equality on a tag, the listing reads that tag's index, which is in the
        // listing's order (the workflow's creation time, then id), and stops at the page's
        // end; otherwise it reads the workflows by time.
        let driver = q.tags.iter().position(|f| f.cmp == TagCmp::Eq);
        let mut args: Vec<Arg> = Vec::new();
        let (from, time, id) = match driver {
            Some(i) => {
                args.push(Arg::Bytes(q.tags[i].key.clone().into_bytes()));
                args.push(Arg::Bytes(q.tags[i].value.text().into_bytes()));
                (
                    "tags t0 JOIN workflows ON workflows.id = t0.workflow_id \
                     WHERE t0.tag_key = ? AND t0.tag_text = ?",
                    "t0.created_at",
                    "t0.workflow_id",
                )
            }
            None => (
                "workflows WHERE 1 = 1",
                "workflows.created_at",
                "workflows.id",
            ),
        };
        let mut sql = format!("SELECT {SUMMARY} FROM {from}");
        if let Some(status) = q.status {
            sql.push_str(" AND workflows.status = ?");
            args.push(Arg::Bytes(status.as_str().into()));
        }
        if let Some(name) = &q.name {
            sql.push_str(" AND workflows.name = ?");
            args.push(Arg::Bytes(name.clone().into_bytes()));
        }
        if let Some(version) = q.version {
            sql.push_str(" AND workflows.version = ?");
            args.push(Arg::Int(i64::from(version)));
        }
        if let Some(parent) = &q.parent {
            sql.push_str(" AND workflows.parent_id = ?");
            args.push(Arg::Bytes(parent.as_str().into()));
        }
        if let Some(t) = q.created_after {
            sql.push_str(&format!(" AND {time} >= ?"));
            args.push(Arg::Int(ms(t)));
        }
        if let Some(t) = q.created_before {
            sql.push_str(&format!(" AND {time} < ?"));
            args.push(Arg::Int(ms(t)));
        }
        if let Some(t) = q.closed_before {
            sql.push_str(" AND workflows.closed_at < ?");
            args.push(Arg::Int(ms(t)));
        }
        for (i, f) in q.tags.iter().enumerate() {
            if Some(i) == driver {
                continue;
            }
            if f.cmp == TagCmp::Eq {
                sql.push_str(
                    " AND workflows.id IN (SELECT workflow_id FROM tags WHERE tag_key = ? AND tag_text = ?)",
                );
                args.push(Arg::Bytes(f.key.clone().into_bytes()));
                args.push(Arg::Bytes(f.value.text().into_bytes()));
            } else {
                sql.push_str(&format!(
                    " AND workflows.id IN (SELECT workflow_id FROM tags WHERE tag_key = ? AND num {} ?)",
                    f.cmp.as_str()
                ));
                args.push(Arg::Bytes(f.key.clone().into_bytes()));
                args.push(f.value.number().map_or(Arg::Null, Arg::Int));
            }
        }
        if let Some(c) = &q.after {
            sql.push_str(&format!(" AND ({time} < ? OR ({time} = ? AND {id} < ?))"));
            args.push(Arg::Int(ms(c.created_at)));
            args.push(Arg::Int(ms(c.created_at)));
            args.push(Arg::Bytes(c.id.as_str().into()));
        }
        sql.push_str(&format!(" ORDER BY {time} DESC, {id} DESC LIMIT ?"));
        args.push(Arg::Int(i64::try_from(q.limit).unwrap_or(i64::MAX - 1) + 1));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for arg in args {
            query = match arg {
                Arg::Bytes(v) => query.bind(v),
                Arg::Int(v) => query.bind(v),
                Arg::Null => query.bind(None::<i64>),
            };
        }
        let rows = self.rows(query)?;
        let items = rows
            .iter()
            .map(|r| self.summary(r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::of_listing(items, q.limit))
    }

    fn backlog(&mut self, now: Timestamp) -> Result<Backlog> {
        let mut backlog = Backlog {
            at: now,
            ..Backlog::default()
        };
        let now = ms(now);
        // One pass over the open tasks (the table holds no others).
        let rows = self.rows(
            sqlx::query(
                "SELECT kind,
                        CAST(COALESCE(SUM(lease_expires_at > ?), 0) AS SIGNED),
                        CAST(COALESCE(SUM(visible_at <= ? AND (lease_expires_at IS NULL OR lease_expires_at <= ?)), 0) AS SIGNED),
                        MIN(CASE WHEN visible_at <= ? AND (lease_expires_at IS NULL OR lease_expires_at <= ?)
                                 THEN visible_at END)
                 FROM tasks GROUP BY kind",
            )
            .bind(now)
            .bind(now)
            .bind(now)
            .bind(now)
            .bind(now),
        )?;
        for r in &rows {
            let kind: i8 = self.get(r, 0)?;
            let running: i64 = self.get(r, 1)?;
            let ready: i64 = self.get(r, 2)?;
            let oldest: Option<i64> = self.get(r, 3)?;
            let of = if i64::from(kind) == ACTIVITY_TASK {
                &mut backlog.activity_tasks
            } else {
                &mut backlog.workflow_tasks
            };
            of.running = running.unsigned_abs();
            of.ready = ready.unsigned_abs();
            of.oldest_ready_at = oldest.map(Timestamp::from_millis);
        }
        Ok(backlog)
    }

    fn stats(&mut self, now: Timestamp) -> Result<Stats> {
        let mut stats = Stats {
            at: now,
            ..Stats::default()
        };
        let now = ms(now);
        let rows = self.rows(sqlx::query(
            "SELECT status, COUNT(*) FROM workflows GROUP BY status",
        ))?;
        for r in &rows {
            let status = self.text(r, 0)?;
            let n: i64 = self.get(r, 1)?;
            let status: WorkflowStatus = self.status(&status, "?")?;
            stats.workflows.insert(status, n.unsigned_abs());
        }
        let rows = self.rows(sqlx::query(
            "SELECT (SELECT COUNT(*) FROM events) + (SELECT COUNT(*) FROM past_events)",
        ))?;
        stats.events = self.one(&rows)?.unwrap_or(0).unsigned_abs();
        // Each statement here binds `now` once per `?`.
        let at_now = |db: &mut Db<'_>, sql: &'static str, binds: usize| -> Result<Option<i64>> {
            let mut q = sqlx::query(sql);
            for _ in 0..binds {
                q = q.bind(now);
            }
            let rows = db.rows(q)?;
            db.one(&rows)
        };
        let count = |v: Option<i64>| v.unwrap_or(0).unsigned_abs();
        stats.workflow_tasks_ready = count(at_now(
            self,
            "SELECT COUNT(*) FROM tasks WHERE kind = 0 AND visible_at <= ?
             AND (lease_expires_at IS NULL OR lease_expires_at <= ?)",
            2,
        )?);
        stats.activity_tasks_ready = count(at_now(
            self,
            "SELECT COUNT(*) FROM tasks WHERE kind = 1 AND visible_at <= ?
             AND (lease_expires_at IS NULL OR lease_expires_at <= ?)",
            2,
        )?);
        stats.workflow_tasks_running = count(at_now(
            self,
            "SELECT COUNT(*) FROM tasks WHERE kind = 0 AND lease_expires_at > ?",
            1,
        )?);
        stats.activity_tasks_running = count(at_now(
            self,
            "SELECT COUNT(*) FROM tasks WHERE kind = 1 AND lease_expires_at > ?",
            1,
        )?);
        stats.activity_tasks_waiting = count(at_now(
            self,
            "SELECT COUNT(*) FROM tasks WHERE kind = 1 AND visible_at > ?
             AND (lease_expires_at IS NULL OR lease_expires_at <= ?)",
            2,
        )?);
        stats.messages_waiting = count(at_now(
            self,
            "SELECT COUNT(*) FROM messages WHERE visible_at > ?",
            1,
        )?);
        stats.oldest_ready_at = at_now(
            self,
            "SELECT MIN(visible_at) FROM tasks WHERE visible_at <= ?
             AND (lease_expires_at IS NULL OR lease_expires_at <= ?)",
            2,
        )?
        .map(Timestamp::from_millis);
        let next_task = at_now(
            self,
            "SELECT MIN(visible_at) FROM tasks WHERE visible_at > ?
             AND (lease_expires_at IS NULL OR lease_expires_at <= ?)",
            2,
        )?;
        let next_message = at_now(
            self,
            "SELECT MIN(visible_at) FROM messages WHERE visible_at > ?",
            1,
        )?;
        stats.next_due_at = next_task
            .into_iter()
            .chain(next_message)
            .min()
            .map(Timestamp::from_millis);
        Ok(stats)
    }

    fn schedule(&mut self, id: &str) -> Result<Option<loom_storage::Schedule>> {
        let rows =
            self.rows(sqlx::query("SELECT id, body FROM schedules WHERE id = ?").bind(b(id)))?;
        Ok(self.schedule_rows(rows)?.pop())
    }

    fn schedules(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<loom_storage::Schedule>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.rows(
            sqlx::query(
                "SELECT id, body FROM schedules WHERE ? IS NULL OR id > ? ORDER BY id LIMIT ?",
            )
            .bind(after.map(b))
            .bind(after.map(b))
            .bind(limit),
        )?;
        self.schedule_rows(rows)
    }

    fn due_schedules(
        &mut self,
        now: Timestamp,
        limit: usize,
    ) -> Result<(Vec<loom_storage::Schedule>, Option<Timestamp>)> {
        let rows = self.rows(
            sqlx::query(
                "SELECT id, body FROM schedules WHERE wake_at <= ? ORDER BY wake_at, id LIMIT ?",
            )
            .bind(now.as_millis())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX)),
        )?;
        let due = self.schedule_rows(rows)?;
        let rows = self.rows(
            sqlx::query("SELECT MIN(wake_at) FROM schedules WHERE wake_at > ?")
                .bind(now.as_millis()),
        )?;
        let next = self.one(&rows)?;
        Ok((due, next.map(Timestamp::from_millis)))
    }

    fn logs(&mut self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        self.exists(id)?;
        let rows = self.rows(
            sqlx::query(
                "SELECT seq, at, level, message FROM logs WHERE workflow_id = ? ORDER BY n",
            )
            .bind(b(id.as_str())),
        )?;
        rows.iter()
            .map(|r| {
                let n: i64 = self.get(r, 0)?;
                let at: i64 = self.get(r, 1)?;
                let level = self.text(r, 2)?;
                Ok(LogRecord {
                    seq: seq(n),
                    at: Timestamp::from_millis(at),
                    level: level.parse().unwrap_or(LogLevel::Info),
                    message: self.text(r, 3)?,
                })
            })
            .collect()
    }

    fn pending(&mut self, id: &WorkflowId, now: Timestamp) -> Result<Pending> {
        self.exists(id)?;
        let rows = self.rows(
            sqlx::query(
                "SELECT id, kind, activity_id, name, attempt, visible_at, lease_expires_at, deliveries,
                     affinity_owner, affinity_until
                 FROM tasks WHERE workflow_id = ? ORDER BY id",
            )
            .bind(b(id.as_str())),
        )?;
        let mut tasks = Vec::with_capacity(rows.len());
        for r in &rows {
            let task: i64 = self.get(r, 0)?;
            let kind: i8 = self.get(r, 1)?;
            let activity: Option<i64> = self.get(r, 2)?;
            let name = self.text_opt(r, 3)?;
            let attempt: Option<u32> = self.get(r, 4)?;
            let visible: Option<i64> = self.get(r, 5)?;
            let lease: Option<i64> = self.get(r, 6)?;
            let deliveries: u32 = self.get(r, 7)?;
            let owner = self.text_opt(r, 8)?;
            let until: Option<i64> = self.get(r, 9)?;
            tasks.push(PendingTask {
                id: TaskId(task.unsigned_abs()),
                activity: (i64::from(kind) == ACTIVITY_TASK).then(|| {
                    (
                        loom_core::ActivityId(seq(activity.unwrap_or(0))),
                        name.unwrap_or_default(),
                        attempt.unwrap_or(1),
                    )
                }),
                visible_at: visible.map(Timestamp::from_millis),
                leased_until: lease.filter(|t| *t > ms(now)).map(Timestamp::from_millis),
                deliveries,
                preferred_by: owner
                    .zip(until)
                    .map(|(owner, until)| (owner, Timestamp::from_millis(until))),
            });
        }
        let rows = self.rows(
            sqlx::query(
                "SELECT id, visible_at, kind FROM messages WHERE workflow_id = ? ORDER BY id",
            )
            .bind(b(id.as_str())),
        )?;
        let messages = self.messages(id, &rows, 0)?;
        Ok(Pending { tasks, messages })
    }
}
