//! What the worker's end-to-end test files share: a fresh store of each backend, and a macro
//! that runs a scenario on each.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test files, each of which uses part of it"
)]

use std::sync::Arc;

use loom_sqlite::{SqliteOptions, SqliteStorage};
use loom_storage::{MemoryStorage, Storage};
use loom_worker::{Client, Worker};
use tokio::sync::oneshot;

/// A worker running in the background of a test, until [`stop`](Running::stop).
pub struct Running {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<loom_worker::MetricsSnapshot>,
}

impl Running {
    /// Stops the worker gracefully and waits for it.
    pub async fn stop(self) {
        self.stop_with_metrics().await;
    }

    /// Stops the worker gracefully, waits for it, and answers its counters.
    pub async fn stop_with_metrics(self) -> loom_worker::MetricsSnapshot {
        let _ = self.stop.send(());
        self.handle.await.expect("worker task")
    }
}

/// Runs `worker` in the background; answers its client and the handle that stops it.
pub fn run(worker: Worker) -> (Client, Running) {
    let client = worker.client();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker
            .run(async {
                let _ = rx.await;
            })
            .await
            .expect("worker runs")
    });
    (client, Running { stop, handle })
}

pub async fn memory() -> Option<Arc<dyn Storage>> {
    Some(Arc::new(MemoryStorage::new()))
}

pub async fn sqlite() -> Option<Arc<dyn Storage>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStorage::open(dir.path().join("loom.db"), SqliteOptions::default())
        .await
        .expect("open");
    std::mem::forget(dir);
    Some(Arc::new(store))
}

pub async fn redb() -> Option<Arc<dyn Storage>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = loom_redb::RedbStorage::open(dir.path().join("loom.redb"))
        .await
        .expect("open");
    std::mem::forget(dir);
    Some(Arc::new(store))
}

/// A store in a fresh schema of the test server; `None` (after a loud notice) without one.
pub async fn postgres() -> Option<Arc<dyn Storage>> {
    let store = loom_postgres::testing::fresh().await?;
    Some(Arc::new(store))
}

/// A store in a fresh database of the MySQL test server; `None` (after a loud notice) without
/// one.
pub async fn mysql() -> Option<Arc<dyn Storage>> {
    let store = loom_mysql::testing::fresh().await?;
    Some(Arc::new(store))
}

/// Makes one test per scenario and backend: `on_every_backend!(scenario, ...)` with each
/// `async fn scenario(store: Arc<dyn Storage>)`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        on_every_backend!(@on on_memory, memory, $($name),*);
        on_every_backend!(@on on_sqlite, sqlite, $($name),*);
        on_every_backend!(@on on_redb, redb, $($name),*);
        on_every_backend!(@on on_postgres, postgres, $($name),*);
        on_every_backend!(@on on_mysql, mysql, $($name),*);
    };
    (@on $module:ident, $fresh:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = super::$fresh().await else {
                        return;
                    };
                    super::$name(store).await;
                }
            )*
        }
    };
}
