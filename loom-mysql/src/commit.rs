//! Group commit on MySQL: how the shared writer thread's batches become transactions.
//!
//! The writer thread (`loom_storage::writer`) owns the write connection and hands each batch
//! of write sets here. The batch runs in one transaction, at one reading of the store's
//! clock, and commits once: one log flush for many workflows' transitions.
//!
//! A write set that fails (a conflict, a lost lease) must not take the others down with it.
//! The engine's checks come before its writes, so a failed write set has almost always
//! written nothing (InnoDB undoes a failed statement alone), and the batch commits without it.
//! One that failed after writing, or on a unique key another transaction took meanwhile,
//! makes the batch roll back and run again with a savepoint around each write set, so that
//! one is undone alone; a duplicate key then meets the engine's check, which answers it.
//!
//! InnoDB rolls a transaction back on a deadlock, and gives up on a lock held too long; the
//! batch then runs again from the start, a few times, before its callers hear the retryable
//! `Unavailable`. A lost connection fails the batch as `Unavailable` and is opened again for
//! the next one: a commit whose answer was lost may or may not have landed, and a worker's
//! retry meets the engine's checks, as after any lost answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loom_core::{Timestamp, WorkflowId};
use loom_storage::Clock;
use loom_storage::engine::{self, wire};
use loom_storage::writer::{Commit, Job};
use sqlx::mysql::MySqlConnectOptions;

use crate::MysqlOptions;
use crate::conn::{self, Conn, Failed, Role};
use crate::db::{Db, V};

/// How many times a batch runs again after a deadlock before its callers hear of it.
const DEADLOCK_RETRIES: u32 = 8;

/// What the writers of one store did with their batches.
#[derive(Default)]
pub(crate) struct Counts {
    /// Write sets `loom_apply` applied (or answered with a failed check).
    served: AtomicU64,
    /// Batches `loom_apply` refused, applied again from this side.
    refused: AtomicU64,
}

impl Counts {
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.served.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// The write side of one database.
pub(crate) struct MysqlCommit {
    counts: Arc<Counts>,
    conn: Option<Conn>,
    connect: MySqlConnectOptions,
    shown: String,
    options: MysqlOptions,
    /// After a failed connect: the next try not before this, the wait after it, and why.
    backoff: Option<(Instant, Duration, String)>,
}

/// The first wait after a failed connect; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between tries to connect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How one run of a batch ended.
enum Attempt {
    /// Committed (`None`) or lost with the reason (`Some`): every job gets its answer.
    Done(Option<String>),
    /// A job failed after writing or on a duplicate key; the transaction was rolled back and
    /// nothing stands.
    Dirty,
    /// InnoDB rolled the transaction back (a deadlock) or a lock wait timed out: run again.
    Retry(String),
}

impl MysqlCommit {
    pub(crate) fn new(
        conn: Conn,
        connect: MySqlConnectOptions,
        shown: String,
        options: MysqlOptions,
        counts: Arc<Counts>,
    ) -> Self {
        MysqlCommit {
            counts,
            conn: Some(conn),
            connect,
            shown,
            options,
            backoff: None,
        }
    }

    /// The connection, opened again if the last one was lost.
    fn connection(&mut self) -> Result<&mut Conn, String> {
        if self.conn.as_ref().is_some_and(Conn::broken)
            && let Some(old) = self.conn.take()
        {
            old.close();
        }
        if self.conn.is_none() {
            // A server that is down is tried again after a wait that doubles, not by every
            // batch: meanwhile each batch fails at once with the last reason.
            if let Some((at, _, reason)) = &self.backoff
                && Instant::now() < *at
            {
                return Err(reason.clone());
            }
            match Conn::open(&self.connect, &self.shown, &self.options, Role::Write) {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.backoff = None;
                }
                Err(e) => {
                    let wait = self
                        .backoff
                        .as_ref()
                        .map_or(FIRST_BACKOFF, |(_, wait, _)| (*wait * 2).min(MAX_BACKOFF));
                    let reason = e.to_string();
                    self.backoff = Some((Instant::now() + wait, wait, reason.clone()));
                    return Err(reason);
                }
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| format!("no connection to the {}", self.shown))
    }

