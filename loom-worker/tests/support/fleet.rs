//! What the multi-process tests on a server (PostgreSQL, MySQL) share: `Chain` workflows
//! created up front, worker processes (`loom-worker-probe`) started, frozen and stopped, and
//! the check that every workflow completed exactly once.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file that includes it uses part of it"
)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
use loom_storage::{Storage, WorkflowStatus};

/// Workflows each run creates.
pub const WORKFLOWS: u64 = 240;
/// Activities in each.
pub const STEPS: u32 = 6;
/// Worker processes.
pub const WORKERS: usize = 3;

/// What chain `salt` returns.
pub fn expected(salt: u64) -> u64 {
    (0..STEPS).fold(salt, |acc, i| (acc * 31 + u64::from(i)) % 1_000_003)
}

/// Creates `chain-0` to `chain-{WORKFLOWS - 1}`.
pub async fn create_chains(store: &dyn Storage) {
    for n in 0..WORKFLOWS {
        let input = serde_json::json!({ "steps": STEPS, "salt": n * 7 + 1 });
        let started = Event {
            seq: Seq::FIRST,
            at: Timestamp::from_millis(0),
            kind: EventKind::WorkflowStarted {
                traceparent: None,
                tags: Default::default(),
                reset: None,
                attempt: 1,
                retry: None,
                run: 1,
                name: "Chain".into(),
                version: 1,
                input: Payload::from_json(input),
                format: HISTORY_FORMAT,
                timeouts: Default::default(),
                parent: None,
            },
        };
        store
            .create_workflow(&WorkflowId::new(format!("chain-{n}")), started)
            .await
            .expect("create");
    }
}

/// A worker process on `target`, named `id` in its leases, with `env` set.
pub fn worker(target: &str, env: &[(&str, &str)], id: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loom-worker-probe"));
    cmd.args(["run", target])
        .env("LOOM_PROBE_WORKER_ID", id)
        .stdout(Stdio::piped())
        .stderr(worker_log(id));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn a worker process")
}

/// Where a worker's stderr goes: a file in `LOOM_TEST_WORKER_LOGS` if that is set (run with
/// `RUST_LOG` to have the workers log there), nowhere otherwise.
fn worker_log(id: &str) -> Stdio {
    match std::env::var_os("LOOM_TEST_WORKER_LOGS") {
        Some(dir) => std::fs::File::create(std::path::Path::new(&dir).join(format!("{id}.log")))
            .map_or_else(|_| Stdio::null(), Stdio::from),
        None => Stdio::null(),
    }
}

/// Sends `sig` (`STOP`, `CONT`, `TERM`) to a worker process.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{sig}");
}

/// Worker processes, killed if the test ends (or fails) before [`stop`] reaped them: a
/// failed assertion must not leave workers polling a database that is gone.
pub struct Fleet(pub Vec<Child>);

impl Fleet {
    /// One worker on `target` per id, with `env` set.
    pub fn start(target: &str, env: &[(&str, &str)], ids: &[String]) -> Fleet {
        Fleet(ids.iter().map(|id| worker(target, env, id)).collect())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Stops every worker with SIGTERM and answers, for each, its refused commits and lost
/// leases, and the workflow tasks it ran.
pub fn stop(fleet: &mut Fleet) -> Vec<(u64, u64)> {
    let children = &mut fleet.0;
    for child in children.iter() {
        signal(child, "TERM");
    }
    children
        .iter_mut()
        .map(|child| {
            let out = std::io::read_to_string(child.stdout.take().expect("stdout")).expect("read");
            child.wait().expect("reap");
            let report: serde_json::Value = serde_json::from_str(out.trim())
                .unwrap_or_else(|e| panic!("a worker printed no report ({e}): {out:?}"));
            let n = |k: &str| report[k].as_u64().unwrap_or(0);
            (n("commits_refused") + n("leases_lost"), n("workflow_tasks"))
        })
        .collect()
}

/// How many of the chains have completed (0 while the store does not answer).
pub async fn completed(store: &dyn Storage) -> u64 {
    store
        .stats()
        .await
        .map(|s| {
            s.workflows
                .get(&WorkflowStatus::Completed)
                .copied()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Every chain completed with the right output, each activity's result recorded once, one
/// ending each.
pub async fn check_chains(store: &dyn Storage) {
    for n in 0..WORKFLOWS {
        let id = WorkflowId::new(format!("chain-{n}"));
        let summary = store.describe(&id).await.expect("describe");
        assert_eq!(summary.status, WorkflowStatus::Completed);
        let output: u64 = summary.output.expect("output").decode().expect("a number");
        assert_eq!(output, expected(n * 7 + 1), "{id}");
        let history = store.load_history(&id, Seq::ZERO).await.expect("history");
        let mut results: BTreeMap<Seq, usize> = BTreeMap::new();
        let mut terminal = 0;
        for e in &history {
            match &e.kind {
                EventKind::ActivityCompleted { activity_id, .. } => {
                    *results.entry(activity_id.0).or_default() += 1
                }
                kind if kind.is_terminal() => terminal += 1,
                _ => {}
            }
        }
        assert_eq!(
            results.len(),
            STEPS as usize,
            "{id}: every activity has a result"
        );
        assert!(
            results.values().all(|n| *n == 1),
            "{id}: a result was recorded twice"
        );
        assert_eq!(terminal, 1, "{id}: one ending");
    }
}

/// Freezes `child` with SIGSTOP while it holds leases (`held` counts them), past their 600 ms
/// length, then lets it go on. A lease seen just before the STOP may be released by a commit
/// already on its way, so the count that decides is taken after the STOP, once anything in
/// flight has landed; without a live lease then, the worker is let go and caught again.
pub async fn freeze_while_holding(child: &Child, held: impl AsyncFn() -> i64) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the worker was never frozen holding a lease"
        );
        if held().await == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        signal(child, "STOP");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if held().await > 0 {
            break;
        }
        signal(child, "CONT");
    }
    tokio::time::sleep(Duration::from_millis(1_400)).await;
    signal(child, "CONT");
}
