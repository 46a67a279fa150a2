//! Opening connections, applying migrations, and turning SQLite's errors into meanings.

use std::path::Path;
use std::time::Duration;

use loom_storage::StorageError;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::Durability;
use crate::schema::{LATEST, MIGRATIONS};

/// Maps a SQLite error to a storage error that names the database file.
pub(crate) fn map_err(path: &Path, e: rusqlite::Error) -> StorageError {
    let shown = path.display();
    let Some(code) = e.sqlite_error().map(|f| f.code) else {
        // rusqlite's own errors: a stored value of the wrong type is damaged data, not a busy
        // database.
        return match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => {
                StorageError::corrupt(format!("a value in {shown} cannot be read"), e)
            }
            _ => StorageError::unavailable(format!("SQLite error on {shown}"), e),
        };
    };
    match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
            StorageError::unavailable(format!("{shown} is busy (locked by another writer)"), e)
        }
        ErrorCode::NotADatabase => {
            StorageError::corrupt(format!("{shown} is not a SQLite database"), e)
        }
        ErrorCode::DatabaseCorrupt => {
            StorageError::corrupt(format!("the SQLite database {shown} is damaged"), e)
        }
        ErrorCode::DiskFull => {
            StorageError::unavailable(format!("the disk holding {shown} is full"), e)
        }
        ErrorCode::CannotOpen => StorageError::unavailable(
            format!("cannot open {shown} (does its directory exist, and may we write there?)"),
            e,
        ),
        ErrorCode::ReadOnly | ErrorCode::PermissionDenied => {
            StorageError::unavailable(format!("{shown} is read-only"), e)
        }
        ErrorCode::SystemIoFailure => {
            StorageError::unavailable(format!("an I/O error on {shown}"), e)
        }
        ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig => {
            StorageError::rejected(format!("SQLite refused a write to {shown}"), e)
        }
        _ => StorageError::unavailable(format!("SQLite error on {shown}"), e),
    }
}

/// Whether an error is SQLite saying another connection holds the lock.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error().map(|f| f.code),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Opens one connection with Loom's settings: WAL, the chosen durability, no foreign keys, a busy
/// timeout. Fails with an error naming the path if the file is not a SQLite database.
pub(crate) fn open(
    path: &Path,
    durability: Durability,
    busy: Duration,
) -> Result<Connection, StorageError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| map_err(path, e))?;
    conn.busy_timeout(busy).map_err(|e| map_err(path, e))?;
    // The first statement that reads the file tells a non-database from a database.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| map_err(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::Incompatible(format!(
            "{} cannot use write-ahead logging (journal mode stays {mode:?})",
            path.display()
        )));
    }
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Fast => "NORMAL",
    };
    // Foreign keys are not enforced: the engine's checks already find the workflow before
    // anything is written for it, and enforcing them costs a lookup of the workflow's row in
    // every insert of an event, message or task (6% of the writer thread's instructions).
    // The one delete they would cascade, a purge's, deletes table by table.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY;"
    ))
    .map_err(|e| map_err(path, e))?;
    // Plans never depend on bound values (the query planner stability guarantee). Without
    // it SQLite recompiles a cached statement whenever a parameter it planned with is bound
    // again, and it plans with every `LIMIT ?`: a claim was compiled afresh on every call.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|e| map_err(path, e))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Runs one statement without parameters or rows (`BEGIN`, `COMMIT`) from the connection's
/// statement cache: `execute_batch` would parse it again every time.
pub(crate) fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
}

/// Brings the schema up to date in one transaction, or refuses a database this build cannot
/// use: one written by a newer Loom, or a SQLite file that is not Loom's.
pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<(), StorageError> {
    let shown = path.display();
    let err = |e| map_err(path, e);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let result = (|| {
        let has_meta: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'loom_migrations')",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if !has_meta {
            let tables: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                    [],
                    |r| r.get(0),
                )
                .map_err(err)?;
            if tables > 0 {
                return Err(StorageError::Incompatible(format!(
                    "{shown} is a SQLite database but not a Loom database (it has {tables} other tables); \
                     point Loom at a new file"
                )));
            }
            conn.execute_batch(
                "CREATE TABLE loom_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .map_err(err)?;
        }
        let current: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM loom_migrations",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?
            .unwrap_or(0);
        if current > LATEST {
            return Err(StorageError::Incompatible(format!(
                "{shown} has schema version {current}, written by a newer Loom; this build knows up to \
                 version {LATEST}. Upgrade Loom to open it"
            )));
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(current).unwrap_or(0))
        {
            conn.execute_batch(sql).map_err(err)?;
            conn.execute(
                "INSERT INTO loom_migrations (version, applied_at) VALUES (?1, CAST(strftime('%s', 'now') AS INTEGER) * 1000)",
                [i as i64 + 1],
            )
            .map_err(err)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(err),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached statement whose `LIMIT` and compared values are bound again runs without
    /// being compiled again: the query planner stability guarantee is on.
    #[test]
    fn rebinding_a_cached_statement_does_not_recompile_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("qpsg.db");
        let conn = open(&path, Durability::Fast, Duration::from_secs(1)).expect("open");
        migrate(&conn, &path).expect("migrate");
        let sql = "SELECT id FROM tasks WHERE workflow_id = ?1 AND +kind = ?2 ORDER BY id LIMIT ?3";
        for (kind, limit) in [(0, 1), (1, 5), (0, 9)] {
            let mut stmt = conn.prepare_cached(sql).expect("prepare");
            let ids: Vec<i64> = stmt
                .query_map(rusqlite::params!["wf", kind, limit], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            assert!(ids.is_empty());
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "recompiled after binding kind {kind} and limit {limit}"
            );
        }
    }
}
