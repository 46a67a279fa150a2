//! The worker: claims tasks, runs them, commits their results, and keeps its leases alive.
//!
//! The rooms: `config.rs` and `metrics.rs` (what a worker is told and what it counts),
//! `claim.rs` (the claim loops, chains of eagerly claimed steps, shutdown), `lease.rs` (the
//! leases held and their renewal), `workflow_task.rs` (replay, decide, commit) and
//! `activity_task.rs` (run an attempt, commit its result, decide the next task ahead).

mod activity_task;
mod claim;
mod config;
mod lease;
mod metrics;
mod retention;
mod schedules;
mod workflow_task;

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use loom_core::{
    Activation, ActivityContext, ActivityInfo, EventKind, Failure, LogLevel, Registry, Seq,
    Timestamp, WorkflowId, WorkflowMachine,
};
use loom_storage::{
    ActivityCommitted, ActivityTask, ActivityTaskCompletion, AfterActivity, ClaimRequest, Clock,
    DecidedTask, Lease, Release, Storage, StorageError, TaskId, WorkflowTask,
    WorkflowTaskCompletion,
};
use lru::LruCache;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info_span, warn};

use crate::client::Client;
use crate::telemetry::{AttemptOutcome, PauseReason, Refusal, RunOutcome, TaskKind};

pub use config::{Limits, Retention, WorkerConfig};
pub use metrics::{MetricsSnapshot, WorkerMetrics};

use claim::*;
use workflow_task::*;

/// Runs workflows and activities from a [`Storage`]. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

struct Shared {
    storage: Arc<dyn Storage>,
    registry: Registry,
    config: WorkerConfig,
    clock: Arc<dyn Clock>,
    metrics: Arc<WorkerMetrics>,
    /// Wakes the workflow loop: a message arrived for some workflow in this process.
    workflow_work: Arc<Notify>,
    /// Wakes the activity loop: a workflow task scheduled activities.
    activity_work: Notify,
    /// Wakes clients waiting for results: some workflow ended.
    finished: Arc<Notify>,
    cache: Mutex<Option<LruCache<WorkflowId, WorkflowMachine>>>,
    /// Leases of the tasks running now, kept current by renewal, released on shutdown.
    leases: Mutex<BTreeMap<TaskId, Lease>>,
    /// Free workflow-task slots; a task holds one while it runs.
    workflow_slots: Arc<Semaphore>,
    /// Free activity slots.
    activity_slots: Arc<Semaphore>,
    /// Set when shutdown begins: running tasks finish, but no commit claims another.
    stopping: AtomicBool,
    /// Tasks running now, workflow tasks and activity attempts: the load eager steps heed.
    running: [AtomicUsize; 2],
    /// The seeded generator of every random choice, when the configuration names a seed;
    /// otherwise they come from the operating system.
    rng: Option<Mutex<StdRng>>,
    /// Set when a `run` future was dropped before it ended: its tasks were cut off where
    /// they stood, and their leases and counts with them.
    abandoned: AtomicBool,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The worker was asked to run with a registry that has no workflow types.
    #[error("no workflow types are registered")]
    EmptyRegistry,
    /// An earlier `run` of this worker was dropped before it ended, as a dead process stops:
    /// its in-memory state is not to be trusted. Make a new `Worker`.
    #[error("an earlier run of this worker was dropped before it ended; make a new worker")]
    Abandoned,
}

impl Worker {
    /// A worker for the types in `registry`, on `storage`, with the default configuration.
    pub fn new(storage: Arc<dyn Storage>, registry: Registry) -> Self {
        Self::with_config(storage, registry, WorkerConfig::default())
    }

    /// A worker with an explicit configuration.
    pub fn with_config(
        storage: Arc<dyn Storage>,
        registry: Registry,
        config: WorkerConfig,
    ) -> Self {
        let cache = NonZeroUsize::new(config.cache_capacity).map(LruCache::new);
        // With telemetry, every store call is timed on its way through.
        let storage: Arc<dyn Storage> = match &config.telemetry {
            Some(t) => Arc::new(crate::telemetry::Instrumented {
                inner: storage,
                telemetry: t.clone(),
            }),
            None => storage,
        };
        Worker {
            shared: Arc::new(Shared {
                workflow_slots: Arc::new(Semaphore::new(config.workflow_concurrency.max(1))),
                activity_slots: Arc::new(Semaphore::new(config.activity_concurrency.max(1))),
                stopping: AtomicBool::new(false),
                running: [AtomicUsize::new(0), AtomicUsize::new(0)],
                rng: config
                    .random_seed
                    .map(|s| Mutex::new(StdRng::seed_from_u64(s))),
                abandoned: AtomicBool::new(false),
                storage,
                registry,
                clock: config.clock.clone(),
                metrics: Arc::new(WorkerMetrics::default()),
                workflow_work: Arc::new(Notify::new()),
                activity_work: Notify::new(),
                finished: Arc::new(Notify::new()),
                cache: Mutex::new(cache),
                leases: Mutex::new(BTreeMap::new()),
                config,
            }),
        }
    }

    /// A client on the same storage and clock that wakes this worker as soon as it starts or
    /// signals a workflow, and is woken as soon as this worker ends one.
    pub fn client(&self) -> Client {
        Client::new(self.shared.storage.clone())
            .with_limits(self.shared.config.limits)
            .with_clock(self.shared.clock.clone())
            .with_notifiers(
                self.shared.workflow_work.clone(),
                self.shared.finished.clone(),
            )
    }

