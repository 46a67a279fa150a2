//! Recovery: a worker process killed with SIGKILL at random moments, many times, loses
//! nothing. Most kills land while work remains (a lower bound on the open workflows is read
//! after each). Every workflow completes with the right output, no event is duplicated, every
//! activity has exactly one recorded result and ran at least once, and ran again only for
//! attempts a kill interrupted, every parent started each of its children
//! exactly once and heard each end exactly once, and every chain of runs that continued as
//! new has each of its runs, each ended once, and ends once.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::{Storage, WorkflowStatus};
use rand::Rng;

const WORKFLOWS: u64 = 150;
/// Parents of three children each, started beside the chains.
const FAMILIES: u64 = 20;
const FAMILY_STEPS: u32 = 4;
/// Workflows that continue as new, with a child in each run, beside the chains.
const LOOPERS: u64 = 12;
const LOOP_STEPS: u32 = 10;
const LOOP_PER_RUN: u32 = 3;
const STEPS: u32 = 15;
const KILLS: usize = 10;

fn expected(salt: u64) -> u64 {
    (0..STEPS).fold(salt, |acc, i| (acc * 31 + u64::from(i)) % 1_000_003)
}

/// A `Looper`'s output and its number of runs, as the probe's code computes them.
fn expected_loop(salt: u64) -> (u64, u32) {
    let step = |acc: u64, i: u32| (acc * 31 + u64::from(i)) % 1_000_003;
    let (mut acc, mut done, mut runs) = (salt, 0, 0);
    loop {
        runs += 1;
        acc = (acc + step(step(acc, 0), 1)) % 1_000_003;
        for _ in 0..LOOP_PER_RUN {
            if done == LOOP_STEPS {
                break;
            }
            acc = step(acc, done);
            done += 1;
        }
        if done == LOOP_STEPS {
            return (acc, runs);
        }
    }
}

