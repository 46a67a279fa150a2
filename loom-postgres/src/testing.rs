//! Test support (feature `testing`): a store in a fresh schema of the test server, or a loud
//! skip when no server is reachable (a failure under `CI=true`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use tokio::sync::OnceCell;

use crate::{PostgresOptions, PostgresStorage};

/// The environment variable naming the test server.
pub const URL_VAR: &str = "LOOM_TEST_POSTGRES_URL";
/// The test server used when the variable is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test server's URL.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

static READY: OnceCell<bool> = OnceCell::const_new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether the test server answers. The first call also drops the schemas earlier test runs
/// left behind. Without a server: under `CI=true` this panics; otherwise it prints a loud
/// notice and returns `false`.
pub async fn server_available() -> bool {
    *READY
        .get_or_init(|| async {
            let url = url();
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(3))
                .connect(&url)
                .await;
            match pool {
                Ok(pool) => {
                    let stale: Vec<String> = sqlx::query_scalar(
                        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'loomtest\\_%'",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
                    let mine = format!("loomtest_{}_", std::process::id());
                    for schema in stale.iter().filter(|s| !s.starts_with(&mine)) {
                        let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
                    }
                    pool.close().await;
                    true
                }
                Err(e) => {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "PostgreSQL is not reachable at {url} ({e}) and CI=true: the PostgreSQL tests must run in CI"
                    );
                    // Straight to the process's stderr: the test harness hides what passing tests
                    // print, and this notice must be seen.
                    let notice = format!(
                        "\n!!! SKIPPED: the PostgreSQL tests need a server at {url} ({e}); \
                         set {URL_VAR} to point at one. Nothing was tested against PostgreSQL.\n\n"
                    );
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
                    false
                }
            }
        })
        .await
}

/// A schema name unique to this process and call.
pub fn fresh_schema() -> String {
    format!(
        "loomtest_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A store in a fresh schema, or `None` (after a loud notice) when no server is reachable.
pub async fn fresh() -> Option<PostgresStorage> {
    if !server_available().await {
        return None;
    }
    let options = PostgresOptions {
        schema: fresh_schema(),
        max_connections: 4,
        ..PostgresOptions::default()
    };
    Some(
        PostgresStorage::connect(&url(), options)
            .await
            .expect("connect to the test server"),
    )
}
