//! The real `loom` binary, run as a user would: every command, its JSON output, its exit
//! codes, and the bad inputs it must refuse cleanly.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

fn loom(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loom"));
    cmd.current_dir(dir)
        .env_remove("LOOM_DB")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs `loom demo --orders 2 --json` with `cmd` (its database already chosen), checks that
/// every workflow it started completed, and returns its report.
fn demo_completes(mut cmd: Command) -> Value {
    let out = cmd
        .args(["demo", "--orders", "2", "--json"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc = json_of(&out);
    assert_eq!(doc["completed"], doc["workflows"]);
    doc
}

fn json_of(out: &[u8]) -> Value {
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(out)
        )
    })
}

/// Runs `loom` with `args`, which must succeed, and returns what it printed.
fn stdout_of(dir: &Path, args: &[&str]) -> Vec<u8> {
    loom(dir)
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone()
}

/// Starts a workflow and returns its id.
fn start(dir: &Path, workflow: &str, input: &str) -> String {
    let out = loom(dir)
        .args(["start", workflow, "--input", input, "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    json_of(&out)["id"].as_str().expect("an id").to_owned()
}

fn drain(dir: &Path) {
    loom(dir)
        .args(["worker", "--exit-when-idle", "--poll-interval", "0.05"])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .stderr(predicate::str::contains("Worker stopped"));
}

/// Starts `n` Greetings; their ids.
fn greetings(dir: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| start(dir, "Greeting", &format!(r#"{{"name": "g{i}"}}"#)))
        .collect()
}

fn inspect(dir: &Path, id: &str) -> Value {
    let out = loom(dir)
        .args(["inspect", id, "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    json_of(&out)
}

#[test]
fn init_creates_the_database_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path())
        .arg("init")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Created a Loom database at sqlite://.loom/loom.db",
        ));
    assert!(dir.path().join(".loom/loom.db").exists());
    loom(dir.path())
        .arg("init")
        .assert()
        .success()
        .stdout(predicate::str::contains("already exists"));
    let out = stdout_of(dir.path(), &["init", "--json"]);
    assert_eq!(json_of(&out)["created"], false);
    // An explicit path gets its directories made by init.
    loom(dir.path())
        .args(["--db", "sqlite://nested/dir/x.db", "init", "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"created\": true"));
}

#[test]
fn start_run_and_read_the_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = start(dir.path(), "Greeting", r#"{"name": "Ada"}"#);
    // Not finished yet: no worker ran.
    loom(dir.path())
        .args(["result", &id])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("has no result yet"));
    drain(dir.path());
    loom(dir.path())
        .args(["result", &id])
        .assert()
        .success()
        .stdout("\"Hello, Ada!\"\n");
    let out = stdout_of(dir.path(), &["result", &id, "--json"]);
    let doc = json_of(&out);
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["output"], "Hello, Ada!");
    // The same id and input again is the same workflow; another input under it is refused.
    loom(dir.path())
        .args([
            "start",
            "Greeting",
            "--input",
            r#"{"name":"Bo"}"#,
            "--id",
            "fixed",
        ])
        .assert()
        .success()
        .stdout("fixed\n");
    loom(dir.path())
        .args([
            "start",
            "Greeting",
            "--input",
            r#"{"name":"Bo"}"#,
            "--id",
            "fixed",
        ])
        .assert()
        .success();
    loom(dir.path())
        .args([
            "start",
            "Greeting",
            "--input",
            r#"{"name":"Cy"}"#,
            "--id",
            "fixed",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "a different workflow already has id fixed",
        ));
}

#[test]
fn order_processing_state_and_history_are_visible() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = start(
        dir.path(),
        "OrderProcessing",
        r#"{"order_id": "42", "customer_email": "a@b.c"}"#,
    );
    drain(dir.path());
    let doc = inspect(dir.path(), &id);
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["output"], "order 42 complete");
    assert_eq!(doc["progress"]["state"]["payment_confirmed"], true);
    assert_eq!(doc["progress"]["state"]["email_sent"], true);
    let out = stdout_of(dir.path(), &["inspect", &id, "--events", "--json"]);
    let events = json_of(&out)["events"].as_array().expect("events").clone();
    assert_eq!(events[0]["type"], "WorkflowStarted");
    assert_eq!(events.last().expect("last")["type"], "WorkflowCompleted");
    loom(dir.path())
        .args(["inspect", &id, "--events"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("ActivityScheduled(\"process_payment\"")
                .and(predicate::str::contains("StateSet(\"email_sent\" = true)")),
        );
}

