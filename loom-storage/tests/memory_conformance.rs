//! The conformance suite against `MemoryStorage`.

use std::sync::Arc;

use loom_storage::{MemoryStorage, Storage};

loom_storage::conformance_tests!(|| async { Arc::new(MemoryStorage::new()) as Arc<dyn Storage> });

/// The single-test form runs the same cases; it also keeps the case list and `run_all` honest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_cases_in_one_test() {
    loom_storage::conformance::run_all(|| async {
        Arc::new(MemoryStorage::new()) as Arc<dyn Storage>
    })
    .await;
}
