//! The differential test against SQLite: generated sequences of operations must give the same
//! answers and state as `MemoryStorage` (see `loom_storage::conformance::differential`).

use std::sync::Arc;

use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::Storage;
use loom_storage::conformance::differential;

#[test]
fn sqlite_agrees_with_the_reference() {
    differential::check(|clock| async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteOptions {
            clock: Arc::new(clock),
            ..SqliteOptions::default()
        };
        let store = SqliteStorage::open(dir.path().join("diff.db"), options)
            .await
            .expect("open");
        // The file lives as long as the test process.
        std::mem::forget(dir);
        Some(Arc::new(store) as Arc<dyn Storage>)
    });
}
