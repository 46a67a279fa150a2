//! Write sets as JSON for an applier that runs on a database server, and its answers back.
//!
//! PostgreSQL's and MySQL's backends apply a batch of write sets with one call of a
//! server-side procedure, `loom_apply`, written in each server's own language. This is the
//! one language they share: [`item`] turns a write set into the JSON item the procedure
//! takes, and [`applied`] turns the procedure's answer to it into the engine's
//! [`Applied`] or error.
//!
//! It is a translation, not a decision: each check and op of the engine becomes its JSON
//! form, and runs of primitive writes become one `"w"` step, grouped by table, which the
//! server applies with a statement per part. Payloads travel as Loom's JSON text, stored
//! verbatim. A failed check comes back as its position and what the server found there, and
//! [`Check::verdict`] gives the error, so a server's procedure evaluates conditions but never
//! chooses an answer. The item's shapes are written out at the top of each backend's
//! procedure (`loom-postgres/src/functions.sql`, `loom-mysql/src/apply.sql`).

use crate::engine::{
    Applied, Check, Found, NewTask, Op, StatusChange, TaskView, When, WorkflowView, WriteSet,
};
use crate::{
    ActivityTask, Lease, Message, MessageId, Result, StorageError, TaskId, WorkflowStatus,
    WorkflowTask,
};
use loom_core::{ActivityId, EventKind, Seq, Timestamp, WorkflowId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StorageError::InvalidArgument(format!("cannot encode a value: {e}")))
}

/// `text` decoded as JSON, or `Corrupt` naming `what` was stored there.
pub fn decode<T: DeserializeOwned>(text: &str, what: impl FnOnce() -> String) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StorageError::corrupt(format!("{} cannot be decoded", what()), e))
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `[relative, ms]`: the server's now plus `ms` when `relative` is 1, `ms` itself when 0.
fn when(w: When) -> Value {
    match w {
        When::Now => json!([1, 0]),
        When::After(d) => json!([1, i64::try_from(d.as_millis()).unwrap_or(i64::MAX)]),
        When::At(t) => json!([0, t.as_millis()]),
    }
}

fn check(c: &Check) -> Value {
    match c {
        Check::Leased { task, token } => json!(["leased", n(task.0), n(*token)]),
        Check::WorkflowTaskOf { task, workflow } => json!(["wft_of", n(task.0), workflow.as_str()]),
        Check::IsWorkflowTask { task } => json!(["is_wft", n(task.0)]),
        Check::ActivityAttempt {
            task,
            workflow,
            activity,
            attempt,
        } => json!([
            "attempt",
            n(task.0),
            workflow.as_str(),
            n(activity.0.get()),
            attempt
        ]),
        Check::Absent { workflow } => json!(["absent", workflow.as_str()]),
        Check::Open { workflow } => json!(["open", workflow.as_str()]),
        Check::OpenChildOf { workflow, parent } => {
            json!(["child_of", workflow.as_str(), parent.as_str()])
        }
        Check::LastSeq { workflow, expected } => {
            json!(["last", workflow.as_str(), n(expected.get())])
        }
        Check::Run { workflow, run } => json!(["run", workflow.as_str(), run]),
        Check::Free { workflow } => json!(["free", workflow.as_str()]),
        Check::NoWorkflowTask { workflow } => json!(["no_wft", workflow.as_str()]),
        Check::Paused { workflow } => json!(["paused", workflow.as_str()]),
        Check::NothingDue { workflow } => json!(["quiet", workflow.as_str()]),
        Check::ScheduleVersion { schedule, expected } => {
            json!(["sched", schedule, expected.map(n)])
        }
    }
}

/// One `"w"` step being assembled: the primitive writes of a run, by part.
struct WriteStep {
    step: serde_json::Map<String, Value>,
    workflow: Option<WorkflowId>,
}

