//! Test support (feature `testing`): a store in a fresh database of the test server, or a loud
//! skip when no server is reachable (a failure under `CI=true`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loom_storage::Storage;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use std::str::FromStr;
use tokio::sync::OnceCell;

use crate::{MysqlOptions, MysqlStorage};

/// The environment variable naming the test server.
pub const URL_VAR: &str = "LOOM_TEST_MYSQL_URL";
/// The test server used when the variable is not set.
pub const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// The test server's URL.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

static READY: OnceCell<bool> = OnceCell::const_new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The prefix of every database the tests make.
const PREFIX: &str = "loomtest_";

/// Whether the test server answers. The first call also drops the databases earlier test runs
/// left behind. Without a server: under `CI=true` this panics; otherwise it prints a loud
/// notice and returns `false`.
pub async fn server_available() -> bool {
    *READY
        .get_or_init(|| async {
            let url = url();
            let pool = match MySqlConnectOptions::from_str(&url) {
                Ok(options) => {
                    MySqlPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(Duration::from_secs(3))
                        .connect_with(options)
                        .await
                }
                Err(e) => Err(e),
            };
            match pool {
                Ok(pool) => {
                    let stale: Vec<String> = sqlx::query_scalar(
                        "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata
                         WHERE schema_name LIKE 'loomtest\\_%'",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
                    let mine = format!("{PREFIX}{}_", std::process::id());
                    for database in stale.iter().filter(|s| !s.starts_with(&mine)) {
                        let drop = format!("DROP DATABASE IF EXISTS `{database}`");
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
                    }
                    pool.close().await;
                    true
                }
                Err(e) => {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "MySQL is not reachable at {url} ({e}) and CI=true: the MySQL tests must run in CI"
                    );
                    // Straight to the process's stderr: the test harness hides what passing
                    // tests print, and this notice must be seen.
                    let notice = format!(
                        "\n!!! SKIPPED: the MySQL tests need a server at {url} ({e}); \
                         set {URL_VAR} to point at one. Nothing was tested against MySQL.\n\n"
                    );
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
                    false
                }
            }
        })
        .await
}

/// Creates a database unique to this process and call on the test server; returns its URL.
pub async fn fresh_database() -> String {
    let name = format!(
        "{PREFIX}{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let url = url();
    let options = MySqlConnectOptions::from_str(&url).expect("the test server's URL");
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("connect to the test server");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
    )))
    .execute(&pool)
    .await
    .expect("create a test database");
    pool.close().await;
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A store in a fresh database, or `None` (after a loud notice) when no server is reachable.
pub async fn fresh() -> Option<MysqlStorage> {
    fresh_with(MysqlOptions::default()).await
}

/// [`fresh`] with the given options.
pub async fn fresh_with(options: MysqlOptions) -> Option<MysqlStorage> {
    if !server_available().await {
        return None;
    }
    let url = fresh_database().await;
    Some(
        MysqlStorage::connect(&url, options)
            .await
            .expect("connect to the test database"),
    )
}

/// A store in a fresh database whose clock is `clock` rather than the server's, or `None`
/// when no server is reachable: for the differential test, which runs every backend on one
/// manual clock.
pub async fn fresh_on(clock: loom_storage::ManualClock) -> Option<Arc<dyn Storage>> {
    let options = MysqlOptions {
        clock: Some(Arc::new(clock)),
        readers: 1,
        ..MysqlOptions::default()
    };
    Some(Arc::new(fresh_with(options).await?))
}
