//! The worker: claims tasks, runs them, commits their results, and keeps its leases alive.

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use loom_core::{
    Activation, ActivityContext, ActivityInfo, EventKind, Failure, LogLevel, Registry, Seq,
    Timestamp, WorkflowId, WorkflowMachine,
};
use loom_storage::{
    ActivityCommitted, ActivityTask, ActivityTaskCompletion, AfterActivity, ClaimRequest, Clock,
    DecidedTask, Lease, Release, Storage, StorageError, SystemClock, TaskId, WorkflowTask,
    WorkflowTaskCompletion,
};
use lru::LruCache;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info_span, warn};

use crate::client::Client;

/// How a worker behaves. `Default` suits most uses; tests shorten the times.
#[derive(Clone)]
pub struct WorkerConfig {
    /// This worker's name in leases and logs.
    pub id: String,
    /// Workflow tasks run at once.
    pub workflow_concurrency: usize,
    /// Activity attempts run at once.
    pub activity_concurrency: usize,
    /// How long to wait between polls when no work is known; local work wakes the worker at
    /// once, so this only bounds how late work from other processes is noticed.
    pub poll_interval: Duration,
    /// The lease taken on each task; renewed at a third of it while the task runs.
    pub lease: Duration,
    /// On shutdown, how long running tasks may take before they are cancelled and their
    /// leases released.
    pub shutdown_grace: Duration,
    /// Workflows kept in memory between tasks (sticky execution); 0 disables the cache.
    pub cache_capacity: usize,
    /// How long a paused workflow (non-determinism, a panic, an unknown type) waits before it
    /// is tried again.
    pub pause_retry: Duration,
    /// A task handed out more times than this without completing (it crashed or hung its
    /// workers each time) is parked: a workflow is paused, an activity attempt fails.
    pub max_deliveries: u32,
    /// This worker's clock. It only measures spans here (heartbeats, the time an activity
    /// took): every time that is stored comes from the store's clock. Tests share a
    /// [`ManualClock`](loom_storage::ManualClock) with an embedded store to move time instead
    /// of sleeping.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("id", &self.id)
            .field("workflow_concurrency", &self.workflow_concurrency)
            .field("activity_concurrency", &self.activity_concurrency)
            .field("poll_interval", &self.poll_interval)
            .field("lease", &self.lease)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("cache_capacity", &self.cache_capacity)
            .field("pause_retry", &self.pause_retry)
            .field("max_deliveries", &self.max_deliveries)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: format!(
                "worker-{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().to_string()[..8]
            ),
            workflow_concurrency: 8,
            activity_concurrency: 32,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            cache_capacity: 10_000,
            pause_retry: Duration::from_secs(60),
            max_deliveries: 5,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Counters of a worker's work so far.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Workflow tasks committed.
    pub workflow_tasks: AtomicU64,
    /// Workflow tasks that could not be decided (non-determinism, panic) and paused the run.
    pub workflow_tasks_paused: AtomicU64,
    /// Workflows that ended while this worker ran them.
    pub workflows_finished: AtomicU64,
    /// Activity attempts that succeeded.
    pub activities_completed: AtomicU64,
    /// Activity attempts that failed or timed out (retried or not).
    pub activities_failed: AtomicU64,
    /// Commits refused because the lease was lost or the history moved on.
    pub commits_refused: AtomicU64,
    /// Leases found lost while renewing them (the work was abandoned before committing).
    pub leases_lost: AtomicU64,
    /// Machines reused from the sticky cache.
    pub cache_hits: AtomicU64,
    /// Histories loaded and replayed because no current machine was cached.
    pub cache_misses: AtomicU64,
    /// Tasks a commit handed straight to this worker (eager dispatch), skipping a claim.
    pub eager_tasks: AtomicU64,
    /// Workflow tasks decided ahead from an activity's result and committed with it.
    pub decided_ahead: AtomicU64,
    /// Tasks running now.
    pub running: AtomicI64,
}