impl WriteStep {
    fn new() -> Self {
        let mut step = serde_json::Map::new();
        step.insert("s".into(), json!("w"));
        WriteStep {
            step,
            workflow: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.step.len() == 1
    }

    fn push(&mut self, part: &str, item: Value) {
        match self.step.entry(part).or_insert_with(|| json!([])) {
            Value::Array(items) => items.push(item),
            other => *other = item,
        }
    }

    fn set(&mut self, part: &str, value: Value) -> bool {
        if self.step.contains_key(part) {
            return false;
        }
        self.step.insert(part.into(), value);
        true
    }

    /// Adds a primitive write to this step if it fits: same workflow, and a part it does not
    /// hold yet where a part is single; after a settle, only log lines. `Ok(false)`: start a
    /// new step for it.
    fn add(&mut self, op: &Op) -> Result<bool> {
        if self.step.contains_key("st") && !matches!(op, Op::AppendLogs { .. }) {
            return Ok(false);
        }
        if let Some(wf) = op.workflow() {
            match &self.workflow {
                Some(mine) if mine != wf => return Ok(false),
                Some(_) => {}
                None => {
                    self.workflow = Some(wf.clone());
                    self.step.insert("wf".into(), json!(wf.as_str()));
                }
            }
        }
        Ok(match op {
            Op::CreateWorkflow {
                id,
                name,
                version,
                input,
                started,
                parent,
            } => {
                let fits = self.set(
                    "cw",
                    json!([
                        id.as_str(),
                        name,
                        version,
                        encode(input)?,
                        parent.as_ref().map(WorkflowId::as_str)
                    ]),
                );
                if fits {
                    self.push(
                        "ev",
                        json!([
                            n(started.seq.get()),
                            started.at.as_millis(),
                            encode(&started.kind)?
                        ]),
                    );
                }
                fits
            }
            Op::AppendEvents { events, .. } => {
                for e in events {
                    self.push(
                        "ev",
                        json!([n(e.seq.get()), e.at.as_millis(), encode(&e.kind)?]),
                    );
                }
                true
            }
            Op::UpdateWorkflow { change, .. } => {
                let (st, term) = match &change.status {
                    StatusChange::Keep => ("keep", Value::Null),
                    StatusChange::Resume => ("resume", Value::Null),
                    StatusChange::Close(end) => (
                        "close",
                        json!([
                            end.status.as_str(),
                            end.output.as_ref().map(encode).transpose()?,
                            end.failure.as_ref().map(encode).transpose()?
                        ]),
                    ),
                };
                self.set(
                    "uw",
                    json!({
                        "last": change.last_seq.map(|s| n(s.get())),
                        "progress": change.progress.as_ref().map(encode).transpose()?,
                        "st": st,
                        "term": term,
                    }),
                )
            }
            Op::InsertTask { task, due, .. } => {
                let due = when(*due);
                let row = match task {
                    NewTask::Workflow => {
                        json!([0, due[0], due[1], null, null, null, null, null])
                    }
                    NewTask::Activity(a) => json!([
                        1,
                        due[0],
                        due[1],
                        n(a.activity_id.0.get()),
                        a.name,
                        encode(&a.input)?,
                        encode(&a.options)?,
                        a.attempt
                    ]),
                };
                self.push("it", row);
                true
            }
            Op::DeleteTask { task } => {
                self.push("dt", json!(n(task.0)));
                true
            }
            Op::Requeue { task, due } => {
                let due = when(*due);
                self.push("rq", json!([n(task.0), due[0], due[1]]));
                true
            }
            Op::Release { task, due } => {
                let due = when(*due);
                self.push("rl", json!([n(task.0), due[0], due[1]]));
                true
            }
            Op::Post {
                kind,
                visible,
                retry_at,
                ..
            } => {
                let visible = when(*visible);
                let retry = retry_at.map_or(json!([null, null]), when);
                self.push(
                    "po",
                    json!([
                        encode(kind)?,
                        visible[0],
                        visible[1],
                        retry[0],
                        retry[1],
                        kind.carries_over()
                    ]),
                );
                true
            }
            Op::Wake { at, .. } => self.set("wk", when(*at)),
            Op::Consume { ids, .. } => {
                for id in ids {
                    self.push("cm", json!(n(id.0)));
                }
                true
            }
            Op::DeleteWork { .. } => self.set("dw", json!(true)),
            Op::Unpost { kind, .. } => {
                self.push("up", json!(encode(kind)?));
                true
            }
            Op::DeleteActivity { activity, .. } => {
                self.push("da", json!(n(activity.0.get())));
                true
            }
            Op::SetTags { tags, .. } => {
                for (key, value) in tags {
                    self.push(
                        "tg",
                        json!([key, encode(value)?, value.text(), value.number()]),
                    );
                }
                true
            }
            Op::AppendLogs { logs, .. } => {
                for l in logs {
                    self.push(
                        "lg",
                        json!([
                            n(l.seq.get()),
                            l.at.as_millis(),
                            l.level.as_str(),
                            l.message
                        ]),
                    );
                }
                true
            }
            Op::Pause { task, reason } => self.set("pa", json!([[n(task.0), reason]])),
            // Applied last in its step, reading the messages the step's writes left.
            Op::Settle { affinity, .. } => self.set(
                "st",
                match affinity {
                    Some(a) => json!({"o": a.owner, "ms": i64::try_from(a.window.as_millis()).unwrap_or(i64::MAX)}),
                    None => json!(true),
                },
            ),
            Op::Renew { .. }
            | Op::NewRun { .. }
            | Op::ResetRun { .. }
            | Op::Hold { .. }
            | Op::ForgetAffinity { .. }
            | Op::Purge { .. }
            | Op::ClaimWorkflowTasks { .. }
            | Op::ClaimActivityTasks { .. }
            | Op::PutSchedule { .. }
            | Op::DeleteSchedule { .. }
            | Op::If { .. } => false,
        })
    }
}

/// The steps of `ops`: runs of primitive writes grouped, the rest one step each.
fn steps(ops: &[Op]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut run = WriteStep::new();
    for op in ops {
        if run.add(op)? {
            continue;
        }
        if !run.is_empty() {
            out.push(Value::Object(
                std::mem::replace(&mut run, WriteStep::new()).step,
            ));
            if run.add(op)? {
                continue;
            }
        }
        out.push(match op {
            Op::ClaimActivityTasks { of: Some(wf), req } => json!({
                "s": "claim_a", "wf": wf.as_str(), "owner": req.owner,
                "lease_ms": i64::try_from(req.lease.as_millis()).unwrap_or(i64::MAX),
                "max": n(req.max as u64),
            }),
            Op::ClaimWorkflowTasks { of: Some(wf), req } => json!({
                "s": "claim_w", "wf": wf.as_str(), "owner": req.owner,
                "lease_ms": i64::try_from(req.lease.as_millis()).unwrap_or(i64::MAX),
                "max": n(req.max as u64),
            }),
            Op::Hold { workflow, reason } => json!({
                "s": "hold", "wf": workflow.as_str(), "reason": reason,
            }),
            Op::ForgetAffinity { owner } => json!({ "s": "forget", "owner": owner }),
            Op::Purge { purge } => json!({
                "s": "purge",
                "older_ms": i64::try_from(purge.older_than.as_millis()).unwrap_or(i64::MAX),
                "status": purge.status.map(WorkflowStatus::as_str),
                "name": purge.name,
                "except": purge.except_names,
                "max": n(purge.limit as u64),
            }),
            Op::NewRun { workflow, started } => {
                let EventKind::WorkflowStarted { version, input, .. } = &started.kind else {
                    return Err(StorageError::InvalidArgument(
                        "a new run starts with a WorkflowStarted event".into(),
                    ));
                };
                json!({
                    "s": "nr", "wf": workflow.as_str(),
                    "ev": [n(started.seq.get()), started.at.as_millis(), encode(&started.kind)?],
                    "ver": version, "input": encode(input)?,
                })
            }
            Op::ResetRun {
                workflow,
                events,
                progress,
                keep_signals,
            } => {
                let Some(loom_core::Event {
                    kind: EventKind::WorkflowStarted { version, input, .. },
                    ..
                }) = events.first()
                else {
                    return Err(StorageError::InvalidArgument(
                        "a reset run's history starts with a WorkflowStarted event".into(),
                    ));
                };
                let ev = events
                    .iter()
                    .map(|e| Ok(json!([n(e.seq.get()), e.at.as_millis(), encode(&e.kind)?])))
                    .collect::<Result<Vec<_>>>()?;
                json!({
                    "s": "rr", "wf": workflow.as_str(), "ev": ev,
                    "ver": version, "input": encode(input)?,
                    "last": n(events.last().map_or(1, |e| e.seq.get())),
                    "progress": encode(progress)?, "keep_signals": keep_signals,
                })
            }
            Op::PutSchedule { schedule, new } => json!({
                "s": "sput", "id": schedule.id, "new": new, "version": n(schedule.version),
                "wake": schedule.wake_at.map(Timestamp::as_millis),
                "body": encode(schedule)?,
            }),
            Op::DeleteSchedule { schedule } => json!({"s": "sdel", "id": schedule}),
            Op::If {
                all,
                then,
                otherwise,
            } => json!({
                "s": "if",
                "all": all.iter().map(check).collect::<Vec<_>>(),
                "then": steps(then)?,
                "else": steps(otherwise)?,
            }),
            other => {
                return Err(StorageError::InvalidArgument(format!(
                    "loom_apply does not take {other:?}; the backend applies it itself"
                )));
            }
        });
    }
    if !run.is_empty() {
        out.push(Value::Object(run.step));
    }
    Ok(out)
}

/// A write set as one item of `loom_apply`'s batch: compact JSON, on one line (MySQL's
/// procedure takes a batch as items joined by line feeds).
pub fn item(ws: &WriteSet) -> Result<String> {
    let mut item = serde_json::Map::new();
    if let Some(wf) = ws.workflow() {
        item.insert("wf".into(), json!(wf.as_str()));
    } else if let Some(task) = ws.checks.iter().find_map(|c| match c {
        Check::Leased { task, .. } => Some(task),
        _ => None,
    }) {
        item.insert("task".into(), json!(n(task.0)));
    }
    item.insert(
        "checks".into(),
        Value::Array(ws.checks.iter().map(check).collect()),
    );
    item.insert("steps".into(), Value::Array(steps(&ws.ops)?));
    encode(&Value::Object(item))
}

/// What `loom_apply` answered for one item.
#[derive(Debug)]
pub struct Answer {
    /// The failed check's position (from 1) and what the server found there.
    pub failed: Option<(usize, Value)>,
    /// The database's clock for the item.
    pub now: i64,
    /// What the item claimed or decided.
    pub out: Option<Value>,
}

/// The engine's answer to `ws` from the server's: the failed check's error, or what was
/// claimed and decided.
pub fn applied(ws: &WriteSet, answer: Answer) -> Result<Applied> {
    let now = Timestamp::from_millis(answer.now);
    if let Some((position, found)) = answer.failed {
        let Some(check) = ws.checks.get(position.wrapping_sub(1)) else {
            return Err(protocol(format!(
                "loom_apply failed check {position}, which the item does not have"
            )));
        };
        let found = self::found(check, &found)?;
        check.verdict(&found, now)?;
        return Err(protocol(format!(
            "loom_apply reported {check:?} failed on {found:?}, which passes it"
        )));
    }
    let out = answer.out.unwrap_or(Value::Null);
    let mut applied = Applied::default();
    if let Some(decided) = out.get("decided") {
        applied.decided = decided.as_bool();
    }
    if let Some(Value::Array(acts)) = out.get("acts") {
        let workflow = ws
            .workflow()
            .cloned()
            .unwrap_or_else(|| WorkflowId::new(""));
        for (i, a) in acts.iter().enumerate() {
            let ready = ready_at(&out, "acts_ready", i, now);
            applied
                .activity_tasks
                .push(activity_task(a, &workflow, now, ready)?);
        }
    }
    if let Some(Value::Array(ids)) = out.get("purged") {
        for id in ids {
            let id = id
                .as_str()
                .ok_or_else(|| protocol(format!("loom_apply purged {id}, not an id")))?;
            applied.purged.push(WorkflowId::new(id));
        }
    }
    if let Some(Value::Array(wfts)) = out.get("wfts") {
        for (i, w) in wfts.iter().enumerate() {
            let ready = ready_at(&out, "wfts_ready", i, now);
            applied.workflow_tasks.push(workflow_task(w, now, ready)?);
        }
    }
    Ok(applied)
}

/// The ready time of the `i`th task of an eager claim, from its list `key`; the claim's time
/// if the server did not say.
fn ready_at(out: &Value, key: &str, i: usize, now: Timestamp) -> Timestamp {
    out.get(key)
        .and_then(|r| r.get(i))
        .and_then(Value::as_i64)
        .map_or(now, Timestamp::from_millis)
}

fn protocol(message: String) -> StorageError {
    StorageError::Unavailable {
        message,
        source: None,
    }
}

/// What the server found for `check`, as the engine reads it.
fn found(check: &Check, found: &Value) -> Result<Found> {
    use crate::engine::Check as C;
    let bad = || protocol(format!("loom_apply answered {found} for {check:?}"));
    Ok(match check {
        C::Leased { .. }
        | C::WorkflowTaskOf { .. }
        | C::IsWorkflowTask { .. }
        | C::ActivityAttempt { .. }
        | C::NoWorkflowTask { .. }
        | C::Free { .. } => {
            if found.is_null() {
                return Ok(Found::Task(None));
            }
            type Row = (String, i16, Option<i64>, Option<u32>, i64, Option<i64>);
            let (workflow, kind, activity, attempt, token, expires): Row =
                serde_json::from_value(found.clone()).map_err(|_| bad())?;
            Found::Task(Some(TaskView {
                workflow: WorkflowId::new(workflow),
                activity: (kind == 1).then(|| {
                    (
                        ActivityId(Seq::new(activity.unwrap_or(0).max(0).unsigned_abs())),
                        attempt.unwrap_or(1),
                    )
                }),
                token: token.unsigned_abs(),
                lease_expires_at: expires.map(Timestamp::from_millis),
            }))
        }
        C::Absent { .. }
        | C::Open { .. }
        | C::LastSeq { .. }
        | C::Run { .. }
        | C::Paused { .. }
        | C::OpenChildOf { .. } => {
            if found.is_null() {
                return Ok(Found::Workflow(None));
            }
            let (status, last, parent, run): (String, i64, Option<String>, u32) =
                serde_json::from_value(found.clone()).map_err(|_| bad())?;
            let status: WorkflowStatus =
                status.parse().map_err(|e: String| StorageError::Corrupt {
                    message: format!("a workflow's status: {e}"),
                    source: None,
                })?;
            Found::Workflow(Some(WorkflowView {
                status,
                last_seq: Seq::new(last.max(0).unsigned_abs()),
                parent: parent.map(WorkflowId::new),
                run,
            }))
        }
        C::NothingDue { .. } => Found::EarliestMessage(found.as_i64().map(Timestamp::from_millis)),
        C::ScheduleVersion { .. } => {
            if found.is_null() {
                Found::ScheduleVersion(None)
            } else {
                Found::ScheduleVersion(Some(found.as_u64().ok_or_else(bad)?))
            }
        }
    })
}

/// An activity task claimed by `claim_a`:
/// `[task, token, expires, deliveries, activity_id, name, input, options, attempt]`.
fn activity_task(
    row: &Value,
    workflow: &WorkflowId,
    now: Timestamp,
    ready_at: Timestamp,
) -> Result<ActivityTask> {
    type Row = (i64, i64, i64, i32, i64, String, String, String, i32);
    let (task, token, expires, deliveries, activity, name, input, options, attempt): Row =
        serde_json::from_value(row.clone())
            .map_err(|e| protocol(format!("an eager claim of activities: {e}")))?;
    Ok(ActivityTask {
        lease: Lease {
            task: TaskId(task.unsigned_abs()),
            token: token.unsigned_abs(),
            expires_at: Timestamp::from_millis(expires),
        },
        workflow_id: workflow.clone(),
        activity_id: ActivityId(Seq::new(activity.max(0).unsigned_abs())),
        name,
        input: decode(&input, || format!("the input of activity task {task}"))?,
        options: decode(&options, || format!("the options of activity task {task}"))?,
        attempt: u32::try_from(attempt).unwrap_or(1),
        deliveries: u32::try_from(deliveries).unwrap_or(0),
        ready_at,
        claimed_at: now,
    })
}

/// A workflow task claimed by `claim_w`:
/// `[task, token, expires, deliveries, workflow_id, name, last_seq, [[id, at, kind]], run]`.
fn workflow_task(row: &Value, now: Timestamp, ready_at: Timestamp) -> Result<WorkflowTask> {
    type Row = (
        i64,
        i64,
        i64,
        i32,
        String,
        String,
        i64,
        Vec<(i64, i64, String)>,
        u32,
    );
    let (task, token, expires, deliveries, workflow_id, name, last, messages, run): Row =
        serde_json::from_value(row.clone())
            .map_err(|e| protocol(format!("an eager claim of a workflow task: {e}")))?;
    let messages = messages
        .into_iter()
        .map(|(mid, at, kind)| {
            Ok(Message {
                id: MessageId(mid.unsigned_abs()),
                kind: decode(&kind, || format!("message {mid} of workflow {workflow_id}"))?,
                visible_at: Timestamp::from_millis(at),
            })
        })
        .collect::<Result<_>>()?;
    Ok(WorkflowTask {
        lease: Lease {
            task: TaskId(task.unsigned_abs()),
            token: token.unsigned_abs(),
            expires_at: Timestamp::from_millis(expires),
        },
        workflow_id: WorkflowId::new(workflow_id),
        workflow_name: name,
        run,
        last_seq: Seq::new(last.max(0).unsigned_abs()),
        messages,
        deliveries: u32::try_from(deliveries).unwrap_or(0),
        ready_at,
        claimed_at: now,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::engine;
    use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload};

    use super::*;

    #[test]
    fn runs_of_writes_become_one_step() {
        let started = Event {
            seq: Seq::FIRST,
            at: Timestamp::from_millis(5),
            kind: EventKind::WorkflowStarted {
                traceparent: None,
                tags: [("customer".to_owned(), loom_core::TagValue::Int(42))]
                    .into_iter()
                    .collect(),
                reset: None,
                attempt: 1,
                retry: None,
                name: "W".into(),
                version: 1,
                input: Payload::NULL,
                format: HISTORY_FORMAT,
                timeouts: Default::default(),
                parent: None,
                run: 1,
            },
        };
        let ws = engine::create(&WorkflowId::new("wf"), started).unwrap();
        let item: Value = serde_json::from_str(&item(&ws).unwrap()).unwrap();
        assert_eq!(item["wf"], "wf");
        assert_eq!(item["checks"], json!([["absent", "wf"]]));
        let steps = item["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(steps[0]["s"], "w");
        assert_eq!(steps[0]["cw"][0], "wf");
        assert_eq!(steps[0]["ev"][0][0], 1);
        assert_eq!(steps[0]["it"][0][0], 0);
        assert_eq!(
            steps[0]["tg"],
            json!([["customer", "{\"int\":42}", "42", 42]])
        );
    }

    #[test]
    fn an_item_is_one_line_whatever_its_payloads_hold() {
        let started = Event {
            seq: Seq::FIRST,
            at: Timestamp::from_millis(5),
            kind: EventKind::workflow_started(
                "W",
                1,
                Payload::encode("two\nlines\r\n and a \u{2028}").unwrap(),
            ),
        };
        let ws = engine::create(&WorkflowId::new("line\nbreak"), started).unwrap();
        let text = item(&ws).unwrap();
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["wf"], "line\nbreak");
    }

    #[test]
    fn a_retry_travels_as_a_delay_for_the_server_to_resolve() {
        let ws = WriteSet {
            checks: vec![],
            ops: vec![Op::Requeue {
                task: TaskId(3),
                due: When::After(Duration::from_secs(2)),
            }],
            sync: engine::Sync::Durable,
        };
        let item: Value = serde_json::from_str(&item(&ws).unwrap()).unwrap();
        assert_eq!(
            item["steps"][0]["rq"],
            json!([[3, 1, 2000]]),
            "relative to the server's now"
        );
    }

    #[test]
    fn a_failed_check_is_the_engines_error() {
        let ws = WriteSet {
            checks: vec![Check::LastSeq {
                workflow: WorkflowId::new("wf"),
                expected: Seq::new(3),
            }],
            ..WriteSet::default()
        };
        let err = applied(
            &ws,
            Answer {
                failed: Some((1, json!(["running", 4, null, 1]))),
                now: 0,
                out: None,
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, StorageError::Conflict { actual, .. } if actual == Seq::new(4)),
            "{err}"
        );
        // A server that calls a passing check failed is not believed.
        let err = applied(
            &ws,
            Answer {
                failed: Some((1, json!(["running", 3, null, 1]))),
                now: 0,
                out: None,
            },
        )
        .unwrap_err();
        assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    }
}
