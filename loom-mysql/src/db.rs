//! One connection inside one transaction or snapshot, the statements it runs, and the
//! conversions between Loom's records and MySQL's columns.

use loom_core::{Failure, Payload, Progress, Seq, Timestamp, WorkflowId};
use loom_storage::{Result, StorageError, TaskId, WorkflowSummary};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::mysql::{MySql, MySqlArguments, MySqlConnection, MySqlRow};
use sqlx::{Row, query::Query};
use tokio::runtime::Runtime;

use crate::conn::{Failed, map_err};

/// `tasks.kind` of a workflow task.
pub(crate) const WORKFLOW_TASK: i64 = 0;
/// `tasks.kind` of an activity task.
pub(crate) const ACTIVITY_TASK: i64 = 1;

/// A statement with its arguments bound.
pub(crate) type Q<'q> = Query<'q, MySql, MySqlArguments>;

/// One connection inside one transaction (writes) or snapshot (reads). None of its methods
/// begins or commits on its own. It remembers whether it wrote anything and how its last
/// statement failed, for the code that owns the transaction.
///
/// A writer's transaction is a pipeline: [`write`](Self::write) keeps each write as SQL text
/// with its values written in, and [`select`](Self::select) sends every write kept so far and
/// its own query as one multi-statement round trip. So a write set costs one round trip per
/// read its checks and claims make, and the writes of a whole batch go out with its `COMMIT`.
/// On MariaDB, writes in a row go out as one compound statement (`BEGIN NOT ATOMIC ... END`),
/// which the server answers once rather than once per write.
pub(crate) struct Db<'a> {
    rt: &'a Runtime,
    conn: &'a mut MySqlConnection,
    shown: &'a str,
    /// Whether the server runs compound statements outside stored programs (MariaDB).
    compound: bool,
    /// Statements kept for the next round trip, each ending with `;`.
    pending: String,
    /// Writes kept after `pending`, not yet closed into it, and how many.
    run: String,
    run_n: usize,
    /// Where the current write set's writes begin: in `pending`, in `run`, and `run_n`.
    mark: (usize, usize, usize),
    /// How many of `locked` were there when the current write set began.
    locked_mark: usize,
    /// The most bytes one round trip may carry (half the server's `max_allowed_packet`:
    /// room for the statements around the writes).
    packet: usize,
    wrote: bool,
    /// A round trip that carried kept statements failed: which of them ran is unknown.
    flush_failed: bool,
    /// Workflows whose workflow task this transaction has locked.
    pub(crate) locked: Vec<WorkflowId>,
    failed: Option<Failed>,
}

/// A value written into a statement's text.
#[derive(Clone, Copy, Debug)]
pub(crate) enum V<'a> {
    /// An integer.
    I(i64),
    /// Bytes (text, JSON): written as a hexadecimal literal, so nothing in them is SQL.
    B(&'a [u8]),
    /// NULL.
    N,
}

impl From<i64> for V<'_> {
    fn from(v: i64) -> Self {
        V::I(v)
    }
}

impl From<u32> for V<'_> {
    fn from(v: u32) -> Self {
        V::I(i64::from(v))
    }
}

impl<'a> From<&'a [u8]> for V<'a> {
    fn from(v: &'a [u8]) -> Self {
        V::B(v)
    }
}

impl<'a> From<&'a Vec<u8>> for V<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        V::B(v)
    }
}

impl<'a, T: Into<V<'a>>> From<Option<T>> for V<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(V::N, Into::into)
    }
}

