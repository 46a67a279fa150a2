//! Databases written by an earlier release must open, migrate and finish their open
//! workflows. `tests/fixtures` keeps one per backend, each written by the `loom` of the schema
//! it names (SQLite schemas 5 and 6, redb format 2, PostgreSQL schemas 10 and 12, MySQL
//! schema 1, a `mysqldump` of MariaDB 10.11), holding workflows in every state: ended,
//! sleeping on a timer, waiting for a signal, never run; those of SQLite schema 6, PostgreSQL
//! schema 12 and MySQL schema 1 also hold a paused schedule. A release
//! that changes a schema adds its own fixtures beside these and keeps these passing.
//!
//! Each fixture's `approval-waiting` waits for a signal with a durable deadline. In SQLite
//! schema 6, PostgreSQL schema 12 and MySQL schema 1 the deadline is a hundred years away
//! (`fixtures/far_deadline.py` moved it there, in place, from the day after the fixture was
//! written), so the signal the test sends approves it; in the others it has passed, so the
//! timer fires first and the workflow times out. Both paths run on every build, whatever
//! the date.

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

fn loom(dir: &Path, db: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loom"));
    cmd.current_dir(dir)
        .env_remove("LOOM_DB")
        .env_remove("RUST_LOG")
        .args(["--db", db]);
    cmd
}

fn json(cmd: &mut Command) -> Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).expect("one JSON document")
}

/// Where a fixture's approval deadline is, and so what the signal the test sends comes to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Deadline {
    /// Passed: the durable timer fires first, and the workflow times out.
    Passed,
    /// Years away: the signal approves the workflow.
    Far,
}

