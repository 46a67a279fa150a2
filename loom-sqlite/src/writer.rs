//! Group commit: one writer thread, one connection, many callers per transaction.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. So every write
//! request (append, claim, complete, signal...) is a job sent to one thread that owns the write
//! connection. The thread takes every job waiting (up to a batch limit), runs them in one
//! `BEGIN IMMEDIATE` transaction, commits once, and answers every caller only after the commit
//! holding its change is durable. Callers await a oneshot channel, so no tokio thread ever
//! blocks on SQLite.
//!
//! A job that fails (a conflict, a lost lease) must not take the others down with it. Loom's
//! operations check everything before they write, so a failed job has almost always written
//! nothing, and the batch commits without it at no cost: the writer checks this with SQLite's
//! change counter. A job that failed after writing (an I/O error mid-way) makes the writer roll
//! the batch back and run it again with a savepoint around each job, so that job is undone
//! alone. Savepoints are not used otherwise: they cost a statement journal copy of every page
//! a job touches, which was the largest avoidable cost in the writer's profile.
//!
//! Not every write needs its own fsync. A claim or a lease renewal that a power cut erases
//! only hands its task back to the queue, which is what the cut does to the claim's lease
//! anyway. So a batch of nothing but such *relaxed* jobs commits with `synchronous = NORMAL`
//! (in WAL mode: no fsync), and the next durable commit's fsync of the log carries it to the
//! disk with everything before it. A process crash loses neither: the log is in the operating
//! system's cache. A relaxed job may also find, once it has run, that its result must reach
//! the disk after all (see [`Sync::If`]); the writer then syncs the log file itself after the
//! commit, before answering anyone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use loom_core::Timestamp;
use loom_storage::{Clock, Result, StorageError};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::conn::{is_busy, map_err};

/// A write request waiting for the writer thread.
///
/// A job may run more than once: if another job of its batch fails after writing, the batch
/// is rolled back and run again with a savepoint around each job. Its answer is sent once.
pub(crate) trait Job: Send {
    /// Whether the caller must be answered only once the change survives a power cut.
    fn durable(&self) -> bool;
    /// After a run: whether this relaxed job's result turned out to need the disk.
    fn needs_sync(&self) -> bool;
    /// Runs inside the batch's transaction; returns whether the work stands.
    fn run(&mut self, conn: &Connection, now: Timestamp) -> bool;
    /// Answers the caller with the result of its last run, or with `commit_error` if the
    /// transaction holding that result did not commit.
    fn answer(self: Box<Self>, commit_error: Option<&str>);
}

/// When a write must reach the disk before its caller hears of it.
pub(crate) enum Sync<T> {
    /// Always: a commit of work.
    Always,
    /// Never on its own: a claim or a renewal, carried by the next durable commit.
    Never,
    /// Only if its result passes this test (checked after it ran).
    If(fn(&T) -> bool),
}

struct Request<F, T> {
    sync: Sync<T>,
    work: F,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

fn unavailable(reason: &str) -> StorageError {
    StorageError::Unavailable {
        message: reason.to_owned(),
        source: None,
    }
}

impl<F, T> Job for Request<F, T>
where
    F: Fn(&Connection, Timestamp) -> Result<T> + Send,
    T: Send + 'static,
{
    fn durable(&self) -> bool {
        matches!(self.sync, Sync::Always)
    }

    fn needs_sync(&self) -> bool {
        match (&self.sync, &self.result) {
            (Sync::If(test), Some(Ok(value))) => test(value),
            _ => false,
        }
    }

    fn run(&mut self, conn: &Connection, now: Timestamp) -> bool {
        let result =
            catch_unwind(AssertUnwindSafe(|| (self.work)(conn, now))).unwrap_or_else(|_| {
                Err(unavailable(
                    "a storage operation panicked; it was rolled back",
                ))
            });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, commit_error: Option<&str>) {
        let answer = match (self.result, commit_error) {
            // A job that failed on its own keeps its own error: it wrote nothing.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Some(reason)) => Err(unavailable(reason)),
            (Some(Ok(value)), None) => Ok(value),
            (None, reason) => Err(unavailable(reason.unwrap_or("the request never ran"))),
        };
        let _ = self.reply.send(answer);
    }
}

/// The sending side, held by the storage handle.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread on `conn`, whose `synchronous` setting is FULL if
    /// `full_sync` (then relaxed batches switch it to NORMAL for their commit).
    pub(crate) fn start(
        conn: Connection,
        path: PathBuf,
        clock: Arc<dyn Clock>,
        max_batch: usize,
        full_sync: bool,
    ) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(max_batch.max(1) * 4);
        std::thread::Builder::new()
            .name("loom-sqlite-writer".into())
            .spawn(move || {
                let mut writer = Thread {
                    conn,
                    path,
                    full_sync,
                    synced: full_sync,
                };
                writer.run(clock.as_ref(), rx, max_batch.max(1));
            })?;
        Ok(Writer { jobs })
    }

    /// Runs `work` in the next batch and returns its result once that batch is committed;
    /// `durable`: committed to the disk, not only to the operating system (see the module
    /// doc for the writes that need not be).
    pub(crate) async fn write<T, F>(&self, sync: Sync<T>, work: F) -> Result<T>
    where
        F: Fn(&Connection, Timestamp) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Request {
            sync,
            work,
            result: None,
            reply,
        });
        let stopped = || StorageError::Unavailable {
            message: "the SQLite writer thread has stopped".into(),
            source: None,
        };
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The writer thread's connection and what it knows of it.
struct Thread {
    conn: Connection,
    path: PathBuf,
    /// The store's setting: `synchronous = FULL`.
    full_sync: bool,
    /// The connection's current setting is FULL.
    synced: bool,
}