#[test]
fn list_filters_and_pages() {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["Ann", "Bob", "Cy"] {
        start(dir.path(), "Greeting", &format!(r#"{{"name": "{name}"}}"#));
    }
    let fan = start(dir.path(), "FanOut", r#"{"n": 3}"#);
    let out = stdout_of(dir.path(), &["list", "--json"]);
    let all = json_of(&out);
    assert_eq!(all["workflows"].as_array().expect("list").len(), 4);
    assert_eq!(all["workflows"][0]["id"], fan.as_str(), "newest first");
    let out = stdout_of(
        dir.path(),
        &["list", "--json", "--name", "Greeting", "--limit", "2"],
    );
    let page = json_of(&out);
    assert_eq!(page["workflows"].as_array().expect("list").len(), 2);
    assert_eq!(page["more"], true);
    drain(dir.path());
    let out = stdout_of(dir.path(), &["list", "--json", "--status", "completed"]);
    assert_eq!(
        json_of(&out)["workflows"].as_array().expect("list").len(),
        4
    );
    loom(dir.path())
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("Greeting"));
    loom(dir.path())
        .args(["list", "--status", "sleeping"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown status \"sleeping\""));
}

#[test]
fn signals_reach_a_waiting_workflow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = start(
        dir.path(),
        "Approval",
        r#"{"request_id": "r1", "timeout_secs": 3600}"#,
    );
    drain(dir.path());
    let doc = inspect(dir.path(), &id);
    assert_eq!(doc["status"], "running");
    assert_eq!(doc["progress"]["awaiting_signals"][0], "approve");
    loom(dir.path())
        .args(["inspect", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("waiting    signal \"approve\""));
    loom(dir.path())
        .args([
            "signal",
            &id,
            "approve",
            "--payload",
            r#"{"approved": true, "by": "ann"}"#,
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("Sent signal"));
    drain(dir.path());
    let doc = inspect(dir.path(), &id);
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["output"]["decision"], "approved");
    assert_eq!(doc["output"]["by"], "ann");
    // A signal to a finished workflow fails.
    loom(dir.path())
        .args(["signal", &id, "approve"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("has already ended"));
}

#[test]
fn cancel_ends_a_workflow_cancelled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = start(dir.path(), "Reminder", r#"{"seconds": 86400}"#);
    drain(dir.path());
    loom(dir.path())
        .args(["cancel", &id, "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"cancel_requested\": true"));
    drain(dir.path());
    assert_eq!(inspect(dir.path(), &id)["status"], "cancelled");
    loom(dir.path())
        .args(["result", &id])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("was cancelled"));
}

#[test]
fn stats_count_workflows_and_tasks() {
    let dir = tempfile::tempdir().expect("temp dir");
    start(dir.path(), "Greeting", r#"{"name": "Ann"}"#);
    start(dir.path(), "Reminder", r#"{"seconds": 3600}"#);
    let out = stdout_of(dir.path(), &["stats", "--json"]);
    let s = json_of(&out);
    assert_eq!(s["workflows"]["running"], 2);
    assert_eq!(s["workflow_tasks_ready"], 2);
    drain(dir.path());
    let out = stdout_of(dir.path(), &["stats", "--json"]);
    let s = json_of(&out);
    assert_eq!(s["workflows"]["completed"], 1);
    assert_eq!(s["workflows"]["running"], 1);
    assert_eq!(s["messages_waiting"], 1, "the reminder's timer");
    loom(dir.path())
        .arg("stats")
        .assert()
        .success()
        .stdout(predicate::str::contains("completed"));
}

#[test]
fn replay_reports_deterministic_or_the_first_mismatch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = start(
        dir.path(),
        "OrderProcessing",
        r#"{"order_id": "7", "customer_email": "a@b.c"}"#,
    );
    drain(dir.path());
    loom(dir.path())
        .args(["replay", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("deterministic"));
    // Tamper with the stored history: the payment activity becomes another one.
    let conn = rusqlite::Connection::open(dir.path().join(".loom/loom.db")).expect("open");
    let changed = conn
        .execute(
            "UPDATE events SET kind = replace(kind, 'process_payment', 'refund_payment') WHERE workflow_id = ?1 AND seq = 3",
            [&id],
        )
        .expect("tamper");
    assert_eq!(changed, 1);
    drop(conn);
    loom(dir.path())
        .args(["replay", &id])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("non-determinism at #3")
                .and(predicate::str::contains("refund_payment")),
        );
    let out = loom(dir.path())
        .args(["replay", &id, "--json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let doc = json_of(&out);
    assert_eq!(doc["deterministic"], false);
    assert_eq!(doc["seq"], 3);
}

#[test]
fn the_demo_runs_every_example_to_completion() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = loom(dir.path())
        .args(["demo", "--json", "--orders", "4"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc = json_of(&out);
    assert_eq!(doc["completed"], doc["workflows"]);
    assert_eq!(doc["failed"], 0);
    assert!(
        doc["activity_attempts_failed_and_retried"]
            .as_u64()
            .expect("count")
            >= 2
    );
    assert!(doc["timers_fired"].as_u64().expect("count") >= 2);
    assert_eq!(doc["signals_received"], 1);
    // Each saga started one child: listed under its parent, shown by inspect both ways.
    assert_eq!(doc["child_workflows"], 2);
    let saga = doc["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|id| id.as_str())
        .find(|id| id.contains("ordersaga"))
        .expect("a saga")
        .to_owned();
    let out = stdout_of(dir.path(), &["list", "--parent", &saga, "--json"]);
    let children = json_of(&out)["workflows"].clone();
    assert_eq!(children.as_array().map(Vec::len), Some(1), "{children}");
    assert_eq!(children[0]["name"], "Shipment");
    assert_eq!(children[0]["parent"], saga.as_str());
    let child = children[0]["id"].as_str().expect("an id").to_owned();
    loom(dir.path())
        .args(["inspect", &saga])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "child      {child} (Shipment,"
        )));
    loom(dir.path())
        .args(["inspect", &child])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("parent     {saga}")));
    loom(dir.path())
        .args(["demo", "--orders", "1"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .stdout(
            predicate::str::contains("completed, 0 failed")
                .and(predicate::str::contains("FlakyCharge")),
        );
}

#[test]
fn bench_checks_every_output_and_reports_its_figures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = loom(dir.path())
        .args([
            "--db",
            "sqlite://bench.db",
            "bench",
            "--workflows",
            "30",
            "--activities",
            "3",
            "--json",
        ])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc = json_of(&out);
    assert_eq!(doc["workflows"], 30);
    let headline = doc["workflows_per_second"].as_f64().expect("throughput");
    let run_only = doc["run_only_workflows_per_second"]
        .as_f64()
        .expect("run-only throughput");
    assert!(headline > 0.0);
    assert!(
        run_only >= headline,
        "the headline counts the starts too, so it is never the higher: {doc}"
    );
    assert!(doc["seconds"].as_f64() >= doc["run_seconds"].as_f64());
    assert_eq!(doc["start_to_completion_ms"]["samples"], 30);
    // Two hand-offs per workflow of three steps.
    assert_eq!(doc["activity_completion_to_next_started_us"]["samples"], 60);
    assert_eq!(doc["worker"]["activities_completed"], 90);
    assert!(doc["peak_memory_kib"].as_u64().expect("memory") > 0);
    loom(dir.path())
        .args(["bench", "--workflows", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at least 1"));
    for (args, says) in [
        (&["bench", "--schedules", "0"][..], "at least one schedule"),
        (
            &["bench", "--schedules", "2", "--duration", "1s"],
            "2s or more",
        ),
        (
            &["bench", "--schedules", "2", "--duration", "soon"],
            "not a duration",
        ),
        (&["bench", "--duration", "5s"], "--schedules"),
    ] {
        loom(dir.path())
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(says));
    }
    loom(dir.path())
        .args([
            "--db",
            "sqlite://rate.db",
            "bench",
            "--workflows",
            "5",
            "--rate",
            "200",
        ])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .stdout(
            predicate::str::contains("all completed correctly")
                .and(predicate::str::contains("started at 200/s")),
        );
}

/// `--processes 2` shares the run with a helper `loom worker` process and still checks every
/// workflow; `--idle` parks workflows on long timers first, and they stay waiting.
#[test]
fn bench_runs_across_processes_among_idle_workflows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = loom(dir.path())
        .args([
            "--db",
            "sqlite://shared.db",
            "bench",
            "--workflows",
            "40",
            "--activities",
            "2",
            "--processes",
            "2",
            "--idle",
            "25",
            "--json",
        ])
        .timeout(Duration::from_secs(180))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc = json_of(&out);
    assert_eq!(doc["processes"], 2);
    assert_eq!(doc["idle_workflows"], 25);
    assert_eq!(doc["start_to_completion_ms"]["samples"], 40);
    // The helper stopped as an operator stops a worker, and told its counters: the two
    // processes' workflow tasks together are the 40 workflows' (three each, K=2), and each
    // workflow's history was read at least once.
    let helper = &doc["helpers"][0];
    let tasks = doc["worker"]["workflow_tasks"]
        .as_u64()
        .expect("this process's tasks")
        + helper["workflow_tasks"]
            .as_u64()
            .expect("the helper's tasks");
    assert!(tasks >= 40 * 3, "{doc}");
    let loads = doc["history_loads_per_workflow"]
        .as_f64()
        .expect("history loads");
    assert!(loads >= 1.0, "{doc}");
    let out = stdout_of(
        dir.path(),
        &["--db", "sqlite://shared.db", "stats", "--json"],
    );
    let stats = json_of(&out);
    assert_eq!(stats["workflows"]["completed"], 40, "{stats}");
    assert_eq!(
        stats["workflows"]["running"], 25,
        "the idle ones still wait: {stats}"
    );
}

#[test]
fn the_redb_backend_runs_the_same_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = ["--db", "redb://loom.redb"];
    let mut demo = loom(dir.path());
    demo.args(db);
    let doc = demo_completes(demo);
    assert_eq!(doc["db"], "redb://loom.redb");
    let out = loom(dir.path())
        .args(db)
        .args(["stats", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    // The store also holds the sagas' children: one shipped, one found its warehouse empty.
    let stats = json_of(&out);
    assert_eq!(doc["child_workflows"], 2);
    assert_eq!(
        stats["workflows"]["completed"].as_u64(),
        doc["workflows"].as_u64().map(|n| n + 1)
    );
    assert_eq!(stats["workflows"]["failed"], 1);
    let id = doc["ids"][0].as_str().expect("an id").to_owned();
    loom(dir.path())
        .args(db)
        .args(["replay", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("deterministic"));
}

#[test]
fn the_postgres_backend_runs_the_same_commands() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if !rt.block_on(loom_postgres::testing::server_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = loom_postgres::testing::url();
    let schema = loom_postgres::testing::fresh_schema();
    let pg = |cmd: &mut Command| {
        cmd.env("LOOM_PG_SCHEMA", &schema).args(["--db", &url]);
    };
    let mut demo = loom(dir.path());
    pg(&mut demo);
    let doc = demo_completes(demo);
    let id = doc["ids"][0].as_str().expect("an id").to_owned();
    let mut replay = loom(dir.path());
    pg(&mut replay);
    replay
        .args(["replay", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("deterministic"));
}

#[test]
fn the_mysql_backend_runs_the_same_commands() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if !rt.block_on(loom_mysql::testing::server_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = rt.block_on(loom_mysql::testing::fresh_database());
    let db = ["--db", url.as_str()];
    let mut demo = loom(dir.path());
    demo.args(db);
    let doc = demo_completes(demo);
    let id = doc["ids"][0].as_str().expect("an id").to_owned();
    loom(dir.path())
        .args(db)
        .args(["replay", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("deterministic"));
    let out = loom(dir.path())
        .args(db)
        .args(["inspect", &id, "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(json_of(&out)["status"], "completed");
    // The same with every write applied from the client's side.
    let mut client_side = loom(dir.path());
    client_side.env("LOOM_MYSQL_APPLY", "client").args(db);
    demo_completes(client_side);
}

#[test]
fn a_bad_mysql_applier_setting_is_refused_before_connecting() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path())
        .env("LOOM_MYSQL_APPLY", "procedure")
        .args(["--db", "mysql://nobody@127.0.0.1:1/none", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "LOOM_MYSQL_APPLY is \"procedure\"",
        ));
}

#[test]
fn workflows_lists_the_examples() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = stdout_of(dir.path(), &["workflows", "--json"]);
    let doc = json_of(&out);
    let names: Vec<&str> = doc["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "Approval",
            "FanOut",
            "FastestQuote",
            "FlakyCharge",
            "Greeting",
            "OrderProcessing",
            "OrderSaga",
            "Reminder",
            "Shipment",
            "Subscription"
        ]
    );
}

#[test]
fn pause_holds_a_workflow_and_inspect_says_why_it_is_not_moving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = start(dir.path(), "Greeting", r#"{"name": "Ada"}"#);
    // No worker yet: its workflow task is ready and unclaimed.
    let doc = inspect(dir.path(), &id);
    assert_eq!(doc["tasks"][0]["task"], "workflow_task");
    assert_eq!(doc["tasks"][0]["state"], "ready");
    loom(dir.path())
        .args(["inspect", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("no worker has claimed it"));
    loom(dir.path())
        .args(["pause", &id, "--reason", "ada: hold the greetings"])
        .assert()
        .success();
    let doc = inspect(dir.path(), &id);
    assert_eq!(doc["status"], "paused");
    assert_eq!(doc["pause_reason"], "ada: hold the greetings");
    assert_eq!(doc["tasks"], serde_json::json!([]));
    loom(dir.path())
        .args(["inspect", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("runs again after loom resume"));
    // A worker finds nothing to do while it is paused.
    drain(dir.path());
    assert_eq!(inspect(dir.path(), &id)["status"], "paused");
    let out = stdout_of(dir.path(), &["resume", &id, "--json"]);
    assert_eq!(json_of(&out)["resumed"], true);
    drain(dir.path());
    assert_eq!(inspect(dir.path(), &id)["status"], "completed");
    // Bad input: exit 2, nothing written; an ended workflow: exit 1.
    loom(dir.path())
        .args(["pause", "ghost", "--reason", "x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no workflow with id ghost"));
    loom(dir.path()).args(["pause", &id]).assert().code(2);
    loom(dir.path())
        .args(["pause", &id, "--reason", "late"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already ended"));
    let running = start(dir.path(), "Greeting", r#"{"name": "Bo"}"#);
    loom(dir.path())
        .args(["resume", &running])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("running, not paused"));
    assert_eq!(inspect(dir.path(), &running)["status"], "running");
}

#[test]
fn purge_deletes_closed_workflows_and_never_an_open_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let done = greetings(dir.path(), 3);
    drain(dir.path());
    let open = start(dir.path(), "Greeting", r#"{"name": "late"}"#);
    std::thread::sleep(Duration::from_millis(20));
    // An hour: nothing ended that long ago.
    let out = stdout_of(dir.path(), &["purge", "--closed-before", "1h", "--json"]);
    assert_eq!(json_of(&out)["purged"], 0);
    let out = stdout_of(
        dir.path(),
        &["purge", "--closed-before", "10ms", "--dry-run", "--json"],
    );
    let doc = json_of(&out);
    assert_eq!(doc["would_purge"], 3);
    assert_eq!(
        inspect(dir.path(), &done[0])["status"],
        "completed",
        "a dry run deletes nothing"
    );
    let listed = json_of(&stdout_of(
        dir.path(),
        &["list", "--closed-before", "10ms", "--json"],
    ));
    assert_eq!(listed["workflows"].as_array().map(Vec::len), Some(3));
    let out = stdout_of(
        dir.path(),
        &["purge", "--closed-before", "10ms", "--batch", "2", "--json"],
    );
    assert_eq!(json_of(&out)["purged"], 3, "in batches of two");
    for id in &done {
        loom(dir.path())
            .args(["inspect", id])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("no workflow with id"));
    }
    assert_eq!(inspect(dir.path(), &open)["status"], "running");
    // Bad input: exit 2, nothing deleted.
    for args in [
        vec!["purge", "--closed-before", "10ms", "--status", "running"],
        vec!["purge", "--closed-before", "soon"],
        vec!["purge", "--closed-before", "10ms", "--batch", "0"],
        vec!["purge"],
    ] {
        loom(dir.path()).args(&args).assert().code(2);
    }
    assert_eq!(inspect(dir.path(), &open)["status"], "running");
}

#[test]
fn actions_on_every_workflow_a_query_matches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = greetings(dir.path(), 12);
    start(dir.path(), "FanOut", r#"{"n": 1}"#);
    // More than ten: refused without --yes, and nothing is done.
    loom(dir.path())
        .args(["pause", "--query", "name=Greeting", "--reason", "ops"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("12 workflows match; pass --yes"));
    let dry = json_of(&stdout_of(
        dir.path(),
        &[
            "pause",
            "--query",
            "name=Greeting",
            "--reason",
            "ops",
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(dry["matched"], 12);
    assert_eq!(inspect(dir.path(), &ids[0])["status"], "running");
    let paused = json_of(&stdout_of(
        dir.path(),
        &[
            "pause",
            "--query",
            "name=Greeting",
            "--reason",
            "ops",
            "--yes",
            "--json",
        ],
    ));
    assert_eq!(
        (paused["matched"].clone(), paused["done"].clone()),
        (12.into(), 12.into())
    );
    assert_eq!(inspect(dir.path(), &ids[11])["status"], "paused");
    // Each workflow on its own: resuming running ones fails for each, and says so.
    let out = loom(dir.path())
        .args(["resume", "--query", "status=running", "--json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let doc = json_of(&out);
    assert_eq!(doc["matched"], 1, "the FanOut");
    assert_eq!(doc["failed"].as_array().map(Vec::len), Some(1));
    let resumed = json_of(&stdout_of(
        dir.path(),
        &[
            "resume",
            "--query",
            "status=paused name=Greeting",
            "--yes",
            "--json",
        ],
    ));
    assert_eq!(resumed["done"], 12);
    let terminated = json_of(&stdout_of(
        dir.path(),
        &[
            "terminate",
            "--query",
            "name=Greeting created-before=0s",
            "--reason",
            "cleanup",
            "--yes",
            "--json",
        ],
    ));
    assert_eq!(terminated["done"], 12);
    assert_eq!(inspect(dir.path(), &ids[5])["status"], "terminated");
    let none = json_of(&stdout_of(
        dir.path(),
        &["cancel", "--query", "name=Nope", "--json"],
    ));
    assert_eq!(none["matched"], 0);
    // Without a status, workflows that have ended are left out.
    let ended = json_of(&stdout_of(
        dir.path(),
        &["cancel", "--query", "name=Greeting", "--json"],
    ));
    assert_eq!(ended["matched"], 0, "all twelve have ended");
    // Malformed filters and targets: exit 2.
    for args in [
        vec!["cancel", "--query", "bogus"],
        vec!["cancel", "--query", "status=weird"],
        vec!["cancel", "--query", "colour=red"],
        vec!["cancel", "--query", "created-after=yesterday"],
        vec!["cancel", "--query", " "],
        vec!["cancel", "--dry-run"],
        vec!["cancel"],
        vec!["cancel", "some-id", "--query", "name=Greeting"],
    ] {
        loom(dir.path()).args(&args).assert().code(2);
    }
}

#[test]
fn inspect_shows_the_chain_of_runs_and_any_one_of_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = start(
        dir.path(),
        "Subscription",
        r#"{"customer": "ada", "months": 5, "months_per_run": 2, "month_ms": 1}"#,
    );
    drain(dir.path());
    let doc = inspect(dir.path(), &id);
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["output"], 4_995, "five months billed across the runs");
    assert_eq!(doc["run"], 3);
    let earlier = doc["earlier_runs"].as_array().expect("earlier runs");
    assert_eq!(
        earlier
            .iter()
            .map(|r| r["run"].as_u64())
            .collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    loom(dir.path())
        .args(["inspect", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("continued as new from run 2"))
        .stdout(predicate::str::contains("run 1:"));
    let first = json_of(&stdout_of(
        dir.path(),
        &["inspect", &id, "--run", "1", "--events", "--json"],
    ));
    assert_eq!(first["run"], 1);
    assert_eq!(first["current_run"], 3);
    assert_eq!(
        first["input"]["month"],
        serde_json::Value::Null,
        "the first input as given"
    );
    let events = first["events"].as_array().expect("events");
    assert_eq!(
        events.last().and_then(|e| e["type"].as_str()),
        Some("WorkflowContinuedAsNew")
    );
    assert_eq!(events.last().expect("last")["input"]["month"], 2);
    loom(dir.path())
        .args(["inspect", &id, "--run", "2", "--events"])
        .assert()
        .success()
        .stdout(predicate::str::contains("2 of 3 (ended)"))
        .stdout(predicate::str::contains("WorkflowContinuedAsNew"));
    // The current run by number is the ordinary view.
    let current = json_of(&stdout_of(
        dir.path(),
        &["inspect", &id, "--run", "3", "--json"],
    ));
    assert_eq!(current["status"], "completed");
    // Runs that do not exist, and run 0, are usage errors.
    loom(dir.path())
        .args(["inspect", &id, "--run", "4"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("runs 1 to 3"));
    loom(dir.path())
        .args(["inspect", &id, "--run", "0"])
        .assert()
        .code(2);
    loom(dir.path())
        .args(["inspect", &id, "--run", "first"])
        .assert()
        .code(2);
}

#[test]
fn start_wait_with_a_worker_in_another_process_and_sigterm_stops_it_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path()).arg("init").assert().success();
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_loom"))
        .current_dir(dir.path())
        .env_remove("LOOM_DB")
        .args(["worker", "--poll-interval", "0.05"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a worker");
    loom(dir.path())
        .args(["start", "FanOut", "--input", r#"{"n": 5}"#, "--wait"])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .stdout("55\n");
    let failing = loom(dir.path())
        .args([
            "start",
            "FlakyCharge",
            "--input",
            r#"{"fail_times": 1}"#,
            "--wait",
            "--json",
        ])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(json_of(&failing)["output"], "charged on attempt 2");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = worker.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "a graceful stop exits 0");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut worker.stderr.take().expect("stderr"), &mut stderr)
        .expect("read");
    assert!(stderr.contains("Worker stopped"), "{stderr}");
}

// ---- bad input: a clear sentence on stderr, the right exit code, nothing written ----

#[test]
fn malformed_or_mistyped_input_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path())
        .args(["start", "Greeting", "--input", "{name: Ada"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with(
            "loom: --input is not valid JSON",
        ));
    loom(dir.path())
        .args(["start", "Greeting", "--input", r#"{"nom": "Ada"}"#])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("--input does not fit workflow Greeting")
                .and(predicate::str::contains("name")),
        );
    loom(dir.path())
        .args(["start", "Nope", "--input", "{}"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("unknown workflow \"Nope\"")
                .and(predicate::str::contains("OrderProcessing")),
        );
    assert!(!dir.path().join(".loom").exists(), "nothing was written");
    loom(dir.path())
        .args(["signal", "x", "go", "--payload", "[1,"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--payload is not valid JSON"));
}

#[test]
fn unknown_ids_and_missing_databases_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path())
        .arg("list")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "there is no Loom database at sqlite://.loom/loom.db",
        ));
    assert!(
        !dir.path().join(".loom").exists(),
        "reading created nothing"
    );
    loom(dir.path()).arg("init").assert().success();
    for args in [
        vec!["inspect", "ghost"],
        vec!["result", "ghost"],
        vec!["signal", "ghost", "go"],
        vec!["cancel", "ghost"],
        vec!["replay", "ghost"],
    ] {
        loom(dir.path())
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::eq("loom: no workflow with id ghost\n"));
    }
}

#[test]
fn bad_database_urls_and_files_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("notes.db"),
        "not a database at all\n".repeat(100),
    )
    .expect("write");
    loom(dir.path())
        .args(["--db", "sqlite://notes.db", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "notes.db is not a SQLite database",
        ));
    let other = rusqlite::Connection::open(dir.path().join("other.db")).expect("open");
    other
        .execute_batch("CREATE TABLE people (name TEXT)")
        .expect("schema");
    drop(other);
    loom(dir.path())
        .args(["--db", "sqlite://other.db", "stats"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a Loom database"));
    loom(dir.path())
        .args([
            "--db",
            "sqlite://missing/dir/loom.db",
            "start",
            "Greeting",
            "--input",
            r#"{"name":"x"}"#,
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not exist"));
    loom(dir.path())
        .args(["--db", "loom.db", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a database URL"));
    loom(dir.path())
        .args(["--db", "postgres://postgres@127.0.0.1:1/none", "list"])
        .timeout(Duration::from_secs(60))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/none",
        ));
    loom(dir.path())
        .args(["--db", "mysql://root:s3cret@127.0.0.1:1/none", "list"])
        .timeout(Duration::from_secs(60))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "MySQL database none at 127.0.0.1:1",
        ))
        .stderr(predicate::str::contains("s3cret").not());
    loom(dir.path())
        .args(["--db", "mysql://root@127.0.0.1:1", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("names no database"));
    loom(dir.path())
        .args(["--db", "oracle://x", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown scheme"));
    // The in-process store measures the engine; nothing else may use it.
    for args in [
        &["list"][..],
        &["start", "Greeting", "--input", r#"{"name": "Ada"}"#],
        &["bench", "--workflows", "10", "--processes", "2"],
    ] {
        loom(dir.path())
            .args(["--db", "memory://"])
            .args(args)
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains("only for").or(predicate::str::contains(
                    "is for `loom bench` in one process only",
                )),
            );
    }
    let out = loom(dir.path())
        .args(["--db", "memory://", "bench", "--workflows", "20", "--json"])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(json_of(&out)["db"], "memory://");
    loom(dir.path())
        .env("LOOM_DB", "sqlite://via-env.db")
        .args(["init", "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("via-env.db"));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path())
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("replay"));
    loom(dir.path()).arg("frobnicate").assert().code(2);
    loom(dir.path()).args(["start"]).assert().code(2);
    loom(dir.path())
        .args(["worker", "--poll-interval", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--poll-interval must be a positive",
        ));
}

#[test]
fn terminate_ends_a_run_without_a_worker_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path()).arg("init").assert().success();
    loom(dir.path())
        .args(["terminate", "nobody", "--reason", "x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no workflow with id nobody"));
    loom(dir.path())
        .args([
            "start",
            "Reminder",
            "--input",
            r#"{"seconds": 86400}"#,
            "--id",
            "r1",
        ])
        .assert()
        .success();
    // A reason is required: nothing is written without one.
    loom(dir.path())
        .args(["terminate", "r1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--reason"));
    let out = stdout_of(dir.path(), &["inspect", "r1", "--json"]);
    assert_eq!(json_of(&out)["status"], "running");
    loom(dir.path())
        .args(["terminate", "r1", "--reason", "ops: closed account"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Terminated r1"));
    loom(dir.path())
        .args(["result", "r1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("terminated: ops: closed account"));
    let out = stdout_of(dir.path(), &["inspect", "r1", "--events", "--json"]);
    let doc = json_of(&out);
    assert_eq!(doc["status"], "terminated");
    assert_eq!(doc["events"][1]["type"], "WorkflowTerminated");
    loom(dir.path())
        .args(["terminate", "r1", "--reason", "again"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already ended"));
    let out = stdout_of(dir.path(), &["list", "--status", "terminated", "--json"]);
    assert_eq!(json_of(&out)["workflows"][0]["id"], "r1");
}

#[test]
fn inputs_and_payloads_come_from_files_or_stdin_within_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A 1 MiB input: more than one command-line argument may hold.
    let name = "a".repeat(1024 * 1024);
    let file = dir.path().join("input.json");
    std::fs::write(&file, format!(r#"{{"name": "{name}"}}"#)).expect("write");
    loom(dir.path())
        .args(["start", "Greeting", "--id", "big", "--input-file"])
        .arg(&file)
        .assert()
        .success();
    let out = stdout_of(dir.path(), &["inspect", "big", "--json"]);
    assert_eq!(
        json_of(&out)["input"]["name"].as_str().map(str::len),
        Some(1024 * 1024)
    );
    loom(dir.path())
        .args(["start", "Greeting", "--id", "piped", "--input-file", "-"])
        .write_stdin(r#"{"name": "stdin"}"#)
        .assert()
        .success();
    loom(dir.path())
        .args(["signal", "big", "nudge", "--payload-file", "-"])
        .write_stdin(r#"{"from": "stdin"}"#)
        .assert()
        .success();
    // Past the 2 MiB limit: refused, nothing written.
    let huge = dir.path().join("huge.json");
    std::fs::write(
        &huge,
        format!(r#"{{"name": "{}"}}"#, "a".repeat(3 * 1024 * 1024)),
    )
    .expect("write");
    loom(dir.path())
        .args(["start", "Greeting", "--id", "huge", "--input-file"])
        .arg(&huge)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("over the limit"));
    loom(dir.path()).args(["inspect", "huge"]).assert().code(2);
    // A missing file, malformed JSON in a file, and both flags at once are usage errors.
    loom(dir.path())
        .args(["start", "Greeting", "--input-file", "no-such-file.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read the file"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").expect("write");
    loom(dir.path())
        .args(["start", "Greeting", "--input-file"])
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not valid JSON"));
    loom(dir.path())
        .args(["start", "Greeting", "--input", "{}", "--input-file"])
        .arg(&file)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot be used with"));
}

#[test]
fn signal_checks_the_payload_against_the_workflows_signal_types() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path())
        .args([
            "start",
            "Approval",
            "--id",
            "ap",
            "--input",
            r#"{"request_id": "r", "timeout_secs": 60}"#,
        ])
        .assert()
        .success();
    loom(dir.path())
        .args([
            "signal",
            "ap",
            "approve",
            "--payload",
            r#"{"approved": "yes"}"#,
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not fit"));
    loom(dir.path())
        .args(["signal", "ap", "reject", "--payload", "{}"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("takes no signal \"reject\""));
    loom(dir.path())
        .args([
            "signal",
            "ap",
            "approve",
            "--payload",
            r#"{"approved": true, "by": "ada"}"#,
        ])
        .assert()
        .success();
    loom(dir.path())
        .args(["worker", "--exit-when-idle"])
        .timeout(Duration::from_secs(60))
        .assert()
        .success();
    loom(dir.path())
        .args(["result", "ap"])
        .assert()
        .success()
        .stdout(predicate::str::contains("approved"));
    // The refused signals were never written: the history holds the one that was sent.
    let out = stdout_of(dir.path(), &["inspect", "ap", "--events", "--json"]);
    let signals = json_of(&out)["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "SignalReceived")
        .count();
    assert_eq!(signals, 1);
}

#[test]
fn a_run_timeout_set_at_start_ends_the_run_timed_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    for bad in ["0", "nan", "-- -1"] {
        let mut cmd = loom(dir.path());
        cmd.args(["start", "Reminder", "--run-timeout"]);
        cmd.args(bad.split(' '));
        cmd.assert().code(2);
    }
    loom(dir.path())
        .args([
            "start",
            "Reminder",
            "--input",
            r#"{"seconds": 86400}"#,
            "--id",
            "late",
            "--run-timeout",
            "0.3",
        ])
        .assert()
        .success();
    let out = stdout_of(dir.path(), &["inspect", "late", "--events", "--json"]);
    assert_eq!(json_of(&out)["events"][0]["timeouts"]["run_ms"], 300);
    loom(dir.path())
        .args(["worker", "--exit-when-idle"])
        .timeout(Duration::from_secs(60))
        .assert()
        .success();
    loom(dir.path())
        .args(["result", "late"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "timed out: its run timeout passed",
        ));
}

#[test]
fn reset_reruns_a_run_from_a_task_boundary_and_refuses_bad_points() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path()).arg("init").assert().success();
    for id in ["r1", "r2"] {
        loom(dir.path())
            .args([
                "start",
                "Reminder",
                "--input",
                r#"{"seconds": 86400}"#,
                "--id",
                id,
            ])
            .assert()
            .success();
    }
    drain(dir.path()); // 1: started, 2: a step, 3: its timer
    for id in ["r1", "r2"] {
        loom(dir.path())
            .args(["terminate", id, "--reason", "ops: by mistake"])
            .assert()
            .success();
    }
    // Bad input: exit 2, nothing written.
    loom(dir.path())
        .args(["reset", "ghost", "--to", "last-task", "--reason", "x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no workflow with id ghost"));
    loom(dir.path())
        .args(["reset", "r1", "--to", "2", "--reason", "x"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("not a workflow-task boundary")
                .and(predicate::str::contains("the nearest are 1 and 3")),
        );
    loom(dir.path())
        .args(["reset", "r1", "--to", "9", "--reason", "x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("from 1 to 4"));
    loom(dir.path())
        .args(["reset", "r1", "--to", "banana", "--reason", "x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("last-task"));
    loom(dir.path())
        .args(["reset", "r1", "--to", "3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--reason"));
    assert_eq!(inspect(dir.path(), "r1")["status"], "terminated");

    let out = stdout_of(
        dir.path(),
        &[
            "reset",
            "r1",
            "--to",
            "last-task",
            "--reason",
            "ops: terminated by mistake",
            "--json",
        ],
    );
    let done = json_of(&out);
    assert_eq!(
        (
            done["reset"].as_bool(),
            done["run"].as_u64(),
            done["point"].as_u64()
        ),
        (Some(true), Some(2), Some(3))
    );
    let doc = inspect(dir.path(), "r1");
    assert_eq!(doc["status"], "running");
    assert_eq!(doc["run"], 2);
    assert_eq!(doc["reset_from"]["run"], 1);
    assert_eq!(doc["reset_from"]["point"], 3);
    assert_eq!(doc["earlier_runs"].as_array().map(Vec::len), Some(1));
    let out = stdout_of(dir.path(), &["inspect", "r1", "--run", "1", "--json"]);
    assert!(
        json_of(&out)["ended"]
            .as_str()
            .is_some_and(|e| e.contains("WorkflowTerminated")),
        "the old run is kept as it ended"
    );
    loom(dir.path())
        .args(["inspect", "r1", "--events"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("reset from run 1 at event 3: ops: terminated by mistake")
                .and(predicate::str::contains("3*"))
                .and(predicate::str::contains("workflow-task boundary")),
        );
    // The rest by query: only r2 is still terminated.
    let out = stdout_of(
        dir.path(),
        &[
            "reset",
            "--query",
            "status=terminated name=Reminder",
            "--to",
            "last-task",
            "--reason",
            "ops: all of them",
            "--json",
        ],
    );
    let summary = json_of(&out);
    assert_eq!(
        (summary["matched"].as_u64(), summary["done"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(inspect(dir.path(), "r2")["status"], "running");
}

#[test]
fn tags_set_at_start_and_by_the_code_find_workflows() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path()).arg("init").assert().success();
    for (id, customer, priority) in [("o1", "ada", "1"), ("o2", "bob", "5"), ("o3", "ada", "9")] {
        loom(dir.path())
            .args([
                "start",
                "OrderProcessing",
                "--input",
                &format!(r#"{{"order_id": "{id}", "customer_email": "{customer}@example.com"}}"#),
                "--id",
                id,
                "--tag",
                &format!("customer={customer}"),
                "--tag",
                &format!("priority={priority}"),
                "--tag",
                "due=2027-01-01T00:00:00Z",
            ])
            .assert()
            .success();
    }
    // Bad tags and filters: exit 2, nothing written.
    loom(dir.path())
        .args([
            "start",
            "Greeting",
            "--input",
            r#"{"name": "x"}"#,
            "--tag",
            "no-equals",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("key=value"));
    loom(dir.path())
        .args([
            "start",
            "Greeting",
            "--input",
            r#"{"name": "x"}"#,
            "--tag",
            "bad key=1",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("ASCII letters"));
    loom(dir.path())
        .args(["list", "--tag", "customer"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no comparison"));
    loom(dir.path())
        .args(["list", "--tag", "priority>high"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("compares numbers and times"));
    loom(dir.path())
        .args(["cancel", "--query", "tag.customer", "--dry-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--query"));
    let out = stdout_of(dir.path(), &["list", "--json"]);
    assert_eq!(json_of(&out)["workflows"].as_array().map(Vec::len), Some(3));

    drain(dir.path()); // each sets stage=paid
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["list", "--json"];
        all.extend_from_slice(args);
        let out = stdout_of(dir.path(), &all);
        json_of(&out)["workflows"]
            .as_array()
            .expect("workflows")
            .iter()
            .map(|w| w["id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(listed(&["--tag", "customer=ada"]), ["o3", "o1"]);
    assert_eq!(listed(&["--tag", "priority>=5"]), ["o3", "o2"]);
    assert_eq!(
        listed(&["--tag", "priority<5", "--tag", "customer=ada"]),
        ["o1"]
    );
    assert_eq!(
        listed(&["--tag", "stage=paid", "--tag", "priority>1"]),
        ["o3", "o2"]
    );
    assert_eq!(listed(&["--tag", "due<2027-01-02T00:00:00Z"]).len(), 3);
    assert!(listed(&["--tag", "due>2027-01-01T00:00:00Z"]).is_empty());
    let doc = inspect(dir.path(), "o2");
    assert_eq!(doc["tags"]["customer"]["text"], "bob");
    assert_eq!(doc["tags"]["priority"]["int"], 5);
    assert_eq!(doc["tags"]["stage"]["text"], "paid");
    // A batch action by tag.
    let out = stdout_of(
        dir.path(),
        &[
            "cancel",
            "--query",
            "status=completed tag.customer=ada",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(json_of(&out)["matched"], 2);
}

#[test]
fn versions_are_listed_started_and_filtered() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path()).arg("init").assert().success();
    let out = stdout_of(dir.path(), &["workflows", "--json"]);
    let doc = json_of(&out);
    let greeting = doc["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .find(|w| w["name"] == "Greeting")
        .expect("Greeting")
        .clone();
    assert_eq!(greeting["version"], 1);
    assert_eq!(greeting["versions"], serde_json::json!([1]));
    loom(dir.path())
        .args([
            "start",
            "Greeting",
            "--input",
            r#"{"name": "x"}"#,
            "--version",
            "9",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "this loom has versions 1 of Greeting",
        ));
    loom(dir.path())
        .args([
            "start",
            "Greeting",
            "--input",
            r#"{"name": "x"}"#,
            "--version",
            "1",
            "--id",
            "g1",
        ])
        .assert()
        .success();
    let listed = |version: &str| -> usize {
        let out = stdout_of(dir.path(), &["list", "--version", version, "--json"]);
        json_of(&out)["workflows"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(listed("1"), 1);
    assert_eq!(listed("2"), 0);
    let out = stdout_of(
        dir.path(),
        &[
            "cancel",
            "--query",
            "version=1 name=Greeting",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(json_of(&out)["matched"], 1);
    loom(dir.path())
        .args(["cancel", "--query", "version=one", "--dry-run"])
        .assert()
        .code(2);
}

#[test]
fn replay_all_checks_every_matching_history_and_reports_each_mismatch() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path()).arg("init").assert().success();
    for id in ["r1", "r2", "r3", "r4"] {
        loom(dir.path())
            .args([
                "start",
                "Reminder",
                "--input",
                r#"{"seconds": 86400}"#,
                "--id",
                id,
            ])
            .assert()
            .success();
    }
    start(
        dir.path(),
        "OrderProcessing",
        r#"{"order_id": "7", "customer_email": "a@b.c"}"#,
    );
    drain(dir.path()); // the order completes; each reminder sleeps: 1 started, 2 step, 3 timer
    let out = stdout_of(
        dir.path(),
        &["replay", "--all", "--times", "3", "--parallel", "2"],
    );
    assert!(
        String::from_utf8_lossy(&out).contains("4 histories"),
        "running and paused by default: {}",
        String::from_utf8_lossy(&out)
    );
    // Two broken ones: a renamed step, and a version this binary does not have.
    let conn = rusqlite::Connection::open(dir.path().join(".loom/loom.db")).expect("open");
    conn.execute(
        "UPDATE events SET kind = replace(kind, 'sleeping', 'napping') WHERE workflow_id = 'r2' AND seq = 2",
        [],
    )
    .expect("tamper r2");
    conn.execute("UPDATE workflows SET version = 7 WHERE id = 'r3'", [])
        .expect("tamper r3");
    drop(conn);
    loom(dir.path())
        .args(["replay", "--all"])
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("r2: at #2 the history has StepStarted(\"napping\")")
                .and(predicate::str::contains("StepStarted(\"sleeping\")"))
                .and(predicate::str::contains(
                    "r3: this binary has versions 1 of \"Reminder\", not version 7",
                ))
                .and(predicate::str::contains("2 do not replay")),
        );
    let out = loom(dir.path())
        .args(["replay", "--all", "--json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let doc = json_of(&out);
    assert_eq!(doc["replayed"], 4);
    assert_eq!(doc["mismatches"], 2);
    assert_eq!(doc["problems"][0]["id"], "r2");
    assert_eq!(doc["problems"][0]["seq"], 2);
    // Filters: the completed order alone replays cleanly.
    let out = stdout_of(
        dir.path(),
        &[
            "replay",
            "--all",
            "--status",
            "completed",
            "--name",
            "OrderProcessing",
            "--json",
        ],
    );
    assert_eq!(json_of(&out)["replayed"], 1);
    assert_eq!(json_of(&out)["mismatches"], 0);
    let out = stdout_of(dir.path(), &["replay", "--all", "--version", "9", "--json"]);
    assert_eq!(json_of(&out)["replayed"], 0);
    // Bad usage: exit 2.
    loom(dir.path())
        .args(["replay", "--all", "--status", "bogus"])
        .assert()
        .code(2);
    loom(dir.path()).args(["replay"]).assert().code(2);
    loom(dir.path())
        .args(["replay", "r1", "--times", "0"])
        .assert()
        .code(2);
}

#[test]
fn worker_output_to_a_pipe_is_plain_and_names_what_it_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    loom(dir.path()).arg("init").assert().success();
    start(
        dir.path(),
        "OrderProcessing",
        r#"{"order_id": "declined-1", "customer_email": "a@b.c"}"#,
    );
    start(dir.path(), "FlakyCharge", r#"{"fail_times": 1}"#);
    let id = start(dir.path(), "Reminder", r#"{"seconds": 3600}"#);
    let out = loom(dir.path())
        .args([
            "worker",
            "--exit-when-idle",
            "--poll-interval",
            "0.05",
            "--pause-retry",
            "5",
        ])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .get_output()
        .stderr
        .clone();
    let stderr = String::from_utf8_lossy(&out);
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes in a pipe: {stderr}"
    );
    assert!(
        stderr.contains("Worker on sqlite://")
            && stderr.contains("OrderProcessing v1")
            && stderr.contains("64 workflow task slots, 256 activity slots")
            && stderr.contains("retried after 5.0s"),
        "a start-up line: {stderr}"
    );
    // The workflow's own line is the workflow task's, with the workflow id, never an
    // activity's.
    let line = stderr
        .lines()
        .find(|l| l.contains("payment for order declined-1 declined"))
        .unwrap_or_else(|| panic!("the workflow's log line: {stderr}"));
    assert!(line.contains("workflow_task"), "{line}");
    assert!(!line.contains("activity{"), "{line}");
    assert!(line.contains("workflow_id="), "{line}");
    loom(dir.path())
        .args(["worker", "--pause-retry", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--pause-retry"));
    // Times in the event table are ISO everywhere; no Debug text.
    let text =
        String::from_utf8(stdout_of(dir.path(), &["inspect", &id, "--events"])).expect("utf-8");
    assert!(text.contains("fire_at=20"), "{text}");
    assert!(text.contains("duration=1h"), "{text}");
    for id in json_of(&stdout_of(dir.path(), &["list", "--json"]))["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .map(|w| w["id"].as_str().expect("id").to_owned())
    {
        let text =
            String::from_utf8(stdout_of(dir.path(), &["inspect", &id, "--events"])).expect("utf-8");
        for debug in ["Some(", "Timestamp(", "ms)", "Seq("] {
            assert!(!text.contains(debug), "{debug} in {text}");
        }
    }
}

#[test]
fn a_binary_of_another_name_says_its_own_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let own = dir.path().join("tripctl");
    std::fs::copy(env!("CARGO_BIN_EXE_loom"), &own).expect("copy the binary");
    // Another test's process forked while the copy was open for writing holds that file
    // descriptor until it execs, and running the copy meanwhile fails with "text file busy"
    // (ETXTBSY): wait for it to pass.
    for _ in 0..100 {
        match std::process::Command::new(&own).arg("--version").output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => break,
        }
    }
    let mut cmd = Command::new(&own);
    cmd.current_dir(dir.path()).env_remove("LOOM_DB");
    cmd.arg("--help")
        .assert()
        .success()
        .stdout(
            predicate::str::contains("Usage: tripctl").and(predicate::str::contains(
                "tripctl: durable workflows on Loom",
            )),
        );
    let mut cmd = Command::new(&own);
    cmd.current_dir(dir.path()).env_remove("LOOM_DB");
    cmd.args(["inspect", "ghost"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with("tripctl: "));
}

/// A reader that goes away (`loom stats | head -1`) ends the program quietly with 141, as it
/// ends `cat`, instead of a panic report.
#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    loom(dir.path()).arg("init").assert().success();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_loom"))
        .current_dir(dir.path())
        .env_remove("LOOM_DB")
        .arg("stats")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loom runs");
    // The reader is gone before loom writes a line.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("loom ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

/// `--log-format json` writes every stderr line as one JSON object, and lines about a task
/// carry its workflow id, run and task.
#[test]
fn worker_logs_can_be_json_lines_with_the_task_they_concern() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = start(dir.path(), "FlakyCharge", r#"{"fail_times": 1}"#);
    let out = loom(dir.path())
        .env("RUST_LOG", "loom=debug")
        .args([
            "worker",
            "--exit-when-idle",
            "--poll-interval",
            "0.05",
            "--log-format",
            "json",
        ])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Worker on "))),
        "the start-up line is a log line too: {stderr}"
    );
    let in_task = lines
        .iter()
        .find(|l| l["span"]["name"] == "RunWorkflow")
        .unwrap_or_else(|| panic!("no line from a workflow task: {stderr}"));
    assert_eq!(in_task["span"]["workflow_id"], id.as_str());
    assert_eq!(in_task["span"]["run"], 1);
    assert!(in_task["span"]["task"].is_string(), "{in_task}");
    let trace = in_task["span"]["trace_id"].as_str().expect("a trace id");
    assert_eq!(trace.len(), 32, "{in_task}");
    let in_attempt = lines
        .iter()
        .find(|l| l["span"]["name"] == "RunActivity")
        .unwrap_or_else(|| panic!("no line from an activity attempt: {stderr}"));
    assert_eq!(in_attempt["span"]["workflow_id"], id.as_str());
    assert_eq!(in_attempt["span"]["activity"], "charge");
    assert!(in_attempt["span"]["attempt"].is_u64(), "{in_attempt}");
    assert_eq!(
        in_attempt["span"]["trace_id"], trace,
        "the attempt's lines carry its run's trace"
    );

    loom(dir.path())
        .args(["worker", "--log-format", "xml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("possible values: text, json"));
}
