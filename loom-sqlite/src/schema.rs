//! The schema and its versioned migrations.
//!
//! Each migration runs once, inside the transaction that records it in `loom_migrations`, so
//! a crash mid-migration leaves the database as it was, and two processes opening a new file
//! at once serialise on SQLite's write lock (`BEGIN IMMEDIATE`): the second finds the work
//! done. A database whose recorded version is newer than this build's is refused.

/// Migrations in order; the version of migration `i` is `i + 1`. Never edit one that has
/// shipped: add a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE workflows (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        version       INTEGER NOT NULL,
        status        TEXT NOT NULL,
        input         TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        closed_at     INTEGER,
        last_seq      INTEGER NOT NULL,
        output        TEXT,
        failure       TEXT,
        pause_reason  TEXT,
        progress      TEXT
    ) WITHOUT ROWID;
    CREATE INDEX workflows_by_time ON workflows (created_at DESC, id DESC);
    CREATE INDEX workflows_by_status ON workflows (status, created_at DESC, id DESC);

    CREATE TABLE events (
        workflow_id   TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
        seq           INTEGER NOT NULL,
        at            INTEGER NOT NULL,
        kind          TEXT NOT NULL,
        PRIMARY KEY (workflow_id, seq)
    ) WITHOUT ROWID;

    -- Inputs waiting for a workflow's next task. A timer is a message visible at its time.
    CREATE TABLE messages (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_id   TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
        visible_at    INTEGER NOT NULL,
        kind          TEXT NOT NULL
    );
    CREATE INDEX messages_by_workflow ON messages (workflow_id, visible_at, id);
    CREATE INDEX messages_by_time ON messages (visible_at);

    -- Workflow tasks (kind 0, one per workflow) and activity attempts (kind 1).
    -- While a lease is held, visible_at equals the lease's expiry, so "claimable" is simply
    -- visible_at <= now, one range scan of tasks_ready, and an expired lease becomes
    -- claimable again without anyone touching the row.
    CREATE TABLE tasks (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        kind              INTEGER NOT NULL,
        workflow_id       TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
        visible_at        INTEGER,
        lease_token       INTEGER NOT NULL DEFAULT 0,
        lease_expires_at  INTEGER,
        lease_owner       TEXT,
        deliveries        INTEGER NOT NULL DEFAULT 0,
        activity_id       INTEGER,
        name              TEXT,
        input             TEXT,
        options           TEXT,
        attempt           INTEGER
    );
    CREATE INDEX tasks_ready ON tasks (kind, visible_at) WHERE visible_at IS NOT NULL;
    CREATE UNIQUE INDEX tasks_workflow_task ON tasks (workflow_id) WHERE kind = 0;
    CREATE INDEX tasks_by_workflow ON tasks (workflow_id, kind);

    CREATE TABLE logs (
        n             INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_id   TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
        seq           INTEGER NOT NULL,
        at            INTEGER NOT NULL,
        level         TEXT NOT NULL,
        message       TEXT NOT NULL
    );
    CREATE INDEX logs_by_workflow ON logs (workflow_id, n);
    "#,
    // 2: child workflows: the parent that started a workflow, and its children by time.
    r#"
    ALTER TABLE workflows ADD COLUMN parent_id TEXT;
    CREATE INDEX workflows_by_parent ON workflows (parent_id, created_at DESC, id DESC)
        WHERE parent_id IS NOT NULL;
    "#,
    // 3: continue-as-new: a workflow's current run, and the histories of its earlier runs.
    r#"
    ALTER TABLE workflows ADD COLUMN run INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE past_events (
        workflow_id   TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
        run           INTEGER NOT NULL,
        seq           INTEGER NOT NULL,
        at            INTEGER NOT NULL,
        kind          TEXT NOT NULL,
        PRIMARY KEY (workflow_id, run, seq)
    ) WITHOUT ROWID;
    "#,
    // 4: retention: closed workflows by the time they ended.
    r#"
    CREATE INDEX workflows_by_closed ON workflows (closed_at, id) WHERE closed_at IS NOT NULL;
    "#,
    // 5: tags: each workflow's, as JSON (`value`), as the text equality compares and the
    // number ranges compare, with the workflow's creation time so that a listing by tag reads
    // the index in its order.
    r#"
    CREATE TABLE tags (
        workflow_id   TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
        key           TEXT NOT NULL,
        value         TEXT NOT NULL,
        text          TEXT NOT NULL,
        num           INTEGER,
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (workflow_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX tags_by_text ON tags (key, text, created_at DESC, workflow_id DESC);
    CREATE INDEX tags_by_num ON tags (key, num) WHERE num IS NOT NULL;
    "#,
    // 6: schedules: each as JSON (`body`), with its version and when a worker must look at
    // it next, indexed.
    r#"
    CREATE TABLE schedules (
        id            TEXT PRIMARY KEY NOT NULL,
        version       INTEGER NOT NULL,
        wake_at       INTEGER,
        body          TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX schedules_by_wake ON schedules (wake_at, id) WHERE wake_at IS NOT NULL;
    "#,
    // 7: affinity: the worker a workflow task goes to first, until when; the index its
    // owner's claims read first.
    r#"
    ALTER TABLE tasks ADD COLUMN affinity_owner TEXT;
    ALTER TABLE tasks ADD COLUMN affinity_until INTEGER;
    CREATE INDEX tasks_preferred ON tasks (affinity_owner, visible_at)
        WHERE affinity_owner IS NOT NULL AND visible_at IS NOT NULL;
    "#,
];

/// The schema version this build writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;
