//! Several worker processes on one PostgreSQL database: every workflow completes exactly once;
//! a worker frozen with SIGSTOP past its lease has its late commits refused; killing every
//! database connection mid-run loses nothing. Against the real server in
//! `LOOM_TEST_POSTGRES_URL` (skipped loudly without one, failing under `CI=true`).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
use loom_postgres::{PostgresOptions, PostgresStorage, testing};
use loom_storage::{Storage, WorkflowStatus};

const WORKFLOWS: u64 = 240;
const STEPS: u32 = 6;
const WORKERS: usize = 3;

fn expected(salt: u64) -> u64 {
    (0..STEPS).fold(salt, |acc, i| (acc * 31 + u64::from(i)) % 1_000_003)
}

fn worker(url: &str, schema: &str, id: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_loom-worker-probe"))
        .args(["run", url])
        .env("LOOM_PROBE_SCHEMA", schema)
        .env("LOOM_PROBE_WORKER_ID", id)
        .stdout(Stdio::piped())
        .stderr(worker_log(id))
        .spawn()
        .expect("spawn a worker process")
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

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{sig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_share_one_database_without_duplicates_or_losses() {
    if !testing::server_available().await {
        return;
    }
    let url = testing::url();
    let schema = testing::fresh_schema();
    let options = PostgresOptions {
        schema: schema.clone(),
        max_connections: 4,
        ..PostgresOptions::default()
    };
    let store = PostgresStorage::connect(&url, options)
        .await
        .expect("connect");
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
    let ids: Vec<String> = (0..WORKERS).map(|i| format!("{schema}-w{i}")).collect();
    let mut children: Vec<Child> = ids.iter().map(|id| worker(&url, &schema, id)).collect();

    // Freeze worker 0 while it holds leases, past their 600 ms length. A lease seen just before
    // the STOP may be released by a commit already on its way, so the count that decides is
    // taken after the STOP, once anything in flight has landed; without a live lease then, the
    // worker is let go and caught again.
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("admin connection");
    let held_by_worker_0 = async || -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {schema}.tasks WHERE lease_owner = $1 AND lease_expires_at > {schema}.loom_now_ms()"
        )))
        .bind(&ids[0])
        .fetch_one(&admin)
        .await
        .expect("count leases")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "worker 0 was never frozen holding a lease"
        );
        if held_by_worker_0().await == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        signal(&children[0], "STOP");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if held_by_worker_0().await > 0 {
            break;
        }
        signal(&children[0], "CONT");
    }
    tokio::time::sleep(Duration::from_millis(1_400)).await;
    signal(&children[0], "CONT");

    // Cut every Loom connection to the database in the middle of the run.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'loom' AND pid <> pg_backend_pid()",
    )
    .fetch_all(&admin)
    .await
    .expect("find connections");
    for pid in &cut {
        let _ = sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&admin)
            .await;
    }
    assert!(!cut.is_empty(), "there were connections to cut");

    // Everything completes.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = store.stats().await;
        let done = stats
            .as_ref()
            .map(|s| {
                s.workflows
                    .get(&WorkflowStatus::Completed)
                    .copied()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        if done == WORKFLOWS {
            break;
        }
        if Instant::now() >= deadline {
            let stuck = stuck_workflows(&admin, &schema).await;
            panic!("only {done} of {WORKFLOWS} workflows completed; the others:\n{stuck}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stop the workers and read their counters.
    let mut refused = Vec::new();
    for child in &children {
        signal(child, "TERM");
    }
    for child in children.iter_mut() {
        let out = std::io::read_to_string(child.stdout.take().expect("stdout")).expect("read");
        child.wait().expect("reap");
        let report: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("a worker printed no report ({e}): {out:?}"));
        let n = |k: &str| report[k].as_u64().unwrap_or(0);
        refused.push((n("commits_refused") + n("leases_lost"), n("workflow_tasks")));
    }
    assert!(
        refused[0].0 > 0,
        "the frozen worker's late work was refused: {refused:?}"
    );
    assert!(
        refused.iter().filter(|(_, tasks)| *tasks > 0).count() >= 2,
        "the work was shared: {refused:?}"
    );

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

/// For a failure message: each unfinished workflow with its last event and its task rows.
async fn stuck_workflows(admin: &sqlx::PgPool, schema: &str) -> String {
    let rows: Vec<(String, String, i64, String, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT w.id, w.status, w.last_seq, \
                    COALESCE((SELECT e.kind FROM {schema}.events e \
                              WHERE e.workflow_id = w.id ORDER BY e.seq DESC LIMIT 1), ''), \
                    COALESCE((SELECT string_agg(format('kind %s visible %s owner %s token %s deliveries %s', \
                                     t.kind, t.visible_at, t.lease_owner, t.lease_token, t.deliveries), '; ') \
                              FROM {schema}.tasks t WHERE t.workflow_id = w.id), 'no task') \
                    || ' / messages ' || (SELECT COUNT(*) FROM {schema}.messages m WHERE m.workflow_id = w.id) \
                    || ' / now ' || {schema}.loom_now_ms() \
             FROM {schema}.workflows w WHERE w.status <> 'completed' ORDER BY w.id LIMIT 20"
        )))
        .fetch_all(admin)
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|(id, status, seq, last, tasks)| {
            let last: String = last.chars().take(160).collect();
            format!("{id} {status} last_seq {seq}: {last} | {tasks}\n")
        })
        .collect()
}
