//! Databases written by an earlier release must open, migrate and finish their open
//! workflows. `tests/fixtures` keeps one per backend, each written by the `loom` of the schema
//! it names (SQLite schema 5, redb format 2, PostgreSQL schema 10), holding workflows in every
//! state: ended, sleeping on a timer, waiting for a signal, never run. A release that changes
//! a schema adds its own fixtures beside these and keeps these passing.

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

/// What every fixture holds, and what its open workflows must come to.
fn finish_the_fixture(dir: &Path, db: &str, schema: Option<&str>) {
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
    let approval = json(&mut run(&["inspect", "approval-waiting", "--json"]));
    assert_eq!(approval["output"]["decision"], "approved");
    let tagged = json(&mut run(&["list", "--tag", "customer=ada", "--json"]));
    assert_eq!(tagged["workflows"][0]["id"], "order-running");
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
    finish_the_fixture(dir.path(), &format!("sqlite://{}", file.display()), None);
}

#[test]
fn a_redb_file_of_format_2_opens_and_finishes_its_workflows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("old.redb");
    std::fs::copy(fixture("redb-format-2.redb"), &file).expect("copy the fixture");
    finish_the_fixture(dir.path(), &format!("redb://{}", file.display()), None);
}

#[test]
fn a_postgres_dump_of_schema_10_restores_and_finishes_its_workflows() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if !rt.block_on(loom_postgres::testing::server_available()) {
        return;
    }
    let url = loom_postgres::testing::url();
    let schema = loom_postgres::testing::fresh_schema();
    let dump = std::fs::read_to_string(fixture("postgres-schema-10.sql"))
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
    let dir = tempfile::tempdir().expect("temp dir");
    finish_the_fixture(dir.path(), &url, Some(&schema));
}