impl WorkerMetrics {
    /// A copy of the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            workflow_tasks: get(&self.workflow_tasks),
            workflow_tasks_paused: get(&self.workflow_tasks_paused),
            workflows_finished: get(&self.workflows_finished),
            activities_completed: get(&self.activities_completed),
            activities_failed: get(&self.activities_failed),
            commits_refused: get(&self.commits_refused),
            leases_lost: get(&self.leases_lost),
            cache_hits: get(&self.cache_hits),
            cache_misses: get(&self.cache_misses),
            eager_tasks: get(&self.eager_tasks),
            decided_ahead: get(&self.decided_ahead),
            running: self.running.load(Ordering::Relaxed).max(0).unsigned_abs(),
        }
    }
}

/// The counters of [`WorkerMetrics`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[expect(
    missing_docs,
    reason = "the fields mirror WorkerMetrics, documented there"
)]
pub struct MetricsSnapshot {
    pub workflow_tasks: u64,
    pub workflow_tasks_paused: u64,
    pub workflows_finished: u64,
    pub activities_completed: u64,
    pub activities_failed: u64,
    pub commits_refused: u64,
    pub leases_lost: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub eager_tasks: u64,
    pub decided_ahead: u64,
    pub running: u64,
}

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
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The worker was asked to run with a registry that has no workflow types.
    #[error("no workflow types are registered")]
    EmptyRegistry,
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
        Worker {
            shared: Arc::new(Shared {
                workflow_slots: Arc::new(Semaphore::new(config.workflow_concurrency.max(1))),
                activity_slots: Arc::new(Semaphore::new(config.activity_concurrency.max(1))),
                stopping: AtomicBool::new(false),
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

    /// A client on the same storage that wakes this worker as soon as it starts or signals a
    /// workflow, and is woken as soon as this worker ends one.
    pub fn client(&self) -> Client {
        Client::new(self.shared.storage.clone()).with_notifiers(
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
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<MetricsSnapshot, WorkerError> {
        if self.shared.registry.workflow_names().next().is_none() {
            return Err(WorkerError::EmptyRegistry);
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let workflows = tokio::spawn(
            self.shared
                .clone()
                .claim_loop(Kind::Workflow, stop_rx.clone()),
        );
        let activities = tokio::spawn(self.shared.clone().claim_loop(Kind::Activity, stop_rx));
        shutdown.await;
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        self.shared.workflow_work.notify_one();
        self.shared.activity_work.notify_one();
        for handle in [workflows, activities] {
            if let Err(e) = handle.await {
                warn!(error = %e, "a worker loop ended abnormally");
            }
        }
        Ok(self.shared.metrics.snapshot())
    }

    /// Runs until no task is ready, running, or due within `horizon`: for scripts and tests.
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

/// Exponential backoff for storage errors: the database going away is waited out, never
/// turned into a workflow failure.
struct Backoff(Duration);

impl Backoff {
    const START: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff(Self::START)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }

    fn reset(&mut self) {
        self.0 = Self::START;
    }
}

impl Shared {
    fn cache_guard(
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
        stats.workflow_tasks_ready == 0
            && stats.activity_tasks_ready == 0
            && stats.workflow_tasks_running == 0
            && stats.activity_tasks_running == 0
            && stats.next_due_at.is_none_or(|t| t > soon)
    }

    fn claim_request(&self, max: usize) -> ClaimRequest {
        ClaimRequest::new(self.config.id.clone(), max, self.config.lease)
    }

    /// Claims tasks of one kind as slots free up and runs each under a renewed lease, until
    /// stopped; then drains what is running.
    ///
    /// The slots are taken before the claim, never after: a claimed task starts at once, so
    /// its lease is renewed from the moment it is granted. (Claiming first and then waiting
    /// for a slot let a task's lease lapse unrenewed while a chain held the slot, and another
    /// worker ran it too.) The slots go back while the loop waits for work, so a chain can
    /// borrow them for its next step meanwhile.
    async fn claim_loop(self: Arc<Self>, kind: Kind, stop: watch::Receiver<bool>) {
        let (slots, wake) = match kind {
            Kind::Workflow => (self.workflow_slots.clone(), &*self.workflow_work),
            Kind::Activity => (self.activity_slots.clone(), &self.activity_work),
        };
        let mut running = JoinSet::new();
        let mut backoff = Backoff::new();
        while !*stop.borrow() {
            while running.try_join_next().is_some() {}
            // At least one slot (waiting for a task or a chain step to end), then every
            // other free one.
            let mut permits = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = wait_stop(stop.clone()) => break,
            };
            let more = slots.available_permits();
            if more > 0
                && let Ok(p) = slots
                    .clone()
                    .try_acquire_many_owned(u32::try_from(more).unwrap_or(u32::MAX))
            {
                permits.merge(p);
            }
            let req = self.claim_request(permits.num_permits());
            let claimed = match kind {
                Kind::Workflow => self
                    .storage
                    .claim_workflow_tasks(&req)
                    .await
                    .map(|ts| ts.into_iter().map(Claimed::Workflow).collect::<Vec<_>>()),
                Kind::Activity => self
                    .storage
                    .claim_activity_tasks(&req)
                    .await
                    .map(|ts| ts.into_iter().map(Claimed::Activity).collect()),
            };
            let tasks = match claimed {
                Ok(tasks) => {
                    backoff.reset();
                    tasks
                }
                Err(e) => {
                    drop(permits);
                    warn!(error = %e, ?kind, "claiming tasks failed; backing off");
                    backoff.wait().await;
                    continue;
                }
            };
            if tasks.is_empty() {
                drop(permits);
                tokio::select! {
                    () = wake.notified() => {}
                    () = self.storage.work_signal() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    () = wait_stop(stop.clone()) => break,
                }
                continue;
            }
            for task in tasks {
                let Some(permit) = permits.split(1) else {
                    // More than asked for (no backend does this): give it back at once.
                    let _ = self
                        .storage
                        .release_task(&task.lease(), Release::default())
                        .await;
                    continue;
                };
                self.track(task.lease());
                running.spawn(self.clone().run_chain(task, permit));
            }
            // Unused slots (fewer tasks than asked for) go back as `permits` drops.
        }
        self.drain(running).await;
    }

    /// Lets running tasks finish within the grace period, then cancels the rest and releases
    /// their leases so another worker takes them at once.
    async fn drain(&self, mut running: JoinSet<()>) {
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = running.join_next() => if next.is_none() { return },
                () = &mut grace => break,
            }
        }
        running.abort_all();
        while running.join_next().await.is_some() {}
        let leases: Vec<Lease> = std::mem::take(&mut *self.leases_guard())
            .into_values()
            .collect();
        for lease in leases {
            self.metrics.running.fetch_sub(1, Ordering::SeqCst);
            if let Err(e) = self.storage.release_task(&lease, Release::default()).await {
                debug!(task = %lease.task, error = %e, "could not release a lease on shutdown");
            }
        }
    }

    fn leases_guard(&self) -> std::sync::MutexGuard<'_, BTreeMap<TaskId, Lease>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn track(&self, lease: Lease) {
        self.leases_guard().insert(lease.task, lease);
    }

    fn untrack(&self, task: TaskId) {
        self.leases_guard().remove(&task);
    }

    /// Runs a claimed task, then the task its commit claimed eagerly (the workflow task an
    /// activity's result woke, the activity a workflow task scheduled), and so on: one
    /// workflow's sequential steps follow each other without a trip through the claim loops.
    /// Each task holds a slot of its kind while it runs.
    async fn run_chain(self: Arc<Self>, mut task: Claimed, mut permit: OwnedSemaphorePermit) {
        loop {
            let (lease, span) = (task.lease(), task.span());
            self.track(lease);
            self.metrics.running.fetch_add(1, Ordering::SeqCst);
            let work = match task {
                Claimed::Workflow(t) => self.clone().workflow_task(t).boxed(),
                Claimed::Activity(t) => self.clone().activity_task(t).boxed(),
            };
            let next = self
                .clone()
                .with_renewal(lease, work)
                .instrument(span)
                .await
                .flatten();
            self.untrack(lease.task);
            self.metrics.running.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            match next {
                Some(Next(t, p)) => (task, permit) = (t, p),
                None => return,
            }
        }
    }

    /// Runs `work` while renewing its lease every third of the lease. If the lease is lost,
    /// the work is dropped (`None`): whatever it would commit would be refused anyway.
    async fn with_renewal<T>(
        self: Arc<Self>,
        lease: Lease,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let renew = async {
            let mut current = lease;
            loop {
                tokio::time::sleep(self.config.lease / 3).await;
                match self.storage.renew_lease(&current, self.config.lease).await {
                    Ok(renewed) => {
                        current = renewed;
                        self.leases_guard().insert(renewed.task, renewed);
                    }
                    Err(StorageError::LeaseLost(_)) => {
                        self.metrics.leases_lost.fetch_add(1, Ordering::Relaxed);
                        warn!(task = %lease.task, "lease lost while the task ran; abandoning it");
                        return;
                    }
                    Err(e) => debug!(error = %e, "renewing a lease failed; will retry"),
                }
            }
        };
        tokio::select! {
            done = work => Some(done),
            () = renew => None,
        }
    }

    fn current_lease(&self, lease: Lease) -> Lease {
        self.leases_guard()
            .get(&lease.task)
            .copied()
            .unwrap_or(lease)
    }

    async fn release_paused(&self, lease: Lease, reason: String) {
        self.metrics
            .workflow_tasks_paused
            .fetch_add(1, Ordering::Relaxed);
        let release = Release {
            after: self.config.pause_retry,
            pause: Some(reason),
        };
        if let Err(e) = self
            .storage
            .release_task(&self.current_lease(lease), release)
            .await
        {
            warn!(error = %e, "could not pause the workflow; its lease will lapse instead");
        }
    }

    /// Runs one workflow task; returns the activity its commit claimed eagerly, if any.
    async fn workflow_task(self: Arc<Self>, task: WorkflowTask) -> Option<Next> {
        let id = task.workflow_id.clone();
        if task.deliveries > self.config.max_deliveries {
            let reason = format!(
                "its task was handed out {} times without completing (it crashed or hung its worker each time)",
                task.deliveries
            );
            warn!(%reason, "pausing workflow");
            self.release_paused(task.lease, reason).await;
            return None;
        }
        let Some(def) = self.registry.workflow(&task.workflow_name).cloned() else {
            let known: Vec<&str> = self.registry.workflow_names().collect();
            let reason = format!(
                "this worker has no workflow type {:?} registered (it has: {})",
                task.workflow_name,
                known.join(", ")
            );
            warn!(%reason, "pausing workflow");
            self.release_paused(task.lease, reason).await;
            return None;
        };
        let cached = self.cache_guard().as_mut().and_then(|c| c.pop(&id));
        let mut machine = match cached.filter(|m| m.last_seq() == task.last_seq) {
            Some(m) => {
                self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                m
            }
            None => {
                self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
                let history = match self.storage.load_history(&id, Seq::ZERO).await {
                    Ok(h) => h,
                    Err(e) => {
                        warn!(error = %e, "loading the history failed; the task will be retried");
                        let _ = self
                            .storage
                            .release_task(&self.current_lease(task.lease), Release::default())
                            .await;
                        return None;
                    }
                };
                if history.last().map(|e| e.seq) != Some(task.last_seq) {
                    // The claim and the history disagree (a store that is not read-your-writes
                    // across connections, or a fault): deciding now could consume a message
                    // the machine does not know. Give the task back and try again later.
                    debug!(
                        claimed = %task.last_seq,
                        loaded = history.len(),
                        "the history does not end where the claim said; retrying the task"
                    );
                    let release = Release {
                        after: self.config.poll_interval,
                        pause: None,
                    };
                    let _ = self
                        .storage
                        .release_task(&self.current_lease(task.lease), release)
                        .await;
                    return None;
                }
                match WorkflowMachine::new(def, id.clone(), history) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "the history cannot be replayed; pausing workflow");
                        self.release_paused(task.lease, e.to_string()).await;
                        return None;
                    }
                }
            }
        };
        // The task's time is the store's clock at the claim, never this worker's own.
        let activation = Activation {
            now: task.claimed_at,
            entropy: rand::random(),
            messages: task.messages.iter().map(|m| m.kind.clone()).collect(),
        };
        let decision = match machine.activate(activation) {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "the workflow task cannot be decided; pausing workflow");
                self.release_paused(task.lease, e.to_string()).await;
                return None;
            }
        };
        for (kind, reason) in &decision.dropped {
            debug!(message = kind.type_name(), %reason, last_seq = %task.last_seq, "dropped a message");
        }
        let scheduled = activities_scheduled(&decision.events);
        for line in &decision.logs {
            log_line(&id, line.level, &line.message);
        }
        let finished = machine.outcome().is_some();
        debug!(
            task = %task.lease.task,
            token = task.lease.token,
            from = %task.last_seq,
            to = %machine.last_seq(),
            consumed = ?task.messages.iter().map(|m| m.id.0).collect::<Vec<_>>(),
            "workflow task decided"
        );
        // With a free activity slot, the commit also claims one of the activities it
        // schedules, and this worker starts it without a trip through the claim loop.
        let slot = (scheduled > 0 && !finished)
            .then(|| self.eager_slot(&self.activity_slots))
            .flatten();
        let completion = WorkflowTaskCompletion {
            lease: self.current_lease(task.lease),
            workflow_id: id.clone(),
            expected_last_seq: task.last_seq,
            events: decision.events,
            consumed: task.messages.iter().map(|m| m.id).collect(),
            progress: Some(machine.progress()),
            logs: decision.logs,
            eager: slot.as_ref().map(|_| self.claim_request(1)),
        };
        let committed = self.storage.complete_workflow_task(completion).await;
        match committed {
            Ok(claimed) => {
                debug!(eager = claimed.len(), "workflow task committed");
                self.decision_committed(id, machine, scheduled, claimed, slot)
                    .await
            }
            Err(e @ (StorageError::LeaseLost(_) | StorageError::Conflict { .. })) => {
                // Another worker owns the workflow now; our decision is void and our machine
                // stale. Nothing was written.
                self.metrics.commits_refused.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "workflow task commit refused");
                None
            }
            Err(e) => {
                warn!(error = %e, "committing the workflow task failed; it will be retried");
                None
            }
        }
    }

    /// Decides the workflow task an activity's result wakes right here, from the machine this
    /// worker cached, so that the result's commit can carry the decision too (one durable
    /// commit for the whole hand-off, see [`AfterActivity::Decide`]). `None` when the machine
    /// is not at hand or cannot take the result as it is (an error, a dropped duplicate): the
    /// result is then committed the ordinary way. The machine leaves the cache either way; it
    /// goes back only if the store applies the decision.
    fn decide_ahead(
        &self,
        workflow_id: &WorkflowId,
        result: &EventKind,
        now: Timestamp,
    ) -> Option<Ahead> {
        let mut machine = self
            .cache_guard()
            .as_mut()
            .and_then(|c| c.pop(workflow_id))
            .filter(|m| m.outcome().is_none())?;
        let expected_last_seq = machine.last_seq();
        let activation = Activation {
            now,
            entropy: rand::random(),
            messages: vec![result.clone()],
        };
        let decision = machine
            .activate(activation)
            .ok()
            .filter(|d| d.dropped.is_empty())?;
        self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
        let scheduled = activities_scheduled(&decision.events);
        let finished = machine.outcome().is_some();
        let activity_slot = (scheduled > 0 && !finished)
            .then(|| self.eager_slot(&self.activity_slots))
            .flatten();
        let logs = decision.logs.clone();
        let decided = DecidedTask {
            workflow_id: workflow_id.clone(),
            expected_last_seq,
            events: decision.events,
            progress: Some(machine.progress()),
            logs: decision.logs,
        };
        Some(Ahead {
            decided,
            machine,
            scheduled,
            logs,
            activity_slot,
        })
    }

    /// After a workflow task's decision committed: counts it, wakes the activity loop for the
    /// activities not claimed with it, keeps the machine for the next task (or announces the
    /// end), and returns the claimed activity as the chain's next step.
    async fn decision_committed(
        &self,
        id: WorkflowId,
        machine: WorkflowMachine,
        scheduled: usize,
        claimed: Vec<ActivityTask>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Option<Next> {
        self.metrics.workflow_tasks.fetch_add(1, Ordering::Relaxed);
        if scheduled > claimed.len() {
            self.activity_work.notify_one();
        }
        if machine.outcome().is_some() {
            self.metrics
                .workflows_finished
                .fetch_add(1, Ordering::Relaxed);
            self.finished.notify_waiters();
        } else if let Some(cache) = self.cache_guard().as_mut() {
            cache.put(id, machine);
        }
        self.take_eager(claimed.into_iter().map(Claimed::Activity), slot)
            .await
    }

    /// A slot for an eager claim, while at least half of each kind's slots are free and the
    /// worker is not shutting down. A busy worker has its claim loops batching claims already
    /// (an eager claim is a claim of one, measured at about a fifth less throughput under a
    /// backlog), and runs the queue oldest first rather than letting workflows in flight
    /// overtake it; a lightly loaded one gains the hand-off's latency.
    fn eager_slot(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let half_free = |s: &Semaphore, of: usize| s.available_permits() * 2 >= of.max(1);
        if !half_free(&self.workflow_slots, self.config.workflow_concurrency)
            || !half_free(&self.activity_slots, self.config.activity_concurrency)
        {
            return None;
        }
        slots.clone().try_acquire_owned().ok()
    }

    /// The first of `claimed` as the next task of a chain, holding `slot`; any others (a
    /// backend that returned more than asked) are given back at once.
    async fn take_eager(
        &self,
        claimed: impl Iterator<Item = Claimed>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Option<Next> {
        let mut next = None;
        let mut slot = slot;
        for task in claimed {
            match slot.take() {
                Some(permit) => {
                    self.track(task.lease());
                    self.metrics.eager_tasks.fetch_add(1, Ordering::Relaxed);
                    next = Some(Next(task, permit));
                }
                None => {
                    let _ = self
                        .storage
                        .release_task(&task.lease(), Release::default())
                        .await;
                }
            }
        }
        next
    }

    /// Runs one activity attempt; returns the workflow task its commit claimed eagerly, if any.
    async fn activity_task(self: Arc<Self>, task: ActivityTask) -> Option<Next> {
        let store_time = StoreTime::new(task.claimed_at, self.clock.now());
        let policy = task.options.retry.clone();
        let outcome = if task.deliveries > self.config.max_deliveries {
            Err(Some(Failure::new(
                "worker_lost",
                format!(
                    "attempt {} was handed out {} times without finishing (it crashed or hung its worker each time)",
                    task.attempt, task.deliveries
                ),
            )))
        } else if let Some(activity) = self.registry.activity(&task.name).cloned() {
            self.run_attempt(activity, &task).await
        } else if task.deliveries < self.config.max_deliveries {
            // Another worker may have it: give the task back for a while.
            warn!(activity = %task.name, "no activity of this name is registered here; releasing it");
            let release = Release {
                after: self.config.pause_retry,
                pause: None,
            };
            let _ = self
                .storage
                .release_task(&self.current_lease(task.lease), release)
                .await;
            return None;
        } else {
            Err(Some(Failure::non_retryable(
                "unknown_activity",
                format!("no worker has an activity named {:?} registered", task.name),
            )))
        };
        let retry_after = |failure: Option<&Failure>| {
            policy
                .allows_retry(task.attempt, failure)
                .then(|| policy.backoff(task.attempt, rand::random()))
        };
        let mut retry_after_set = None;
        let result = match outcome {
            Ok(result) => {
                self.metrics
                    .activities_completed
                    .fetch_add(1, Ordering::Relaxed);
                EventKind::ActivityCompleted {
                    activity_id: task.activity_id,
                    attempt: task.attempt,
                    result,
                }
            }
            Err(Some(failure)) => {
                self.metrics
                    .activities_failed
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%failure, "activity attempt failed");
                retry_after_set = retry_after(Some(&failure));
                EventKind::ActivityFailed {
                    activity_id: task.activity_id,
                    attempt: task.attempt,
                    retry_at: None,
                    failure,
                }
            }
            Err(None) => {
                self.metrics
                    .activities_failed
                    .fetch_add(1, Ordering::Relaxed);
                debug!("activity attempt timed out");
                retry_after_set = retry_after(None);
                EventKind::ActivityTimedOut {
                    activity_id: task.activity_id,
                    attempt: task.attempt,
                    retry_at: None,
                }
            }
        };
        let retry_after = retry_after_set;
        // With a free workflow slot, the commit also takes the workflow task the result wakes:
        // decided here from the cached machine if it is at hand, or claimed to run next.
        let workflow_slot = self.eager_slot(&self.workflow_slots);
        let workflow_id = task.workflow_id.clone();
        let ahead = match &workflow_slot {
            Some(_) if retry_after.is_none() => {
                let now = store_time.now(self.clock.as_ref());
                self.decide_ahead(&workflow_id, &result, now)
            }
            _ => None,
        };
        let then = match (&workflow_slot, &ahead) {
            (Some(_), Some(ahead)) => AfterActivity::Decide {
                decided: Box::new(ahead.decided.clone()),
                claim: self.claim_request(usize::from(ahead.activity_slot.is_some())),
            },
            (Some(_), None) => AfterActivity::ClaimWorkflowTask(self.claim_request(1)),
            (None, _) => AfterActivity::Nothing,
        };
        let completion = ActivityTaskCompletion {
            lease: self.current_lease(task.lease),
            workflow_id: workflow_id.clone(),
            result,
            retry_after,
            then,
        };
        match self.storage.complete_activity_task(completion).await {
            Ok(ActivityCommitted::Decided(claimed)) => {
                drop(workflow_slot);
                let Some(ahead) = ahead else {
                    warn!("the store applied a decision this worker did not make");
                    return None;
                };
                self.metrics.decided_ahead.fetch_add(1, Ordering::Relaxed);
                for line in &ahead.logs {
                    log_line(&workflow_id, line.level, &line.message);
                }
                self.decision_committed(
                    workflow_id,
                    ahead.machine,
                    ahead.scheduled,
                    claimed,
                    ahead.activity_slot,
                )
                .await
            }
            Ok(ActivityCommitted::WorkflowTask(woken)) => {
                // A decision ahead, if one was made, was not applied: its machine is dropped
                // and the claimed task replays from the history.
                self.take_eager([Claimed::Workflow(woken)].into_iter(), workflow_slot)
                    .await
            }
            Ok(ActivityCommitted::Nothing) => {
                self.workflow_work.notify_one();
                None
            }
            Err(StorageError::LeaseLost(_)) => {
                self.metrics.commits_refused.fetch_add(1, Ordering::Relaxed);
                debug!("activity result refused: the lease was lost or the workflow ended");
                None
            }
            Err(e) => {
                warn!(error = %e, "reporting the activity result failed; the attempt will run again");
                None
            }
        }
    }

    /// Runs one attempt under its start-to-close timeout (and heartbeat timeout, if set).
    /// `Err(None)` is a timeout; a panic is a retryable failure of kind `panic`.
    async fn run_attempt(
        &self,
        activity: Arc<dyn loom_core::DynActivity>,
        task: &ActivityTask,
    ) -> Result<loom_core::Payload, Option<Failure>> {
        let last_beat = Arc::new(AtomicI64::new(self.clock.now().as_millis()));
        let beat = {
            let last_beat = last_beat.clone();
            let clock = self.clock.clone();
            Arc::new(move |_details: Option<loom_core::Payload>| {
                last_beat.store(clock.now().as_millis(), Ordering::Relaxed);
            }) as Arc<dyn Fn(Option<loom_core::Payload>) + Send + Sync>
        };
        let ctx = ActivityContext::new(
            ActivityInfo {
                workflow_id: task.workflow_id.clone(),
                activity_id: task.activity_id,
                name: task.name.clone(),
                attempt: task.attempt,
            },
            Some(beat),
        );
        let attempt = AssertUnwindSafe(activity.run(ctx, task.input.clone())).catch_unwind();
        let heartbeat_timeout = task.options.heartbeat_timeout_ms.map(Duration::from_millis);
        let watchdog = async {
            let Some(limit) = heartbeat_timeout else {
                return std::future::pending::<()>().await;
            };
            loop {
                tokio::time::sleep(limit / 2).await;
                let since = self.clock.now().as_millis() - last_beat.load(Ordering::Relaxed);
                if since > i64::try_from(limit.as_millis()).unwrap_or(i64::MAX) {
                    return;
                }
            }
        };
        tokio::select! {
            ran = tokio::time::timeout(task.options.start_to_close_timeout, attempt) => match ran {
                Ok(Ok(Ok(result))) => Ok(result),
                Ok(Ok(Err(failure))) => Err(Some(failure)),
                Ok(Err(panic)) => Err(Some(Failure::new("panic", panic_message(panic.as_ref())))),
                Err(_elapsed) => Err(None),
            },
            () = watchdog => Err(None),
        }
    }
}

