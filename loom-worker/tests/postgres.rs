//! Several worker processes on one PostgreSQL database: every workflow completes exactly once;
//! a worker frozen with SIGSTOP past its lease has its late commits refused; killing every
//! database connection mid-run loses nothing. Against the real server in
//! `LOOM_TEST_POSTGRES_URL` (skipped loudly without one, failing under `CI=true`).

use std::time::{Duration, Instant};

use loom_postgres::{PostgresOptions, PostgresStorage, testing};

#[path = "support/fleet.rs"]
mod fleet;

use fleet::{WORKERS, WORKFLOWS};

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
    fleet::create_chains(&store).await;
    let ids: Vec<String> = (0..WORKERS).map(|i| format!("{schema}-w{i}")).collect();
    let mut children = fleet::Fleet::start(&url, &[("LOOM_PROBE_SCHEMA", &schema)], &ids);

    // Freeze worker 0 while it holds leases, past their length.
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
    fleet::freeze_while_holding(&children.0[0], held_by_worker_0).await;

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
        let done = fleet::completed(&store).await;
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
    let refused = fleet::stop(&mut children);
    assert!(
        refused[0].0 > 0,
        "the frozen worker's late work was refused: {refused:?}"
    );
    assert!(
        refused.iter().filter(|(_, tasks)| *tasks > 0).count() >= 2,
        "the work was shared: {refused:?}"
    );

    fleet::check_chains(&store).await;
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
