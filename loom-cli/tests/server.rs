//! `loom server`: where it may listen, and a property-based fuzz of the whole API from the
//! OpenAPI document it serves (schemathesis, from PyPI: `.ci/run` installs it; without it the
//! fuzz is skipped loudly, and under `CI=true` it fails).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use assert_cmd::cargo::cargo_bin;
use predicates::prelude::*;

fn loom(dir: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(cargo_bin("loom"));
    cmd.current_dir(dir)
        .env_remove("LOOM_TOKEN")
        .args(["--db", "sqlite://loom.db"]);
    cmd
}

/// A `loom server` on a free port, and the URL it serves.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path, token: &str) -> Server {
        let mut child = Command::new(cargo_bin("loom"))
            .current_dir(dir)
            .args([
                "--db",
                "sqlite://loom.db",
                "server",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("LOOM_TOKEN", token)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("loom server starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut line = String::new();
        BufReader::new(stderr)
            .read_line(&mut line)
            .expect("the server says where it listens");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .and_then(|u| u.strip_suffix("/api/v1"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Server { child, url }
    }
}

impl Server {
    /// `loom worker --http` on a redb file in `dir`, with `token` if one is given.
    fn worker_on_redb(dir: &Path, token: Option<&str>) -> Server {
        let mut cmd = Command::new(cargo_bin("loom"));
        cmd.current_dir(dir).env_remove("LOOM_TOKEN");
        if let Some(t) = token {
            cmd.env("LOOM_TOKEN", t);
        }
        let mut child = cmd
            .args([
                "--db",
                "redb://loom.redb",
                "worker",
                "--http",
                "127.0.0.1:0",
                "--poll-interval",
                "0.05",
            ])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("loom worker starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("the worker says where it serves")
                .expect("a line");
            if let Some(rest) = line.strip_prefix("Dashboard on ") {
                let dashboard = rest.split(',').next().expect("an address");
                break dashboard.trim_end_matches('/').to_owned();
            }
        };
        // The worker goes on logging: keep reading, or a closed pipe would stop it.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_server_listens_beyond_loopback_only_with_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    loom(dir.path())
        .args(["server", "--listen", "0.0.0.0:0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("give a token"));
    loom(dir.path())
        .args(["server", "--listen", "nowhere"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--listen takes PORT"));
    assert!(
        !dir.path().join("loom.db").exists(),
        "a refused server writes nothing"
    );
    let server = Server::start(dir.path(), "s3cret");
    let answer = ureq::get(format!("{}/api/v1/types", server.url))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .expect("answers");
    assert_eq!(answer.status().as_u16(), 401);
    let mut answer = ureq::get(format!("{}/api/v1/types", server.url))
        .header("Authorization", "Bearer s3cret")
        .call()
        .expect("answers");
    let body = answer.body_mut().read_to_string().expect("body");
    assert!(body.contains("OrderSaga"), "{body}");
}

/// Schemathesis generates requests from the served document (its examples, its coverage of
/// each schema's edges, random data, and chains of calls along the document's links) and
/// checks every answer: no 5xx, every status, content type and body as the document says,
/// schema-violating requests refused. One check is left out, that every schema-valid request
/// is accepted: a start's input and a signal's payload are checked against the workflow's
/// own types, which the document cannot describe.
#[test]
fn the_api_holds_to_its_document_under_fuzzing() {
    let st = Command::new("st").arg("--version").output();
    if st.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis (`st`) is needed under CI: pip install schemathesis"
        );
        eprintln!("SKIPPED: schemathesis is not installed (pip install schemathesis)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), "fuzz-token");
    let examples = std::env::var("LOOM_FUZZ_EXAMPLES").unwrap_or_else(|_| "40".into());
    // A fixed seed keeps a run reproducible; LOOM_FUZZ_SEED explores others.
    let seed = std::env::var("LOOM_FUZZ_SEED").unwrap_or_else(|_| "1".into());
    let out = Command::new("st")
        .current_dir(dir.path())
        .args([
            "run",
            &format!("{}/api/openapi.json", server.url),
            "--header",
            "Authorization: Bearer fuzz-token",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--exclude-checks",
            "positive_data_acceptance",
            "--request-timeout",
            "10",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let operations = report
        .split("Operations:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the report counts the operations");
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "every operation was tested:\n{report}"
    );
}

/// `loom worker --http` serves the dashboard and the API from the worker's process: on redb,
/// whose file one process holds, that is how workflows are started while the worker runs.
#[test]
fn a_worker_serves_the_api_over_the_file_it_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::worker_on_redb(dir.path(), None);
    let mut started = ureq::post(format!("{}/api/v1/workflows", server.url))
        .header("content-type", "application/json")
        .send(r#"{"type": "Greeting", "input": {"name": "Ada"}, "id": "hello"}"#)
        .expect("started");
    assert_eq!(started.status().as_u16(), 201);
    let _ = started.body_mut().read_to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut answer = ureq::get(format!("{}/api/v1/workflows/hello", server.url))
            .call()
            .expect("describe");
        let body = answer.body_mut().read_to_string().expect("body");
        let w: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if w["status"] == "completed" {
            assert!(w["output"].to_string().contains("Ada"), "{w}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never completed: {w}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let page = ureq::get(format!("{}/workflows/hello", server.url))
        .call()
        .expect("the dashboard")
        .body_mut()
        .read_to_string()
        .expect("page");
    assert!(page.contains("completed"), "{page}");
    drop(server);
    loom(dir.path())
        .args(["worker", "--token", "t"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--http"));
}

/// `--server URL`: the commands that act on workflows go through a server's API, print what
/// they print on the database, and fail as they fail there; on redb that is how they run
/// while a worker holds the file.
#[test]
fn commands_go_through_a_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::worker_on_redb(dir.path(), Some("tok"));
    let url = server.url.clone();
    let through = |args: &[&str]| {
        let mut cmd = loom(dir.path());
        cmd.env("LOOM_TOKEN", "tok")
            .env("LOOM_DB", "redb://loom.redb")
            .args(["--server", &url])
            .args(args);
        cmd
    };

    let out = through(&[
        "start",
        "Greeting",
        "--input",
        r#"{"name": "Ada"}"#,
        "--id",
        "g1",
        "--tag",
        "team=ops",
    ])
    .assert()
    .success()
    .get_output()
    .stdout
    .clone();
    assert_eq!(String::from_utf8_lossy(&out).trim(), "g1");
    through(&["result", "g1", "--wait"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Ada"));
    through(&[
        "start",
        "Approval",
        "--input",
        r#"{"request_id": "r1", "timeout_secs": 3600}"#,
        "--id",
        "a1",
    ])
    .assert()
    .success();
    through(&["list", "--tag", "team=ops", "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"g1\"").and(predicate::str::contains("a1").not()));
    through(&["list", "--status", "running"])
        .assert()
        .success()
        .stdout(predicate::str::contains("a1"));
    through(&[
        "signal",
        "a1",
        "approve",
        "--payload",
        r#"{"approved": true, "by": "ada"}"#,
    ])
    .assert()
    .success()
    .stdout(predicate::str::contains("Sent signal"));
    through(&["result", "a1", "--wait", "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("approved"));
    through(&[
        "start",
        "Approval",
        "--input",
        r#"{"request_id": "r2", "timeout_secs": 3600}"#,
        "--id",
        "a2",
    ])
    .assert()
    .success();
    through(&["pause", "a2", "--reason", "look"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Paused a2"));
    through(&["resume", "a2"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Resumed a2"));
    through(&["terminate", "a2", "--reason", "done"])
        .assert()
        .success();
    through(&["cancel", "a2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("a2"));
    through(&[
        "terminate",
        "--query",
        "status=running",
        "--dry-run",
        "--reason",
        "x",
    ])
    .assert()
    .success()
    .stdout(predicate::str::contains("0 workflow(s) match"));

    // Errors as on the database: unknown ids and bad input, exit 2; the rest needs --db.
    through(&["result", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nope"));
    through(&["start", "Greeting", "--input", r#"{"nom": 1}"#])
        .assert()
        .code(2);
    through(&["inspect", "a1", "--events"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("completed")
                .and(predicate::str::contains("SignalReceived"))
                .and(predicate::str::contains("record_decision")),
        );
    let doc = through(&["inspect", "a2", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc: serde_json::Value = serde_json::from_slice(&doc).expect("JSON");
    assert_eq!(doc["status"], "terminated", "{doc}");
    through(&["workflows"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Greeting"));
    through(&["stats"])
        .assert()
        .success()
        .stdout(predicate::str::contains("healthy").and(predicate::str::contains("completed")));
    through(&["replay", "a1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("deterministic"));
    through(&["purge", "--closed-before", "0s", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Would purge 3"));
    through(&["purge", "--closed-before", "0s", "--status", "running"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("never purged"));
    through(&["purge", "--closed-before", "0s"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Purged 3"));
    through(&["result", "g1"]).assert().code(2);

    // Schedules, on redb while the worker holds the file: only through the server.
    let created = through(&[
        "schedule",
        "create",
        "greet",
        "--workflow",
        "Greeting",
        "--input",
        r#"{"name": "Bo"}"#,
        "--interval",
        "1s",
        "--overlap",
        "allow-all",
        "--json",
    ])
    .assert()
    .success()
    .get_output()
    .stdout
    .clone();
    let created: serde_json::Value = serde_json::from_slice(&created).expect("json");
    assert_eq!(created["overlap"], "allow_all");
    through(&[
        "schedule",
        "create",
        "bad",
        "--workflow",
        "Greeting",
        "--cron",
        "0 61 * * *",
    ])
    .assert()
    .code(2)
    .stderr(predicate::str::contains("malformed"));
    through(&[
        "schedule",
        "create",
        "bad",
        "--workflow",
        "Greeting",
        "--input",
        "1",
        "--interval",
        "1h",
    ])
    .assert()
    .code(2)
    .stderr(predicate::str::contains("does not fit"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = through(&["schedule", "describe", "greet", "--json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let d: serde_json::Value = serde_json::from_slice(&out).expect("json");
        if d["schedule"]["counts"]["started"].as_u64() >= Some(2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never fired: {d}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    through(&["schedule", "pause", "greet", "--note", "enough"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Paused schedule greet"));
    through(&[
        "schedule",
        "update",
        "greet",
        "--cron",
        "0 0 9 * * *",
        "--tz",
        "Europe/Paris",
    ])
    .assert()
    .success();
    through(&["schedule", "describe", "greet"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("cron \"0 0 9 * * *\" Europe/Paris")
                .and(predicate::str::contains("paused enough"))
                .and(predicate::str::contains("started greet-")),
        );
    through(&["schedule", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("greet"));
    through(&["schedule", "trigger", "greet"])
        .assert()
        .success();
    through(&[
        "schedule",
        "backfill",
        "greet",
        "--from",
        "2024-01-01T00:00:00Z",
        "--to",
        "2024-01-02T00:00:00Z",
    ])
    .assert()
    .success();
    through(&["schedule", "unpause", "greet"])
        .assert()
        .success();
    through(&["schedule", "delete", "greet"]).assert().success();
    through(&["schedule", "describe", "greet"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no schedule"));
    through(&["init"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not through --server"));
    loom(dir.path())
        .args(["--server", "localhost:8237", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--server takes"));
    loom(dir.path())
        .env_remove("LOOM_TOKEN")
        .args(["--server", &url, "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("token"));
}
