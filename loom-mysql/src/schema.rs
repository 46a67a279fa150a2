//! The schema and its versioned migrations.
//!
//! Migrations run under the named lock `loom:migrate:<database>` (`GET_LOCK`), so processes
//! starting at once apply each one once, and each is recorded in `loom_migrations` once it is
//! whole. MySQL commits every DDL statement on its own, so a migration cannot be one
//! transaction: each of its statements may run again (`IF NOT EXISTS`), and a migration that
//! a crash interrupted is finished by the next start. A database whose recorded version is
//! newer than this build's is refused, and so is one holding a `workflows` table that Loom
//! did not make.
//!
//! Every table is InnoDB. Ids, names and keys are `VARBINARY` (compared byte by byte, as
//! Rust compares strings: no collation folds case or ignores trailing spaces), times are
//! milliseconds since the epoch in `BIGINT`, and payloads are JSON in `LONGBLOB`. MySQL has
//! no partial index: `tasks.wft_of`, a stored generated column holding the workflow's id for
//! a workflow task and NULL for an activity task, carries the unique index that allows one
//! workflow task per workflow.

use loom_storage::{Result, StorageError};

use crate::conn::Conn;

/// Migrations in order; the version of migration `i` is `i + 1`. Each is a list of
/// statements that may each run again. Never edit one that has shipped: add a new one.
pub(crate) const MIGRATIONS: &[&[&str]] = &[
    // 1: the schema.
    &[
        "CREATE TABLE IF NOT EXISTS workflows (
            id            VARBINARY(1024) NOT NULL PRIMARY KEY,
            name          VARBINARY(1024) NOT NULL,
            version       INT UNSIGNED NOT NULL,
            status        VARBINARY(16) NOT NULL,
            input         LONGBLOB NOT NULL,
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL,
            closed_at     BIGINT NULL,
            last_seq      BIGINT NOT NULL,
            output        LONGBLOB NULL,
            failure       LONGBLOB NULL,
            pause_reason  LONGBLOB NULL,
            progress      LONGBLOB NULL,
            parent_id     VARBINARY(1024) NULL,
            run           INT UNSIGNED NOT NULL DEFAULT 1,
            KEY workflows_by_time (created_at, id),
            KEY workflows_by_status (status, created_at, id),
            KEY workflows_by_parent (parent_id, created_at, id),
            KEY workflows_by_closed (closed_at, id)
        ) ENGINE = InnoDB ROW_FORMAT = DYNAMIC",
        "CREATE TABLE IF NOT EXISTS events (
            workflow_id   VARBINARY(1024) NOT NULL,
            seq           BIGINT NOT NULL,
            at            BIGINT NOT NULL,
            kind          LONGBLOB NOT NULL,
            PRIMARY KEY (workflow_id, seq)
        ) ENGINE = InnoDB ROW_FORMAT = DYNAMIC",
        "CREATE TABLE IF NOT EXISTS past_events (
            workflow_id   VARBINARY(1024) NOT NULL,
            run           INT UNSIGNED NOT NULL,
            seq           BIGINT NOT NULL,
            at            BIGINT NOT NULL,
            kind          LONGBLOB NOT NULL,
            PRIMARY KEY (workflow_id, run, seq)
        ) ENGINE = InnoDB ROW_FORMAT = DYNAMIC",
        // Inputs waiting for a workflow's next task. A timer is a message visible at its time.
        "CREATE TABLE IF NOT EXISTS messages (
            id            BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            workflow_id   VARBINARY(1024) NOT NULL,
            visible_at    BIGINT NOT NULL,
            kind          LONGBLOB NOT NULL,
            KEY messages_by_workflow (workflow_id, visible_at, id),
            KEY messages_by_time (visible_at)
        ) ENGINE = InnoDB ROW_FORMAT = DYNAMIC",
        // Workflow tasks (kind 0, one per workflow) and activity attempts (kind 1). While a
        // lease is held, visible_at equals the lease's expiry, so "claimable" is simply
        // visible_at <= now, one range scan of tasks_ready.
        "CREATE TABLE IF NOT EXISTS tasks (
            id                BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            kind              TINYINT NOT NULL,
            workflow_id       VARBINARY(1024) NOT NULL,
            visible_at        BIGINT NULL,
            lease_token       BIGINT NOT NULL DEFAULT 0,
            lease_expires_at  BIGINT NULL,
            lease_owner       VARBINARY(1024) NULL,
            deliveries        INT UNSIGNED NOT NULL DEFAULT 0,
            activity_id       BIGINT NULL,
            name              VARBINARY(1024) NULL,
            input             LONGBLOB NULL,
            options           LONGBLOB NULL,
            attempt           INT UNSIGNED NULL,
            affinity_owner    VARBINARY(1024) NULL,
            affinity_until    BIGINT NULL,
            wft_of            VARBINARY(1024)
                AS (CASE WHEN kind = 0 THEN workflow_id END) STORED,
            UNIQUE KEY tasks_workflow_task (wft_of),
            KEY tasks_ready (kind, visible_at, id),
            KEY tasks_by_workflow (workflow_id, kind, activity_id),
            KEY tasks_preferred (affinity_owner, visible_at, id)
        ) ENGINE = InnoDB ROW_FORMAT = DYNAMIC",
        "CREATE TABLE IF NOT EXISTS logs (
            n             BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            workflow_id   VARBINARY(1024) NOT NULL,
            seq           BIGINT NOT NULL,
            at            BIGINT NOT NULL,
            level         VARBINARY(8) NOT NULL,
            message       LONGBLOB NOT NULL,
            KEY logs_by_workflow (workflow_id, n)
        ) ENGINE = InnoDB ROW_FORMAT = DYNAMIC",
        // Tags: each workflow's, as JSON (`tag_value`), as the text equality compares and the
        // number ranges compare, with the workflow's creation time so that a listing by tag
        // reads the index in its order.
        "CREATE TABLE IF NOT EXISTS tags (
            workflow_id   VARBINARY(1024) NOT NULL,
            tag_key       VARBINARY(64) NOT NULL,
            tag_value     BLOB NOT NULL,
            tag_text      VARBINARY(1024) NOT NULL,
            num           BIGINT NULL,
            created_at    BIGINT NOT NULL,
            PRIMARY KEY (workflow_id, tag_key),
            KEY tags_by_text (tag_key, tag_text, created_at, workflow_id),
            KEY tags_by_num (tag_key, num)
        ) ENGINE = InnoDB ROW_FORMAT = DYNAMIC",
        // Schedules: each as JSON (`body`), with its version and when a worker must look at
        // it next, indexed.
        "CREATE TABLE IF NOT EXISTS schedules (
            id            VARBINARY(1024) NOT NULL PRIMARY KEY,
            version       BIGINT NOT NULL,
            wake_at       BIGINT NULL,
            body          LONGBLOB NOT NULL,
            KEY schedules_by_wake (wake_at, id)
        ) ENGINE = InnoDB ROW_FORMAT = DYNAMIC",
    ],
    // 2: the server-side applier, `loom_apply`, which takes a batch of write sets in one call:
    // on MariaDB only, where it is tested (on MySQL this migration writes nothing; a later one
    // installs the applier there once it is tested on MySQL).
    &[APPLIER],
];

