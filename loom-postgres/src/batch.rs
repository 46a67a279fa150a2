//! Group commit: many callers' write sets in one statement.
//!
//! Every write of the hot path (start a workflow, commit a workflow task, commit an activity
//! attempt, deliver a signal, release a task) is a write set of the engine's, turned into an
//! *item* (`loom_storage::engine::wire`) on the caller's task. Committer tasks take whatever items are queued,
//! send them as one array to the server-side function `loom_apply` (see `functions.sql`) and hand
//! each caller its own answer. One round trip, one transaction and one WAL flush serve the
//! whole batch, and a caller never waits for a timer: an idle store commits a lone item at
//! once, a busy one commits what piled up while the previous batch was in flight.
//!
//! An item whose check fails writes nothing and fails alone. If the statement itself fails
//! with a database error (a deadlock, a constraint), the batch is retried one item at a time,
//! so one bad item cannot fail its neighbours.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use loom_storage::{Result, StorageError};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::sql_err;
use loom_storage::engine::wire::Answer;

/// One queued item.
struct Pending {
    /// The item as JSON text.
    item: String,
    /// Whether committing it may make work ready for other processes (for NOTIFY).
    wakes: bool,
    reply: oneshot::Sender<Result<Answer>>,
}

/// The queue of pending items and the tasks that drain it.
#[derive(Clone)]
pub(crate) struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
    /// Statements sent, for tests and diagnostics.
    statements: Arc<AtomicU64>,
    /// Statements that committed, and the items in them.
    committed: Arc<[AtomicU64; 2]>,
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
        let committed = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        for _ in 0..concurrency.max(1) {
            let (rx, pool, woke) = (rx.clone(), pool.clone(), woke.clone());
            let counter = statements.clone();
            let committed = committed.clone();
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
                    run(&pool, batch, &*woke, &counter, &committed).await;
                }
            });
        }
        Committer {
            queue,
            statements,
            committed,
        }
    }

    /// How many statements the committer tasks have sent.
    pub(crate) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Statements that committed, and the items in them.
    pub(crate) fn committed(&self) -> (u64, u64) {
        (
            self.committed[0].load(Ordering::Relaxed),
            self.committed[1].load(Ordering::Relaxed),
        )
    }

    /// Queues `item` and waits for the server's answer to it.
    pub(crate) async fn commit(&self, item: String, wakes: bool) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { item, wakes, reply })
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> StorageError {
    StorageError::Unavailable {
        message: "the PostgreSQL store is closed".into(),
        source: None,
    }
}

/// How many times a batch the server rolled back for a deadlock or a serialization failure is
/// sent again before its callers hear of it.
const TRANSIENT_RETRIES: u32 = 5;

