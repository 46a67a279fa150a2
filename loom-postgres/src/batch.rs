//! Group commit: many callers' commits in one statement.
//!
//! Every commit on the hot path (start a workflow, commit a workflow task, commit an activity
//! attempt, deliver a signal) becomes an *item*: a JSON object the caller builds on its own
//! task. Committer tasks take whatever items are queued, send them as one array to the
//! server-side function `loom_commit` (see `commit.sql`) and hand each caller its own outcome.
//! One round trip, one transaction and one WAL flush serve the whole batch, and a caller never
//! waits for a timer: an idle store commits a lone item at once, a busy one commits what piled
//! up while the previous batch was in flight.
//!
//! An item that fails a check (a lost lease, a conflict) writes nothing and fails alone. If the
//! statement itself fails with a database error (a deadlock, a constraint), the batch is
//! retried one item at a time, so one bad item cannot fail its neighbours.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use loom_core::{Seq, WorkflowId};
use loom_storage::{Result, StorageError, WorkflowStatus};
use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::sql_err;

/// What the server said of one item.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Written; with what the item's eager claim claimed, as JSON (`None`: nothing).
    Ok(Option<String>),
    /// The lease is not held (expired, taken, or the task is gone).
    LeaseLost,
    /// The task is not of the kind, or not of the workflow, the caller said.
    NotThatTask,
    /// No such workflow.
    NotFound,
    /// The workflow has ended.
    Closed(String),
    /// The history's last sequence number is this, not the expected one.
    Conflict(i64),
    /// The task is for this activity and attempt, not the result's.
    Mismatch(i64, String),
    /// A workflow with this id exists, with this status.
    Exists(String),
}

/// One queued commit.
struct Pending {
    /// The item as JSON text.
    item: String,
    /// Whether committing it makes work ready for other processes (for NOTIFY).
    wakes: bool,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// The queue of pending commits and the tasks that drain it.
#[derive(Clone)]
pub(crate) struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
    /// Statements sent, for tests and diagnostics.
    statements: Arc<AtomicU64>,
}

impl Committer {
    /// Starts `concurrency` committer tasks on `pool`, each sending up to `max_batch` items per
    /// statement; `woke` runs after a commit that made work ready. The tasks end when the last
    /// `Committer` is dropped.
    pub(crate) fn start(
        pool: PgPool,
        concurrency: usize,
        max_batch: usize,
        woke: impl Fn() + Send + Sync + 'static,
    ) -> Committer {
        let (queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let woke: Arc<dyn Fn() + Send + Sync> = Arc::new(woke);
        let statements = Arc::new(AtomicU64::new(0));
        for _ in 0..concurrency.max(1) {
            let (rx, pool, woke) = (rx.clone(), pool.clone(), woke.clone());
            let counter = statements.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { return };
                        let mut batch = vec![first];
                        while batch.len() < max_batch.max(1) {
                            match rx.try_recv() {
                                Ok(p) => batch.push(p),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    run(&pool, batch, &*woke, &counter).await;
                }
            });
        }
        Committer { queue, statements }
    }

    /// How many statements the committer tasks have sent.
    pub(crate) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Queues `item` and waits for its outcome.
    pub(crate) async fn commit(
        &self,
        item: &impl serde::Serialize,
        wakes: bool,
    ) -> Result<Outcome> {
        let item = serde_json::to_string(item)
            .map_err(|e| StorageError::InvalidArgument(format!("cannot encode a commit: {e}")))?;
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending { item, wakes, reply })
            .map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }
}

fn closed() -> StorageError {
    StorageError::Unavailable {
        message: "the PostgreSQL store is closed".into(),
        source: None,
    }
}

