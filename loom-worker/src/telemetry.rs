//! Metrics in Prometheus' model: what a worker records as it runs, and the store's backlog.
//!
//! A [`Telemetry`] holds every metric family Loom records, registered in one
//! `prometheus_client` registry under the prefix `loom`. Give it to workers
//! ([`WorkerConfig::telemetry`](crate::WorkerConfig::telemetry)); several workers in one
//! process may share one. [`Telemetry::encode`] renders the Prometheus text format for a
//! scrape; the HTTP endpoint that serves it lives in loom-cli, so this crate speaks no HTTP.
//!
//! Names and units follow Prometheus' conventions: base units (seconds), `_total` on
//! counters, and labels of low cardinality only: a workflow or activity type, an outcome,
//! a kind of task, a store operation, never an id. Type labels come from the worker's
//! registry, so a store holding a type no worker knows cannot grow the label set.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use loom_storage::{Backlog, StorageError, StoreCounters};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The kind of a task.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum TaskKind {
    workflow,
    activity,
}

/// How a workflow run ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum RunOutcome {
    completed,
    failed,
    cancelled,
    terminated,
    timed_out,
    continued_as_new,
    /// Failed, and its retry policy begins another run.
    retried,
}

/// How an activity attempt ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum AttemptOutcome {
    /// It returned a result.
    completed,
    /// It failed and another attempt is scheduled.
    retried,
    /// It failed and its retry policy allows no more attempts.
    failed,
    /// It failed with a failure its policy names non-retryable.
    non_retryable,
    /// It ran past its start-to-close or heartbeat timeout.
    timed_out,
    /// It was told to stop: the workflow cancelled the activity, or the attempt's lease was
    /// lost. Its result is not wanted.
    cancelled,
}

/// Why a workflow was paused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum PauseReason {
    /// Its code did not replay its history.
    nondeterminism,
    /// Its code panicked or could not be decided for another reason.
    error,
    /// No worker has its type registered.
    unknown_type,
    /// Its task crashed or hung its workers too many times.
    stalled,
    /// It recorded a payload over the limit.
    limit,
}

impl PauseReason {
    /// The reason a replay error pauses a workflow.
    pub fn of(e: &loom_core::ReplayError) -> Self {
        if e.is_nondeterminism() {
            PauseReason::nondeterminism
        } else {
            PauseReason::error
        }
    }
}

impl RunOutcome {
    /// How a machine's outcome ended the run.
    pub fn of(o: &loom_core::Outcome) -> Self {
        match o {
            loom_core::Outcome::Completed { .. } => RunOutcome::completed,
            loom_core::Outcome::Failed { .. } => RunOutcome::failed,
            loom_core::Outcome::Cancelled => RunOutcome::cancelled,
            loom_core::Outcome::Terminated { .. } => RunOutcome::terminated,
            loom_core::Outcome::TimedOut { .. } => RunOutcome::timed_out,
            loom_core::Outcome::ContinuedAsNew { .. } => RunOutcome::continued_as_new,
        }
    }
}

