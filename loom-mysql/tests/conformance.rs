//! The shared conformance suite against a real MySQL or MariaDB server, each case in a
//! database of its own. The server is `LOOM_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`).
//!
//! The suite runs twice: with the server-side applier (`loom_apply`, the default), and with
//! every write set applied from the client's side, which the backend falls back to when the
//! applier refuses a batch and uses for what the applier does not take.

use std::sync::Arc;

use loom_storage::Storage;

async fn fresh() -> Option<Arc<dyn Storage>> {
    let store = loom_mysql::testing::fresh().await?;
    Some(Arc::new(store))
}

loom_storage::conformance_tests!(optional: fresh);

/// The same cases with `server_apply: false`.
mod applied_from_the_client {
    use std::sync::Arc;

    use loom_mysql::MysqlOptions;
    use loom_storage::Storage;

    async fn fresh() -> Option<Arc<dyn Storage>> {
        let options = MysqlOptions {
            server_apply: false,
            ..MysqlOptions::default()
        };
        let store = loom_mysql::testing::fresh_with(options).await?;
        Some(Arc::new(store))
    }

    loom_storage::conformance_tests!(optional: fresh);
}
