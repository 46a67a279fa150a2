//! Connections: each one owns a small runtime of its own, so that the engine's synchronous
//! primitives can run on it from the writer thread and the blocking pool; session settings;
//! and what MySQL's errors mean.

use std::sync::Arc;

use loom_core::Timestamp;
use loom_storage::{Clock, Result, StorageError};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::runtime::Runtime;

use crate::MysqlOptions;
use crate::db::Db;

/// What a failed statement left behind, for the code that owns the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failed {
    /// InnoDB rolled the transaction back (a deadlock) or gave up waiting for a lock: run
    /// the whole batch again.
    Retry,
    /// A unique key refused a row a check found absent: another transaction inserted it
    /// meanwhile. The statement alone was undone; the write set must run again to see it.
    Duplicate,
    /// The connection is gone, or in a state no one can trust: open a new one.
    Lost,
    /// This statement failed and was undone; the transaction stands.
    Statement,
}

/// What a connection is for: the writer's transactions see the latest committed rows
/// (`READ COMMITTED`), a reader's snapshot one moment (`REPEATABLE READ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Write,
    Read,
}

/// One connection and the runtime that drives it. The connection is dropped first.
pub(crate) struct Conn {
    pub(crate) conn: MySqlConnection,
    pub(crate) rt: Rt,
    pub(crate) shown: String,
    /// MariaDB: compound statements outside stored programs.
    compound: bool,
    /// Half the server's `max_allowed_packet`: the most one round trip carries.
    packet: usize,
    broken: bool,
}

/// MariaDB 10.6 or MySQL 8: the first versions with `SKIP LOCKED`.
fn supported(version: &str) -> bool {
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if mariadb {
        (major, minor) >= (10, 6)
    } else {
        major >= 8
    }
}

impl Conn {
    /// Connects with Loom's session settings. Blocking: call it off the async runtime.
    pub(crate) fn open(
        connect: &MySqlConnectOptions,
        shown: &str,
        options: &MysqlOptions,
        role: Role,
    ) -> Result<Conn> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                StorageError::unavailable("cannot start a MySQL connection's runtime", e)
            })?;
        let connect = connect
            .clone()
            .charset("utf8mb4")
            .timezone(Some("+00:00".to_owned()))
            .statement_cache_capacity(256)
            .disable_statement_logging();
        let isolation = match role {
            Role::Write => "READ COMMITTED",
            Role::Read => "REPEATABLE READ",
        };
        let settings = format!(
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', \
             SESSION innodb_lock_wait_timeout = {}, SESSION group_concat_max_len = 16777216; \
             SET SESSION TRANSACTION ISOLATION LEVEL {isolation}",
            crate::whole_seconds(options.lock_wait_timeout)
        );
        let conn = rt.block_on(async {
            let connecting = async {
                let mut conn = connect.connect().await?;
                let row = sqlx::query("SELECT VERSION(), CAST(@@max_allowed_packet AS SIGNED)")
                    .fetch_one(&mut conn)
                    .await?;
                let version: String = row.try_get(0)?;
                let packet: i64 = row.try_get(1)?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(settings))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>((conn, version, packet))
            };
            tokio::time::timeout(options.connect_timeout, connecting).await
        });
        let (conn, version, packet) = match conn {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(map_err(shown, e).0),
            Err(_) => {
                return Err(StorageError::Unavailable {
                    message: format!(
                        "connecting to the {shown} took more than {:?}",
                        options.connect_timeout
                    ),
                    source: None,
                });
            }
        };
        if !supported(&version) {
            return Err(StorageError::Incompatible(format!(
                "the {shown} runs {version}; Loom needs MySQL 8.0 or MariaDB 10.6 or later \
                 (FOR UPDATE SKIP LOCKED)"
            )));
        }
        tracing::debug!(database = %shown, ?role, "opened a connection");
        Ok(Conn {
            rt: Rt(Some(rt)),
            conn,
            shown: shown.to_owned(),
            compound: version.to_ascii_lowercase().contains("mariadb"),
            packet: usize::try_from(packet / 2).unwrap_or(0).max(64 * 1024),
            broken: false,
        })
    }

    /// Whether a statement on it failed in a way that makes it unfit for reuse.
    /// Whether the server is MariaDB (MySQL otherwise).
    pub(crate) fn mariadb(&self) -> bool {
        self.compound
    }

    pub(crate) fn broken(&self) -> bool {
        self.broken
    }

    /// The connection inside a transaction or snapshot of the caller's.
    pub(crate) fn db(&mut self) -> Db<'_> {
        Db::new(
            &self.rt,
            &mut self.conn,
            &self.shown,
            self.compound,
            self.packet,
        )
    }

    /// Runs one statement outside the engine's primitives (`START TRANSACTION`, `COMMIT`).
    pub(crate) fn run(
        &mut self,
        sql: &'static str,
    ) -> std::result::Result<(), (StorageError, Failed)> {
        let done = self.rt.block_on(sqlx::raw_sql(sql).execute(&mut self.conn));
        match done {
            Ok(_) => Ok(()),
            Err(e) => {
                let (err, failed) = map_err(&self.shown, e);
                if failed == Failed::Lost {
                    self.broken = true;
                }
                Err((err, failed))
            }
        }
    }

    /// Marks the connection unfit for reuse.
    pub(crate) fn set_broken(&mut self) {
        self.broken = true;
    }

    /// Runs `read` in one consistent snapshot, at the store's time now.
    pub(crate) fn snapshot<T>(
        &mut self,
        clock: &Option<Arc<dyn Clock>>,
        read: impl FnOnce(&mut Db<'_>, Timestamp) -> Result<T>,
    ) -> Result<T> {
        self.run("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .map_err(|(e, _)| e)?;
        let mut db = self.db();
        let result = now(&mut db, clock).and_then(|now| read(&mut db, now));
        let lost = db.failed() == Some(Failed::Lost);
        if lost {
            self.broken = true;
        }
        let ended = self.run("COMMIT");
        if ended.is_err() {
            self.broken = true;
        }
        result
    }

    /// Closes the connection politely.
    pub(crate) fn close(self) {
        let Conn { rt, conn, .. } = self;
        let _ = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), conn.close()).await
        });
    }
}