    /// Runs the batch in one transaction: its writes go out with the reads that follow them
    /// and with the `COMMIT`. Without savepoints (the fast path, almost always) a job that
    /// fails before any of its writes was sent costs nothing; one that fails after, or on a
    /// duplicate key, or a round trip carrying writes that fails, makes the batch `Dirty`.
    /// With savepoints, each job's writes are sent at its end and its failure is rolled back
    /// alone.
    ///
    /// With `server`, the write sets `loom_apply` takes go to it first, one call for the lot.
    fn attempt(&mut self, batch: &mut [Job], savepoints: bool, server: bool) -> Attempt {
        let clock = self.options.clock.clone();
        let shown = self.shown.clone();
        let counts = self.counts.clone();
        let conn = match self.connection() {
            Ok(conn) => conn,
            Err(reason) => return Attempt::Done(Some(reason)),
        };
        for job in batch.iter_mut() {
            job.forget();
        }
        // The applier is installed on MariaDB only (schema migration 2).
        let server = server && conn.mariadb();
        let mut db = conn.db();
        db.push("START TRANSACTION");
        let mut served = vec![false; batch.len()];
        let mut now = None;
        if server && !savepoints {
            match serve(&mut db, batch, &clock, &mut served) {
                Ok(at) => {
                    now = at;
                    let n = served.iter().filter(|s| **s).count() as u64;
                    counts.served.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    let outcome = match db.failed() {
                        Some(Failed::Retry) => Attempt::Retry(e.to_string()),
                        Some(Failed::Lost) | None => Attempt::Done(Some(e.to_string())),
                        // A statement of the applier failed (a write set the server refuses):
                        // which write set is unknown, so the batch runs again from this side,
                        // each write set under a savepoint.
                        Some(Failed::Duplicate | Failed::Statement) => {
                            tracing::debug!(database = %shown, error = %e, "loom_apply failed; applying the batch from here");
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                            Attempt::Dirty
                        }
                    };
                    drop(db);
                    return conn.end(outcome);
                }
            }
        }
        let now = match now {
            Some(now) => now,
            None if served.iter().all(|s| *s) => Timestamp::from_millis(0),
            None => match conn::now(&mut db, &clock) {
                Ok(now) => now,
                Err(e) => {
                    conn.set_broken();
                    return Attempt::Done(Some(e.to_string()));
                }
            },
        };
        let mut outcome = None;
        for (job, _) in batch
            .iter_mut()
            .zip(&served)
            .filter(|(_, served)| !**served)
        {
            if savepoints {
                db.push("SAVEPOINT job");
            }
            db.begin();
            let run = |db: &mut crate::db::Db<'_>, job: &mut Job| {
                job.run(|ws| {
                    let applied = engine::apply(db, ws, now)?;
                    if savepoints {
                        db.flush()?;
                    }
                    Ok(applied)
                })
            };
            let mut ok = run(&mut db, job);
            if savepoints && !ok && db.failed() == Some(Failed::Duplicate) {
                // Another transaction took a key this write set's check found free: undone,
                // the write set runs once more, and its check answers.
                db.discard();
                db.push("ROLLBACK TO SAVEPOINT job");
                db.push("SAVEPOINT job");
                db.begin();
                ok = run(&mut db, job);
            }
            match db.failed() {
                Some(Failed::Lost) => {
                    outcome = Some(Attempt::Done(Some(format!(
                        "the connection to the {shown} was lost mid-transaction"
                    ))));
                    break;
                }
                Some(Failed::Retry) => {
                    outcome = Some(Attempt::Retry(format!(
                        "the {shown} rolled the transaction back (a deadlock or a lock wait)"
                    )));
                    break;
                }
                _ => {}
            }
            if ok {
                continue;
            }
            db.discard();
            if savepoints {
                db.push("ROLLBACK TO SAVEPOINT job");
            } else if db.wrote() || db.failed() == Some(Failed::Duplicate) {
                outcome = Some(Attempt::Dirty);
                break;
            }
        }
        if outcome.is_none() {
            db.begin();
            db.push("COMMIT");
            outcome = Some(match db.flush() {
                Ok(()) => Attempt::Done(None),
                Err(e) => match db.failed() {
                    Some(Failed::Retry) => Attempt::Retry(e.to_string()),
                    Some(Failed::Duplicate | Failed::Statement) if !savepoints => Attempt::Dirty,
                    _ => Attempt::Done(Some(format!(
                        "the commit's outcome is unknown ({e}); it may have landed"
                    ))),
                },
            });
        }
        let outcome = outcome.unwrap_or(Attempt::Done(None));
        drop(db);
        conn.end(outcome)
    }
}

impl Conn {
    /// Rolls back the transaction of an attempt that did not commit; a connection whose
    /// transaction's fate is unknown is not used again.
    fn end(&mut self, outcome: Attempt) -> Attempt {
        if !matches!(outcome, Attempt::Done(None)) && self.run("ROLLBACK").is_err() {
            self.set_broken();
        }
        if matches!(outcome, Attempt::Done(Some(_))) {
            self.set_broken();
        }
        outcome
    }
}

/// The largest item, in bytes of JSON, sent to `loom_apply`. A stored procedure reads JSON by
/// parsing it from the start at every access, so its cost grows faster than an item's size
/// (a fan-out to thousands of children, a backlog of thousands of messages consumed at
/// once); applied from this side, a large write set costs in proportion to its size. The
/// hot path's items are a few kilobytes.
const SERVED_MAX: usize = 32 * 1024;