fn probe(mode: &str, path: &std::path::Path, executions: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loom-worker-probe"));
    cmd.args([mode, path.to_str().expect("utf-8 path")])
        .env("LOOM_PROBE_EXECUTIONS", executions)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The probe's activity slots: a kill can interrupt at most this many attempts in flight.
const PROBE_ACTIVITY_SLOTS: usize = 8;

/// Starts workflow `id` of type `name` with `input`.
async fn create(store: &SqliteStorage, name: &str, id: &str, input: serde_json::Value) {
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
            name: name.into(),
            version: 1,
            input: Payload::from_json(input),
            format: HISTORY_FORMAT,
            timeouts: Default::default(),
            parent: None,
        },
    };
    store
        .create_workflow(&WorkflowId::new(id), started)
        .await
        .expect("create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_at_random_moments_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("crash.db");
    let store = SqliteStorage::open(&path, SqliteOptions::default())
        .await
        .expect("open");
    for n in 0..WORKFLOWS {
        let input = serde_json::json!({ "steps": STEPS, "salt": n * 7 + 1 });
        create(&store, "Chain", &format!("chain-{n}"), input).await;
    }
    for n in 0..FAMILIES {
        let input = serde_json::json!({ "steps": FAMILY_STEPS, "salt": n * 10 });
        create(&store, "Family", &format!("family-{n}"), input).await;
    }

    for n in 0..LOOPERS {
        let input = serde_json::json!({
            "steps": LOOP_STEPS, "per_run": LOOP_PER_RUN, "done": 0, "acc": n * 13 + 5
        });
        create(&store, "Looper", &format!("looper-{n}"), input).await;
    }

    let executions = dir.path().join("executions.log");
    let mut rng = rand::rng();
    let mut landed = Vec::new();
    for _ in 0..KILLS {
        let mut child = probe("run", &path, &executions)
            .spawn()
            .expect("spawn a worker");
        let alive = rng.random_range(40..300);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // What was left when this kill landed: a lower bound (the worker may have gone on a
        // little between the kill and this read; never the other way). Only the chains
        // started here count: the families' and loopers' children are `Chain`s too.
        let query = loom_storage::ListQuery {
            name: Some("Chain".into()),
            status: Some(WorkflowStatus::Completed),
            limit: 1_000,
            ..loom_storage::ListQuery::default()
        };
        let page = store.list(&query).await.expect("list");
        let done = page
            .items
            .iter()
            .filter(|w| w.id.as_str().starts_with("chain-"))
            .count() as u64;
        landed.push(WORKFLOWS - done);
    }
    eprintln!("open chains when each kill landed, at least: {landed:?}");
    let mid_work = landed.iter().filter(|open| **open > 0).count();
    assert!(
        mid_work >= KILLS / 2,
        "most kills must land while work remains: {landed:?}"
    );

    // A last worker, left alone, finishes everything: leases of the killed ones lapse.
    let start = Instant::now();
    let out = probe("drain", &path, &executions)
        .output()
        .expect("run the last worker");
    assert!(
        out.status.success(),
        "the last worker failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() < Duration::from_secs(120));

    for n in 0..WORKFLOWS {
        let id = WorkflowId::new(format!("chain-{n}"));
        let summary = store.describe(&id).await.expect("describe");
        assert_eq!(
            summary.status,
            WorkflowStatus::Completed,
            "{id}: {:?}",
            summary.pause_reason
        );
        let output: u64 = summary.output.expect("output").decode().expect("a number");
        assert_eq!(output, expected(n * 7 + 1), "{id}: the output");
        let history = store.load_history(&id, Seq::ZERO).await.expect("history");
        let mut results: BTreeMap<Seq, usize> = BTreeMap::new();
        let mut scheduled = 0;
        let mut terminal = 0;
        for (i, e) in history.iter().enumerate() {
            assert_eq!(
                e.seq,
                Seq::new(i as u64 + 1),
                "{id}: events are numbered without gaps"
            );
            match &e.kind {
                EventKind::ActivityScheduled { .. } => scheduled += 1,
                EventKind::ActivityCompleted { activity_id, .. } => {
                    *results.entry(activity_id.0).or_default() += 1;
                }
                kind if kind.is_terminal() => terminal += 1,
                _ => {}
            }
        }
        assert_eq!(scheduled, STEPS as usize, "{id}: one schedule per step");
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
    // Every chain's activity ran at least once (its recorded result came from an execution),
    // and ran again only for attempts a kill interrupted: at most the probe's activity slots
    // per kill.
    let log = std::fs::read_to_string(&executions).expect("the executions log");
    let mut runs: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for line in log.lines() {
        let (workflow, activity) = line.rsplit_once(' ').expect("`workflow activity`");
        if workflow.starts_with("chain-") {
            let activity: u64 = activity.parse().expect("an activity id");
            *runs.entry((workflow.to_owned(), activity)).or_default() += 1;
        }
    }
    for n in 0..WORKFLOWS {
        let id = format!("chain-{n}");
        let history = store
            .load_history(&WorkflowId::new(id.clone()), Seq::ZERO)
            .await
            .expect("history");
        for e in &history {
            if let EventKind::ActivityCompleted { activity_id, .. } = &e.kind {
                assert!(
                    runs.get(&(id.clone(), activity_id.0.get()))
                        .is_some_and(|n| *n >= 1),
                    "{id}: {activity_id} has a result but never ran"
                );
            }
        }
    }
    let again: usize = runs.values().map(|n| n - 1).sum();
    eprintln!(
        "chain activities: {} executions of {} activities, {again} again after a kill",
        runs.values().sum::<usize>(),
        runs.len()
    );
    assert!(
        again <= KILLS * PROBE_ACTIVITY_SLOTS,
        "{again} re-executions: more than {KILLS} kills of {PROBE_ACTIVITY_SLOTS} attempts in flight explain"
    );
    for n in 0..FAMILIES {
        let id = WorkflowId::new(format!("family-{n}"));
        let summary = store.describe(&id).await.expect("describe");
        assert_eq!(
            summary.status,
            WorkflowStatus::Completed,
            "{id}: {:?}",
            summary.pause_reason
        );
        let chain = |salt: u64| {
            (0..FAMILY_STEPS).fold(salt, |acc, i| (acc * 31 + u64::from(i)) % 1_000_003)
        };
        let want = chain(n * 10) + chain(n * 10 + 1) + chain(n * 10 + 2);
        let output: u64 = summary.output.expect("output").decode().expect("a number");
        assert_eq!(output, want, "{id}: the output");
        let history = store.load_history(&id, Seq::ZERO).await.expect("history");
        let started = history
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ChildWorkflowScheduled { .. }))
            .count();
        let heard = history
            .iter()
            .filter(|e| matches!(e.kind, EventKind::ChildWorkflowCompleted { .. }))
            .count();
        assert_eq!(
            (started, heard),
            (3, 3),
            "{id}: each child started and heard once"
        );
        let children = store
            .list(&loom_storage::ListQuery {
                parent: Some(id.clone()),
                ..loom_storage::ListQuery::default()
            })
            .await
            .expect("children");
        assert_eq!(children.items.len(), 3, "{id}: no child started twice");
        assert!(
            children
                .items
                .iter()
                .all(|c| c.status == WorkflowStatus::Completed),
            "{id}: every child ended"
        );
    }
    for n in 0..LOOPERS {
        let id = WorkflowId::new(format!("looper-{n}"));
        let summary = store.describe(&id).await.expect("describe");
        assert_eq!(
            summary.status,
            WorkflowStatus::Completed,
            "{id}: {:?}",
            summary.pause_reason
        );
        let (want, runs) = expected_loop(n * 13 + 5);
        let output: u64 = summary.output.expect("output").decode().expect("a number");
        assert_eq!(output, want, "{id}: the output");
        assert_eq!(summary.run, runs, "{id}: no run lost, none added");
        let earlier = store.runs(&id).await.expect("runs");
        assert_eq!(
            earlier.len() as u32,
            runs - 1,
            "{id}: every earlier run kept"
        );
        for run in 1..=runs {
            let history = store.load_run(&id, run).await.expect("a run's history");
            let mut endings = 0;
            let (mut started, mut heard) = (0, 0);
            for (i, e) in history.iter().enumerate() {
                assert_eq!(e.seq, Seq::new(i as u64 + 1), "{id} run {run}: numbered");
                match &e.kind {
                    EventKind::ChildWorkflowScheduled { .. } => started += 1,
                    EventKind::ChildWorkflowCompleted { .. } => heard += 1,
                    kind if kind.ends_run() => endings += 1,
                    _ => {}
                }
            }
            assert_eq!(endings, 1, "{id} run {run}: one ending");
            assert_eq!((started, heard), (1, 1), "{id} run {run}: its child once");
            let continued = matches!(
                history.last().map(|e| &e.kind),
                Some(EventKind::WorkflowContinuedAsNew { .. })
            );
            assert_eq!(continued, run < runs, "{id} run {run}: how it ended");
        }
        let children = store
            .list(&loom_storage::ListQuery {
                parent: Some(id.clone()),
                ..loom_storage::ListQuery::default()
            })
            .await
            .expect("children");
        assert_eq!(
            children.items.len() as u32,
            runs,
            "{id}: one child per run, none started twice"
        );
        assert!(
            children
                .items
                .iter()
                .all(|c| c.status == WorkflowStatus::Completed),
            "{id}: every child ended"
        );
    }
}