/// Commits `batch`, or its items one by one if the statement fails on the database's side.
async fn run(
    pool: &PgPool,
    batch: Vec<Pending>,
    woke: &(dyn Fn() + Send + Sync),
    statements: &AtomicU64,
) {
    statements.fetch_add(1, Ordering::Relaxed);
    match execute(pool, &batch).await {
        Ok(outcomes) => {
            let mut wakes = false;
            for (p, outcome) in batch.into_iter().zip(outcomes) {
                wakes |= p.wakes && matches!(outcome, Outcome::Ok(_));
                // A caller that stopped waiting has nothing to be told.
                let _ = p.reply.send(Ok(outcome));
            }
            if wakes {
                woke();
            }
        }
        Err(e) if batch.len() > 1 && matches!(e, sqlx::Error::Database(_)) => {
            tracing::debug!(error = %e, items = batch.len(), "a batched commit failed; committing its items one by one");
            for p in batch {
                Box::pin(run(pool, vec![p], woke, statements)).await;
            }
        }
        Err(e) => {
            let message = e.to_string();
            let mut batch = batch.into_iter();
            if let Some(first) = batch.next() {
                let _ = first.reply.send(Err(sql_err(e)));
            }
            for p in batch {
                let _ = p.reply.send(Err(StorageError::Unavailable {
                    message: format!("a batched commit failed: {message}"),
                    source: None,
                }));
            }
        }
    }
}

/// Sends the batch as one statement; the outcomes in the batch's order.
async fn execute(pool: &PgPool, batch: &[Pending]) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut json = String::with_capacity(batch.iter().map(|p| p.item.len() + 1).sum::<usize>() + 2);
    json.push('[');
    for (i, p) in batch.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&p.item);
    }
    json.push(']');
    let rows = sqlx::query("SELECT r_index, r_code, r_seq, r_text FROM loom_commit($1::jsonb)")
        .bind(json)
        .fetch_all(pool)
        .await?;
    let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
    for row in rows {
        let index: i32 = row.try_get(0)?;
        let code: i16 = row.try_get(1)?;
        let n: Option<i64> = row.try_get(2)?;
        let text: Option<String> = row.try_get(3)?;
        let outcome = match code {
            0 => Outcome::Ok(text),
            1 => Outcome::LeaseLost,
            2 => Outcome::NotThatTask,
            3 => Outcome::NotFound,
            4 => Outcome::Closed(text.unwrap_or_default()),
            5 => Outcome::Conflict(n.unwrap_or_default()),
            6 => Outcome::Mismatch(n.unwrap_or_default(), text.unwrap_or_default()),
            7 => Outcome::Exists(text.unwrap_or_default()),
            other => {
                return Err(sqlx::Error::Protocol(format!(
                    "loom_commit returned the unknown code {other}"
                )));
            }
        };
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| outcomes.get_mut(i));
        match slot {
            Some(slot) => *slot = Some(outcome),
            None => {
                return Err(sqlx::Error::Protocol(format!(
                    "loom_commit returned the index {index} for a batch of {}",
                    batch.len()
                )));
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.ok_or_else(|| {
                sqlx::Error::Protocol("loom_commit left an item without an outcome".into())
            })
        })
        .collect()
}

/// A status string from the server, as a status.
pub(crate) fn status(text: &str, id: &WorkflowId) -> Result<WorkflowStatus> {
    text.parse().map_err(|e: String| StorageError::Corrupt {
        message: format!("workflow {id}: {e}"),
        source: None,
    })
}

/// `Conflict` for `id`.
pub(crate) fn conflict(id: &WorkflowId, expected: Seq, actual: i64) -> StorageError {
    StorageError::Conflict {
        id: id.clone(),
        expected,
        actual: Seq::new(actual.max(0).unsigned_abs()),
    }
}

/// The commit that starts a workflow (`"t": "c"` in `commit.sql`).
#[derive(Serialize)]
pub(crate) struct CreateItem<'a> {
    pub t: &'static str,
    pub wf: &'a str,
    pub name: &'a str,
    pub version: u32,
    pub input: String,
    pub at: i64,
    pub kind: String,
}