impl Thread {
    fn run(&mut self, clock: &dyn Clock, mut rx: mpsc::Receiver<Box<dyn Job>>, max_batch: usize) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let sync = self.full_sync && batch.iter().any(|j| j.durable());
            if sync != self.synced {
                let pragma = if sync {
                    "PRAGMA synchronous = FULL"
                } else {
                    "PRAGMA synchronous = NORMAL"
                };
                match self.conn.execute_batch(pragma) {
                    Ok(()) => self.synced = sync,
                    Err(e) => {
                        let reason = map_err(&self.path, e).to_string();
                        for job in batch.drain(..) {
                            job.answer(Some(&reason));
                        }
                        continue;
                    }
                }
            }
            let synced = self.synced;
            commit_batch(&self.conn, &self.path, clock, &mut batch, synced);
        }
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

/// How one run of a batch ended.
enum Attempt {
    /// Committed (`None`) or lost with the reason (`Some`): every job gets its answer.
    Done(Option<String>),
    /// A job failed after writing; the transaction was rolled back and nothing stands.
    Dirty,
}

/// Runs the batch in one transaction. Without savepoints (the fast path, almost always) a job
/// that fails before writing anything costs nothing; one that fails after writing makes the
/// batch `Dirty`. With savepoints, each job's failure is rolled back alone.
fn attempt(
    conn: &Connection,
    path: &Path,
    clock: &dyn Clock,
    batch: &mut [Box<dyn Job>],
    savepoints: bool,
) -> Attempt {
    if let Err(reason) = begin(conn, path) {
        return Attempt::Done(Some(reason));
    }
    let step = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
    };
    for job in batch.iter_mut() {
        if savepoints {
            if let Err(e) = step("SAVEPOINT job") {
                let _ = conn.execute_batch("ROLLBACK");
                return Attempt::Done(Some(map_err(path, e).to_string()));
            }
        }
        let before = conn.total_changes();
        let ok = job.run(conn, clock.now());
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (an I/O error, a full disk).
            return Attempt::Done(Some(format!(
                "the transaction on {} was rolled back by SQLite",
                path.display()
            )));
        }
        let restored = if savepoints {
            if ok {
                step("RELEASE job")
            } else {
                step("ROLLBACK TO job").and_then(|()| step("RELEASE job"))
            }
        } else if !ok && conn.total_changes() != before {
            let _ = conn.execute_batch("ROLLBACK");
            return Attempt::Dirty;
        } else {
            Ok(())
        };
        if let Err(e) = restored {
            let _ = conn.execute_batch("ROLLBACK");
            return Attempt::Done(Some(map_err(path, e).to_string()));
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => Attempt::Done(None),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Attempt::Done(Some(map_err(path, e).to_string()))
        }
    }
}

