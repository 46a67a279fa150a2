//! `loom schedule` as a user runs it: bad specs refused with exit 2 and nothing written, every
//! subcommand with `--json`, and two `loom worker` processes sharing one SQLite file that
//! start each fire time of a schedule exactly once.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

fn loom(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loom"));
    cmd.current_dir(dir)
        .env_remove("LOOM_DB")
        .env_remove("RUST_LOG");
    cmd
}

fn json_of(out: &[u8]) -> Value {
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(out)
        )
    })
}

fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let out = loom(dir)
        .args(args)
        .arg("--json")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    json_of(&out)
}

/// Runs `args`, which must exit 2 with a sentence holding `says` on stderr.
fn refused(dir: &Path, args: &[&str], says: &str) {
    let out = loom(dir).args(args).assert().code(2).get_output().clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(says), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
}

const GREETING: &str = r#"{"name": "Ada"}"#;

#[test]
fn bad_schedules_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    fn create<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["schedule", "create", "s", "--workflow", "Greeting"];
        args.extend_from_slice(extra);
        args
    }
    refused(
        d,
        &create(&["--input", GREETING, "--cron", "0 61 * * *"]),
        "malformed",
    );
    refused(
        d,
        &create(&[
            "--input",
            GREETING,
            "--cron",
            "0 0 * * *",
            "--tz",
            "Mars/Olympus",
        ]),
        "unknown time zone",
    );
    refused(
        d,
        &create(&["--input", GREETING]),
        "at least one --cron or --interval",
    );
    refused(
        d,
        &create(&["--input", GREETING, "--interval", "10ms"]),
        "at least a second",
    );
    refused(
        d,
        &create(&["--input", GREETING, "--interval", "1m/2m"]),
        "offset",
    );
    refused(
        d,
        &create(&["--input", GREETING, "--interval", "soon"]),
        "not a duration",
    );
    refused(
        d,
        &create(&[
            "--input",
            GREETING,
            "--interval",
            "1h",
            "--overlap",
            "sometimes",
        ]),
        "unknown overlap policy",
    );
    refused(
        d,
        &create(&[
            "--input",
            GREETING,
            "--interval",
            "1h",
            "--id-pattern",
            "fixed",
        ]),
        "{time}",
    );
    refused(
        d,
        &create(&[
            "--input",
            GREETING,
            "--interval",
            "1h",
            "--start",
            "tomorrow",
        ]),
        "RFC 3339",
    );
    refused(
        d,
        &create(&["--input", "\"Ada\"", "--interval", "1h"]),
        "does not fit",
    );
    refused(
        d,
        &[
            "schedule",
            "create",
            "s",
            "--workflow",
            "Nope",
            "--interval",
            "1h",
        ],
        "unknown workflow",
    );
    assert!(
        !d.join(".loom").exists(),
        "a refused create must not even create the database"
    );

    // With a schedule there, bad changes leave it as it was.
    ok_json(d, &create(&["--input", GREETING, "--interval", "1h"]));
    let before = ok_json(d, &["schedule", "describe", "s"])["schedule"].clone();
    refused(
        d,
        &["schedule", "update", "s", "--cron", "nonsense"],
        "malformed",
    );
    refused(
        d,
        &["schedule", "update", "s", "--tz", "Nowhere/Land"],
        "unknown time zone",
    );
    refused(
        d,
        &[
            "schedule",
            "backfill",
            "s",
            "--from",
            "2024-03-02T00:00:00Z",
            "--to",
            "2024-03-01T00:00:00Z",
        ],
        "before --from",
    );
    refused(
        d,
        &[
            "schedule",
            "backfill",
            "s",
            "--from",
            "yesterday",
            "--to",
            "now",
        ],
        "RFC 3339",
    );
    refused(
        d,
        &create(&["--input", GREETING, "--interval", "1h"]),
        "already exists",
    );
    refused(
        d,
        &["schedule", "describe", "nope"],
        "no schedule with id nope",
    );
    refused(
        d,
        &["schedule", "trigger", "nope"],
        "no schedule with id nope",
    );
    let after = ok_json(d, &["schedule", "describe", "s"])["schedule"].clone();
    assert_eq!(before, after);
}

