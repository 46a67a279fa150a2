//! The schema and its versioned migrations. Never edit one that shipped: add a new one.

use loom_storage::{Result, StorageError};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPool;

use crate::sql_err;

/// The schema version this build writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

/// Migrations in order; never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    r#"
-- The database's clock in milliseconds. STABLE, not VOLATILE: evaluated once per statement,
-- which is the meaning we want, and it lets `visible_at <= loom_now_ms()` be an index
-- condition (a volatile call is only a filter, and a claim that finds nothing would walk the
-- whole index of leased and future tasks).
CREATE FUNCTION loom_now_ms() RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE workflows (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    version       integer NOT NULL,
    status        text NOT NULL,
    input         text NOT NULL,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL,
    closed_at     bigint,
    last_seq      bigint NOT NULL,
    output        text,
    failure       text,
    pause_reason  text,
    progress      text
);
CREATE INDEX workflows_by_time ON workflows (created_at DESC, id DESC);
CREATE INDEX workflows_by_status ON workflows (status, created_at DESC, id DESC);

CREATE TABLE events (
    workflow_id  text NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    seq          bigint NOT NULL,
    at           bigint NOT NULL,
    kind         text NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);

CREATE TABLE messages (
    id           bigserial PRIMARY KEY,
    workflow_id  text NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    visible_at   bigint NOT NULL,
    kind         text NOT NULL
);
CREATE INDEX messages_by_workflow ON messages (workflow_id, visible_at, id);
CREATE INDEX messages_by_time ON messages (visible_at);

-- While leased, visible_at is the lease's expiry: claimable is visible_at <= now.
CREATE TABLE tasks (
    id                bigserial PRIMARY KEY,
    kind              smallint NOT NULL,
    workflow_id       text NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    visible_at        bigint,
    lease_token       bigint NOT NULL DEFAULT 0,
    lease_expires_at  bigint,
    lease_owner       text,
    deliveries        integer NOT NULL DEFAULT 0,
    activity_id       bigint,
    name              text,
    input             text,
    options           text,
    attempt           integer
);
CREATE INDEX tasks_ready ON tasks (kind, visible_at, id) WHERE visible_at IS NOT NULL;
CREATE UNIQUE INDEX tasks_workflow_task ON tasks (workflow_id) WHERE kind = 0;
CREATE INDEX tasks_by_workflow ON tasks (workflow_id);