/// What every fixture holds, and what its open workflows must come to.
fn finish_the_fixture(dir: &Path, db: &str, schema: Option<&str>, deadline: Deadline) {
    let run = |args: &[&str]| {
        let mut cmd = loom(dir, db);
        if let Some(schema) = schema {
            cmd.env("LOOM_PG_SCHEMA", schema);
        }
        cmd.args(args);
        cmd
    };
    let listed = json(&mut run(&["list", "--json"]));
    let status = |doc: &Value, id: &str| -> String {
        doc["workflows"]
            .as_array()
            .expect("workflows")
            .iter()
            .find(|w| w["id"] == id)
            .map(|w| w["status"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("{id} is not in the fixture: {doc}"))
    };
    assert_eq!(status(&listed, "greeting-done"), "completed");
    for open in ["reminder-sleeping", "approval-waiting", "greeting-new"] {
        assert_eq!(status(&listed, open), "running", "{open}");
    }
    // Its histories replay on this build.
    run(&["replay", "--all", "--status", "running,completed"])
        .assert()
        .success();
    // The approval's deadline, as the fixture holds it, is where the test expects it: a
    // fixture whose deadline came or went otherwise would check the other path only.
    let waiting = json(&mut run(&["inspect", "approval-waiting", "--json"]));
    let deadline_ms = waiting["progress"]["pending_timers"][0]["fire_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("the approval's timer: {waiting}"));
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("in range");
    const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;
    match deadline {
        // A minute's margin: PostgreSQL and MySQL stamp times on the server's clock.
        Deadline::Passed => assert!(
            deadline_ms < now_ms - 60_000,
            "deadline {deadline_ms} not passed"
        ),
        Deadline::Far => assert!(
            deadline_ms > now_ms + YEAR_MS,
            "deadline {deadline_ms} less than a year away"
        ),
    }
    // The open ones finish: the approval gets its signal, the reminder's timer has long
    // passed, the greeting that never ran runs.
    run(&[
        "signal",
        "approval-waiting",
        "approve",
        "--payload",
        r#"{"approved": true, "by": "ada"}"#,
    ])
    .assert()
    .success();
    run(&["worker", "--exit-when-idle", "--poll-interval", "0.05"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let listed = json(&mut run(&["list", "--json"]));
    for id in [
        "greeting-done",
        "reminder-sleeping",
        "approval-waiting",
        "greeting-new",
        "order-running",
    ] {
        assert_eq!(status(&listed, id), "completed", "{id}: {listed}");
    }
    // The signal reached a workflow of the old schema either way: before the deadline it
    // approves, after it the timer's message is first and the workflow takes it as a timeout.
    let approval = json(&mut run(&["inspect", "approval-waiting", "--json"]));
    let (decision, by) = match deadline {
        Deadline::Passed => ("timed_out", Value::Null),
        Deadline::Far => ("approved", Value::from("ada")),
    };
    assert_eq!(
        approval["output"]["decision"], decision,
        "deadline {deadline_ms}: {approval}"
    );
    assert_eq!(approval["output"]["by"], by, "{approval}");
    let tagged = json(&mut run(&["list", "--tag", "customer=ada", "--json"]));
    assert_eq!(tagged["workflows"][0]["id"], "order-running");
}

/// The paused schedule of the fixtures that have one: it reads back as written, and, let go,
/// starts its workflow, which a worker runs.
fn the_schedule_fires_again(dir: &Path, db: &str, schema: Option<&str>) {
    let run = |args: &[&str]| {
        let mut cmd = loom(dir, db);
        if let Some(schema) = schema {
            cmd.env("LOOM_PG_SCHEMA", schema);
        }
        cmd.args(args);
        cmd
    };
    let d = json(&mut run(&[
        "schedule",
        "describe",
        "nightly-greeting",
        "--json",
    ]));
    let s = &d["schedule"];
    assert_eq!(s["paused"], true, "{d}");
    assert_eq!(s["note"], "kept for the upgrade test");
    assert_eq!(s["cron"][0], "0 30 2 * * *");
    assert_eq!(s["timezone"], "America/New_York");
    assert_eq!(s["overlap"], "buffer_one");
    assert_eq!(s["tags"]["team"], "ops");
    run(&["schedule", "unpause", "nightly-greeting"])
        .assert()
        .success();
    run(&["schedule", "trigger", "nightly-greeting"])
        .assert()
        .success();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        run(&["worker", "--exit-when-idle", "--poll-interval", "0.05"])
            .timeout(Duration::from_secs(120))
            .assert()
            .success();
        let listed = json(&mut run(&[
            "list",
            "--tag",
            "loom.schedule=nightly-greeting",
            "--json",
        ]));
        let done = listed["workflows"]
            .as_array()
            .is_some_and(|w| w.len() == 1 && w[0]["status"] == "completed");
        if done {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{listed}");
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn a_sqlite_file_of_schema_5_opens_and_finishes_its_workflows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("old.db");
    std::fs::copy(fixture("sqlite-schema-5.db"), &file).expect("copy the fixture");
    finish_the_fixture(
        dir.path(),
        &format!("sqlite://{}", file.display()),
        None,
        Deadline::Passed,
    );
}

#[test]
fn a_sqlite_file_of_schema_6_opens_and_finishes_its_workflows_and_its_schedule_fires() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("old.db");
    std::fs::copy(fixture("sqlite-schema-6.db"), &file).expect("copy the fixture");
    let db = format!("sqlite://{}", file.display());
    finish_the_fixture(dir.path(), &db, None, Deadline::Far);
    the_schedule_fires_again(dir.path(), &db, None);
}

#[test]
fn a_redb_file_of_format_2_opens_and_finishes_its_workflows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("old.redb");
    std::fs::copy(fixture("redb-format-2.redb"), &file).expect("copy the fixture");
    finish_the_fixture(
        dir.path(),
        &format!("redb://{}", file.display()),
        None,
        Deadline::Passed,
    );
}

/// Restores a PostgreSQL dump into a fresh schema: the URL and the schema, or `None` without
/// a server.
fn restore(dump: &str) -> Option<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if !rt.block_on(loom_postgres::testing::server_available()) {
        return None;
    }
    let url = loom_postgres::testing::url();
    let schema = loom_postgres::testing::fresh_schema();
    let dump = std::fs::read_to_string(fixture(dump))
        .expect("the dump")
        .replace("loom_fixture_schema", &schema);
    rt.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
            .execute(&pool)
            .await
            .expect("restore the dump");
        pool.close().await;
    });
    Some((url, schema))
}

#[test]
fn a_postgres_dump_of_schema_10_restores_and_finishes_its_workflows() {
    let Some((url, schema)) = restore("postgres-schema-10.sql") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    finish_the_fixture(dir.path(), &url, Some(&schema), Deadline::Passed);
}

#[test]
fn a_postgres_dump_of_schema_12_restores_finishes_its_workflows_and_its_schedule_fires() {
    let Some((url, schema)) = restore("postgres-schema-12.sql") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    finish_the_fixture(dir.path(), &url, Some(&schema), Deadline::Far);
    the_schedule_fires_again(dir.path(), &url, Some(&schema));
}

/// Restores a MySQL dump into a fresh database of the test server: its URL, or `None` without
/// a server.
fn restore_mysql(dump: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if !rt.block_on(loom_mysql::testing::server_available()) {
        return None;
    }
    let url = rt.block_on(loom_mysql::testing::fresh_database());
    let dump = std::fs::read_to_string(fixture(dump)).expect("the dump");
    rt.block_on(async {
        use std::str::FromStr;
        let options = sqlx::mysql::MySqlConnectOptions::from_str(&url).expect("url");
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
            .execute(&pool)
            .await
            .expect("restore the dump");
        pool.close().await;
    });
    Some(url)
}

#[test]
fn a_mysql_dump_of_schema_1_restores_finishes_its_workflows_and_its_schedule_fires() {
    let Some(url) = restore_mysql("mysql-schema-1.sql") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    finish_the_fixture(dir.path(), &url, None, Deadline::Far);
    the_schedule_fires_again(dir.path(), &url, None);
}
