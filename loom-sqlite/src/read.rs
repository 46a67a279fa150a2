//! The reads: histories, summaries, listings, stats, logs and pending work, on a snapshot.

use loom_core::{Event, LogLevel, LogRecord, Seq, Timestamp, WorkflowId};
use loom_storage::{
    Backlog, ListQuery, Message, MessageId, Page, Pending, PendingTask, Read, Result, RunSummary,
    Stats, StorageError, TagCmp, TaskId, WorkflowStatus, WorkflowSummary,
};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params, params_from_iter};

use crate::db::{Db, RawSummary, SUMMARY, ms, seq, seq_i64};

impl Db<'_> {
    fn schedule_rows(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<loom_storage::Schedule>> {
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(|e| self.sql(e))?;
        rows.into_iter()
            .map(|(id, body)| self.decode(&body, || format!("schedule {id:?}")))
            .collect()
    }

    /// `NotFound` unless the workflow exists.
    fn exists(&self, id: &WorkflowId) -> Result<()> {
        let found: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM workflows WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
            .map_err(|e| self.sql(e))?;
        match found {
            Some(_) => Ok(()),
            None => Err(StorageError::NotFound(id.clone())),
        }
    }
}

impl Db<'_> {
    /// Events from their `(seq, at, kind)` columns; `what` names event `n` in an error.
    fn events(
        &self,
        rows: Vec<(i64, i64, String)>,
        what: impl Fn(i64) -> String,
    ) -> Result<Vec<Event>> {
        rows.into_iter()
            .map(|(n, at, kind)| {
                Ok(Event {
                    seq: seq(n),
                    at: Timestamp::from_millis(at),
                    kind: self.decode(&kind, || what(n))?,
                })
            })
            .collect()
    }
}

