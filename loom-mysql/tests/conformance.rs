//! The shared conformance suite against a real MySQL or MariaDB server, each case in a
//! database of its own. The server is `LOOM_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`).

use std::sync::Arc;

use loom_storage::Storage;

async fn fresh() -> Option<Arc<dyn Storage>> {
    let store = loom_mysql::testing::fresh().await?;
    Some(Arc::new(store))
}

loom_storage::conformance_tests!(optional: fresh);