    /// The worker's counters.
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        self.shared.metrics.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// Drops every cached machine, so the next task of each workflow replays its history.
    pub fn clear_cache(&self) {
        if let Some(cache) = self.shared.cache_guard().as_mut() {
            cache.clear();
        }
    }

    /// Runs until `shutdown` resolves, then stops claiming, lets running tasks finish for up
    /// to the configured grace period, cancels the rest and releases their leases so that
    /// another worker can take them at once.
    ///
    /// Dropping the returned future instead stops everything the worker runs at once, as if
    /// its process died: nothing is committed or released, and its leases lapse. Such a
    /// worker is done: a later `run` answers [`WorkerError::Abandoned`].
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<MetricsSnapshot, WorkerError> {
        if self.shared.registry.workflow_names().next().is_none() {
            return Err(WorkerError::EmptyRegistry);
        }
        if self.shared.abandoned.load(Ordering::SeqCst) {
            return Err(WorkerError::Abandoned);
        }
        // Marks the worker abandoned if this future is dropped before the end below.
        struct Abandon<'a>(&'a AtomicBool, bool);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
        }
        let mut abandon = Abandon(&self.shared.abandoned, true);
        let (stop_tx, stop_rx) = watch::channel(false);
        // A `JoinSet`, so that dropping this future aborts the loops (and, with them, the
        // tasks they run).
        let mut loops = JoinSet::new();
        loops.spawn(
            self.shared
                .clone()
                .claim_loop(Kind::Workflow, stop_rx.clone()),
        );
        loops.spawn(
            self.shared
                .clone()
                .claim_loop(Kind::Activity, stop_rx.clone()),
        );
        if self.shared.config.schedules {
            loops.spawn(self.shared.clone().schedule_loop(stop_rx.clone()));
        }
        if let Some(r) = self.shared.config.retention.clone() {
            loops.spawn(self.shared.clone().retention_loop(r, stop_rx));
        }
        shutdown.await;
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        self.shared.workflow_work.notify_one();
        self.shared.activity_work.notify_one();
        while let Some(ended) = loops.join_next().await {
            if let Err(e) = ended {
                warn!(error = %e, "a worker loop ended abnormally");
            }
        }
        // The workflows it kept cached go to other workers at once, not after the window.
        if self.shared.affinity().is_some()
            && let Err(e) = self
                .shared
                .storage
                .forget_affinity(&self.shared.config.id)
                .await
        {
            warn!(error = %e, "could not give up this worker's affinities; they lapse on their own");
        }
        abandon.1 = false;
        Ok(self.shared.metrics.snapshot())
    }

    /// Runs until no task is ready, running, or due within `horizon`, and no schedule is due
    /// or fires within it: for scripts and tests.
    pub async fn run_until_idle(&self, horizon: Duration) -> Result<MetricsSnapshot, WorkerError> {
        let shared = self.shared.clone();
        let idle = async move {
            let mut quiet = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if shared.is_idle(horizon).await {
                    quiet += 1;
                    // Two looks in a row, so work committed between them is seen.
                    if quiet >= 2 {
                        return;
                    }
                } else {
                    quiet = 0;
                }
            }
        };
        self.run(idle).await
    }
}

/// A future that resolves on Ctrl-C or, on Unix, SIGTERM: pass it to [`Worker::run`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

impl Shared {
    /// Where metrics go, if anywhere.
    pub(super) fn telemetry(&self) -> Option<&crate::Telemetry> {
        self.config.telemetry.as_deref()
    }

    /// A random 64-bit number: from the seeded generator if there is one.
    pub(super) fn random_u64(&self) -> u64 {
        match &self.rng {
            Some(rng) => rng.lock().unwrap_or_else(PoisonError::into_inner).random(),
            None => rand::random(),
        }
    }

    /// A random number in `[0, 1)`: from the seeded generator if there is one.
    pub(super) fn random_unit(&self) -> f64 {
        match &self.rng {
            Some(rng) => rng.lock().unwrap_or_else(PoisonError::into_inner).random(),
            None => rand::random(),
        }
    }

    pub(super) fn cache_guard(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<LruCache<WorkflowId, WorkflowMachine>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn is_idle(&self, horizon: Duration) -> bool {
        if self.metrics.running.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let Ok(stats) = self.storage.stats().await else {
            return false;
        };
        let soon = stats.at.saturating_add(horizon);
        let tasks_idle = stats.workflow_tasks_ready == 0
            && stats.activity_tasks_ready == 0
            && stats.workflow_tasks_running == 0
            && stats.activity_tasks_running == 0
            && stats.next_due_at.is_none_or(|t| t > soon);
        if !tasks_idle || !self.config.schedules {
            return tasks_idle;
        }
        // A schedule due now, or firing within the horizon, is work too.
        match self.storage.due_schedules(64).await {
            // Due schedules of types this worker lacks are left to workers that have them.
            Ok(due) => !due.due.iter().any(|s| self.knows(s)) && due.next.is_none_or(|t| t > soon),
            Err(_) => false,
        }
    }

    pub(super) fn claim_request(&self, max: usize) -> ClaimRequest {
        ClaimRequest::new(self.config.id.clone(), max, self.config.lease)
    }

    /// The affinity this worker asks for with a commit whose workflow it keeps cached: none
    /// without a cache, a window, or a store that tells the owner of its task at once.
    pub(super) fn affinity(&self) -> Option<loom_storage::Affinity> {
        (self.config.cache_capacity > 0
            && !self.config.affinity_window.is_zero()
            && self.storage.signals_work())
        .then(|| loom_storage::Affinity::new(self.config.id.clone(), self.config.affinity_window))
    }
}
