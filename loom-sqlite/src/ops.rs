//! The SQL behind each `Storage` method. Each function runs inside a transaction (writes) or a
//! read snapshot (reads) that the caller provides; none of them begins or commits.

use std::path::Path;
use std::time::Duration;

use loom_core::{
    ActivityId, ActivityOptions, Event, EventKind, Failure, LogLevel, LogRecord, Payload, Progress,
    Seq, Timestamp, WorkflowId,
};
use loom_storage::plan::{activity_result, check_append, started_fields};
use loom_storage::{
    ActivityTask, ActivityTaskCompletion, ClaimRequest, DecidedTask, Lease, ListCursor, ListQuery,
    Message, MessageId, Page, Release, Result, Stats, StorageError, TaskId, TaskPlan,
    WorkflowStatus, WorkflowSummary, WorkflowTask, WorkflowTaskCompletion,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conn::map_err;

const WORKFLOW_TASK: i64 = 0;
const ACTIVITY_TASK: i64 = 1;

/// One connection inside one transaction or snapshot, with the file's path for errors and
/// the time of the request.
pub(crate) struct Db<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) path: &'a Path,
    pub(crate) now: Timestamp,
}

fn ms(t: Timestamp) -> i64 {
    t.as_millis()
}

fn seq(n: i64) -> Seq {
    Seq::new(n.max(0).unsigned_abs())
}

fn seq_i64(s: Seq) -> i64 {
    i64::try_from(s.get()).unwrap_or(i64::MAX)
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StorageError::InvalidArgument(format!("cannot encode a value as JSON: {e}")))
}

