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

use std::time::{Duration, Instant};

use loom_storage::Clock;
use loom_storage::engine;
use loom_storage::writer::{Commit, Job};
use sqlx::mysql::MySqlConnectOptions;

use crate::MysqlOptions;
use crate::conn::{self, Conn, Failed, Role};

/// How many times a batch runs again after a deadlock before its callers hear of it.
const DEADLOCK_RETRIES: u32 = 8;

/// The write side of one database.
pub(crate) struct MysqlCommit {
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
    ) -> Self {
        MysqlCommit {
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
    fn attempt(&mut self, batch: &mut [Job], savepoints: bool) -> Attempt {
        let clock = self.options.clock.clone();
        let shown = self.shown.clone();
        let conn = match self.connection() {
            Ok(conn) => conn,
            Err(reason) => return Attempt::Done(Some(reason)),
        };
        for job in batch.iter_mut() {
            job.forget();
        }
        let mut db = conn.db();
        db.push("START TRANSACTION");
        let now = match conn::now(&mut db, &clock) {
            Ok(now) => now,
            Err(e) => {
                conn.set_broken();
                return Attempt::Done(Some(e.to_string()));
            }
        };
        let mut outcome = None;
        for job in batch.iter_mut() {
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
        if !matches!(outcome, Attempt::Done(None)) && conn.run("ROLLBACK").is_err() {
            conn.set_broken();
        }
        if matches!(outcome, Attempt::Done(Some(_))) {
            conn.set_broken();
        }
        outcome
    }
}

impl Commit for MysqlCommit {
    fn commit(&mut self, batch: &mut [Job], _clock: &dyn Clock) -> Option<String> {
        let mut savepoints = false;
        let mut retries = 0;
        loop {
            match self.attempt(batch, savepoints) {
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