CREATE TABLE logs (
    n            bigserial PRIMARY KEY,
    workflow_id  text NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    seq          bigint NOT NULL,
    at           bigint NOT NULL,
    level        text NOT NULL,
    message      text NOT NULL
);
CREATE INDEX logs_by_workflow ON logs (workflow_id, n);
"#,
    include_str!("commit.sql"),
    // 3: the store engine's applier replaces `loom_commit`.
    concat!(
        "DROP FUNCTION loom_commit(jsonb);\n",
        include_str!("functions.sql")
    ),
    // 4: child workflows: the parent that started a workflow, and its children by time.
    concat!(
        "ALTER TABLE workflows ADD COLUMN parent_id text;\n",
        "CREATE INDEX workflows_by_parent ON workflows (parent_id, created_at DESC, id DESC)\n",
        "    WHERE parent_id IS NOT NULL;\n",
        include_str!("functions.sql")
    ),
    // 5: cancelled timers and activities: messages withdrawn by kind, activity tasks deleted.
    include_str!("functions.sql"),
    // 6: continue-as-new: a workflow's current run, the histories of its earlier runs, and
    // which waiting messages a new run keeps (marked by the engine when they are posted;
    // those waiting from before are marked here by the same rule).
    concat!(
        "ALTER TABLE workflows ADD COLUMN run integer NOT NULL DEFAULT 1;\n",
        "ALTER TABLE messages ADD COLUMN carry boolean NOT NULL DEFAULT false;\n",
        "UPDATE messages SET carry = true\n",
        "    WHERE kind LIKE '{\"type\":\"SignalReceived\"%'\n",
        "       OR kind LIKE '{\"type\":\"CancelRequested\"%'\n",
        "       OR kind LIKE '{\"type\":\"TerminateRequested\"%'\n",
        "       OR kind = '{\"type\":\"TimeoutFired\",\"scope\":\"execution\"}';\n",
        "CREATE TABLE past_events (\n",
        "    workflow_id  text NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,\n",
        "    run          integer NOT NULL,\n",
        "    seq          bigint NOT NULL,\n",
        "    at           bigint NOT NULL,\n",
        "    kind         text NOT NULL,\n",
        "    PRIMARY KEY (workflow_id, run, seq)\n",
        ");\n",
        include_str!("functions.sql")
    ),
    // 7: an operator's pause: the `hold` step and the `paused` and `no_wft` checks.
    include_str!("functions.sql"),
    // 8: retention: closed workflows by the time they ended, and the `purge` step.
    concat!(
        "CREATE INDEX workflows_by_closed ON workflows (closed_at, id) WHERE closed_at IS NOT NULL;\n",
        include_str!("functions.sql")
    ),
    // 9: reset: the `rr` step.
    include_str!("functions.sql"),
    // 10: tags: each workflow's, as JSON (`value`), as the text equality compares and the
    // number ranges compare, with the workflow's creation time so that a listing by tag reads
    // the index in its order; the `tg` part of a write step.
    concat!(
        "CREATE TABLE tags (\n",
        "    workflow_id  text COLLATE \"C\" NOT NULL,\n",
        "    key          text NOT NULL,\n",
        "    value        text NOT NULL,\n",
        "    text         text NOT NULL,\n",
        "    num          bigint,\n",
        "    created_at   bigint NOT NULL,\n",
        "    PRIMARY KEY (workflow_id, key)\n",
        ");\n",
        "CREATE INDEX tags_by_text ON tags (key, text, created_at DESC, workflow_id DESC);\n",
        "CREATE INDEX tags_by_num ON tags (key, num) WHERE num IS NOT NULL;\n",
        include_str!("functions.sql")
    ),
    // 11: an eager claim answers since when each task was ready (`claim_a`, `claim_w`).
    include_str!("functions.sql"),
    // 12: schedules: each as JSON (`body`), with its version and when a worker must look at it
    // next, indexed; the `sched` check and the `sput` and `sdel` steps.
    concat!(
        "CREATE TABLE schedules (\n",
        "    id       text COLLATE \"C\" PRIMARY KEY,\n",
        "    version  bigint NOT NULL,\n",
        "    wake_at  bigint,\n",
        "    body     text NOT NULL\n",
        ");\n",
        "CREATE INDEX schedules_by_wake ON schedules (wake_at, id) WHERE wake_at IS NOT NULL;\n",
        include_str!("functions.sql")
    ),
    // 13: affinity: the worker a workflow task goes to first, until when, and the index its
    // owner's claims read first; "st" sets it, "rl" and `claim_w` respect it.
    concat!(
        "ALTER TABLE tasks ADD COLUMN affinity_owner text, ADD COLUMN affinity_until bigint;\n",
        "CREATE INDEX tasks_preferred ON tasks (affinity_owner, visible_at, id)\n",
        "    WHERE affinity_owner IS NOT NULL AND visible_at IS NOT NULL;\n",
        include_str!("functions.sql")
    ),
    // 14: the `sched` check queues writes of one schedule on an advisory lock, so that of two
    // creates at once the second is told the schedule exists.
    include_str!("functions.sql"),
];

/// Creates the schema if needed and applies the migrations it lacks, under an advisory
/// lock, so workers starting at once apply them once. A schema written by a newer Loom is
/// refused.
pub(crate) async fn migrate(pool: &PgPool, schema: &str) -> Result<()> {
    // The usual case, a schema already current, costs one read and no lock.
    let current: Option<Option<i32>> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT MAX(version) FROM {schema}.loom_migrations"
    )))
    .fetch_optional(pool)
    .await
    .ok();
    if current.flatten().map(i64::from) == Some(LATEST) {
        return Ok(());
    }
    let mut tx = pool.begin().await.map_err(sql_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("loom-migrations:{schema}"))
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&mut *tx)
    .await
    .map_err(sql_err)?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {schema}.loom_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )))
    .execute(&mut *tx)
    .await
    .map_err(sql_err)?;
    let current: i64 = sqlx::query_scalar::<_, Option<i32>>(AssertSqlSafe(format!(
        "SELECT MAX(version) FROM {schema}.loom_migrations"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(sql_err)?
    .map_or(0, i64::from);
    if current > LATEST {
        return Err(StorageError::Incompatible(format!(
            "the PostgreSQL schema {schema} has Loom schema version {current}, written by a newer Loom; \
             this build knows up to {LATEST}. Upgrade Loom to use it"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET LOCAL search_path TO {schema}; {sql}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {schema}.loom_migrations (version) VALUES ($1)"
        )))
        .bind(i as i32 + 1)
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
    }
    tx.commit().await.map_err(sql_err)
}