impl Db<'_> {
    fn sql(&self, e: rusqlite::Error) -> StorageError {
        map_err(self.path, e)
    }

    fn decode<T: DeserializeOwned>(&self, text: &str, what: impl FnOnce() -> String) -> Result<T> {
        serde_json::from_str(text).map_err(|e| {
            StorageError::corrupt(
                format!("{} in {} cannot be decoded", what(), self.path.display()),
                e,
            )
        })
    }

    // ---- workflows ----

    pub(crate) fn create_workflow(&self, id: &WorkflowId, started: &Event) -> Result<()> {
        let (name, version, input) = started_fields(started)?;
        if id.as_str().is_empty() {
            return Err(StorageError::InvalidArgument(
                "a workflow id cannot be empty".into(),
            ));
        }
        let now = ms(self.now);
        let input = encode(input)?;
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO workflows (id, name, version, status, input, created_at, updated_at, last_seq)
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?5, 1) ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id.as_str(), name, version, input, now]))
            .map_err(|e| self.sql(e))?;
        if inserted == 0 {
            let status = self.status(id)?.1;
            return Err(StorageError::AlreadyExists {
                id: id.clone(),
                status,
            });
        }
        self.insert_events(id, std::slice::from_ref(started))?;
        self.conn
            .prepare_cached("INSERT INTO tasks (kind, workflow_id, visible_at) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![WORKFLOW_TASK, id.as_str(), now]))
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The workflow's last sequence number and status.
    fn status(&self, id: &WorkflowId) -> Result<(Seq, WorkflowStatus)> {
        let row: Option<(i64, String)> = self
            .conn
            .prepare_cached("SELECT last_seq, status FROM workflows WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.sql(e))?;
        let Some((last, status)) = row else {
            return Err(StorageError::NotFound(id.clone()));
        };
        let status = status.parse().map_err(|e: String| StorageError::Corrupt {
            message: format!("workflow \"{id}\" in {}: {e}", self.path.display()),
            source: None,
        })?;
        Ok((seq(last), status))
    }

    fn insert_events(&self, id: &WorkflowId, events: &[Event]) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO events (workflow_id, seq, at, kind) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(|e| self.sql(e))?;
        for e in events {
            stmt.execute(params![
                id.as_str(),
                seq_i64(e.seq),
                ms(e.at),
                encode(&e.kind)?
            ])
            .map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    /// Checks and appends events, and stores what they imply (see `TaskPlan`).
    pub(crate) fn append(&self, id: &WorkflowId, expected: Seq, events: &[Event]) -> Result<()> {
        let (actual, status) = self.status(id)?;
        check_append(id, actual, status, expected, events)?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        self.insert_events(id, events)?;
        let now = ms(self.now);
        self.conn
            .prepare_cached("UPDATE workflows SET last_seq = ?2, updated_at = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id.as_str(), seq_i64(last.seq), now]))
            .map_err(|e| self.sql(e))?;
        let plan = TaskPlan::from_events(events);
        for a in &plan.activities {
            self.insert_activity(
                id,
                a.activity_id,
                &a.name,
                &a.input,
                &a.options,
                1,
                self.now,
            )?;
        }
        for t in &plan.timers {
            self.post(id, &t.message(), t.fire_at)?;
        }
        if let Some(end) = plan.terminal {
            let output = end.output.as_ref().map(encode).transpose()?;
            let failure = end.failure.as_ref().map(encode).transpose()?;
            self.conn
                .prepare_cached(
                    "UPDATE workflows SET status = ?2, output = ?3, failure = ?4, pause_reason = NULL,
                     closed_at = ?5 WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id.as_str(), end.status.as_str(), output, failure, now]))
                .map_err(|e| self.sql(e))?;
            for sql in [
                "DELETE FROM messages WHERE workflow_id = ?1",
                "DELETE FROM tasks WHERE workflow_id = ?1",
            ] {
                self.conn
                    .prepare_cached(sql)
                    .and_then(|mut s| s.execute([id.as_str()]))
                    .map_err(|e| self.sql(e))?;
            }
        }
        Ok(())
    }

    #[expect(clippy::too_many_arguments, reason = "one row's columns")]
    fn insert_activity(
        &self,
        id: &WorkflowId,
        activity: ActivityId,
        name: &str,
        input: &Payload,
        options: &ActivityOptions,
        attempt: u32,
        visible_at: Timestamp,
    ) -> Result<()> {
        let (input, options) = (encode(input)?, encode(options)?);
        self.conn
            .prepare_cached(
                "INSERT INTO tasks (kind, workflow_id, visible_at, activity_id, name, input, options, attempt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    ACTIVITY_TASK,
                    id.as_str(),
                    ms(visible_at),
                    seq_i64(activity.0),
                    name,
                    input,
                    options,
                    attempt
                ])
            })
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Adds a message and makes the workflow task ready by its time, unless a live lease holds
    /// the task (then it stays visible at the lease's expiry).
    fn post(&self, id: &WorkflowId, kind: &EventKind, visible_at: Timestamp) -> Result<()> {
        let v = ms(visible_at);
        let kind = encode(kind)?;
        self.conn
            .prepare_cached(
                "INSERT INTO messages (workflow_id, visible_at, kind) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![id.as_str(), v, kind]))
            .map_err(|e| self.sql(e))?;
        self.conn
            .prepare_cached(
                "UPDATE tasks SET visible_at = MIN(COALESCE(visible_at, ?2),
                     CASE WHEN lease_expires_at > ?3 THEN MAX(?2, lease_expires_at) ELSE ?2 END)
                 WHERE kind = 0 AND workflow_id = ?1",
            )
            .and_then(|mut s| s.execute(params![id.as_str(), v, ms(self.now)]))
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Makes an unleased workflow task ready at its earliest message, or not ready.
    fn refresh(&self, id: &WorkflowId) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE tasks SET visible_at = (SELECT MIN(visible_at) FROM messages WHERE workflow_id = ?1)
                 WHERE kind = 0 AND workflow_id = ?1 AND (lease_expires_at IS NULL OR lease_expires_at <= ?2)",
            )
            .and_then(|mut s| s.execute(params![id.as_str(), ms(self.now)]))
            .map_err(|e| self.sql(e))?;
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

    pub(crate) fn signal(&self, id: &WorkflowId, kind: &EventKind) -> Result<()> {
        let (_, status) = self.status(id)?;
        if status.is_terminal() {
            return Err(StorageError::Closed {
                id: id.clone(),
                status,
            });
        }
        self.post(id, kind, self.now)
    }

    // ---- leases ----

    /// The task under `lease` if the lease is live: its kind and workflow.
    fn held(&self, lease: &Lease) -> Result<(i64, WorkflowId)> {
        let row: Option<(i64, String, i64, Option<i64>)> = self
            .conn
            .prepare_cached(
                "SELECT kind, workflow_id, lease_token, lease_expires_at FROM tasks WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([task_i64(lease.task)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            })
            .map_err(|e| self.sql(e))?;
        match row {
            Some((kind, workflow, token, Some(expires)))
                if token_u64(token) == lease.token && expires > ms(self.now) =>
            {
                Ok((kind, WorkflowId::new(workflow)))
            }
            _ => Err(StorageError::LeaseLost(lease.task)),
        }
    }

    /// Claims up to `max` ready tasks of `kind`: sets a new token and the expiry, which is
    /// also the time the task becomes visible again if the lease lapses.
    /// With `of`, only that workflow's tasks (an eager claim).
    fn claim(
        &self,
        kind: i64,
        req: &ClaimRequest,
        of: Option<&WorkflowId>,
    ) -> Result<Vec<(Lease, WorkflowId, u32, i64)>> {
        let now = ms(self.now);
        let expires = self.now.saturating_add(req.lease);
        let max = i64::try_from(req.max).unwrap_or(i64::MAX);
        let ids: Vec<i64> = match of {
            None => self
                .conn
                .prepare_cached(
                    "SELECT id FROM tasks WHERE kind = ?1 AND visible_at <= ?2 ORDER BY visible_at, id LIMIT ?3",
                )
                .and_then(|mut s| s.query_map(params![kind, now, max], |r| r.get(0))?.collect()),
            Some(id) => self
                .conn
                .prepare_cached(
                    // The unary `+` keeps SQLite on the by-workflow index: on `tasks_ready`
                    // it would walk every ready task of the kind.
                    "SELECT id FROM tasks WHERE workflow_id = ?4 AND +kind = ?1 AND +visible_at <= ?2
                     ORDER BY visible_at, id LIMIT ?3",
                )
                .and_then(|mut s| {
                    s.query_map(params![kind, now, max, id.as_str()], |r| r.get(0))?
                        .collect()
                }),
        }
        .map_err(|e| self.sql(e))?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE tasks SET lease_token = lease_token + 1, lease_expires_at = ?2, visible_at = ?2,
                 lease_owner = ?3, deliveries = deliveries + 1 WHERE id = ?1
                 RETURNING lease_token, deliveries, workflow_id",
            )
            .map_err(|e| self.sql(e))?;
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let (token, deliveries, workflow): (i64, u32, String) = stmt
                .query_row(params![id, ms(expires), req.owner], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(|e| self.sql(e))?;
            let lease = Lease {
                task: TaskId(id.unsigned_abs()),
                token: token_u64(token),
                expires_at: expires,
            };
            claimed.push((lease, WorkflowId::new(workflow), deliveries, id));
        }
        Ok(claimed)
    }

    /// With `of`, only that workflow's task (an eager claim).
    pub(crate) fn claim_workflow_tasks(
        &self,
        req: &ClaimRequest,
        of: Option<&WorkflowId>,
    ) -> Result<Vec<WorkflowTask>> {
        let mut tasks = Vec::new();
        for (lease, workflow_id, deliveries, _) in self.claim(WORKFLOW_TASK, req, of)? {
            let (name, last): (String, i64) = self
                .conn
                .prepare_cached("SELECT name, last_seq FROM workflows WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([workflow_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                })
                .map_err(|e| self.sql(e))?;
            let messages = self.due_messages(&workflow_id)?;
            tasks.push(WorkflowTask {
                lease,
                workflow_id,
                workflow_name: name,
                last_seq: seq(last),
                messages,
                deliveries,
            });
        }
        Ok(tasks)
    }

    fn due_messages(&self, id: &WorkflowId) -> Result<Vec<Message>> {
        let rows: Vec<(i64, i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT id, visible_at, kind FROM messages WHERE workflow_id = ?1 AND visible_at <= ?2
                 ORDER BY visible_at, id",
            )
            .and_then(|mut s| {
                s.query_map(params![id.as_str(), ms(self.now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
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

    pub(crate) fn complete_workflow_task(&self, c: &WorkflowTaskCompletion) -> Result<()> {
        let (kind, workflow) = self.held(&c.lease)?;
        if kind != WORKFLOW_TASK || workflow != c.workflow_id {
            return Err(StorageError::InvalidArgument(format!(
                "{} is not the workflow task of \"{}\"",
                c.lease.task, c.workflow_id
            )));
        }
        let id = &c.workflow_id;
        self.append(id, c.expected_last_seq, &c.events)?;
        {
            let mut stmt = self
                .conn
                .prepare_cached("DELETE FROM messages WHERE id = ?1 AND workflow_id = ?2")
                .map_err(|e| self.sql(e))?;
            for m in &c.consumed {
                stmt.execute(params![i64::try_from(m.0).unwrap_or(i64::MAX), id.as_str()])
                    .map_err(|e| self.sql(e))?;
            }
        }
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "INSERT INTO logs (workflow_id, seq, at, level, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| self.sql(e))?;
            for l in &c.logs {
                stmt.execute(params![
                    id.as_str(),
                    seq_i64(l.seq),
                    ms(l.at),
                    level_str(l.level),
                    l.message
                ])
                .map_err(|e| self.sql(e))?;
            }
        }
        let progress = c.progress.as_ref().map(encode).transpose()?;
        self.conn
            .prepare_cached(
                "UPDATE workflows SET progress = COALESCE(?2, progress), updated_at = ?3,
                 status = CASE WHEN status = 'paused' THEN 'running' ELSE status END,
                 pause_reason = CASE WHEN status = 'paused' THEN NULL ELSE pause_reason END
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id.as_str(), progress, ms(self.now)]))
            .map_err(|e| self.sql(e))?;
        self.conn
            .prepare_cached(
                "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute([task_i64(c.lease.task)]))
            .map_err(|e| self.sql(e))?;
        self.refresh(id)
    }

    /// With `of`, only that workflow's tasks (an eager claim).
    pub(crate) fn claim_activity_tasks(
        &self,
        req: &ClaimRequest,
        of: Option<&WorkflowId>,
    ) -> Result<Vec<ActivityTask>> {
        let mut tasks = Vec::new();
        for (lease, workflow_id, deliveries, row) in self.claim(ACTIVITY_TASK, req, of)? {
            let (activity, name, input, options, attempt): (i64, String, String, String, u32) = self
                .conn
                .prepare_cached("SELECT activity_id, name, input, options, attempt FROM tasks WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([row], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                })
                .map_err(|e| self.sql(e))?;
            tasks.push(ActivityTask {
                lease,
                activity_id: ActivityId(seq(activity)),
                input: self.decode(&input, || format!("the input of activity task {row}"))?,
                options: self.decode(&options, || format!("the options of activity task {row}"))?,
                workflow_id,
                name,
                attempt,
                deliveries,
            });
        }
        Ok(tasks)
    }

    /// Returns the activity's workflow.
    pub(crate) fn complete_activity_task(&self, c: &ActivityTaskCompletion) -> Result<WorkflowId> {
        let (kind, workflow) = self.held(&c.lease)?;
        if kind != ACTIVITY_TASK {
            return Err(StorageError::InvalidArgument(format!(
                "{} is not an activity task",
                c.lease.task
            )));
        }
        let row = task_i64(c.lease.task);
        let (activity, name, input, options, attempt): (i64, String, String, String, u32) = self
            .conn
            .prepare_cached(
                "SELECT activity_id, name, input, options, attempt FROM tasks WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([row], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
            })
            .map_err(|e| self.sql(e))?;
        let (result_for, result_attempt, retry_at) = activity_result(&c.result)?;
        let activity = ActivityId(seq(activity));
        if result_for != activity || result_attempt != attempt {
            return Err(StorageError::InvalidArgument(format!(
                "the result is for {result_for} attempt {result_attempt}, the task is {activity} attempt {attempt}"
            )));
        }
        self.conn
            .prepare_cached("DELETE FROM tasks WHERE id = ?1")
            .and_then(|mut s| s.execute([row]))
            .map_err(|e| self.sql(e))?;
        self.post(&workflow, &c.result, self.now)?;
        if let Some(at) = retry_at {
            let input: Payload =
                self.decode(&input, || format!("the input of activity task {row}"))?;
            let options: ActivityOptions =
                self.decode(&options, || format!("the options of activity task {row}"))?;
            self.insert_activity(
                &workflow,
                activity,
                &name,
                &input,
                &options,
                attempt + 1,
                at,
            )?;
        }
        Ok(workflow)
    }

    /// Commits an activity's result and, if a claim of its workflow task would hand out
    /// exactly that result on the history `d` started from, the task `d` decided, then claims
    /// up to `eager.max` of the activities it scheduled. `None`: only the result committed.
    pub(crate) fn complete_activity_and_decide(
        &self,
        c: &ActivityTaskCompletion,
        d: &DecidedTask,
        eager: &ClaimRequest,
    ) -> Result<Option<Vec<ActivityTask>>> {
        let workflow = self.complete_activity_task(c)?;
        if workflow != d.workflow_id {
            return Err(StorageError::InvalidArgument(format!(
                "the activity belongs to \"{workflow}\", the decision to \"{}\"",
                d.workflow_id
            )));
        }
        let (last, _) = self.status(&workflow)?;
        let due = self.due_messages(&workflow)?;
        if last != d.expected_last_seq || due.len() != 1 || due[0].kind != c.result {
            return Ok(None);
        }
        let one = ClaimRequest {
            max: 1,
            ..eager.clone()
        };
        // Nothing is claimed if a live lease holds the task: someone else is deciding it.
        let Some(task) = self.claim_workflow_tasks(&one, Some(&workflow))?.pop() else {
            return Ok(None);
        };
        self.complete_workflow_task(&WorkflowTaskCompletion {
            lease: task.lease,
            workflow_id: workflow.clone(),
            expected_last_seq: d.expected_last_seq,
            events: d.events.clone(),
            consumed: vec![due[0].id],
            progress: d.progress.clone(),
            logs: d.logs.clone(),
        })?;
        if eager.max == 0 {
            return Ok(Some(Vec::new()));
        }
        self.claim_activity_tasks(eager, Some(&workflow)).map(Some)
    }

    pub(crate) fn renew_lease(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        self.held(lease)?;
        let expires_at = self.now.saturating_add(extend);
        self.conn
            .prepare_cached("UPDATE tasks SET lease_expires_at = ?2, visible_at = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![task_i64(lease.task), ms(expires_at)]))
            .map_err(|e| self.sql(e))?;
        Ok(Lease {
            expires_at,
            ..*lease
        })
    }

    pub(crate) fn release_task(&self, lease: &Lease, release: &Release) -> Result<()> {
        let (kind, workflow) = self.held(lease)?;
        let visible_at = release.visible_at.unwrap_or(self.now);
        self.conn
            .prepare_cached(
                "UPDATE tasks SET lease_expires_at = NULL, lease_owner = NULL, deliveries = 0, visible_at = ?2
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![task_i64(lease.task), ms(visible_at)]))
            .map_err(|e| self.sql(e))?;
        if let (WORKFLOW_TASK, Some(reason)) = (kind, &release.pause) {
            self.conn
                .prepare_cached("UPDATE workflows SET status = 'paused', pause_reason = ?2, updated_at = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![workflow.as_str(), reason, ms(self.now)]))
                .map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    // ---- reads ----

    pub(crate) fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        self.status(id)?;
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
        rows.into_iter()
            .map(|(n, at, kind)| {
                Ok(Event {
                    seq: seq(n),
                    at: Timestamp::from_millis(at),
                    kind: self.decode(&kind, || format!("event #{n} of workflow \"{id}\""))?,
                })
            })
            .collect()
    }

    pub(crate) fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
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

    pub(crate) fn list(&self, q: &ListQuery) -> Result<Page<WorkflowSummary>> {
        let mut sql = format!("SELECT {SUMMARY} FROM workflows WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(status) = q.status {
            sql.push_str(" AND status = ?");
            args.push(Value::Text(status.as_str().into()));
        }
        if let Some(name) = &q.name {
            sql.push_str(" AND name = ?");
            args.push(Value::Text(name.clone()));
        }
        if let Some(t) = q.created_after {
            sql.push_str(" AND created_at >= ?");
            args.push(Value::Integer(ms(t)));
        }
        if let Some(t) = q.created_before {
            sql.push_str(" AND created_at < ?");
            args.push(Value::Integer(ms(t)));
        }
        if let Some(c) = &q.after {
            sql.push_str(" AND (created_at < ? OR (created_at = ? AND id < ?))");
            args.push(Value::Integer(ms(c.created_at)));
            args.push(Value::Integer(ms(c.created_at)));
            args.push(Value::Text(c.id.as_str().into()));
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ?");
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
        let more = raws.len() > q.limit;
        let items = raws
            .into_iter()
            .take(q.limit)
            .map(|r| r.decode(self))
            .collect::<Result<Vec<_>>>()?;
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
        let now = ms(self.now);
        let mut stats = Stats::default();
        let by_status: Vec<(String, i64)> = self
            .conn
            .prepare_cached("SELECT status, COUNT(*) FROM workflows GROUP BY status")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(|e| self.sql(e))?;
        for (status, n) in by_status {
            let status: WorkflowStatus =
                status.parse().map_err(|e: String| StorageError::Corrupt {
                    message: format!("a workflow status in {}: {e}", self.path.display()),
                    source: None,
                })?;
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
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
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

    pub(crate) fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        self.status(id)?;
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
                level: parse_level(&level),
                message,
            })
            .collect())
    }
}

fn task_i64(t: TaskId) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn token_u64(t: i64) -> u64 {
    t.unsigned_abs()
}

fn level_str(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

fn parse_level(s: &str) -> LogLevel {
    match s {
        "debug" => LogLevel::Debug,
        "warn" => LogLevel::Warn,
        "error" => LogLevel::Error,
        _ => LogLevel::Info,
    }
}

const SUMMARY: &str = "id, name, version, status, input, created_at, updated_at, closed_at, last_seq, \
                       output, failure, pause_reason, progress";

struct RawSummary {
    id: String,
    name: String,
    version: u32,
    status: String,
    input: String,
    created_at: i64,
    updated_at: i64,
    closed_at: Option<i64>,
    last_seq: i64,
    output: Option<String>,
    failure: Option<String>,
    pause_reason: Option<String>,
    progress: Option<String>,
}

impl RawSummary {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawSummary {
            id: r.get(0)?,
            name: r.get(1)?,
            version: r.get(2)?,
            status: r.get(3)?,
            input: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
            closed_at: r.get(7)?,
            last_seq: r.get(8)?,
            output: r.get(9)?,
            failure: r.get(10)?,
            pause_reason: r.get(11)?,
            progress: r.get(12)?,
        })
    }

    fn decode(self, db: &Db<'_>) -> Result<WorkflowSummary> {
        let id = self.id;
        let field = |what: &str| format!("the {what} of workflow \"{id}\"");
        let status = self
            .status
            .parse()
            .map_err(|e: String| StorageError::Corrupt {
                message: format!("{} in {}: {e}", field("status"), db.path.display()),
                source: None,
            })?;
        let input: Payload = db.decode(&self.input, || field("input"))?;
        let output: Option<Payload> = self
            .output
            .map(|t| db.decode(&t, || field("output")))
            .transpose()?;
        let failure: Option<Failure> = self
            .failure
            .map(|t| db.decode(&t, || field("failure")))
            .transpose()?;
        let progress: Option<Progress> = self
            .progress
            .map(|t| db.decode(&t, || field("progress")))
            .transpose()?;
        Ok(WorkflowSummary {
            id: WorkflowId::new(id),
            name: self.name,
            version: self.version,
            status,
            input,
            created_at: Timestamp::from_millis(self.created_at),
            updated_at: Timestamp::from_millis(self.updated_at),
            closed_at: self.closed_at.map(Timestamp::from_millis),
            last_seq: seq(self.last_seq),
            output,
            failure,
            pause_reason: self.pause_reason,
            progress,
        })
    }
}
