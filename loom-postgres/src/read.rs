//! The reads: histories, summaries, listings, stats, logs and pending work.

use loom_core::{Event, LogLevel, LogRecord, Progress, Seq, Timestamp, WorkflowId};
use loom_storage::{
    Backlog, ListQuery, Message, MessageId, Page, Pending, PendingTask, Result, RunSummary, Stats,
    StorageError, TagCmp, TaskId, WorkflowStatus, WorkflowSummary,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use crate::{PostgresStorage, seq, seq_i64, sql_err};
use loom_storage::engine::wire::decode;

const SUMMARY: &str = "workflows.id, workflows.name, workflows.version, workflows.status, \
    workflows.input, workflows.created_at, workflows.updated_at, workflows.closed_at, \
    workflows.last_seq, workflows.output, workflows.failure, workflows.pause_reason, \
    workflows.progress, workflows.parent_id, workflows.run, \
    (SELECT jsonb_object_agg(key, value::jsonb) FROM tags WHERE tags.workflow_id = workflows.id)::text";

fn summary(row: &PgRow) -> Result<WorkflowSummary> {
    let id: String = row.get(0);
    let field = |what: &str| format!("the {what} of workflow {id}");
    let status: String = row.get(3);
    let status = status.parse().map_err(|e: String| StorageError::Corrupt {
        message: format!("{}: {e}", field("status")),
        source: None,
    })?;
    let input: String = row.get(4);
    let output: Option<String> = row.get(9);
    let failure: Option<String> = row.get(10);
    let progress: Option<String> = row.get(12);
    let tags: Option<String> = row.get(15);
    Ok(WorkflowSummary {
        id: WorkflowId::new(id.clone()),
        name: row.get(1),
        version: u32::try_from(row.get::<i32, _>(2)).unwrap_or(0),
        status,
        input: decode(&input, || field("input"))?,
        created_at: Timestamp::from_millis(row.get(5)),
        updated_at: Timestamp::from_millis(row.get(6)),
        closed_at: row.get::<Option<i64>, _>(7).map(Timestamp::from_millis),
        last_seq: seq(row.get(8)),
        output: output.map(|t| decode(&t, || field("output"))).transpose()?,
        failure: failure
            .map(|t| decode(&t, || field("failure")))
            .transpose()?,
        pause_reason: row.get(11),
        progress: progress
            .map(|t| decode::<Progress>(&t, || field("progress")))
            .transpose()?,
        parent: row.get::<Option<String>, _>(13).map(WorkflowId::new),
        run: u32::try_from(row.get::<i32, _>(14)).unwrap_or(1),
        tags: tags
            .map(|t| decode(&t, || field("tags")))
            .transpose()?
            .unwrap_or_default(),
    })
}

impl PostgresStorage {
    pub(crate) async fn fetch_now(&self) -> Result<Timestamp> {
        let now: i64 = sqlx::query_scalar("SELECT loom_now_ms()")
            .fetch_one(&self.pool)
            .await
            .map_err(sql_err)?;
        Ok(Timestamp::from_millis(now))
    }

    pub(crate) async fn fetch_schedules(
        &self,
        id: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<loom_storage::Schedule>> {
        let rows = sqlx::query(
            "SELECT id, body FROM schedules
             WHERE ($1::text IS NULL OR id = $1) AND ($2::text IS NULL OR id > $2)
             ORDER BY id LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                let body: String = r.get(1);
                decode(&body, || format!("schedule {id:?}"))
            })
            .collect()
    }

    pub(crate) async fn fetch_due_schedules(
        &self,
        limit: usize,
    ) -> Result<loom_storage::DueSchedules> {
        // One statement: the clock, the due schedules (none: one row of NULLs), and the next
        // wake after them.
        let rows = sqlx::query(
            "WITH n AS (SELECT loom_now_ms() AS now)
             SELECT n.now, d.id, d.body,
                    (SELECT MIN(wake_at) FROM schedules WHERE wake_at > n.now)
             FROM n LEFT JOIN LATERAL (
                 SELECT id, body FROM schedules WHERE wake_at <= n.now
                 ORDER BY wake_at, id LIMIT $1
             ) d ON true",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        let Some(first) = rows.first() else {
            return Err(StorageError::Unavailable {
                message: "reading the due schedules answered no row".into(),
                source: None,
            });
        };
        let now = Timestamp::from_millis(first.get(0));
        let next: Option<i64> = first.get(3);
        let mut due = Vec::new();
        for r in &rows {
            let id: Option<String> = r.get(1);
            let body: Option<String> = r.get(2);
            if let (Some(id), Some(body)) = (id, body) {
                due.push(decode(&body, || format!("schedule {id:?}"))?);
            }
        }
        Ok(loom_storage::DueSchedules {
            now,
            due,
            next: next.map(Timestamp::from_millis),
        })
    }

    pub(crate) async fn fetch_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT seq, at, kind FROM events WHERE workflow_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(id.as_str())
        .bind(seq_i64(after))
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        // Nothing after `after`: either the history ends there or there is no such workflow.
        if rows.is_empty() {
            let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM workflows WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(sql_err)?;
            if exists.is_none() {
                return Err(StorageError::NotFound(id.clone()));
            }
        }
        rows.iter()
            .map(|r| {
                let n: i64 = r.get(0);
                let kind: String = r.get(2);
                Ok(Event {
                    seq: seq(n),
                    at: Timestamp::from_millis(r.get(1)),
                    kind: decode(&kind, || format!("event #{n} of workflow {id}"))?,
                })
            })
            .collect()
    }

    pub(crate) async fn fetch_run(&self, id: &WorkflowId, run: u32) -> Result<Vec<Event>> {
        // One statement, one snapshot: the current run and the history of `run`, from the
        // current history or the earlier runs' (a switch between two reads would mix them).
        let rows = sqlx::query(
            "SELECT w.run, e.seq, e.at, e.kind FROM workflows w
             LEFT JOIN LATERAL (
                SELECT seq, at, kind FROM events WHERE workflow_id = w.id AND w.run = $2
                UNION ALL
                SELECT seq, at, kind FROM past_events WHERE workflow_id = w.id AND run = $2
             ) e ON true
             WHERE w.id = $1 ORDER BY e.seq",
        )
        .bind(id.as_str())
        .bind(i32::try_from(run).unwrap_or(i32::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        let Some(first) = rows.first() else {
            return Err(StorageError::NotFound(id.clone()));
        };
        let current = u32::try_from(first.get::<i32, _>(0)).unwrap_or(1);
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(n) = r.get::<Option<i64>, _>(1) else {
                continue;
            };
            let kind: String = r.get(3);
            events.push(Event {
                seq: seq(n),
                at: Timestamp::from_millis(r.get(2)),
                kind: decode(&kind, || {
                    format!("event #{n} of run {run} of workflow {id}")
                })?,
            });
        }
        if events.is_empty() {
            return Err(StorageError::no_such_run(id, run, current));
        }
        Ok(events)
    }

    pub(crate) async fn fetch_runs(&self, id: &WorkflowId) -> Result<Vec<RunSummary>> {
        let rows = sqlx::query(
            "SELECT w.id, p.run, p.started, p.ended, p.events
             FROM workflows w LEFT JOIN LATERAL (
                SELECT run, MIN(at) AS started, MAX(at) AS ended, COUNT(*) AS events
                FROM past_events WHERE workflow_id = w.id GROUP BY run
             ) p ON true
             WHERE w.id = $1 ORDER BY p.run",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        if rows.is_empty() {
            return Err(StorageError::NotFound(id.clone()));
        }
        Ok(rows
            .iter()
            .filter_map(|r| {
                let run: i32 = r.get::<Option<i32>, _>(1)?;
                Some(RunSummary {
                    run: u32::try_from(run).unwrap_or(0),
                    started_at: Timestamp::from_millis(r.get(2)),
                    ended_at: Timestamp::from_millis(r.get(3)),
                    events: r.get::<i64, _>(4).unsigned_abs(),
                })
            })
            .collect())
    }

    pub(crate) async fn fetch_summary(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {SUMMARY} FROM workflows WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(sql_err)?;
        match row {
            Some(row) => summary(&row),
            None => Err(StorageError::NotFound(id.clone())),
        }
    }

    pub(crate) async fn fetch_list(&self, q: &ListQuery) -> Result<Page<WorkflowSummary>> {
        // A listing of one parent's children is its own statement, so that its plan is
        // always the parent index's (a generic plan for "$8 IS NULL OR ..." would not be).
        let by_parent = if q.parent.is_some() {
            "AND workflows.parent_id = $8"
        } else {
            "AND $8::text IS NULL"
        };
        // With an equality on a tag, the listing reads that tag's index, which is in the
        // listing's order (the workflow's creation time, then id), and stops at the page's
        // end; otherwise it reads the workflows by time. Each other tag filter is a condition
        // on the tag index.
        let driver = q.tags.iter().position(|f| f.cmp == TagCmp::Eq);
        let (from, time, id) = match driver {
            Some(i) => (
                format!(
                    "tags t0 JOIN workflows ON workflows.id = t0.workflow_id \
                     WHERE t0.key = ${} AND t0.text = ${}::text AND",
                    11 + 2 * i,
                    12 + 2 * i
                ),
                "t0.created_at",
                "t0.workflow_id",
            ),
            None => (
                "workflows WHERE".to_owned(),
                "workflows.created_at",
                "workflows.id",
            ),
        };
        let mut by_tags = String::new();
        for (i, f) in q.tags.iter().enumerate() {
            if Some(i) == driver {
                continue;
            }
            let (key, value) = (11 + 2 * i, 12 + 2 * i);
            by_tags.push_str(&if f.cmp == TagCmp::Eq {
                format!(
                    " AND workflows.id IN (SELECT workflow_id FROM tags WHERE key = ${key} AND text = ${value}::text)"
                )
            } else {
                format!(
                    " AND workflows.id IN (SELECT workflow_id FROM tags WHERE key = ${key} AND num {} ${value}::bigint)",
                    f.cmp.as_str()
                )
            });
        }
        let sql = format!(
            "SELECT {SUMMARY} FROM {from}
               ($1::text IS NULL OR workflows.status = $1) AND ($2::text IS NULL OR workflows.name = $2)
               AND ($3::bigint IS NULL OR {time} >= $3) AND ($4::bigint IS NULL OR {time} < $4)
               AND ($5::bigint IS NULL OR ({time}, {id}) < ($5, $6)) {by_parent}
               AND ($9::bigint IS NULL OR workflows.closed_at < $9)
               AND ($10::integer IS NULL OR workflows.version = $10){by_tags}
             ORDER BY {time} DESC, {id} DESC LIMIT $7"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(q.status.map(WorkflowStatus::as_str))
            .bind(q.name.as_deref())
            .bind(q.created_after.map(Timestamp::as_millis))
            .bind(q.created_before.map(Timestamp::as_millis))
            .bind(q.after.as_ref().map(|c| c.created_at.as_millis()))
            .bind(q.after.as_ref().map_or("", |c| c.id.as_str()))
            .bind(i64::try_from(q.limit).unwrap_or(i64::MAX - 1) + 1)
            .bind(q.parent.as_ref().map(WorkflowId::as_str))
            .bind(q.closed_before.map(Timestamp::as_millis))
            .bind(q.version.map(|v| i32::try_from(v).unwrap_or(i32::MAX)));
        for f in &q.tags {
            query = query.bind(f.key.as_str());
            query = if f.cmp == TagCmp::Eq {
                query.bind(f.value.text())
            } else {
                query.bind(f.value.number())
            };
        }
        let rows = query.fetch_all(&self.pool).await.map_err(sql_err)?;
        let items = rows.iter().map(summary).collect::<Result<Vec<_>>>()?;
        Ok(Page::of_listing(items, q.limit))
    }

    pub(crate) async fn fetch_stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        let rows = sqlx::query("SELECT status, COUNT(*) FROM workflows GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(sql_err)?;
        for r in rows {
            let status: String = r.get(0);
            if let Ok(status) = status.parse::<WorkflowStatus>() {
                stats
                    .workflows
                    .insert(status, r.get::<i64, _>(1).unsigned_abs());
            }
        }
        let r = sqlx::query(
            "WITH now AS (SELECT loom_now_ms() AS t)
             SELECT
               (SELECT COUNT(*) FROM events) + (SELECT COUNT(*) FROM past_events),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 0 AND visible_at <= now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 0 AND lease_expires_at > now.t),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 1 AND visible_at <= now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 1 AND lease_expires_at > now.t),
               (SELECT COUNT(*) FROM tasks, now WHERE kind = 1 AND visible_at > now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)),
               (SELECT COUNT(*) FROM messages, now WHERE visible_at > now.t),
               (SELECT MIN(visible_at) FROM tasks, now WHERE visible_at <= now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)),
               (SELECT MIN(v) FROM (
                   SELECT MIN(visible_at) AS v FROM tasks, now WHERE visible_at > now.t AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)
                   UNION ALL SELECT MIN(visible_at) FROM messages, now WHERE visible_at > now.t) due),
               (SELECT t FROM now)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(sql_err)?;
        let n = |i: usize| r.get::<i64, _>(i).unsigned_abs();
        stats.events = n(0);
        stats.workflow_tasks_ready = n(1);
        stats.workflow_tasks_running = n(2);
        stats.activity_tasks_ready = n(3);
        stats.activity_tasks_running = n(4);
        stats.activity_tasks_waiting = n(5);
        stats.messages_waiting = n(6);
        stats.oldest_ready_at = r.get::<Option<i64>, _>(7).map(Timestamp::from_millis);
        stats.next_due_at = r.get::<Option<i64>, _>(8).map(Timestamp::from_millis);
        stats.at = Timestamp::from_millis(r.get(9));
        Ok(stats)
    }

    pub(crate) async fn fetch_backlog(&self) -> Result<Backlog> {
        let rows = sqlx::query(
            "WITH now AS (SELECT loom_now_ms() AS t)
             SELECT k.kind, b.running, b.ready, b.oldest, now.t
             FROM now CROSS JOIN (VALUES (0::smallint), (1::smallint)) k(kind)
             LEFT JOIN LATERAL (
                SELECT COUNT(*) FILTER (WHERE lease_expires_at > now.t) AS running,
                       COUNT(*) FILTER (WHERE visible_at <= now.t
                           AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)) AS ready,
                       MIN(visible_at) FILTER (WHERE visible_at <= now.t
                           AND (lease_expires_at IS NULL OR lease_expires_at <= now.t)) AS oldest
                FROM tasks WHERE tasks.kind = k.kind
             ) b ON true",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        let mut backlog = Backlog::default();
        for r in rows {
            let of = if r.get::<i16, _>(0) == 0 {
                &mut backlog.workflow_tasks
            } else {
                &mut backlog.activity_tasks
            };
            of.running = r.get::<Option<i64>, _>(1).unwrap_or(0).unsigned_abs();
            of.ready = r.get::<Option<i64>, _>(2).unwrap_or(0).unsigned_abs();
            of.oldest_ready_at = r.get::<Option<i64>, _>(3).map(Timestamp::from_millis);
            backlog.at = Timestamp::from_millis(r.get(4));
        }
        Ok(backlog)
    }

    pub(crate) async fn fetch_logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        self.fetch_summary(id).await?;
        let rows = sqlx::query(
            "SELECT seq, at, level, message FROM logs WHERE workflow_id = $1 ORDER BY n",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        Ok(rows
            .iter()
            .map(|r| LogRecord {
                seq: seq(r.get(0)),
                at: Timestamp::from_millis(r.get(1)),
                level: r.get::<String, _>(2).parse().unwrap_or(LogLevel::Info),
                message: r.get(3),
            })
            .collect())
    }

    pub(crate) async fn fetch_pending(&self, id: &WorkflowId) -> Result<Pending> {
        let rows = sqlx::query(
            "WITH now AS (SELECT loom_now_ms() AS t)
             SELECT t.id, t.kind, t.activity_id, t.name, t.attempt, t.visible_at,
                 CASE WHEN t.lease_expires_at > now.t THEN t.lease_expires_at END, t.deliveries,
                 EXISTS (SELECT 1 FROM workflows WHERE id = $1), t.affinity_owner, t.affinity_until
             FROM now LEFT JOIN tasks t ON t.workflow_id = $1
             ORDER BY t.id",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        if !rows.first().is_some_and(|r| r.get::<bool, _>(8)) {
            return Err(StorageError::NotFound(id.clone()));
        }
        let tasks = rows
            .iter()
            .filter_map(|r| {
                let task: Option<i64> = r.get(0);
                let task = task?;
                let kind: i16 = r.get(1);
                Some(PendingTask {
                    id: TaskId(task.unsigned_abs()),
                    activity: (kind == 1).then(|| {
                        (
                            loom_core::ActivityId(seq(r.get::<Option<i64>, _>(2).unwrap_or(0))),
                            r.get::<Option<String>, _>(3).unwrap_or_default(),
                            u32::try_from(r.get::<Option<i32>, _>(4).unwrap_or(1)).unwrap_or(1),
                        )
                    }),
                    visible_at: r.get::<Option<i64>, _>(5).map(Timestamp::from_millis),
                    leased_until: r.get::<Option<i64>, _>(6).map(Timestamp::from_millis),
                    deliveries: u32::try_from(r.get::<i32, _>(7)).unwrap_or(0),
                    preferred_by: r
                        .get::<Option<String>, _>(9)
                        .zip(r.get::<Option<i64>, _>(10))
                        .map(|(owner, until)| (owner, Timestamp::from_millis(until))),
                })
            })
            .collect();
        let rows = sqlx::query(
            "SELECT id, visible_at, kind FROM messages WHERE workflow_id = $1 ORDER BY id",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(sql_err)?;
        let messages = rows
            .iter()
            .map(|r| {
                let mid: i64 = r.get(0);
                let kind: String = r.get(2);
                Ok(Message {
                    id: MessageId(mid.unsigned_abs()),
                    kind: decode(&kind, || format!("message {mid} of workflow {id}"))?,
                    visible_at: Timestamp::from_millis(r.get(1)),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Pending { tasks, messages })
    }
}