fn spawn_worker(dir: &Path) -> Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_loom"))
        .current_dir(dir)
        .env_remove("LOOM_DB")
        .env_remove("RUST_LOG")
        .args(["worker", "--poll-interval", "0.05"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a worker")
}

fn stop(mut worker: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the worker did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` on the schedule's description until it holds.
fn until(dir: &Path, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = ok_json(dir, &["schedule", "describe", id]);
        if check(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{what}: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_schedule_command_with_a_worker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let created = ok_json(
        d,
        &[
            "schedule",
            "create",
            "greet",
            "--workflow",
            "Greeting",
            "--input",
            GREETING,
            "--interval",
            "1s",
            "--overlap",
            "allow-all",
            "--tag",
            "team=ops",
        ],
    );
    assert_eq!(created["id"], "greet");
    assert!(
        created["version"].as_u64().is_some_and(|v| v >= 1_000),
        "a create's version is its creation time times a thousand: {created}"
    );
    assert_eq!(created["overlap"], "allow_all");
    let listed = ok_json(d, &["schedule", "list"]);
    assert_eq!(listed["schedules"].as_array().map(Vec::len), Some(1));

    let worker = spawn_worker(d);
    let d1 = until(d, "greet", "two fires started", |v| {
        v["schedule"]["counts"]["started"].as_u64() >= Some(2)
    });
    assert_eq!(d1["upcoming"].as_array().map(Vec::len), Some(10));
    let listed = ok_json(d, &["list", "--tag", "team=ops"]);
    assert!(
        listed["workflows"]
            .as_array()
            .is_some_and(|w| !w.is_empty()),
        "{listed}"
    );

    let paused = ok_json(d, &["schedule", "pause", "greet", "--note", "deploy"]);
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["note"], "deploy");
    std::thread::sleep(Duration::from_millis(300));
    let held = ok_json(d, &["schedule", "describe", "greet"]);
    let started = held["schedule"]["counts"]["started"].as_u64();
    assert_eq!(held["upcoming"].as_array().map(Vec::len), Some(0));
    std::thread::sleep(Duration::from_millis(2_100));
    let still = ok_json(d, &["schedule", "describe", "greet"]);
    assert_eq!(
        still["schedule"]["counts"]["started"].as_u64(),
        started,
        "nothing fires while paused"
    );

    ok_json(d, &["schedule", "trigger", "greet"]);
    until(d, "greet", "the trigger started a workflow", |v| {
        v["schedule"]["counts"]["started"].as_u64() > started
    });

    let backfilled = ok_json(
        d,
        &[
            "schedule",
            "backfill",
            "greet",
            "--from",
            "2024-01-01T00:00:00Z",
            "--to",
            "2024-01-01T00:00:04Z",
        ],
    );
    assert_eq!(backfilled["pending_backfills"], 1);
    until(d, "greet", "the backfill ran", |v| {
        v["schedule"]["pending_backfills"] == 0
    });
    let past = ok_json(
        d,
        &["list", "--tag", "loom.schedule=greet", "--limit", "1000"],
    );
    let ids: Vec<&str> = past["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .filter_map(|w| w["id"].as_str())
        .filter(|id| id.starts_with("greet-2024-01-01"))
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");

    ok_json(d, &["schedule", "unpause", "greet"]);
    let updated = ok_json(
        d,
        &[
            "schedule",
            "update",
            "greet",
            "--cron",
            "0 0 3 * * *",
            "--tz",
            "Europe/Paris",
        ],
    );
    assert_eq!(updated["timezone"], "Europe/Paris");
    assert_eq!(updated["type"], "Greeting", "what is not given is kept");
    let text = loom(d)
        .args(["schedule", "describe", "greet"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("cron \"0 0 3 * * *\" Europe/Paris"), "{text}");
    assert!(text.contains("started greet-"), "{text}");
    let deleted = ok_json(d, &["schedule", "delete", "greet"]);
    assert_eq!(deleted["deleted"], true);
    refused(d, &["schedule", "describe", "greet"], "no schedule");
    stop(worker);
}

#[test]
fn two_worker_processes_start_each_fire_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    loom(d).arg("init").assert().success();
    // A schedule created as if a hundred seconds ago, while no worker ran: its hundred missed
    // fire times are caught up, and the next ones fire live, both workers racing for each.
    let store_path = d.join(".loom/loom.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use loom_storage::Storage;
        use loom_storage::schedule::{
            IntervalSpec, Overlap, Schedule, ScheduleAction, SchedulePolicy, ScheduleSpec,
        };
        let store = loom_sqlite::SqliteStorage::open(&store_path, Default::default())
            .await
            .expect("open");
        let now = store.now().await.expect("now");
        let back = loom_core::Timestamp::from_millis(now.as_millis() - 100_500);
        let schedule = Schedule::new(
            "race",
            ScheduleSpec {
                intervals: vec![IntervalSpec {
                    every_ms: 1_000,
                    offset_ms: 0,
                }],
                ..ScheduleSpec::default()
            },
            ScheduleAction {
                workflow: "Greeting".into(),
                version: None,
                input: loom_core::Payload::parse(GREETING).expect("json"),
                id_pattern: "{schedule}-{time}".into(),
                tags: loom_core::Tags::new(),
            },
            SchedulePolicy {
                overlap: Overlap::AllowAll,
                catchup_window_ms: 3_600_000,
            },
            false,
            back,
        )
        .expect("schedule");
        store
            .write_schedule(loom_storage::ScheduleWrite {
                id: "race".into(),
                expected: None,
                schedule: Some(schedule),
                starts: Vec::new(),
                cancel: Vec::new(),
                terminate: Vec::new(),
            })
            .await
            .expect("write");
    });
    let workers = [spawn_worker(d), spawn_worker(d)];
    until(d, "race", "a hundred and five fires", |v| {
        v["schedule"]["counts"]["started"].as_u64() >= Some(105)
    });
    for w in workers {
        stop(w);
    }
    let described = ok_json(d, &["schedule", "describe", "race"]);
    let counts = &described["schedule"]["counts"];
    let started = counts["started"].as_u64().expect("started");
    assert_eq!(counts["missed"], 0);
    assert_eq!(counts["already_started"], 0);
    let listed = ok_json(
        d,
        &["list", "--tag", "loom.schedule=race", "--limit", "1000"],
    );
    let mut times: Vec<i64> = listed["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .map(|w| {
            w["tags"]["loom.scheduled_at"]["time"]
                .as_i64()
                .expect("a time tag")
        })
        .collect();
    times.sort_unstable();
    assert_eq!(times.len() as u64, started, "one workflow per fire counted");
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == 1_000),
        "every second from the first fire to the last, each once: {times:?}"
    );
}
