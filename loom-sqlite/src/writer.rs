//! Group commit: one writer thread, one connection, many callers per transaction.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. So every write
//! request (append, claim, complete, signal...) is a job sent to one thread that owns the write
//! connection. The thread takes every job waiting (up to a batch limit), runs them in one
//! `BEGIN IMMEDIATE` transaction, each inside its own savepoint so that a job that fails (a
//! conflict, a lost lease) is rolled back alone, then commits once and answers every caller.
//! A caller is answered only after the commit holding its change is durable. Callers await a
//! oneshot channel, so no tokio thread ever blocks on SQLite.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use loom_core::Timestamp;
use loom_storage::{Clock, Result, StorageError};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::conn::{is_busy, map_err};

/// Answers a caller, given why the batch's commit failed (`None`: it is durable).
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// What one job hands back after running: whether its work stands, and how to answer its
/// caller once the batch's commit is known.
pub(crate) struct Ran {
    ok: bool,
    answer: Answer,
}

/// A write request waiting for the writer thread.
pub(crate) trait Job: Send {
    /// Runs inside the batch's transaction.
    fn run(self: Box<Self>, conn: &Connection, now: Timestamp) -> Ran;
    /// Answers the caller without running (the batch could not start).
    fn abort(self: Box<Self>, reason: &str);
}

struct Request<F, T> {
    work: F,
    reply: oneshot::Sender<Result<T>>,
}

impl<F, T> Job for Request<F, T>
where
    F: FnOnce(&Connection, Timestamp) -> Result<T> + Send,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection, now: Timestamp) -> Ran {
        let Request { work, reply } = *self;
        let result = match catch_unwind(AssertUnwindSafe(|| work(conn, now))) {
            Ok(result) => result,
            Err(_) => Err(StorageError::Unavailable {
                message: "a storage operation panicked; it was rolled back".into(),
                source: None,
            }),
        };
        Ran {
            ok: result.is_ok(),
            answer: Box::new(move |commit_error| {
                let answer = match commit_error {
                    None => result,
                    Some(reason) => Err(StorageError::Unavailable {
                        message: reason.to_owned(),
                        source: None,
                    }),
                };
                let _ = reply.send(answer);
            }),
        }
    }

    fn abort(self: Box<Self>, reason: &str) {
        let _ = self.reply.send(Err(StorageError::Unavailable {
            message: reason.to_owned(),
            source: None,
        }));
    }
}

/// The sending side, held by the storage handle.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(crate) fn start(
        conn: Connection,
        path: PathBuf,
        clock: Arc<dyn Clock>,
        max_batch: usize,
    ) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(max_batch.max(1) * 4);
        std::thread::Builder::new()
            .name("loom-sqlite-writer".into())
            .spawn(move || run(conn, &path, clock.as_ref(), rx, max_batch.max(1)))?;
        Ok(Writer { jobs })
    }

    /// Runs `work` in the next batch and returns its result once that batch is committed.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Connection, Timestamp) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Request { work, reply });
        let stopped = || StorageError::Unavailable {
            message: "the SQLite writer thread has stopped".into(),
            source: None,
        };
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn run(
    conn: Connection,
    path: &Path,
    clock: &dyn Clock,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    max_batch: usize,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&conn, path, clock, &mut batch);
    }
}

/// How long to keep retrying to start a transaction while another process holds the lock,
/// on top of the connection's busy timeout.
const BEGIN_RETRIES: u32 = 6;

fn begin(conn: &Connection, path: &Path) -> std::result::Result<(), String> {
    let mut attempt = 0;
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(()),
            Err(e) if is_busy(&e) && attempt < BEGIN_RETRIES => {
                attempt += 1;
                tracing::debug!(path = %path.display(), attempt, "database busy; retrying");
                std::thread::sleep(Duration::from_millis(20 << attempt.min(6)));
            }
            Err(e) => return Err(map_err(path, e).to_string()),
        }
    }
}

fn commit_batch(conn: &Connection, path: &Path, clock: &dyn Clock, batch: &mut Vec<Box<dyn Job>>) {
    if let Err(reason) = begin(conn, path) {
        for job in batch.drain(..) {
            job.abort(&reason);
        }
        return;
    }
    let mut answers = Vec::with_capacity(batch.len());
    let mut lost: Option<String> = None;
    for job in batch.drain(..) {
        if let Some(reason) = &lost {
            job.abort(reason);
            continue;
        }
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            let reason = map_err(path, e).to_string();
            job.abort(&reason);
            lost = Some(reason);
            continue;
        }
        let ran = job.run(conn, clock.now());
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (an I/O error, a full disk): every
            // job of this batch so far is lost with it.
            lost = Some(format!(
                "the transaction on {} was rolled back by SQLite",
                path.display()
            ));
            answers.push(ran);
            continue;
        }
        let restore = if ran.ok {
            conn.execute_batch("RELEASE job")
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        if let Err(e) = restore {
            lost = Some(map_err(path, e).to_string());
        }
        answers.push(ran);
    }
    let outcome = match lost {
        Some(reason) => {
            let _ = conn.execute_batch("ROLLBACK");
            Some(reason)
        }
        None => match conn.execute_batch("COMMIT") {
            Ok(()) => None,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Some(map_err(path, e).to_string())
            }
        },
    };
    for ran in answers {
        // A job that failed on its own keeps its own error; the commit's fate is for the
        // jobs whose work was in it.
        let commit_error = if ran.ok { outcome.as_deref() } else { None };
        (ran.answer)(commit_error);
    }
}