/// Whether the server rolled the transaction back for a reason another try may not meet: a
/// deadlock (which PostgreSQL breaks after `deadlock_timeout`) or a serialization failure.
fn transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Commits `batch`, or its items one by one if the statement fails on the database's side. A
/// batch rolled back for a deadlock is sent again first: the deadlock is between this batch
/// and another, not in any one item, and ends with either.
async fn run(
    pool: &PgPool,
    batch: Vec<Pending>,
    woke: &(dyn Fn() + Send + Sync),
    statements: &AtomicU64,
    committed: &[AtomicU64; 2],
) {
    let mut tries = 0;
    let result = loop {
        statements.fetch_add(1, Ordering::Relaxed);
        match execute(pool, &batch).await {
            Err(e) if transient(&e) && tries < TRANSIENT_RETRIES => {
                tries += 1;
                tracing::debug!(error = %e, tries, "a batched commit was rolled back; sending it again");
                tokio::time::sleep(std::time::Duration::from_millis(5 << tries)).await;
            }
            result => break result,
        }
    };
    match result {
        Ok(answers) => {
            committed[0].fetch_add(1, Ordering::Relaxed);
            committed[1].fetch_add(batch.len() as u64, Ordering::Relaxed);
            let mut wakes = false;
            for (p, answer) in batch.into_iter().zip(answers) {
                wakes |= p.wakes && answer.failed.is_none();
                // A caller that stopped waiting has nothing to be told.
                let _ = p.reply.send(Ok(answer));
            }
            if wakes {
                woke();
            }
        }
        Err(e) if batch.len() > 1 && matches!(e, sqlx::Error::Database(_)) => {
            tracing::debug!(error = %e, items = batch.len(), "a batched commit failed; committing its items one by one");
            for p in batch {
                Box::pin(run(pool, vec![p], woke, statements, committed)).await;
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

/// Sends the batch as one statement; the answers in the batch's order.
async fn execute(pool: &PgPool, batch: &[Pending]) -> Result<Vec<Answer>, sqlx::Error> {
    let mut json = String::with_capacity(batch.iter().map(|p| p.item.len() + 1).sum::<usize>() + 2);
    json.push('[');
    for (i, p) in batch.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&p.item);
    }
    json.push(']');
    let rows = sqlx::query(
        "SELECT r_index, r_failed, r_found::text, r_now, r_out::text FROM loom_apply($1::jsonb)",
    )
    .bind(json)
    .fetch_all(pool)
    .await?;
    let mut answers: Vec<Option<Answer>> = batch.iter().map(|_| None).collect();
    let bad = |what: String| sqlx::Error::Protocol(format!("loom_apply answered {what}"));
    for row in rows {
        let index: i32 = row.try_get(0)?;
        let failed: Option<i32> = row.try_get(1)?;
        let found: Option<String> = row.try_get(2)?;
        let now: i64 = row.try_get(3)?;
        let out: Option<String> = row.try_get(4)?;
        let parse = |text: Option<String>| -> Result<Option<Value>, sqlx::Error> {
            text.map(|t| serde_json::from_str(&t).map_err(|e| bad(format!("bad JSON: {e}"))))
                .transpose()
        };
        let failed = match failed {
            Some(position) => Some((
                usize::try_from(position).unwrap_or(0),
                parse(found)?.unwrap_or(Value::Null),
            )),
            None => None,
        };
        let answer = Answer {
            failed,
            now,
            out: parse(out)?,
        };
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| answers.get_mut(i));
        match slot {
            Some(slot) => *slot = Some(answer),
            None => {
                return Err(bad(format!(
                    "the index {index} for a batch of {}",
                    batch.len()
                )));
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| bad("no answer for an item".into())))
        .collect()
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
    use loom_storage::engine;
    use loom_storage::{Lease, Release, TaskId};

    use super::*;
    use loom_storage::engine::wire;

    fn create(id: &str) -> String {
        let started = Event {
            seq: Seq::FIRST,
            at: Timestamp::from_millis(0),
            kind: EventKind::WorkflowStarted {
                traceparent: None,
                tags: Default::default(),
                reset: None,
                attempt: 1,
                retry: None,
                run: 1,
                name: "Batched".into(),
                version: 1,
                input: Payload::NULL,
                format: HISTORY_FORMAT,
                timeouts: Default::default(),
                parent: None,
            },
        };
        wire::item(&engine::create(&WorkflowId::new(id), started).expect("write set"))
            .expect("item")
    }

    /// Items queued together share one statement; an item the server rejects (here one with
    /// an unknown step) fails alone after the batch is retried item by item, and an item whose
    /// check fails (a stale lease) reports it without touching its neighbours.
    #[tokio::test]
    async fn one_bad_item_fails_alone() {
        let Some(store) = crate::testing::fresh().await else {
            return;
        };
        let committer = Committer::start(store.pool.clone(), 1, 128, || {});
        let bogus = r#"{"checks": [], "steps": [{"s": "x"}]}"#.to_owned();
        let stale_lease = Lease {
            task: TaskId(999_999),
            token: 1,
            expires_at: Timestamp::from_millis(0),
        };
        let stale = wire::item(&engine::release(&stale_lease, Release::default())).expect("item");
        // On this current-thread runtime, all five are queued before the committer runs.
        let (a, b, c, d, e) = tokio::join!(
            committer.commit(create("batched-a"), true),
            committer.commit(bogus, true),
            committer.commit(create("batched-b"), true),
            committer.commit(stale, true),
            committer.commit(create("batched-a"), true),
        );
        assert!(matches!(a, Ok(Answer { failed: None, .. })), "{a:?}");
        assert!(
            matches!(b, Err(StorageError::Rejected { .. })),
            "an unknown step is refused, not retried: {b:?}"
        );
        assert!(matches!(c, Ok(Answer { failed: None, .. })), "{c:?}");
        assert!(
            matches!(
                d,
                Ok(Answer {
                    failed: Some((1, _)),
                    ..
                })
            ),
            "{d:?}"
        );
        assert!(
            matches!(
                e,
                Ok(Answer {
                    failed: Some((1, _)),
                    ..
                })
            ),
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