/// Commits the batch (its commit syncs the log if `synced`) and answers every job.
fn commit_batch(
    conn: &Connection,
    path: &Path,
    clock: &dyn Clock,
    batch: &mut Vec<Box<dyn Job>>,
    synced: bool,
) {
    let mut outcome = match attempt(conn, path, clock, batch, false) {
        Attempt::Done(outcome) => outcome,
        Attempt::Dirty => match attempt(conn, path, clock, batch, true) {
            Attempt::Done(outcome) => outcome,
            Attempt::Dirty => Some("a write failed halfway and could not be isolated".to_owned()),
        },
    };
    if outcome.is_none() && !synced && batch.iter().any(|j| j.needs_sync()) {
        // The same fdatasync of the log that `synchronous = FULL` does at commit.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let synced = std::fs::File::open(&wal).and_then(|f| f.sync_data());
        if let Err(e) = synced {
            outcome = Some(format!(
                "committed, but syncing {} failed: {e}",
                Path::new(&wal).display()
            ));
        }
    }
    for job in batch.drain(..) {
        job.answer(outcome.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use loom_storage::SystemClock;

    use super::*;

    /// A batch of relaxed jobs commits without an fsync of its own (`synchronous = NORMAL`);
    /// a batch with a durable job commits with `synchronous = FULL`.
    #[tokio::test]
    async fn only_durable_batches_sync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL")
            .expect("pragmas");
        let writer =
            Writer::start(conn, path.clone(), Arc::new(SystemClock), 64, true).expect("start");
        let mode = |durable| {
            let writer = writer.clone();
            async move {
                writer
                    .write(
                        if durable { Sync::Always } else { Sync::Never },
                        |conn, _| {
                            conn.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                                .map_err(|e| StorageError::unavailable("pragma", e))
                        },
                    )
                    .await
                    .expect("write")
            }
        };
        assert_eq!(mode(false).await, 1, "relaxed: NORMAL");
        assert_eq!(mode(true).await, 2, "durable: FULL");
        assert_eq!(mode(false).await, 1, "relaxed again: NORMAL");
        // A job that may need the disk runs relaxed; when its result says it does, the writer
        // syncs the log itself after the commit and still answers with the result.
        for wanted in [false, true] {
            let got = writer
                .write(Sync::If(|needs: &(i64, bool)| needs.1), move |conn, _| {
                    conn.execute_batch(
                        "CREATE TABLE IF NOT EXISTS t (v INTEGER); INSERT INTO t VALUES (1)",
                    )
                    .map_err(|e| StorageError::unavailable("insert", e))?;
                    let mode = conn
                        .query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                        .map_err(|e| StorageError::unavailable("pragma", e))?;
                    Ok((mode, wanted))
                })
                .await
                .expect("write");
            assert_eq!(got, (1, wanted), "runs relaxed whatever its result");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_fails_after_writing_is_undone_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("CREATE TABLE t (v INTEGER)")
            .expect("schema");
        let writer =
            Writer::start(conn, path.clone(), Arc::new(SystemClock), 64, true).expect("start");
        let mut handles = Vec::new();
        for v in 0..40i64 {
            let writer = writer.clone();
            handles.push(tokio::spawn(async move {
                let sync = if v % 2 == 0 {
                    Sync::Always
                } else {
                    Sync::Never
                };
                writer
                    .write(sync, move |conn, _| {
                        conn.execute("INSERT INTO t (v) VALUES (?1)", [v])
                            .map_err(|e| StorageError::unavailable("insert", e))?;
                        if v % 10 == 7 {
                            // Fails after it wrote: must leave no row behind.
                            return Err(StorageError::InvalidArgument(format!("job {v} fails")));
                        }
                        Ok(v)
                    })
                    .await
            }));
        }
        let mut failed = Vec::new();
        for (v, h) in handles.into_iter().enumerate() {
            match h.await.expect("task") {
                Ok(got) => assert_eq!(got, v as i64),
                Err(StorageError::InvalidArgument(_)) => failed.push(v as i64),
                Err(e) => panic!("job {v}: unexpected {e}"),
            }
        }
        assert_eq!(failed, vec![7, 17, 27, 37]);
        let check = Connection::open(&path).expect("open");
        let rows: Vec<i64> = check
            .prepare("SELECT v FROM t ORDER BY v")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        let expected: Vec<i64> = (0..40).filter(|v| v % 10 != 7).collect();
        assert_eq!(
            rows, expected,
            "every good job committed once, no failed job left a row"
        );
    }
}