/// The store's clock as this worker reckons it: a time the store gave (a claim's) plus what
/// this worker's clock measured since. Only differences of the worker's clock count, so a
/// worker whose clock is off by any amount still stamps the store's time.
#[derive(Clone, Copy, Debug)]
struct StoreTime {
    store: Timestamp,
    local: Timestamp,
}

impl StoreTime {
    fn new(store: Timestamp, local: Timestamp) -> Self {
        StoreTime { store, local }
    }

    fn now(&self, clock: &dyn Clock) -> Timestamp {
        self.store
            .saturating_add(clock.now().saturating_duration_since(self.local))
    }
}

/// A workflow task decided ahead from an activity's result, waiting for the result's commit.
struct Ahead {
    decided: DecidedTask,
    /// The machine after the decision: cached again if the store applies it.
    machine: WorkflowMachine,
    /// Activities the decision scheduled.
    scheduled: usize,
    /// Its log lines, written once the decision is committed.
    logs: Vec<loom_core::LogRecord>,
    /// The slot the activity claimed with the decision runs in.
    activity_slot: Option<OwnedSemaphorePermit>,
}

/// The two kinds of task a worker claims.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Workflow,
    Activity,
}

/// The task a commit claimed eagerly, with the slot it will run in.
struct Next(Claimed, OwnedSemaphorePermit);