/// Why the store refused a commit.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Refusal {
    /// The lease lapsed or another worker holds the task (fencing).
    lease_lost,
    /// The history moved on since the task was claimed.
    conflict,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowType {
    workflow_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowEnd {
    workflow_type: &'static str,
    outcome: RunOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActivityType {
    activity_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActivityAttempt {
    activity_type: &'static str,
    outcome: AttemptOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Paused {
    reason: PauseReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: TaskKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refused {
    kind: TaskKind,
    reason: Refusal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreCall {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreError {
    operation: &'static str,
    kind: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies of tasks and store calls: 1 ms to 5 minutes.
fn latency() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ])
}

/// Lifetimes of workflow runs: 10 ms to 30 days.
fn lifetime() -> Histogram {
    Histogram::new([
        0.01,
        0.1,
        1.0,
        10.0,
        60.0,
        300.0,
        1_800.0,
        3_600.0,
        21_600.0,
        86_400.0,
        604_800.0,
        2_592_000.0,
    ])
}

/// Every metric Loom records, registered under the prefix `loom`. See the module docs.
pub struct Telemetry {
    registry: Registry,
    workflow_task_schedule_to_start: Histograms<WorkflowType>,
    workflow_task_duration: Histograms<WorkflowType>,
    workflow_run_duration: Histograms<WorkflowEnd>,
    workflow_runs_started: Family<WorkflowType, Counter>,
    workflow_runs_ended: Family<WorkflowEnd, Counter>,
    workflows_paused: Family<Paused, Counter>,
    activity_schedule_to_start: Histograms<ActivityType>,
    activity_execution: Histograms<ActivityAttempt>,
    activity_attempts: Family<ActivityAttempt, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_evictions: Counter,
    replayed_events: Counter,
    lease_renewals: Counter,
    leases_lost: Family<Kind, Counter>,
    commits_refused: Family<Refused, Counter>,
    claims: Family<Kind, Counter>,
    eager_tasks: Family<Kind, Counter>,
    store_call_duration: Histograms<StoreCall>,
    store_errors: Family<StoreError, Counter>,
    tasks_ready: Family<Kind, Gauge>,
    tasks_running: Family<Kind, Gauge>,
    oldest_ready_age: Family<Kind, Gauge<f64, AtomicU64>>,
    store_up: Gauge,
    group_commits: Counter,
    writes_committed: Counter,
    connections: Family<Connections, Gauge>,
    schedule_fires: Family<ScheduleFire, Counter>,
    schedule_lateness: Histogram,
    /// The store's counters at the last scrape, to add only what they gained since.
    last_counters: std::sync::Mutex<StoreCounters>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleFire {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Connections {
    state: &'static str,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// Every family, registered and at zero.
    pub fn new() -> Self {
        let mut t = Telemetry {
            registry: Registry::with_prefix("loom"),
            workflow_task_schedule_to_start: Family::new_with_constructor(latency),
            workflow_task_duration: Family::new_with_constructor(latency),
            workflow_run_duration: Family::new_with_constructor(lifetime),
            workflow_runs_started: Family::default(),
            workflow_runs_ended: Family::default(),
            workflows_paused: Family::default(),
            activity_schedule_to_start: Family::new_with_constructor(latency),
            activity_execution: Family::new_with_constructor(latency),
            activity_attempts: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_evictions: Counter::default(),
            replayed_events: Counter::default(),
            lease_renewals: Counter::default(),
            leases_lost: Family::default(),
            commits_refused: Family::default(),
            claims: Family::default(),
            eager_tasks: Family::default(),
            store_call_duration: Family::new_with_constructor(latency),
            store_errors: Family::default(),
            tasks_ready: Family::default(),
            tasks_running: Family::default(),
            oldest_ready_age: Family::default(),
            store_up: Gauge::default(),
            group_commits: Counter::default(),
            writes_committed: Counter::default(),
            connections: Family::default(),
            schedule_fires: Family::default(),
            schedule_lateness: latency(),
            last_counters: std::sync::Mutex::new(StoreCounters::default()),
        };
        let r = &mut t.registry;
        let s = Unit::Seconds;
        r.register_with_unit(
            "workflow_task_schedule_to_start",
            "Time from a workflow task's first due message to its claim",
            s.clone(),
            t.workflow_task_schedule_to_start.clone(),
        );
        r.register_with_unit(
            "workflow_task_duration",
            "Time from a workflow task's claim to its commit (replay and decision included)",
            s.clone(),
            t.workflow_task_duration.clone(),
        );
        r.register_with_unit(
            "workflow_run_duration",
            "Time from a run's start to its end, by how it ended",
            s.clone(),
            t.workflow_run_duration.clone(),
        );
        r.register(
            "workflow_runs_started",
            "Runs whose first workflow task this worker committed",
            t.workflow_runs_started.clone(),
        );
        r.register(
            "workflow_runs_ended",
            "Runs this worker ended, by how they ended",
            t.workflow_runs_ended.clone(),
        );
        r.register(
            "workflows_paused",
            "Workflows this worker paused, by reason",
            t.workflows_paused.clone(),
        );
        r.register_with_unit(
            "activity_schedule_to_start",
            "Time from an activity attempt becoming ready to its claim",
            s.clone(),
            t.activity_schedule_to_start.clone(),
        );
        r.register_with_unit(
            "activity_execution",
            "Time an activity attempt ran, by outcome",
            s.clone(),
            t.activity_execution.clone(),
        );
        r.register(
            "activity_attempts",
            "Activity attempts this worker ran, by outcome",
            t.activity_attempts.clone(),
        );
        r.register(
            "sticky_cache_hits",
            "Workflow tasks decided on a machine kept in memory",
            t.cache_hits.clone(),
        );
        r.register(
            "sticky_cache_misses",
            "Workflow tasks that loaded and replayed their history",
            t.cache_misses.clone(),
        );
        r.register(
            "sticky_cache_evictions",
            "Machines dropped from the full sticky cache",
            t.cache_evictions.clone(),
        );
        r.register(
            "replayed_events",
            "History events replayed after a cache miss",
            t.replayed_events.clone(),
        );
        r.register(
            "lease_renewals",
            "Leases renewed while their task ran",
            t.lease_renewals.clone(),
        );
        r.register(
            "leases_lost",
            "Leases found lost while their task ran, by kind of task (an activity's is also lost when the workflow cancels it)",
            t.leases_lost.clone(),
        );
        r.register(
            "commits_refused",
            "Commits the store refused, by kind of task and reason (an activity's result is also refused once its workflow has ended or cancelled it)",
            t.commits_refused.clone(),
        );
        r.register(
            "claims",
            "Claims this worker asked the store for, by kind of task",
            t.claims.clone(),
        );
        r.register(
            "eager_tasks",
            "Tasks a commit handed straight to this worker, by kind",
            t.eager_tasks.clone(),
        );
        r.register_with_unit(
            "store_call_duration",
            "Time of the worker's calls to the store, by operation",
            s.clone(),
            t.store_call_duration.clone(),
        );
        r.register(
            "store_errors",
            "Store calls that failed, by operation and kind of error",
            t.store_errors.clone(),
        );
        r.register(
            "tasks_ready",
            "Tasks the store could hand out now, by kind (at the last scrape)",
            t.tasks_ready.clone(),
        );
        r.register(
            "tasks_running",
            "Tasks held under a live lease, by kind (at the last scrape)",
            t.tasks_running.clone(),
        );
        r.register_with_unit(
            "oldest_ready_task_age",
            "How long the oldest ready task has waited, by kind; 0 when none waits",
            s,
            t.oldest_ready_age.clone(),
        );
        r.register(
            "store_up",
            "1 when the last read of the store's backlog succeeded, else 0",
            t.store_up.clone(),
        );
        r.register(
            "store_group_commits",
            "Commits the store made; each holds one or more writes (group commit)",
            t.group_commits.clone(),
        );
        r.register(
            "store_writes_committed",
            "Writes committed in them: divided by store_group_commits, the mean batch size",
            t.writes_committed.clone(),
        );
        r.register(
            "store_connections",
            "The store's pooled connections, open and idle (PostgreSQL)",
            t.connections.clone(),
        );
        r.register(
            "schedule_fires",
            "Fire times of schedules dealt with by this worker, by outcome: started, skipped \
             (overlap policy), missed (older than the catch-up window), already_started",
            t.schedule_fires.clone(),
        );
        r.register_with_unit(
            "schedule_lateness",
            "Time from a schedule's nominal fire time to the start of its workflow",
            Unit::Seconds,
            t.schedule_lateness.clone(),
        );
        t
    }

    /// Counts `n` fire times of schedules that ended as `outcome`.
    pub(crate) fn schedule_fires(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.schedule_fires
                .get_or_create(&ScheduleFire { outcome })
                .inc_by(n);
        }
    }

    /// Records how late a scheduled workflow started after its nominal fire time.
    pub(crate) fn schedule_late(&self, late: Duration) {
        self.schedule_lateness.observe(late.as_secs_f64());
    }

    /// Adds what the store's own counters gained since the last call, and sets its
    /// connection gauges.
    pub fn set_store_counters(&self, now: &StoreCounters) {
        let mut last = self
            .last_counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.group_commits
            .inc_by(now.group_commits.saturating_sub(last.group_commits));
        self.writes_committed
            .inc_by(now.writes_committed.saturating_sub(last.writes_committed));
        *last = *now;
        if let Some((open, idle)) = now.connections {
            self.connections
                .get_or_create(&Connections { state: "open" })
                .set(i64::from(open));
            self.connections
                .get_or_create(&Connections { state: "idle" })
                .set(i64::from(idle));
        }
    }

    /// The `Content-Type` of what [`encode`](Self::encode) renders.
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    /// The metrics in Prometheus' text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Sets the backlog gauges from the store's answer, or marks the store down.
    pub fn set_backlog(&self, backlog: Result<&Backlog, &StorageError>) {
        let Ok(b) = backlog else {
            // Unknown, not zero: the series go until the store answers again.
            self.store_up.set(0);
            self.tasks_ready.clear();
            self.tasks_running.clear();
            self.oldest_ready_age.clear();
            return;
        };
        self.store_up.set(1);
        for (kind, t) in [
            (TaskKind::workflow, &b.workflow_tasks),
            (TaskKind::activity, &b.activity_tasks),
        ] {
            let k = Kind { kind };
            self.tasks_ready
                .get_or_create(&k)
                .set(i64::try_from(t.ready).unwrap_or(i64::MAX));
            self.tasks_running
                .get_or_create(&k)
                .set(i64::try_from(t.running).unwrap_or(i64::MAX));
            let age = t.oldest_ready_at.map_or(0.0, |at| {
                (b.at.as_millis() - at.as_millis()).max(0) as f64 / 1000.0
            });
            self.oldest_ready_age.get_or_create(&k).set(age);
        }
    }

    pub(crate) fn claimed(&self, kind: TaskKind) {
        self.claims.get_or_create(&Kind { kind }).inc();
    }

    pub(crate) fn eager(&self, kind: TaskKind) {
        self.eager_tasks.get_or_create(&Kind { kind }).inc();
    }

    pub(crate) fn workflow_task_started(&self, workflow_type: &'static str, waited: Duration) {
        self.workflow_task_schedule_to_start
            .get_or_create(&WorkflowType { workflow_type })
            .observe(waited.as_secs_f64());
    }

    pub(crate) fn workflow_task_committed(
        &self,
        workflow_type: &'static str,
        took: Duration,
        first_of_run: bool,
    ) {
        let label = WorkflowType { workflow_type };
        self.workflow_task_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if first_of_run {
            self.workflow_runs_started.get_or_create(&label).inc();
        }
    }

    pub(crate) fn run_ended(
        &self,
        workflow_type: &'static str,
        outcome: RunOutcome,
        ran: Option<Duration>,
    ) {
        let label = WorkflowEnd {
            workflow_type,
            outcome,
        };
        self.workflow_runs_ended.get_or_create(&label).inc();
        if let Some(ran) = ran {
            self.workflow_run_duration
                .get_or_create(&label)
                .observe(ran.as_secs_f64());
        }
    }

    pub(crate) fn paused(&self, reason: PauseReason) {
        self.workflows_paused
            .get_or_create(&Paused { reason })
            .inc();
    }

    pub(crate) fn activity_started(&self, activity_type: &'static str, waited: Duration) {
        self.activity_schedule_to_start
            .get_or_create(&ActivityType { activity_type })
            .observe(waited.as_secs_f64());
    }

    pub(crate) fn activity_ended(
        &self,
        activity_type: &'static str,
        outcome: AttemptOutcome,
        took: Duration,
    ) {
        let label = ActivityAttempt {
            activity_type,
            outcome,
        };
        self.activity_attempts.get_or_create(&label).inc();
        self.activity_execution
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub(crate) fn cache_miss(&self, replayed: usize) {
        self.cache_misses.inc();
        self.replayed_events.inc_by(replayed as u64);
    }

    pub(crate) fn cache_eviction(&self) {
        self.cache_evictions.inc();
    }

    pub(crate) fn lease_renewed(&self) {
        self.lease_renewals.inc();
    }

    pub(crate) fn lease_lost(&self, kind: TaskKind) {
        self.leases_lost.get_or_create(&Kind { kind }).inc();
    }

    pub(crate) fn commit_refused(&self, kind: TaskKind, reason: Refusal) {
        self.commits_refused
            .get_or_create(&Refused { kind, reason })
            .inc();
    }

    pub(crate) fn store_call(
        &self,
        operation: &'static str,
        took: Duration,
        error: Option<&StorageError>,
    ) {
        self.store_call_duration
            .get_or_create(&StoreCall { operation })
            .observe(took.as_secs_f64());
        if let Some(e) = error {
            self.store_errors
                .get_or_create(&StoreError {
                    operation,
                    kind: error_kind(e),
                })
                .inc();
        }
    }
}

/// A store error's kind, as a label.
fn error_kind(e: &StorageError) -> &'static str {
    match e {
        StorageError::NotFound(_) => "not_found",
        StorageError::AlreadyExists { .. } => "already_exists",
        StorageError::Conflict { .. } => "conflict",
        StorageError::RunMoved { .. } => "run_moved",
        StorageError::LeaseLost(_) => "lease_lost",
        StorageError::Closed { .. } => "closed",
        StorageError::InvalidArgument(_) => "invalid_argument",
        StorageError::Unavailable { .. } => "unavailable",
        StorageError::Rejected { .. } => "rejected",
        StorageError::Incompatible(_) => "incompatible",
        StorageError::Corrupt { .. } => "corrupt",
        _ => "other",
    }
}

/// A store whose every call is timed, and its errors counted, in a [`Telemetry`]: what a
/// worker with telemetry talks to.
pub(crate) struct Instrumented {
    pub(crate) inner: std::sync::Arc<dyn loom_storage::Storage>,
    pub(crate) telemetry: std::sync::Arc<Telemetry>,
}

/// Awaits a store call, recording its time and its error's kind under `op`.
macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let start = std::time::Instant::now();
        let r = $call.await;
        $self
            .telemetry
            .store_call($op, start.elapsed(), r.as_ref().err());
        r
    }};
}

mod instrumented {
    use loom_core::{Event, LogRecord, Payload, Seq, WorkflowId};
    use loom_storage::{
        ActivityCommitted, ActivityTask, ActivityTaskCompletion, Backlog, ClaimRequest, Lease,
        ListQuery, Page, Pending, Purge, Release, Reset, Result, RunSummary, Stats, Storage,
        Termination, WorkflowSummary, WorkflowTask, WorkflowTaskCompletion,
    };

    use super::Instrumented;

    #[async_trait::async_trait]
    impl Storage for Instrumented {
        async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()> {
            timed!(
                self,
                "create_workflow",
                self.inner.create_workflow(id, started)
            )
        }
        async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
            timed!(self, "load_history", self.inner.load_history(id, after))
        }
        async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
            timed!(
                self,
                "claim_workflow_tasks",
                self.inner.claim_workflow_tasks(req)
            )
        }
        async fn complete_workflow_task(
            &self,
            completion: WorkflowTaskCompletion,
        ) -> Result<Vec<ActivityTask>> {
            timed!(
                self,
                "complete_workflow_task",
                self.inner.complete_workflow_task(completion)
            )
        }
        async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
            timed!(
                self,
                "claim_activity_tasks",
                self.inner.claim_activity_tasks(req)
            )
        }
        async fn complete_activity_task(
            &self,
            completion: ActivityTaskCompletion,
        ) -> Result<ActivityCommitted> {
            timed!(
                self,
                "complete_activity_task",
                self.inner.complete_activity_task(completion)
            )
        }
        async fn renew_lease(&self, lease: &Lease, extend: std::time::Duration) -> Result<Lease> {
            timed!(self, "renew_lease", self.inner.renew_lease(lease, extend))
        }
        async fn release_task(&self, lease: &Lease, release: Release) -> Result<()> {
            timed!(
                self,
                "release_task",
                self.inner.release_task(lease, release)
            )
        }
        async fn forget_affinity(&self, owner: &str) -> Result<()> {
            timed!(self, "forget_affinity", self.inner.forget_affinity(owner))
        }
        async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()> {
            timed!(self, "signal", self.inner.signal(id, name, payload))
        }
        async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()> {
            timed!(
                self,
                "request_cancel",
                self.inner.request_cancel(id, reason)
            )
        }
        async fn terminate(&self, termination: Termination) -> Result<()> {
            timed!(self, "terminate", self.inner.terminate(termination))
        }
        async fn reset(&self, reset: Reset) -> Result<()> {
            timed!(self, "reset", self.inner.reset(reset))
        }
        async fn load_run(&self, id: &WorkflowId, run: u32) -> Result<Vec<Event>> {
            timed!(self, "load_run", self.inner.load_run(id, run))
        }
        async fn runs(&self, id: &WorkflowId) -> Result<Vec<RunSummary>> {
            timed!(self, "runs", self.inner.runs(id))
        }
        async fn pause(&self, id: &WorkflowId, reason: &str) -> Result<()> {
            timed!(self, "pause", self.inner.pause(id, reason))
        }
        async fn resume(&self, id: &WorkflowId) -> Result<()> {
            timed!(self, "resume", self.inner.resume(id))
        }
        async fn purge(&self, purge: &Purge) -> Result<Vec<WorkflowId>> {
            timed!(self, "purge", self.inner.purge(purge))
        }
        async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
            timed!(self, "describe", self.inner.describe(id))
        }
        async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>> {
            timed!(self, "list", self.inner.list(query))
        }
        async fn stats(&self) -> Result<Stats> {
            timed!(self, "stats", self.inner.stats())
        }
        async fn backlog(&self) -> Result<Backlog> {
            timed!(self, "backlog", self.inner.backlog())
        }
        async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
            timed!(self, "logs", self.inner.logs(id))
        }
        async fn pending(&self, id: &WorkflowId) -> Result<Pending> {
            timed!(self, "pending", self.inner.pending(id))
        }
        async fn now(&self) -> Result<loom_core::Timestamp> {
            timed!(self, "now", self.inner.now())
        }
        async fn schedule(&self, id: &str) -> Result<loom_storage::Schedule> {
            timed!(self, "schedule", self.inner.schedule(id))
        }
        async fn schedules(
            &self,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<loom_storage::Schedule>> {
            timed!(self, "schedules", self.inner.schedules(after, limit))
        }
        async fn due_schedules(&self, limit: usize) -> Result<loom_storage::DueSchedules> {
            timed!(self, "due_schedules", self.inner.due_schedules(limit))
        }
        async fn write_schedule(&self, write: loom_storage::ScheduleWrite) -> Result<()> {
            timed!(self, "write_schedule", self.inner.write_schedule(write))
        }
        fn work_signal(&self) -> loom_storage::WorkSignal<'_> {
            self.inner.work_signal()
        }
        fn signals_work(&self) -> bool {
            self.inner.signals_work()
        }
        fn counters(&self) -> loom_storage::StoreCounters {
            self.inner.counters()
        }
    }
}