/// Appends `sql` with each `?` replaced by the next of `args`, and a `;`.
fn render(out: &mut String, sql: &str, args: &[V<'_>]) {
    use std::fmt::Write as _;
    let mut args = args.iter();
    for (i, part) in sql.split('?').enumerate() {
        if i > 0 {
            match args.next() {
                Some(V::I(v)) => {
                    let _ = write!(out, "{v}");
                }
                Some(V::B(bytes)) => {
                    out.push_str("X'");
                    for b in *bytes {
                        let _ = write!(out, "{b:02X}");
                    }
                    out.push('\'');
                }
                Some(V::N) | None => out.push_str("NULL"),
            }
        }
        out.push_str(part);
    }
    debug_assert!(
        args.next().is_none(),
        "more values than placeholders in {sql}"
    );
    out.push_str(";\n");
}

impl<'a> Db<'a> {
    pub(crate) fn new(
        rt: &'a Runtime,
        conn: &'a mut MySqlConnection,
        shown: &'a str,
        compound: bool,
        packet: usize,
    ) -> Self {
        Db {
            rt,
            conn,
            shown,
            compound,
            locked_mark: 0,
            packet,
            pending: String::new(),
            run: String::new(),
            run_n: 0,
            mark: (0, 0, 0),
            wrote: false,
            flush_failed: false,
            locked: Vec::new(),
            failed: None,
        }
    }
}

impl Db<'_> {
    /// The most bytes one round trip may carry.
    pub(crate) fn packet(&self) -> usize {
        self.packet
    }

    /// Whether the current write set's writes may have reached the database.
    pub(crate) fn wrote(&self) -> bool {
        self.wrote || self.flush_failed
    }

    /// How the last failed statement failed, since [`begin`](Self::begin).
    pub(crate) fn failed(&self) -> Option<Failed> {
        self.failed
    }

    /// Records a failure found in what a statement answered.
    pub(crate) fn set_failed(&mut self, failed: Failed) {
        self.failed = Some(failed);
    }

    /// Begins a write set: what it writes, and how anything fails, is its own from here.
    pub(crate) fn begin(&mut self) {
        self.mark = (self.pending.len(), self.run.len(), self.run_n);
        self.locked_mark = self.locked.len();
        self.wrote = false;
        self.flush_failed = false;
        self.failed = None;
    }

    /// Drops the writes the current write set kept and never sent.
    pub(crate) fn discard(&mut self) {
        self.pending.truncate(self.mark.0);
        self.run.truncate(self.mark.1);
        self.run_n = self.mark.2;
        // A lock the write set took is held until the transaction ends, but one it only
        // meant to take (an insert never sent, or undone by a savepoint) is not: later write
        // sets lock the workflow's task again.
        self.locked.truncate(self.locked_mark);
    }

    /// Keeps a statement that returns nothing (a write, `START TRANSACTION`, `COMMIT`) for
    /// the next round trip.
    pub(crate) fn push(&mut self, sql: &str) {
        self.close_run();
        render(&mut self.pending, sql, &[]);
    }

    /// Moves the writes kept in a row into `pending`: as one compound statement where the
    /// server has them.
    fn close_run(&mut self) {
        if self.run_n == 0 {
            return;
        }
        if self.compound && self.run_n > 1 {
            self.pending.push_str("BEGIN NOT ATOMIC\n");
            self.pending.push_str(&self.run);
            self.pending.push_str("END;\n");
        } else {
            self.pending.push_str(&self.run);
        }
        self.run.clear();
        self.run_n = 0;
    }

    fn fail(&mut self, e: sqlx::Error) -> StorageError {
        let (err, failed) = map_err(self.shown, e);
        // The gravest failure wins: a lost connection over a retry over a duplicate.
        self.failed = Some(match (self.failed, failed) {
            (Some(Failed::Lost), _) | (_, Failed::Lost) => Failed::Lost,
            (Some(Failed::Retry), _) | (_, Failed::Retry) => Failed::Retry,
            (Some(Failed::Duplicate), _) | (_, Failed::Duplicate) => Failed::Duplicate,
            _ => Failed::Statement,
        });
        err
    }

    /// Keeps a write (`sql` with `args` in place of its `?`s) for the next round trip.
    pub(crate) fn write(&mut self, sql: &str, args: &[V<'_>]) -> Result<()> {
        let before = self.run.len();
        render(&mut self.run, sql, args);
        let size = self.run.len() - before;
        if size > self.packet {
            self.run.truncate(before);
            self.failed = Some(Failed::Statement);
            return Err(StorageError::Rejected {
                message: format!(
                    "a write of {size} bytes as SQL is past what the {} takes in one packet \
                     (max_allowed_packet {} bytes)",
                    self.shown,
                    self.packet * 2
                ),
                source: None,
            });
        }
        self.run_n += 1;
        if self.pending.len() + self.run.len() > self.packet {
            // Too much for one round trip: send what is kept now.
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the writes kept so far, if any.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() && self.run_n == 0 {
            return Ok(());
        }
        self.select_text(String::new()).map(drop)
    }

    /// Runs a query (`sql` with `args` in place of its `?`s) after the writes kept so far, in
    /// one round trip; returns its rows. A query of several statements returns the rows of
    /// each, one after the other.
    pub(crate) fn select(&mut self, sql: &str, args: &[V<'_>]) -> Result<Vec<MySqlRow>> {
        let mut text = String::new();
        render(&mut text, sql, args);
        self.select_text(text)
    }

    fn select_text(&mut self, query: String) -> Result<Vec<MySqlRow>> {
        let carried = self.pending.len() > self.mark.0 || self.run.len() > self.mark.1;
        self.close_run();
        let mut text = std::mem::take(&mut self.pending);
        let any = !text.is_empty();
        self.mark = (0, 0, 0);
        text.push_str(&query);
        match self
            .rt
            .block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(text)).fetch_all(&mut *self.conn))
        {
            Ok(rows) => {
                self.wrote |= carried;
                Ok(rows)
            }
            Err(e) => {
                self.flush_failed |= any;
                Err(self.fail(e))
            }
        }
    }

    /// Runs `text` as it is (one statement, or several), after the writes kept so far.
    pub(crate) fn execute_text(&mut self, text: &str) -> Result<()> {
        self.select_text(text.to_owned()).map(drop)
    }

    /// Runs a prepared statement at once; returns the rows it changed.
    pub(crate) fn exec(&mut self, q: Q<'_>) -> Result<u64> {
        self.flush()?;
        match self.rt.block_on(q.execute(&mut *self.conn)) {
            Ok(done) => Ok(done.rows_affected()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Runs a prepared query; returns every row.
    pub(crate) fn rows(&mut self, q: Q<'_>) -> Result<Vec<MySqlRow>> {
        self.flush()?;
        match self.rt.block_on(q.fetch_all(&mut *self.conn)) {
            Ok(rows) => Ok(rows),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Runs a prepared query; returns its row, if any.
    pub(crate) fn row(&mut self, q: Q<'_>) -> Result<Option<MySqlRow>> {
        self.flush()?;
        match self.rt.block_on(q.fetch_optional(&mut *self.conn)) {
            Ok(row) => Ok(row),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Reads column `i` of a row.
    pub(crate) fn get<'r, T>(&mut self, row: &'r MySqlRow, i: usize) -> Result<T>
    where
        T: sqlx::Decode<'r, MySql> + sqlx::Type<MySql>,
    {
        row.try_get(i).map_err(|e| self.fail(e))
    }

    /// Reads a `VARBINARY` or `BLOB` column `i` holding UTF-8 text.
    pub(crate) fn text(&mut self, row: &MySqlRow, i: usize) -> Result<String> {
        let bytes: Vec<u8> = self.get(row, i)?;
        String::from_utf8(bytes).map_err(|e| {
            StorageError::corrupt(
                format!("a text column of the {} is not UTF-8", self.shown),
                e,
            )
        })
    }

    /// [`text`](Self::text) of a column that may be NULL.
    pub(crate) fn text_opt(&mut self, row: &MySqlRow, i: usize) -> Result<Option<String>> {
        let bytes: Option<Vec<u8>> = self.get(row, i)?;
        bytes
            .map(|b| {
                String::from_utf8(b).map_err(|e| {
                    StorageError::corrupt(
                        format!("a text column of the {} is not UTF-8", self.shown),
                        e,
                    )
                })
            })
            .transpose()
    }

    /// Decodes JSON from column `i`; `what` names it in an error.
    pub(crate) fn json<T: DeserializeOwned>(
        &mut self,
        row: &MySqlRow,
        i: usize,
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        let bytes: Vec<u8> = self.get(row, i)?;
        self.decode(&bytes, what)
    }

    /// Decodes JSON bytes; `what` names them in an error.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| {
            StorageError::corrupt(
                format!("{} in the {} cannot be decoded", what(), self.shown),
                e,
            )
        })
    }

    /// A workflow status from its column.
    pub(crate) fn status(&self, text: &str, id: &str) -> Result<loom_storage::WorkflowStatus> {
        text.parse().map_err(|e: String| StorageError::Corrupt {
            message: format!("workflow \"{id}\" in the {}: {e}", self.shown),
            source: None,
        })
    }

    /// The database's clock now, in milliseconds since the epoch, read after the writes kept
    /// so far.
    pub(crate) fn database_now(&mut self) -> Result<Timestamp> {
        let rows = self.select(NOW_MS, &[])?;
        let ms: Option<i64> = match rows.first() {
            Some(r) => self.get(r, 0)?,
            None => None,
        };
        ms.map(Timestamp::from_millis)
            .ok_or_else(|| StorageError::Unavailable {
                message: format!("the {} did not tell the time", self.shown),
                source: None,
            })
    }
}

/// The database's time now, in milliseconds since the epoch.
pub(crate) const NOW_MS: &str = "SELECT CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)";

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.as_millis()
}

pub(crate) fn seq(n: i64) -> Seq {
    Seq::new(n.max(0).unsigned_abs())
}

pub(crate) fn seq_i64(s: Seq) -> i64 {
    i64::try_from(s.get()).unwrap_or(i64::MAX)
}

pub(crate) fn task_i64(t: TaskId) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

pub(crate) fn id_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Text for a `VARBINARY` column: its UTF-8 bytes, compared byte by byte.
pub(crate) fn b(s: &str) -> &[u8] {
    s.as_bytes()
}

/// A value as JSON bytes for a `LONGBLOB` column.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| StorageError::InvalidArgument(format!("cannot encode a value as JSON: {e}")))
}

/// The columns of a workflow's summary, in [`Db::summary`]'s order. The tags come as one JSON
/// object, put together from each tag's key (letters, digits, `_`, `-` and `.` only) and its
/// value's JSON.
pub(crate) const SUMMARY: &str = "workflows.id, workflows.name, workflows.version, \
    workflows.status, workflows.input, workflows.created_at, workflows.updated_at, \
    workflows.closed_at, workflows.last_seq, workflows.output, workflows.failure, \
    workflows.pause_reason, workflows.progress, workflows.parent_id, workflows.run, \
    (SELECT CONCAT('{', GROUP_CONCAT(CONCAT('\"', t.tag_key, '\":', t.tag_value) SEPARATOR ','), '}') \
     FROM tags t WHERE t.workflow_id = workflows.id)";

impl Db<'_> {
    /// A workflow's summary from a row of [`SUMMARY`]'s columns.
    pub(crate) fn summary(&mut self, r: &MySqlRow) -> Result<WorkflowSummary> {
        let id = self.text(r, 0)?;
        let field = |what: &str| {
            let id = id.clone();
            let what = what.to_owned();
            move || format!("the {what} of workflow \"{id}\"")
        };
        let status = self.text(r, 3)?;
        let status = self.status(&status, &id)?;
        let input: Payload = self.json(r, 4, field("input"))?;
        let output: Option<Vec<u8>> = self.get(r, 9)?;
        let output: Option<Payload> = output
            .map(|t| self.decode(&t, field("output")))
            .transpose()?;
        let failure: Option<Vec<u8>> = self.get(r, 10)?;
        let failure: Option<Failure> = failure
            .map(|t| self.decode(&t, field("failure")))
            .transpose()?;
        let progress: Option<Vec<u8>> = self.get(r, 12)?;
        let progress: Option<Progress> = progress
            .map(|t| self.decode(&t, field("progress")))
            .transpose()?;
        let tags: Option<Vec<u8>> = self.get(r, 15)?;
        let tags: loom_core::Tags = tags
            .map(|t| self.decode(&t, field("tags")))
            .transpose()?
            .unwrap_or_default();
        let version: u32 = self.get(r, 2)?;
        let created_at: i64 = self.get(r, 5)?;
        let updated_at: i64 = self.get(r, 6)?;
        let closed_at: Option<i64> = self.get(r, 7)?;
        let last_seq: i64 = self.get(r, 8)?;
        Ok(WorkflowSummary {
            name: self.text(r, 1)?,
            version,
            status,
            input,
            created_at: Timestamp::from_millis(created_at),
            updated_at: Timestamp::from_millis(updated_at),
            closed_at: closed_at.map(Timestamp::from_millis),
            last_seq: seq(last_seq),
            output,
            failure,
            pause_reason: self.text_opt(r, 11)?,
            progress,
            parent: self.text_opt(r, 13)?.map(WorkflowId::new),
            run: self.get(r, 14)?,
            tags,
            id: WorkflowId::new(id),
        })
    }
}