/// A migration's statement that stands for the current definition of the server-side
/// applier, `apply.sql`: every migration that changes it includes this, and each of the
/// file's statements drops what it defines before defining it, so it may run again.
const APPLIER: &str = "-- apply.sql";

/// The statements of `apply.sql`, which separates them by lines holding only `$$`.
fn applier() -> impl Iterator<Item = &'static str> {
    include_str!("apply.sql")
        .split("\n$$\n")
        .map(str::trim)
        .filter(|s| {
            !s.is_empty()
                && !s
                    .lines()
                    .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
        })
}

/// The schema version this build writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

/// How long a starting process waits for another one's migration.
const LOCK_WAIT_SECONDS: i64 = 120;

/// Applies the migrations this database lacks, under the named lock.
pub(crate) fn migrate(conn: &mut Conn, shown: &str) -> Result<()> {
    let mut db = conn.db();
    let got = db.rows(
        sqlx::query("SELECT GET_LOCK(CONCAT('loom:migrate:', DATABASE()), ?)")
            .bind(LOCK_WAIT_SECONDS),
    )?;
    let locked: Option<i64> = match got.first() {
        Some(row) => db.get(row, 0)?,
        None => None,
    };
    if locked != Some(1) {
        return Err(StorageError::Unavailable {
            message: format!(
                "another process held the migration lock of the {shown} for {LOCK_WAIT_SECONDS} s"
            ),
            source: None,
        });
    }
    let result = migrate_locked(conn, shown);
    let mut db = conn.db();
    let released = db.rows(sqlx::query(
        "SELECT RELEASE_LOCK(CONCAT('loom:migrate:', DATABASE()))",
    ));
    result.and(released.map(drop))
}

fn migrate_locked(conn: &mut Conn, shown: &str) -> Result<()> {
    let mariadb = conn.mariadb();
    let mut db = conn.db();
    db.exec(sqlx::query(
        "CREATE TABLE IF NOT EXISTS loom_migrations (
            version     INT NOT NULL PRIMARY KEY,
            applied_at  BIGINT NOT NULL
        ) ENGINE = InnoDB",
    ))?;
    let rows = db.rows(sqlx::query("SELECT MAX(version) FROM loom_migrations"))?;
    let current: Option<i32> = match rows.first() {
        Some(row) => db.get(row, 0)?,
        None => None,
    };
    let current = i64::from(current.unwrap_or(0));
    if current > LATEST {
        return Err(StorageError::Incompatible(format!(
            "the {shown} has schema version {current}, written by a newer Loom; this build \
             knows versions up to {LATEST}"
        )));
    }
    if current == 0 {
        let foreign = db.rows(sqlx::query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE()
             AND table_name = 'workflows'",
        ))?;
        if !foreign.is_empty() {
            let columns = db.rows(sqlx::query(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE()
                 AND table_name = 'workflows' AND column_name = 'pause_reason'",
            ))?;
            if columns.is_empty() {
                return Err(StorageError::Incompatible(format!(
                    "the {shown} holds a table `workflows` that Loom did not make; give Loom a \
                     database of its own"
                )));
            }
        }
    }
    for (i, statements) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= current {
            continue;
        }
        for statement in *statements {
            if *statement == APPLIER {
                if !mariadb {
                    continue;
                }
                // Stored programs cannot be prepared: each goes as text, alone.
                for part in applier() {
                    db.execute_text(part)?;
                }
            } else {
                db.exec(sqlx::query(sqlx::AssertSqlSafe(*statement)))?;
            }
        }
        db.exec(
            sqlx::query(
                "INSERT INTO loom_migrations (version, applied_at)
                 VALUES (?, CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED))",
            )
            .bind(version),
        )?;
        tracing::info!(database = %shown, version, "applied a schema migration");
    }
    Ok(())
}
