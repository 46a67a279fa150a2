//! The shared conformance suite against a real PostgreSQL server, each case in its own schema.
//! The server is `LOOM_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

use std::sync::Arc;

use loom_storage::Storage;

async fn fresh() -> Option<Arc<dyn Storage>> {
    let store = loom_postgres::testing::fresh().await?;
    Some(Arc::new(store))
}

loom_storage::conformance_tests!(optional: fresh);
