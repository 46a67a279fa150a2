//! # loom-storage: the Storage trait every backend implements
//!
//! This crate is the **room of durable state, in the abstract**. It defines the async
//! [`Storage`] trait (what a worker and a client need from a database, and nothing more), the
//! records that cross it, the errors with meanings ([`StorageError`]), the [`engine`] that
//! holds every rule of the store once (backends only read, check and apply what it decides),
//! a complete in-process backend ([`MemoryStorage`]), and, behind features, the writer thread
//! the embedded file backends share (`writer`) and the one conformance suite and differential
//! test that every backend runs (`conformance`).
//!
//! What it must not touch: SQL, files or any particular database (those live in the backend
//! crates), and workflow semantics (loom-core decides the events; a backend stores them).
//!
//! ## The model
//!
//! - A **workflow** has a history (loom-core's events, numbered by loom-core), a summary and
//!   a status.
//! - **Messages** are inputs waiting for the workflow's next task: activity results, fired
//!   timers (a timer is a message that becomes visible at its fire time), signals and cancel
//!   requests. Sending one never needs a worker to be running.
//! - **Tasks** are claimed under a lease with a fencing token. A workflow has one workflow
//!   task, ready whenever a message is due for it; each activity attempt is an activity task.
//! - A workflow task's commit ([`Storage::complete_workflow_task`]) is one atomic step: append
//!   the events, consume the messages, create the implied tasks, store progress and logs,
//!   release the lease. An activity's commit turns its result into a message and, for a
//!   retry, makes the task the next attempt's, also in one step.
//! - Every time that decides when work becomes claimable (timers, retries, releases, lease
//!   expiry) is the store's clock plus a duration the caller passes, never a caller's clock.
//!
//! ```
//! use loom_core::{Event, EventKind, Payload, Seq, Timestamp, WorkflowId};
//! use loom_storage::{ClaimRequest, MemoryStorage, Storage};
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStorage::new();
//! let started = Event {
//!     seq: Seq::FIRST,
//!     at: Timestamp::from_millis(0),
//!     kind: EventKind::workflow_started("Greeting", 1, Payload::encode("Ada").unwrap()),
//! };
//! store.create_workflow(&WorkflowId::new("greet-1"), started).await.unwrap();
//! let tasks = store
//!     .claim_workflow_tasks(&ClaimRequest::new("worker-1", 10, Duration::from_secs(30)))
//!     .await
//!     .unwrap();
//! assert_eq!(tasks.len(), 1);
//! assert_eq!(tasks[0].workflow_name, "Greeting");
//! # });
//! ```

pub mod clock;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod engine;
pub mod error;
pub mod memory;
pub mod model;
pub mod plan;
pub mod schedule;
pub mod transact;
#[cfg(feature = "writer")]
pub mod writer;

use async_trait::async_trait;
use loom_core::{Event, LogRecord, Payload, Seq, WorkflowId};

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, Result, StorageError, redact_url};
pub use memory::MemoryStorage;
pub use model::{
    ActivityCommitted, ActivityTask, ActivityTaskCompletion, Affinity, AfterActivity, Backlog,
    ClaimRequest, DecidedTask, Lease, ListCursor, ListQuery, Message, MessageId, Page, Pending,
    PendingTask, Purge, Release, Reset, RunSummary, Stats, StoreCounters, TagCmp, TagFilter,
    TaskBacklog, TaskId, Termination, WorkflowStatus, WorkflowSummary, WorkflowTask,
    WorkflowTaskCompletion,
};
pub use plan::{NewActivity, NewTimer, ResetPlan, TaskPlan, Terminal};
pub use schedule::{DueSchedules, Schedule, ScheduleWrite};
pub use transact::{Read, Transact};

