//! The differential test against redb: generated sequences of operations must give the same
//! answers and state as `MemoryStorage` (see `loom_storage::conformance::differential`).

use std::sync::Arc;

use loom_redb::RedbStorage;
use loom_storage::Storage;
use loom_storage::conformance::differential;

#[test]
fn redb_agrees_with_the_reference() {
    differential::check(|clock| async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RedbStorage::open_with_clock(dir.path().join("diff.redb"), Arc::new(clock))
            .await
            .expect("open");
        std::mem::forget(dir);
        Some(Arc::new(store) as Arc<dyn Storage>)
    });
}
