//! The worker's metrics and health endpoint, scraped during a real run of the `loom` binary:
//! the counters and histograms move as the run implies, the text passes `promtool check
//! metrics`, and bad addresses are refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn loom(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loom"));
    cmd.current_dir(dir)
        .env_remove("LOOM_DB")
        .env_remove("RUST_LOG");
    cmd
}

fn run(dir: &Path, args: &[&str]) {
    let out = loom(dir).args(args).output().expect("loom runs");
    assert!(
        out.status.success(),
        "loom {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `loom worker --metrics` in the background, killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a worker serving metrics on a free loopback port; waits for its address.
fn serve(dir: &Path) -> Served {
    let mut child = loom(dir)
        .args(["worker", "--poll-interval", "0.05", "--metrics", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the worker printed where it serves metrics before exiting")
            .expect("stderr is text");
        if let Some(rest) = line.strip_prefix("Metrics on http://") {
            break rest.split('/').next().expect("an address").to_owned();
        }
    };
    // Keep draining stderr so the worker never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served { child, addr }
}

/// GETs `path`; its status and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut response = ureq::get(format!("http://{addr}{path}"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .expect("the endpoint answers");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().expect("a text body");
    (status, body)
}

/// The value of one series (name and labels exactly as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[test]
fn the_metrics_move_as_the_run_implies() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(dir.path(), &["init"]);
    let served = serve(dir.path());
    let (status, before) = get(&served.addr, "/metrics");
    assert_eq!(status, 200);
    let greeting_done =
        r#"loom_workflow_runs_ended_total{workflow_type="Greeting",outcome="completed"}"#;
    let charge_done =
        r#"loom_workflow_runs_ended_total{workflow_type="FlakyCharge",outcome="completed"}"#;
    assert_eq!(sample(&before, greeting_done), 0.0);
    assert_eq!(sample(&before, "loom_store_up"), 1.0, "{before}");

    for i in 0..4 {
        run(
            dir.path(),
            &[
                "start",
                "Greeting",
                "--input",
                &format!(r#"{{"name":"g{i}"}}"#),
            ],
        );
    }
    run(
        dir.path(),
        &["start", "FlakyCharge", "--input", r#"{"fail_times":2}"#],
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (_, text) = get(&served.addr, "/metrics");
        if sample(&text, greeting_done) >= 4.0 && sample(&text, charge_done) >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the workflows did not all complete within a minute:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let expect = |series: &str, want: f64| {
        assert_eq!(sample(&text, series), want, "{series} in:\n{text}");
    };
    expect(greeting_done, 4.0);
    expect(charge_done, 1.0);
    expect(
        r#"loom_workflow_runs_started_total{workflow_type="Greeting"}"#,
        4.0,
    );
    expect(
        r#"loom_workflow_run_duration_seconds_count{workflow_type="Greeting",outcome="completed"}"#,
        4.0,
    );
    expect(
        r#"loom_activity_attempts_total{activity_type="greet",outcome="completed"}"#,
        4.0,
    );
    expect(
        r#"loom_activity_attempts_total{activity_type="charge",outcome="retried"}"#,
        2.0,
    );
    expect(
        r#"loom_activity_attempts_total{activity_type="charge",outcome="completed"}"#,
        1.0,
    );
    expect(
        r#"loom_activity_execution_seconds_count{activity_type="charge",outcome="retried"}"#,
        2.0,
    );
    expect(
        r#"loom_activity_schedule_to_start_seconds_count{activity_type="charge"}"#,
        3.0,
    );
    // Every run's first task, at least, went through a claim and was timed from its start.
    assert!(
        sample(
            &text,
            r#"loom_workflow_task_schedule_to_start_seconds_count{workflow_type="Greeting"}"#
        ) >= 4.0
    );
    assert!(
        sample(
            &text,
            r#"loom_store_call_duration_seconds_count{operation="complete_workflow_task"}"#
        ) >= 5.0
    );
    assert_eq!(sample(&text, r#"loom_tasks_ready{kind="workflow"}"#), 0.0);
    // SQLite's writer thread groups commits: at least one write per commit, none lost.
    let commits = sample(&text, "loom_store_group_commits_total");
    let writes = sample(&text, "loom_store_writes_committed_total");
    assert!(
        commits >= 1.0 && writes >= commits,
        "{commits} commits of {writes} writes"
    );
    assert!(text.contains(r#"loom_oldest_ready_task_age_seconds{kind="activity"}"#));

    assert_eq!(get(&served.addr, "/livez"), (200, "live\n".to_owned()));
    assert_eq!(get(&served.addr, "/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(get(&served.addr, "/nothing").0, 404);
    promtool_checks(&text);
}

/// Runs `promtool` with `args` in `dir`, feeding it `stdin`, and requires success. Without
/// promtool: a loud skip outside CI (`false`), a failure under `CI=true`.
fn promtool(args: &[&str], dir: &Path, stdin: Option<&str>) -> bool {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is needed under CI: {e}"
            );
            eprintln!("SKIPPED: promtool {args:?}: promtool is not installed ({e})");
            return false;
        }
    };
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("promtool reads");
    }
    drop(input);
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// `promtool check metrics` lints the exposition (names, units, help).
fn promtool_checks(text: &str) {
    promtool(&["check", "metrics"], Path::new("."), Some(text));
}

#[test]
fn bad_metrics_addresses_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(dir.path(), &["init"]);
    for bad in ["nonsense", "example.com:9464", "127.0.0.1:70000"] {
        let out = loom(dir.path())
            .args(["worker", "--exit-when-idle", "--metrics", bad])
            .output()
            .expect("loom runs");
        assert_eq!(out.status.code(), Some(2), "--metrics {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--metrics takes"), "{bad}: {stderr}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = loom(dir.path())
        .args(["worker", "--exit-when-idle", "--metrics", &port])
        .output()
        .expect("loom runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen there"), "{stderr}");
}

/// The shipped alert rules load (`promtool check rules`) and their unit tests pass
/// (`promtool test rules`): each alert fires on the synthetic series meant to fire it and
/// stays quiet on the others.
#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    if promtool(&["check", "rules", "loom-rules.yml"], &rules, None) {
        promtool(&["test", "rules", "loom-rules.test.yml"], &rules, None);
    }
}
