//! The shared conformance suite against SQLite, each case on a new file.

use std::sync::Arc;

use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::Storage;

async fn fresh() -> Arc<dyn Storage> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStorage::open(dir.path().join("loom.db"), SqliteOptions::default())
        .await
        .expect("open");
    // The directory lives as long as the test process; each case has its own.
    std::mem::forget(dir);
    Arc::new(store)
}

loom_storage::conformance_tests!(fresh);
