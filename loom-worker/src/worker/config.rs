//! How a worker behaves.

use std::sync::Arc;
use std::time::Duration;

use loom_storage::{Clock, SystemClock};

/// Sizes past which Loom refuses to record something, with an error that says which limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest payload (an input, an output, an activity's result, a signal, a state
    /// value) in bytes of JSON. A client refuses a larger input or signal and writes nothing;
    /// an activity whose result is larger fails (not retried) with kind `payload_too_large`;
    /// a workflow task that would record a larger one is not committed and its workflow is
    /// paused with the reason, until code or limits change.
    pub max_payload_bytes: usize,
    /// Past this many events a worker logs a warning at each task, and `loom inspect` shows
    /// one: a long history replays slowly after every cache miss.
    pub history_warning_events: u64,
    /// A workflow task that would take the history past this many events ends the run
    /// instead: it is terminated with a reason that names the limit.
    pub max_history_events: u64,
}

impl Default for Limits {
    /// 2 MiB payloads; a warning past 10,000 events, the end at 50,000.
    fn default() -> Self {
        Limits {
            max_payload_bytes: 2 * 1024 * 1024,
            history_warning_events: 10_000,
            max_history_events: 50_000,
        }
    }
}

impl Limits {
    /// The error for a payload of `len` bytes, if it is over the limit; `what` names it.
    pub fn check_payload(&self, what: &str, len: usize) -> Result<(), String> {
        if len > self.max_payload_bytes {
            Err(format!(
                "{what} is {len} bytes of JSON, over the limit of {} bytes (Limits::max_payload_bytes)",
                self.max_payload_bytes
            ))
        } else {
            Ok(())
        }
    }
}

/// How long closed workflows are kept before a worker purges them (everything of theirs:
/// summary, every run's history, logs), in the background, a batch at a time. Open workflows
/// are never purged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// How long after it ended a workflow is kept, unless its type has its own period.
    pub closed: Duration,
    /// Periods of their own, by workflow type.
    pub per_type: std::collections::BTreeMap<String, Duration>,
    /// How often the worker looks for what to purge.
    pub every: Duration,
    /// The most workflows deleted in one write: small, so that a purge never holds up the
    /// workflows that are running.
    pub batch: usize,
}

impl Retention {
    /// Keep closed workflows for `closed`, look every minute, delete 100 at a time.
    pub fn closed_for(closed: Duration) -> Self {
        Retention {
            closed,
            per_type: std::collections::BTreeMap::new(),
            every: Duration::from_secs(60),
            batch: 100,
        }
    }

    /// Keeps closed workflows of type `name` for `period` instead.
    pub fn with_type(mut self, name: impl Into<String>, period: Duration) -> Self {
        self.per_type.insert(name.into(), period);
        self
    }

    /// The purges of one pass: one per type with a period of its own, then the rest.
    pub fn passes(&self) -> Vec<loom_storage::Purge> {
        let purge = |older_than, name, except_names| loom_storage::Purge {
            older_than,
            status: None,
            name,
            except_names,
            limit: self.batch.max(1),
        };
        self.per_type
            .iter()
            .map(|(name, period)| purge(*period, Some(name.clone()), Vec::new()))
            .chain(std::iter::once(purge(
                self.closed,
                None,
                self.per_type.keys().cloned().collect(),
            )))
            .collect()
    }
}

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
    /// once, so this only bounds how late work from other processes is noticed. On a store
    /// without work signals (all but PostgreSQL), the wait after a claim that found work is
    /// an eighth of this, doubling with each empty poll back up to it.
    pub poll_interval: Duration,
    /// The lease taken on each task; renewed at a third of it while the task runs.
    pub lease: Duration,
    /// On shutdown, how long running tasks may take before they are cancelled and their
    /// leases released.
    pub shutdown_grace: Duration,
    /// Workflows kept in memory between tasks (sticky execution); 0 disables the cache.
    pub cache_capacity: usize,
    /// How long after this worker commits a workflow task the workflow's next task is kept
    /// for this worker, which holds it in its cache, before any worker may claim it
    /// ([`Affinity`](loom_storage::Affinity); Temporal's sticky schedule-to-start timeout).
    /// It bounds how long a workflow waits when its worker died or is too busy. Asked for
    /// only from a store whose work signal reaches every worker (PostgreSQL; see
    /// [`Storage::signals_work`](loom_storage::Storage::signals_work)). Zero, or a cache of 0,
    /// leaves every task to any worker.
    pub affinity_window: Duration,
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
    /// Payload and history limits; its clients (from [`Worker::client`](crate::Worker::client))
    /// share them.
    pub limits: Limits,
    /// Purge closed workflows past their retention, in the background; `None` (the default)
    /// keeps them for ever.
    pub retention: Option<Retention>,
    /// Whether this worker starts the workflows of schedules whose time has come (true by
    /// default). Any number of workers may; each fire still starts at most one workflow.
    pub schedules: bool,
    /// Seeds every random choice the worker makes (the entropy each workflow activation gets,
    /// retry jitter), for deterministic simulation; `None` (the default) draws from the
    /// operating system.
    pub random_seed: Option<u64>,
    /// Where the worker records its metrics; `None` (the default) records none. Several
    /// workers may share one.
    pub telemetry: Option<Arc<crate::Telemetry>>,
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
            .field("affinity_window", &self.affinity_window)
            .field("pause_retry", &self.pause_retry)
            .field("max_deliveries", &self.max_deliveries)
            .field("limits", &self.limits)
            .field("retention", &self.retention)
            .field("schedules", &self.schedules)
            .field("random_seed", &self.random_seed)
            .field("telemetry", &self.telemetry.is_some())
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
            affinity_window: Duration::from_secs(5),
            pause_retry: Duration::from_secs(60),
            max_deliveries: 5,
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            retention: None,
            schedules: true,
            random_seed: None,
            telemetry: None,
        }
    }
}
