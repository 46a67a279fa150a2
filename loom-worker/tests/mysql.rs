//! Several worker processes on one MySQL (here MariaDB) database: every workflow completes
//! exactly once; a worker frozen with SIGSTOP past its lease has its late commits refused;
//! killing every connection mid-run (`KILL` on each connection id) loses nothing. Against the
//! real server in `LOOM_TEST_MYSQL_URL` (skipped loudly without one, failing under `CI=true`).

use std::str::FromStr;
use std::time::{Duration, Instant};

use loom_mysql::{MysqlOptions, MysqlStorage, testing};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

#[path = "support/fleet.rs"]
mod fleet;

use fleet::{WORKERS, WORKFLOWS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_share_one_database_without_duplicates_or_losses() {
    if !testing::server_available().await {
        return;
    }
    let url = testing::fresh_database().await;
    let store = MysqlStorage::connect(&url, MysqlOptions::default())
        .await
        .expect("connect");
    fleet::create_chains(&store).await;
    let database = url.rsplit('/').next().expect("a database").to_owned();
    let ids: Vec<String> = (0..WORKERS).map(|i| format!("{database}-w{i}")).collect();
    let mut children = fleet::Fleet::start(&url, &[], &ids);

    // Freeze worker 0 while it holds leases, past their length.
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(MySqlConnectOptions::from_str(&url).expect("url"))
        .await
        .expect("admin connection");
    let held_by_worker_0 = async || -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE lease_owner = ?
             AND lease_expires_at > CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)",
        )
        .bind(ids[0].as_bytes())
        .fetch_one(&admin)
        .await
        .expect("count leases")
    };
    fleet::freeze_while_holding(&children.0[0], held_by_worker_0).await;

    // Kill every other connection to the database in the middle of the run: the workers'
    // writers and readers, and this test's store's.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()",
    )
    .fetch_all(&admin)
    .await
    .expect("find connections");
    for id in &cut {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))
            .execute(&admin)
            .await;
    }
    assert!(
        cut.len() > WORKERS,
        "there were connections to kill: {cut:?}"
    );

    // Everything completes.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = fleet::completed(&store).await;
        if done == WORKFLOWS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {WORKFLOWS} workflows completed"
        );
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