/// A workflow task's commit (`"t": "w"`): the events, and what they imply as computed by
/// `TaskPlan` on this side, so that the server stores decisions and makes none.
#[derive(Serialize)]
pub(crate) struct WorkflowItem<'a> {
    pub t: &'static str,
    pub wf: &'a str,
    pub task: i64,
    pub token: i64,
    pub expected: i64,
    /// The history's last sequence number after the commit.
    pub last: i64,
    /// `(seq, at, kind)`.
    pub events: Vec<(i64, i64, String)>,
    /// New activity tasks: `(activity_id, name, input, options)`.
    pub acts: Vec<(i64, &'a str, String, String)>,
    /// Timer messages: `(kind, mode, value)`, mode 1 meaning "the database's now plus value"
    /// and 2 "at value".
    pub timers: Vec<(String, i16, i64)>,
    /// `(status, output, failure)` when the workflow ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<(&'static str, Option<String>, Option<String>)>,
    pub consumed: Vec<i64>,
    /// `(seq, at, level, message)`.
    pub logs: Vec<(i64, i64, &'static str, std::borrow::Cow<'a, str>)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Also claim up to `max` of the activities this commit creates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eager: Option<Eager<'a>>,
}

/// An eager claim riding on a commit: for whom, and for how long.
#[derive(Serialize)]
pub(crate) struct Eager<'a> {
    pub owner: &'a str,
    pub lease_ms: i64,
    pub max: i64,
}

/// An activity attempt's commit (`"t": "a"`).
#[derive(Serialize)]
pub(crate) struct ActivityItem<'a> {
    pub t: &'static str,
    pub task: i64,
    pub token: i64,
    pub act: i64,
    pub attempt: u32,
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
    /// Also claim the workflow task the result wakes, if no lease holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eager: Option<Eager<'a>>,
}

/// A signal or cancel request (`"t": "s"`).
#[derive(Serialize)]
pub(crate) struct DeliverItem<'a> {
    pub t: &'static str,
    pub wf: &'a str,
    pub kind: String,
}

/// The error for an outcome the call that received it cannot produce.
pub(crate) fn unexpected(outcome: &Outcome) -> StorageError {
    StorageError::Unavailable {
        message: format!(
            "PostgreSQL's loom_commit answered {outcome:?}, which this call never expects"
        ),
        source: None,
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    fn create(id: &str) -> CreateItem<'_> {
        CreateItem {
            t: "c",
            wf: id,
            name: "Batched",
            version: 1,
            input: "null".into(),
            at: 0,
            kind:
                r#"{"type":"WorkflowStarted","name":"Batched","version":1,"input":null,"format":1}"#
                    .into(),
        }
    }

    /// Items queued together share one statement; an item the server rejects (here one of an
    /// unknown kind) fails alone after the batch is retried item by item, and an item that
    /// fails a check (a stale lease) reports it without touching its neighbours.
    #[tokio::test]
    async fn one_bad_item_fails_alone() {
        let Some(store) = crate::testing::fresh().await else {
            return;
        };
        let committer = Committer::start(store.pool.clone(), 1, 128, || {});
        let bogus = serde_json::json!({ "t": "x" });
        let stale = ActivityItem {
            t: "a",
            task: 999_999,
            token: 1,
            act: 1,
            attempt: 1,
            result: "{}".into(),
            retry_at: None,
            eager: None,
        };
        let (first, second) = (create("batched-a"), create("batched-b"));
        // On this current-thread runtime, all five are queued before the committer runs.
        let (a, b, c, d, e) = tokio::join!(
            committer.commit(&first, true),
            committer.commit(&bogus, true),
            committer.commit(&second, true),
            committer.commit(&stale, true),
            committer.commit(&first, true),
        );
        assert!(matches!(a, Ok(Outcome::Ok(None))), "{a:?}");
        assert!(b.is_err(), "an unknown item kind must fail: {b:?}");
        assert!(matches!(c, Ok(Outcome::Ok(None))), "{c:?}");
        assert!(matches!(d, Ok(Outcome::LeaseLost)), "{d:?}");
        assert!(
            matches!(e, Ok(Outcome::Exists(ref s)) if s == "running"),
            "{e:?}"
        );
        assert_eq!(
            committer.statements(),
            6,
            "one statement for the batch, then one for each of its five items"
        );
        for id in ["batched-a", "batched-b"] {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE workflow_id = $1")
                .bind(id)
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(n, 1, "{id} has its WorkflowStarted event once");
        }
    }
}
