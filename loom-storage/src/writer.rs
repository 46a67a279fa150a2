//! The writer thread the embedded file backends share (feature `writer`).
//!
//! SQLite and redb both allow one writer at a time, and a durable commit costs an fsync. So
//! every write set goes to one thread that owns the write side of the database: it takes every
//! job waiting (up to a batch limit), hands the batch to the backend's [`Commit`], which
//! applies each job's write set and commits in the backend's own way, and only then answers
//! each caller. Callers await a channel, so no tokio thread ever blocks on the database.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::engine::{Applied, Sync, WriteSet};
use crate::error::{Result, StorageError};

/// One caller's write set, waiting for the writer thread.
///
/// A job may run more than once (a backend may roll a batch back and run it again to isolate
/// a failure); it is answered once, with the result of its last run.
pub struct Job {
    ws: WriteSet,
    result: Option<Result<Applied>>,
    /// The answer, with the write set handed back so that the caller frees it: its payloads
    /// and events are many small allocations, and freeing them here would cost the writer
    /// thread, which bounds throughput, time no one else could spend for it.
    reply: oneshot::Sender<(Result<Applied>, WriteSet)>,
}

impl Job {
    /// The write set.
    pub fn write_set(&self) -> &WriteSet {
        &self.ws
    }

    /// Runs `work` on the write set (a panic is an error, not a dead thread) and keeps its
    /// result; returns whether it succeeded.
    pub fn run(&mut self, work: impl FnOnce(&WriteSet) -> Result<Applied>) -> bool {
        let ws = &self.ws;
        let result = catch_unwind(AssertUnwindSafe(|| work(ws))).unwrap_or_else(|_| {
            Err(unavailable(
                "a storage operation panicked; it was rolled back",
            ))
        });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    /// Forgets the result of an earlier run: a batch that runs again answers a job it did not
    /// reach this time with the batch's failure, never with what an abandoned run left.
    pub fn forget(&mut self) {
        self.result = None;
    }

    /// Whether the job must be durable whatever it answers.
    pub fn durable(&self) -> bool {
        self.ws.sync == Sync::Durable
    }

    /// After a run: whether its caller may hear of it only once it is on the disk.
    pub fn needs_sync(&self) -> bool {
        match &self.result {
            Some(Ok(applied)) => self.ws.needs_sync(applied),
            _ => false,
        }
    }

    /// Answers the caller with the result of the last run, or with `commit_error` if the
    /// transaction holding that result did not commit.
    fn answer(self, commit_error: Option<&str>) {
        let answer = match (self.result, commit_error) {
            // A job that failed on its own keeps its own error: it wrote nothing.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Some(reason)) => Err(unavailable(reason)),
            (Some(Ok(applied)), None) => Ok(applied),
            (None, reason) => Err(unavailable(reason.unwrap_or("the request never ran"))),
        };
        let _ = self.reply.send((answer, self.ws));
    }
}

fn unavailable(reason: &str) -> StorageError {
    StorageError::Unavailable {
        message: reason.to_owned(),
        source: None,
    }
}

/// How a backend commits a batch on its writer thread.
pub trait Commit: Send + 'static {
    /// Runs every job of `batch` with [`Job::run`] and commits what stands, at the time
    /// `clock` gives; a job whose result needs the disk ([`Job::needs_sync`]) must be durable
    /// before this returns. Returns why the commit failed, if it did: every job that
    /// succeeded is then answered with that reason, as the retryable `Unavailable`.
    fn commit(&mut self, batch: &mut [Job], clock: &dyn Clock) -> Option<String>;
}

/// The sending side of a writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    name: &'static str,
    /// Batches committed, and the jobs in them.
    counted: Arc<[AtomicU64; 2]>,
}

impl Writer {
    /// Starts the thread `name`, committing batches of up to `max_batch` jobs with `commit`.
    /// It ends when the last `Writer` is dropped.
    pub fn start(
        name: &'static str,
        mut commit: impl Commit,
        clock: Arc<dyn Clock>,
        max_batch: usize,
    ) -> std::io::Result<Self> {
        let max_batch = max_batch.max(1);
        let (jobs, mut rx) = mpsc::channel::<Job>(max_batch * 4);
        let counted = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let counts = counted.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < max_batch {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let failed = commit.commit(&mut batch, clock.as_ref());
                    if failed.is_none() {
                        counts[0].fetch_add(1, Ordering::Relaxed);
                        counts[1].fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    for job in batch.drain(..) {
                        job.answer(failed.as_deref());
                    }
                }
            })?;
        Ok(Writer {
            jobs,
            name,
            counted,
        })
    }

    /// Batches committed so far, and the writes in them.
    pub fn counters(&self) -> crate::StoreCounters {
        crate::StoreCounters {
            group_commits: self.counted[0].load(Ordering::Relaxed),
            writes_committed: self.counted[1].load(Ordering::Relaxed),
            connections: None,
        }
    }

    /// Applies `ws` in the next batch; answers once that batch is committed.
    pub async fn write(&self, ws: WriteSet) -> Result<Applied> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            ws,
            result: None,
            reply,
        };
        let stopped = || unavailable(&format!("the {} thread has stopped", self.name));
        self.jobs.send(job).await.map_err(|_| stopped())?;
        let (answer, ws) = answer.await.map_err(|_| stopped())?;
        drop(ws);
        answer
    }
}

/// Runs a blocking read on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    what: &'static str,
    read: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| StorageError::unavailable(what, e))?
}
