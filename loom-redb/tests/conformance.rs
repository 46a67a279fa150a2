//! The shared conformance suite against redb, each case on a new file.

use std::sync::Arc;

use loom_redb::RedbStorage;
use loom_storage::Storage;

async fn fresh() -> Arc<dyn Storage> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStorage::open(dir.path().join("loom.redb"))
        .await
        .expect("open");
    std::mem::forget(dir);
    Arc::new(store)
}

loom_storage::conformance_tests!(fresh);