/// A claimed task of either kind.
enum Claimed {
    Workflow(WorkflowTask),
    Activity(ActivityTask),
}

impl Claimed {
    fn lease(&self) -> Lease {
        match self {
            Claimed::Workflow(t) => t.lease,
            Claimed::Activity(t) => t.lease,
        }
    }

    fn span(&self) -> tracing::Span {
        match self {
            Claimed::Workflow(t) => {
                info_span!("workflow_task", workflow_id = %t.workflow_id, workflow = %t.workflow_name)
            }
            Claimed::Activity(t) => info_span!(
                "activity",
                workflow_id = %t.workflow_id,
                activity = %t.name,
                attempt = t.attempt
            ),
        }
    }
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("the activity panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("the activity panicked: {s}")
    } else {
        "the activity panicked".to_owned()
    }
}

fn log_line(id: &WorkflowId, level: LogLevel, message: &str) {
    match level {
        LogLevel::Debug => {
            tracing::debug!(target: "loom::workflow", workflow_id = %id, "{message}")
        }
        LogLevel::Info => tracing::info!(target: "loom::workflow", workflow_id = %id, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "loom::workflow", workflow_id = %id, "{message}"),
        LogLevel::Error => {
            tracing::error!(target: "loom::workflow", workflow_id = %id, "{message}")
        }
    }
}

/// How many activities a decision schedules.
fn activities_scheduled(events: &[loom_core::Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ActivityScheduled { .. }))
        .count()
}
