//! One connection inside one transaction or snapshot, and the conversions between Loom's
//! records and SQLite's columns.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::Path;

use loom_core::{Failure, Payload, Progress, Seq, Timestamp, WorkflowId};
use loom_storage::{Result, StorageError, TaskId, WorkflowSummary};
use rusqlite::{CachedStatement, Connection, Statement};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conn::map_err;

/// `tasks.kind` of a workflow task.
pub(crate) const WORKFLOW_TASK: i64 = 0;
/// `tasks.kind` of an activity task.
pub(crate) const ACTIVITY_TASK: i64 = 1;

/// One connection inside one transaction (writes) or snapshot (reads), with the file's path
/// for errors. None of its methods begins or commits.
pub(crate) struct Db<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) path: &'a Path,
    /// Activity tasks a write set inserted and this side has not written yet (see
    /// `apply.rs`, "Activity tasks born claimed"). Always empty between write sets.
    pub(crate) pending: Vec<crate::apply::Pending>,
    /// Statements taken from the connection's cache and kept for as long as this `Db` lives
    /// (a whole batch, on the writer thread), by the address and length of their SQL text.
    /// rusqlite's cache finds a statement by hashing and comparing its whole text, and puts
    /// it back the same way, on every use; a batch uses the same few dozen statements
    /// thousands of times.
    held: RefCell<HashMap<(usize, usize), CachedStatement<'a>>>,
}

impl<'a> Db<'a> {
    /// `conn` at `path`, with nothing pending or held.
    pub(crate) fn new(conn: &'a Connection, path: &'a Path) -> Self {
        Db {
            conn,
            path,
            pending: Vec::new(),
            held: RefCell::default(),
        }
    }

    /// The prepared statement for `sql`: the one this `Db` holds, or one from the
    /// connection's cache, held from now on. Only for SQL written into the program, whose
    /// address names it for as long as the program runs.
    pub(crate) fn prepared(&self, sql: &'static str) -> rusqlite::Result<Held<'_, 'a>> {
        let key = (sql.as_ptr() as usize, sql.len());
        let stmt = match self.held.borrow_mut().remove(&key) {
            Some(stmt) => stmt,
            None => self.conn.prepare_cached(sql)?,
        };
        Ok(Held {
            held: &self.held,
            key,
            stmt: Some(stmt),
        })
    }
}

/// A statement [`Db::prepared`] lent out; it goes back to the `Db` when dropped.
pub(crate) struct Held<'d, 'a> {
    held: &'d RefCell<HashMap<(usize, usize), CachedStatement<'a>>>,
    key: (usize, usize),
    stmt: Option<CachedStatement<'a>>,
}

impl<'a> Deref for Held<'_, 'a> {
    type Target = Statement<'a>;

    fn deref(&self) -> &Statement<'a> {
        self.stmt.as_ref().expect("held until dropped")
    }
}

impl<'a> DerefMut for Held<'_, 'a> {
    fn deref_mut(&mut self) -> &mut Statement<'a> {
        self.stmt.as_mut().expect("held until dropped")
    }
}

impl Drop for Held<'_, '_> {
    fn drop(&mut self) {
        if let Some(stmt) = self.stmt.take() {
            self.held.borrow_mut().insert(self.key, stmt);
        }
    }
}

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

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StorageError::InvalidArgument(format!("cannot encode a value as JSON: {e}")))
}

impl Db<'_> {
    pub(crate) fn sql(&self, e: rusqlite::Error) -> StorageError {
        map_err(self.path, e)
    }

    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        text: &str,
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        serde_json::from_str(text).map_err(|e| {
            StorageError::corrupt(
                format!("{} in {} cannot be decoded", what(), self.path.display()),
                e,
            )
        })
    }

    pub(crate) fn status(&self, text: &str, id: &str) -> Result<loom_storage::WorkflowStatus> {
        text.parse().map_err(|e: String| StorageError::Corrupt {
            message: format!("workflow \"{id}\" in {}: {e}", self.path.display()),
            source: None,
        })
    }
}

/// The columns of a workflow's summary, in [`RawSummary`]'s order.
pub(crate) const SUMMARY: &str = "workflows.id, workflows.name, workflows.version, \
    workflows.status, workflows.input, workflows.created_at, workflows.updated_at, \
    workflows.closed_at, workflows.last_seq, workflows.output, workflows.failure, \
    workflows.pause_reason, workflows.progress, workflows.parent_id, workflows.run, \
    (SELECT json_group_object(key, json(value)) FROM tags WHERE tags.workflow_id = workflows.id)";

/// A workflow row as SQLite returns it, before decoding.
pub(crate) struct RawSummary {
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
    parent_id: Option<String>,
    run: u32,
    tags: Option<String>,
}

impl RawSummary {
    pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
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
            parent_id: r.get(13)?,
            run: r.get(14)?,
            tags: r.get(15)?,
        })
    }

    pub(crate) fn decode(self, db: &Db<'_>) -> Result<WorkflowSummary> {
        let id = self.id;
        let field = |what: &str| format!("the {what} of workflow \"{id}\"");
        let status = db.status(&self.status, &id)?;
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
        let tags: loom_core::Tags = self
            .tags
            .map(|t| db.decode(&t, || field("tags")))
            .transpose()?
            .unwrap_or_default();
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
            parent: self.parent_id.map(WorkflowId::new),
            run: self.run,
            tags,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite::StatementStatus;

    use super::*;
    use crate::Durability;

    const SQL: &str = "SELECT COUNT(*) FROM workflows WHERE id = ?1";

    fn count(stmt: &mut Statement<'_>) -> i64 {
        stmt.query_row(["wf"], |r| r.get(0)).expect("query")
    }

    /// A `Db` lends out the statement it holds for every use of the same SQL, and a second
    /// use while the first is still out gets a statement of its own; both then work.
    #[test]
    fn a_held_statement_serves_every_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("held.db");
        let conn =
            crate::conn::open(&path, Durability::Fast, Duration::from_secs(1)).expect("open");
        crate::conn::migrate(&conn, &path).expect("migrate");
        let db = Db::new(&conn, &path);
        for _ in 0..3 {
            let mut stmt = db.prepared(SQL).expect("prepare");
            assert_eq!(count(&mut stmt), 0);
        }
        let mut first = db.prepared(SQL).expect("prepare");
        assert_eq!(
            first.get_status(StatementStatus::Run),
            3,
            "one statement ran all three times"
        );
        let mut second = db
            .prepared(SQL)
            .expect("a second one while the first is out");
        assert_eq!(second.get_status(StatementStatus::Run), 0);
        assert_eq!(count(&mut first), 0);
        assert_eq!(count(&mut second), 0);
        drop((first, second));
        assert_eq!(
            db.held.borrow().len(),
            1,
            "one statement per SQL text is kept"
        );
    }
}