/// What [`Storage::work_signal`] returns: resolves once work may be ready.
pub type WorkSignal<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Durable storage for workflows, histories, messages and tasks.
///
/// Every method is atomic: it happens entirely or not at all. What each write does is decided
/// by the [`engine`], the same for every backend. Errors carry meanings (see
/// [`StorageError`]); `Unavailable` is the only retryable one, and no error from here is ever
/// a reason to fail a workflow.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Creates a workflow from its `WorkflowStarted` event (numbered 1) and makes its first
    /// workflow task ready. A second create with the same id is `AlreadyExists` and writes
    /// nothing, whatever the existing workflow's status. See [`engine::create`].
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()>;

    /// The events of a history after `after` (use `Seq::ZERO` for all), in order.
    async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>>;

    /// Claims up to `req.max` ready workflow tasks, oldest ready first, each with its due
    /// messages. A task is ready when a message is due for it (or it was just created, or
    /// released) and no live lease holds it.
    async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>>;

    /// Commits a workflow task (see [`engine::complete_workflow_task`]); answers the activity
    /// tasks claimed with it when the completion asked for an eager claim.
    async fn complete_workflow_task(
        &self,
        completion: WorkflowTaskCompletion,
    ) -> Result<Vec<ActivityTask>>;

    /// Claims up to `req.max` due activity tasks, oldest due first.
    async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>>;

    /// Commits an activity attempt (see [`engine::complete_activity_task`]); answers what the
    /// completion's [`AfterActivity`] claimed or committed with it.
    async fn complete_activity_task(
        &self,
        completion: ActivityTaskCompletion,
    ) -> Result<ActivityCommitted>;

    /// Extends a live lease by `extend` from now, by the store's clock. `LeaseLost` if it is
    /// not live.
    async fn renew_lease(&self, lease: &Lease, extend: std::time::Duration) -> Result<Lease>;

    /// Gives a claimed task back without completing it; see [`Release`].
    async fn release_task(&self, lease: &Lease, release: Release) -> Result<()>;

    /// Gives up every affinity naming `owner` (see [`engine::forget_affinity`]): a worker
    /// that stops calls it, so that other workers take its workflows at once.
    async fn forget_affinity(&self, owner: &str) -> Result<()>;

    /// Delivers a signal: it waits as a message, in order, until the workflow's next task,
    /// whether or not any worker runs. `Closed` if the workflow has ended.
    async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()>;

    /// Asks a workflow to cancel. `Closed` if it has ended.
    async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()>;

    /// Ends a run at once without running its code (see [`engine::terminate`]). `Closed` if
    /// it has ended, `Conflict` if its history moved on since the caller read it.
    async fn terminate(&self, termination: Termination) -> Result<()>;

    /// Begins a new run from a point of the current run's history, to run the current code
    /// from there (see [`engine::reset`]): the run, open or ended, is kept as an earlier run.
    /// `InvalidArgument` for a point that is not a workflow-task boundary, `Conflict` or
    /// `RunMoved` if the run moved on since the caller read it.
    async fn reset(&self, reset: Reset) -> Result<()>;

    /// The history of run `run` of a workflow: its current run's (as [`load_history`](Self::load_history)
    /// gives it) or an earlier one's, kept when the workflow continued as new.
    /// `InvalidArgument` for a run it never had.
    async fn load_run(&self, id: &WorkflowId, run: u32) -> Result<Vec<Event>>;

    /// The earlier runs of a workflow (each ended by continue-as-new, a retried failure or a
    /// reset),
    /// oldest first; empty for a workflow on its first run. Its current run is its summary's
    /// `run`.
    async fn runs(&self, id: &WorkflowId) -> Result<Vec<RunSummary>>;

    /// Pauses a workflow from outside (see [`engine::pause`]): no worker runs its code until
    /// [`resume`](Self::resume); messages wait. `Closed` if it has ended.
    async fn pause(&self, id: &WorkflowId, reason: &str) -> Result<()>;

    /// Resumes a paused workflow (see [`engine::resume`]): its task is claimable at once, with
    /// every message that waited. `InvalidArgument` if it is not paused.
    async fn resume(&self, id: &WorkflowId) -> Result<()>;

    /// Deletes a batch of closed workflows for retention (see [`engine::purge`]); answers
    /// their ids, those that ended first first. Call again while it answers a full batch.
    async fn purge(&self, purge: &Purge) -> Result<Vec<WorkflowId>>;

    /// One workflow's summary.
    async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary>;

    /// Workflows matching `query`, newest first, one page at a time.
    async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>>;

    /// Counts over the whole store.
    async fn stats(&self) -> Result<Stats>;

    /// The tasks waiting and running, by kind, and the oldest ready one's age: cheap enough to
    /// read at every metrics scrape, unlike [`stats`](Self::stats).
    async fn backlog(&self) -> Result<Backlog>;

    /// The lines a workflow's code logged, in order.
    async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>>;

    /// What a workflow waits for in the store: its tasks and messages, by id.
    async fn pending(&self, id: &WorkflowId) -> Result<Pending>;

    /// The store's clock now.
    async fn now(&self) -> Result<loom_core::Timestamp>;

    /// One schedule. `ScheduleNotFound` if there is none.
    async fn schedule(&self, id: &str) -> Result<Schedule>;

    /// Up to `limit` schedules by id, those after `after` when it is given.
    async fn schedules(&self, after: Option<&str>, limit: usize) -> Result<Vec<Schedule>>;

    /// Up to `limit` schedules whose `wake_at` has come by the store's clock, earliest first,
    /// with that time and the next `wake_at` to come: what a worker ticks.
    async fn due_schedules(&self, limit: usize) -> Result<DueSchedules>;

    /// Writes a schedule and what its tick decided, in one step (see
    /// [`engine::write_schedule`]). `ScheduleConflict` if it was written since the caller
    /// read it, `ScheduleExists` or `ScheduleNotFound`, `AlreadyExists` for a workflow id
    /// taken meanwhile; nothing is written then.
    async fn write_schedule(&self, write: ScheduleWrite) -> Result<()>;

    /// What the backend counted of its own work (group commits, connections), for metrics.
    /// Cheap and synchronous; backends without such machinery answer zeros.
    fn counters(&self) -> StoreCounters {
        StoreCounters::default()
    }

    /// A future that resolves when the store learns that new work may be ready (another
    /// process enqueued it), so that idle workers wake at once instead of at their next poll.
    /// Backends without such notifications never resolve, and workers rely on polling.
    ///
    /// The future subscribes when this method returns, not when it is first polled: it sees
    /// every signal sent after the call. A worker takes it before a claim, and waits on it
    /// only if the claim found nothing, so work made ready while that claim ran still wakes
    /// it.
    fn work_signal(&self) -> WorkSignal<'_> {
        Box::pin(std::future::pending())
    }

    /// Whether [`work_signal`](Self::work_signal) resolves for work that other workers make
    /// claimable (PostgreSQL's notifications do while it listens; the embedded stores have
    /// no signal). A
    /// worker asks for an [`Affinity`] only from such a store: elsewhere the preferred worker
    /// would learn of its workflow's next task only at its next poll.
    fn signals_work(&self) -> bool {
        false
    }
}