/// Sends the write sets of `batch` that `loom_apply` takes to it, in workflow-id order (the
/// order every batch locks in), as few calls as the packet limit allows, and answers their
/// jobs; marks them in `served`. Returns the store's time the server used, if it was called.
///
/// A write set `loom_apply` does not take (claims for any workflow, renewals) or one larger
/// than [`SERVED_MAX`] is left to be applied from this side, in the same transaction.
fn serve(
    db: &mut Db<'_>,
    batch: &mut [Job],
    clock: &Option<Arc<dyn Clock>>,
    served: &mut [bool],
) -> loom_storage::Result<Option<Timestamp>> {
    // Each byte travels as two hexadecimal digits.
    let limit = db.packet() / 2 - 64;
    let mut items: Vec<(usize, String)> = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        let ws = job.write_set();
        if ws.checks.is_empty() && ws.ops.is_empty() {
            continue;
        }
        match wire::item(ws) {
            Ok(item) if item.len() <= SERVED_MAX.min(limit) => {
                items.push((i, item));
            }
            _ => {}
        }
    }
    let key = |i: usize| {
        batch[i]
            .write_set()
            .workflow()
            .map_or("", WorkflowId::as_str)
    };
    items.sort_by(|a, b| key(a.0).cmp(key(b.0)).then(a.0.cmp(&b.0)));
    let at = clock.as_ref().map(|c| c.now().as_millis());
    let mut now = None;
    let mut rest = &items[..];
    while !rest.is_empty() {
        let mut size = 0;
        let n = rest
            .iter()
            .take_while(|(_, item)| {
                size += item.len() + 1;
                size < limit
            })
            .count()
            .max(1);
        let (chunk, after) = rest.split_at(n);
        rest = after;
        // One item a line: compact JSON holds no line feed of its own.
        let mut lines = String::with_capacity(size);
        for (k, (_, item)) in chunk.iter().enumerate() {
            if k > 0 {
                lines.push('\n');
            }
            lines.push_str(item);
        }
        let rows = db.select(
            "CALL loom_apply(?, ?)",
            &[V::from(at), V::B(lines.as_bytes())],
        )?;
        let Some(row) = rows.first() else {
            return Err(answered(db, "nothing"));
        };
        let text = db.text(row, 0)?;
        let answers: Vec<(
            usize,
            Option<usize>,
            serde_json::Value,
            i64,
            serde_json::Value,
        )> = serde_json::from_str(&text).map_err(|e| answered(db, &format!("{e}: {text}")))?;
        if answers.len() != chunk.len() {
            return Err(answered(
                db,
                &format!("{} answers to {} items", answers.len(), chunk.len()),
            ));
        }
        for (index, failed, found, at, out) in answers {
            let Some((job, _)) = index.checked_sub(1).and_then(|k| chunk.get(k)) else {
                return Err(answered(db, &format!("the index {index}")));
            };
            let wrote = failed.is_none();
            let answer = wire::Answer {
                failed: failed.map(|position| (position, found)),
                now: at,
                out: (!out.is_null()).then_some(out),
            };
            if !batch[*job].run(|ws| wire::applied(ws, answer)) && wrote {
                // The server applied the write set, but its answer cannot be read here (a
                // claimed task whose payload does not decode): the batch runs again from this
                // side, where that write set fails alone, under a savepoint.
                return Err(answered(db, "an answer this build cannot read"));
            }
            served[*job] = true;
            now = Some(Timestamp::from_millis(at));
        }
    }
    Ok(now)
}

/// The error for an answer of `loom_apply` that this build cannot read: the procedure and
/// this crate disagree. The batch runs again from this side.
fn answered(db: &mut Db<'_>, what: &str) -> loom_storage::StorageError {
    db.set_failed(Failed::Statement);
    loom_storage::StorageError::Unavailable {
        message: format!("loom_apply answered {what}"),
        source: None,
    }
}

impl Commit for MysqlCommit {
    fn commit(&mut self, batch: &mut [Job], _clock: &dyn Clock) -> Option<String> {
        let mut savepoints = false;
        let mut retries = 0;
        loop {
            match self.attempt(batch, savepoints, self.options.server_apply) {
                Attempt::Done(outcome) => return outcome,
                Attempt::Dirty if !savepoints => savepoints = true,
                Attempt::Dirty => {
                    return Some("a write failed halfway and could not be isolated".to_owned());
                }
                Attempt::Retry(reason) => {
                    retries += 1;
                    if retries > DEADLOCK_RETRIES {
                        return Some(format!("{reason}, {DEADLOCK_RETRIES} times in a row"));
                    }
                    tracing::debug!(database = %self.shown, retries, "{reason}; running the batch again");
                    std::thread::sleep(Duration::from_millis(1 << retries.min(7)));
                }
            }
        }
    }
}