impl Read for Db<'_> {
    fn load_history(&mut self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        self.exists(id)?;
        let rows: Vec<(i64, i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT seq, at, kind FROM events WHERE workflow_id = ?1 AND seq > ?2 ORDER BY seq",
            )
            .and_then(|mut s| {
                s.query_map(params![id.as_str(), seq_i64(after)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        self.events(rows, |n| format!("event #{n} of workflow \"{id}\""))
    }

    fn load_run(&mut self, id: &WorkflowId, run: u32) -> Result<Vec<Event>> {
        let current: Option<u32> = self
            .conn
            .prepare_cached("SELECT run FROM workflows WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
            .map_err(|e| self.sql(e))?;
        let current = current.ok_or_else(|| StorageError::NotFound(id.clone()))?;
        if run == current {
            return self.load_history(id, Seq::ZERO);
        }
        let rows: Vec<(i64, i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT seq, at, kind FROM past_events WHERE workflow_id = ?1 AND run = ?2 ORDER BY seq",
            )
            .and_then(|mut s| {
                s.query_map(params![id.as_str(), run], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        if rows.is_empty() {
            return Err(StorageError::no_such_run(id, run, current));
        }
        self.events(rows, |n| {
            format!("event #{n} of run {run} of workflow \"{id}\"")
        })
    }

    fn runs(&mut self, id: &WorkflowId) -> Result<Vec<RunSummary>> {
        self.exists(id)?;
        let rows: Vec<(u32, i64, i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT run, MIN(at), MAX(at), COUNT(*) FROM past_events WHERE workflow_id = ?1
                 GROUP BY run ORDER BY run",
            )
            .and_then(|mut s| {
                s.query_map([id.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        Ok(rows
            .into_iter()
            .map(|(run, started, ended, events)| RunSummary {
                run,
                started_at: Timestamp::from_millis(started),
                ended_at: Timestamp::from_millis(ended),
                events: events.unsigned_abs(),
            })
            .collect())
    }

    fn describe(&mut self, id: &WorkflowId) -> Result<WorkflowSummary> {
        let sql = format!("SELECT {SUMMARY} FROM workflows WHERE id = ?1");
        let raw = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row([id.as_str()], RawSummary::from_row).optional())
            .map_err(|e| self.sql(e))?;
        match raw {
            Some(raw) => raw.decode(self),
            None => Err(StorageError::NotFound(id.clone())),
        }
    }

    fn list(&mut self, q: &ListQuery) -> Result<Page<WorkflowSummary>> {
        // With an equality on a tag, the listing reads that tag's index, which is in the
        // listing's order (the workflow's creation time, then id), and stops at the page's
        // end; otherwise it reads the workflows by time.
        let driver = q.tags.iter().position(|f| f.cmp == TagCmp::Eq);
        let mut args: Vec<Value> = Vec::new();
        let (from, time, id) = match driver {
            Some(i) => {
                args.push(Value::Text(q.tags[i].key.clone()));
                args.push(Value::Text(q.tags[i].value.text()));
                (
                    "tags t0 JOIN workflows ON workflows.id = t0.workflow_id \
                     WHERE t0.key = ? AND t0.text = ?",
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
            args.push(Value::Text(status.as_str().into()));
        }
        if let Some(name) = &q.name {
            sql.push_str(" AND workflows.name = ?");
            args.push(Value::Text(name.clone()));
        }
        if let Some(version) = q.version {
            sql.push_str(" AND workflows.version = ?");
            args.push(Value::Integer(i64::from(version)));
        }
        if let Some(parent) = &q.parent {
            sql.push_str(" AND workflows.parent_id = ?");
            args.push(Value::Text(parent.as_str().into()));
        }
        if let Some(t) = q.created_after {
            sql.push_str(&format!(" AND {time} >= ?"));
            args.push(Value::Integer(ms(t)));
        }
        if let Some(t) = q.created_before {
            sql.push_str(&format!(" AND {time} < ?"));
            args.push(Value::Integer(ms(t)));
        }
        if let Some(t) = q.closed_before {
            sql.push_str(" AND workflows.closed_at < ?");
            args.push(Value::Integer(ms(t)));
        }
        for (i, f) in q.tags.iter().enumerate() {
            if Some(i) == driver {
                continue;
            }
            if f.cmp == TagCmp::Eq {
                sql.push_str(
                    " AND workflows.id IN (SELECT workflow_id FROM tags WHERE key = ? AND text = ?)",
                );
                args.push(Value::Text(f.key.clone()));
                args.push(Value::Text(f.value.text()));
            } else {
                sql.push_str(&format!(
                    " AND workflows.id IN (SELECT workflow_id FROM tags WHERE key = ? AND num {} ?)",
                    f.cmp.as_str()
                ));
                args.push(Value::Text(f.key.clone()));
                args.push(f.value.number().map_or(Value::Null, Value::Integer));
            }
        }
        if let Some(c) = &q.after {
            sql.push_str(&format!(" AND ({time} < ? OR ({time} = ? AND {id} < ?))"));
            args.push(Value::Integer(ms(c.created_at)));
            args.push(Value::Integer(ms(c.created_at)));
            args.push(Value::Text(c.id.as_str().into()));
        }
        sql.push_str(&format!(" ORDER BY {time} DESC, {id} DESC LIMIT ?"));
        args.push(Value::Integer(
            i64::try_from(q.limit).unwrap_or(i64::MAX - 1) + 1,
        ));
        let raws: Vec<RawSummary> = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(params_from_iter(args), RawSummary::from_row)?
                    .collect()
            })
            .map_err(|e| self.sql(e))?;
        let items = raws
            .into_iter()
            .map(|r| r.decode(self))
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
        let rows: Vec<(i64, i64, i64, Option<i64>)> = self
            .conn
            .prepare_cached(
                "SELECT kind,
                        SUM(lease_expires_at > ?1),
                        SUM(visible_at <= ?1 AND (lease_expires_at IS NULL OR lease_expires_at <= ?1)),
                        MIN(CASE WHEN visible_at <= ?1 AND (lease_expires_at IS NULL OR lease_expires_at <= ?1)
                                 THEN visible_at END)
                 FROM tasks GROUP BY kind",
            )
            .and_then(|mut s| {
                s.query_map([now], |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                        r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                        r.get(3)?,
                    ))
                })?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        for (kind, running, ready, oldest) in rows {
            let of = if kind == 0 {
                &mut backlog.workflow_tasks
            } else {
                &mut backlog.activity_tasks
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
        let by_status: Vec<(String, i64)> = self
            .conn
            .prepare_cached("SELECT status, COUNT(*) FROM workflows GROUP BY status")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(|e| self.sql(e))?;
        for (status, n) in by_status {
            let status: WorkflowStatus = self.status(&status, "?")?;
            stats.workflows.insert(status, n.unsigned_abs());
        }
        let one = |sql: &str| -> Result<Option<i64>> {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.query_row([now], |r| r.get(0)))
                .map_err(|e| self.sql(e))
        };
        let count = |sql: &str| -> Result<u64> { Ok(one(sql)?.unwrap_or(0).unsigned_abs()) };
        stats.events = self
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM events) + (SELECT COUNT(*) FROM past_events)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| self.sql(e))?
            .unsigned_abs();
        let ready = "visible_at <= ?1 AND (lease_expires_at IS NULL OR lease_expires_at <= ?1)";
        stats.workflow_tasks_ready = count(&format!(
            "SELECT COUNT(*) FROM tasks WHERE kind = 0 AND {ready}"
        ))?;
        stats.activity_tasks_ready = count(&format!(
            "SELECT COUNT(*) FROM tasks WHERE kind = 1 AND {ready}"
        ))?;
        stats.workflow_tasks_running =
            count("SELECT COUNT(*) FROM tasks WHERE kind = 0 AND lease_expires_at > ?1")?;
        stats.activity_tasks_running =
            count("SELECT COUNT(*) FROM tasks WHERE kind = 1 AND lease_expires_at > ?1")?;
        stats.activity_tasks_waiting = count(
            "SELECT COUNT(*) FROM tasks WHERE kind = 1 AND visible_at > ?1 AND (lease_expires_at IS NULL OR lease_expires_at <= ?1)",
        )?;
        stats.messages_waiting = count("SELECT COUNT(*) FROM messages WHERE visible_at > ?1")?;
        stats.oldest_ready_at = one(&format!("SELECT MIN(visible_at) FROM tasks WHERE {ready}"))?
            .map(Timestamp::from_millis);
        let next_task = one(
            "SELECT MIN(visible_at) FROM tasks WHERE visible_at > ?1 AND (lease_expires_at IS NULL OR lease_expires_at <= ?1)",
        )?;
        let next_message = one("SELECT MIN(visible_at) FROM messages WHERE visible_at > ?1")?;
        stats.next_due_at = next_task
            .into_iter()
            .chain(next_message)
            .min()
            .map(Timestamp::from_millis);
        Ok(stats)
    }

    fn schedule(&mut self, id: &str) -> Result<Option<loom_storage::Schedule>> {
        Ok(self
            .schedule_rows("SELECT id, body FROM schedules WHERE id = ?1", [id])?
            .pop())
    }

    fn schedules(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<loom_storage::Schedule>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.schedule_rows(
            "SELECT id, body FROM schedules WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2",
            params![after, limit],
        )
    }

    fn due_schedules(
        &mut self,
        now: Timestamp,
        limit: usize,
    ) -> Result<(Vec<loom_storage::Schedule>, Option<Timestamp>)> {
        let due = self.schedule_rows(
            "SELECT id, body FROM schedules WHERE wake_at <= ?1 ORDER BY wake_at, id LIMIT ?2",
            params![now.as_millis(), i64::try_from(limit).unwrap_or(i64::MAX)],
        )?;
        let next: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(wake_at) FROM schedules WHERE wake_at > ?1")
            .and_then(|mut s| s.query_row([now.as_millis()], |r| r.get(0)))
            .map_err(|e| self.sql(e))?;
        Ok((due, next.map(Timestamp::from_millis)))
    }

    fn logs(&mut self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        self.exists(id)?;
        let rows: Vec<(i64, i64, String, String)> = self
            .conn
            .prepare_cached(
                "SELECT seq, at, level, message FROM logs WHERE workflow_id = ?1 ORDER BY n",
            )
            .and_then(|mut s| {
                s.query_map([id.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        Ok(rows
            .into_iter()
            .map(|(n, at, level, message)| LogRecord {
                seq: seq(n),
                at: Timestamp::from_millis(at),
                level: level.parse().unwrap_or(LogLevel::Info),
                message,
            })
            .collect())
    }

    fn pending(&mut self, id: &WorkflowId, now: Timestamp) -> Result<Pending> {
        self.exists(id)?;
        type Row = (
            i64,
            i64,
            Option<i64>,
            Option<String>,
            Option<u32>,
            Option<i64>,
            Option<i64>,
            u32,
            Option<(String, i64)>,
        );
        let rows: Vec<Row> = self
            .conn
            .prepare_cached(
                "SELECT id, kind, activity_id, name, attempt, visible_at, lease_expires_at, deliveries,
                     affinity_owner, affinity_until
                 FROM tasks WHERE workflow_id = ?1 ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([id.as_str()], |r| {
                    let owner: Option<String> = r.get(8)?;
                    let until: Option<i64> = r.get(9)?;
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        owner.zip(until),
                    ))
                })?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        let tasks = rows
            .into_iter()
            .map(
                |(task, kind, activity, name, attempt, visible, lease, deliveries, preferred)| {
                    PendingTask {
                        id: TaskId(task.unsigned_abs()),
                        activity: (kind == crate::db::ACTIVITY_TASK).then(|| {
                            (
                                loom_core::ActivityId(seq(activity.unwrap_or(0))),
                                name.unwrap_or_default(),
                                attempt.unwrap_or(1),
                            )
                        }),
                        visible_at: visible.map(Timestamp::from_millis),
                        leased_until: lease.filter(|t| *t > ms(now)).map(Timestamp::from_millis),
                        deliveries,
                        preferred_by: preferred
                            .map(|(owner, until)| (owner, Timestamp::from_millis(until))),
                    }
                },
            )
            .collect();
        let rows: Vec<(i64, i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT id, visible_at, kind FROM messages WHERE workflow_id = ?1 ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(|e| self.sql(e))?;
        let messages = rows
            .into_iter()
            .map(|(mid, visible_at, kind)| {
                Ok(Message {
                    id: MessageId(mid.unsigned_abs()),
                    kind: self.decode(&kind, || format!("message {mid} of workflow \"{id}\""))?,
                    visible_at: Timestamp::from_millis(visible_at),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Pending { tasks, messages })
    }
}