/// A connection's runtime. Dropping it never blocks, so a store may be dropped anywhere,
/// an async task included.
pub(crate) struct Rt(Option<Runtime>);

impl std::ops::Deref for Rt {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("a runtime is taken only when dropped"))
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The store's time: the given clock's in tests, otherwise the database's.
pub(crate) fn now(db: &mut Db<'_>, clock: &Option<Arc<dyn Clock>>) -> Result<Timestamp> {
    match clock {
        Some(clock) => Ok(clock.now()),
        None => db.database_now(),
    }
}

/// What a sqlx error means for Loom, naming the database, and what it left behind.
pub(crate) fn map_err(shown: &str, e: sqlx::Error) -> (StorageError, Failed) {
    match &e {
        sqlx::Error::Database(db) => {
            let number = db
                .try_downcast_ref::<MySqlDatabaseError>()
                .map_or(0, MySqlDatabaseError::number);
            match number {
                // Deadlock found; lock wait timeout exceeded; "record has changed since last
                // read" (MariaDB's snapshot isolation); the lock table full.
                1213 | 1205 | 1020 | 1206 => (
                    StorageError::unavailable(
                        format!("the {shown} asked to retry (error {number})"),
                        e,
                    ),
                    Failed::Retry,
                ),
                1062 | 1022 | 1586 => (
                    StorageError::rejected(
                        format!("the {shown} refused a duplicate key (error {number})"),
                        e,
                    ),
                    Failed::Duplicate,
                ),
                // Data too long, out of range, incorrect value, NULL in a NOT NULL column,
                // a result past max_allowed_packet.
                1406 | 1264 | 1366 | 1048 | 1292 | 1301 | 1690 => (
                    StorageError::rejected(
                        format!("the {shown} cannot hold a value (error {number})"),
                        e,
                    ),
                    Failed::Statement,
                ),
                // A stored procedure that does not exist (the same number as a lost savepoint):
                // the call failed alone and the transaction stands.
                1305 if db.message().starts_with("PROCEDURE") => (
                    StorageError::unavailable(
                        format!("the {shown} lacks a procedure (error {number})"),
                        e,
                    ),
                    Failed::Statement,
                ),
                // The server shutting down, this connection killed, a query interrupted, too
                // many connections, a read-only server during a failover, a packet past
                // max_allowed_packet (the server closes the connection), a commit that
                // failed, a savepoint the transaction lost.
                1053 | 1927 | 1317 | 1040 | 1290 | 1836 | 1153 | 1180 | 1305 => (
                    StorageError::unavailable(
                        format!("the {shown} is unavailable (error {number})"),
                        e,
                    ),
                    Failed::Lost,
                ),
                // Any other error the server answered is its statement's alone: InnoDB undid
                // that statement and the transaction stands.
                _ => (
                    StorageError::unavailable(format!("the {shown} failed (error {number})"), e),
                    Failed::Statement,
                ),
            }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => (
            StorageError::corrupt(format!("a row of the {shown} cannot be read"), e),
            Failed::Statement,
        ),
        _ => (
            StorageError::unavailable(format!("the {shown} is unavailable"), e),
            Failed::Lost,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_with_skip_locked_are_supported() {
        assert!(supported("10.11.19-MariaDB-0+deb12u1"));
        assert!(supported("10.6.0-MariaDB"));
        assert!(!supported("10.5.27-MariaDB"));
        assert!(supported("8.0.36"));
        assert!(supported("8.0.1"));
        assert!(supported("8.4.2-log"));
        assert!(!supported("5.7.44"));
    }
}
