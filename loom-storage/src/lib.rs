//! # loom-storage: the Storage trait every backend implements
//!
//! This crate is the **room of durable state, in the abstract**. It defines the async
//! [`Storage`] trait (what a worker and a client need from a database, and nothing more), the
//! records that cross it, the errors with meanings ([`StorageError`]), the shared reading of
//! what new events imply for the task queue ([`TaskPlan`]), a complete in-process backend
//! ([`MemoryStorage`]), and, behind the `conformance` feature, the one test suite that every
//! backend runs.
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
//!   retry, creates the next attempt's task, also in one step.
//!
//! ```
//! use loom_core::{Event, EventKind, HISTORY_FORMAT, Payload, Seq, Timestamp, WorkflowId};
//! use loom_storage::{ClaimRequest, MemoryStorage, Storage};
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStorage::new();
//! let started = Event {
//!     seq: Seq::FIRST,
//!     at: Timestamp::from_millis(0),
//!     kind: EventKind::WorkflowStarted {
//!         name: "Greeting".into(),
//!         version: 1,
//!         input: Payload::encode("Ada").unwrap(),
//!         format: HISTORY_FORMAT,
//!     },
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
pub mod error;
pub mod memory;
pub mod model;
pub mod plan;

use async_trait::async_trait;
use loom_core::{Event, LogRecord, Payload, Seq, WorkflowId};

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, Result, StorageError};
pub use memory::MemoryStorage;
pub use model::{
    ActivityTask, ActivityTaskCompletion, ClaimRequest, DecidedTask, Lease, ListCursor, ListQuery,
    Message, MessageId, Page, Release, Stats, TaskId, WorkflowStatus, WorkflowSummary,
    WorkflowTask, WorkflowTaskCompletion,
};
pub use plan::{NewActivity, NewTimer, TaskPlan, Terminal};

/// Durable storage for workflows, histories, messages and tasks.
///
/// Every method is atomic: it happens entirely or not at all. Errors carry meanings (see
/// [`StorageError`]); `Unavailable` is the only retryable one, and no error from here is ever
/// a reason to fail a workflow.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Creates a workflow from its `WorkflowStarted` event (numbered 1) and makes its first
    /// workflow task ready. A second create with the same id is `AlreadyExists` and writes
    /// nothing, whatever the existing workflow's status.
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()>;

    /// Appends `events` to a history whose last event must be `expected_last_seq`
    /// (`Conflict` otherwise), creating the tasks they imply. Runtimes use
    /// [`complete_workflow_task`](Self::complete_workflow_task); this is for tools and tests.
    async fn append_events(
        &self,
        id: &WorkflowId,
        expected_last_seq: Seq,
        events: Vec<Event>,
    ) -> Result<()>;

    /// The events of a history after `after` (use `Seq::ZERO` for all), in order.
    async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>>;

    /// Claims up to `req.max` ready workflow tasks, oldest ready first, each with its due
    /// messages. A task is ready when a message is due for it (or it was just created, or
    /// released) and no live lease holds it.
    async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>>;

    /// Commits a workflow task; see [`WorkflowTaskCompletion`].
    async fn complete_workflow_task(&self, completion: WorkflowTaskCompletion) -> Result<()>;

    /// Commits a workflow task like [`complete_workflow_task`](Self::complete_workflow_task)
    /// and, in the same step, claims for `eager` up to `eager.max` of the activity tasks that
    /// this commit created and that are due now, so the committing worker can start them at
    /// once (eager activity dispatch). What it returns is claimed exactly as by
    /// [`claim_activity_tasks`](Self::claim_activity_tasks); the rest wait for any claimer.
    /// Backends without it commit and claim nothing, which is always correct.
    async fn complete_workflow_task_and_claim(
        &self,
        completion: WorkflowTaskCompletion,
        eager: &ClaimRequest,
    ) -> Result<Vec<ActivityTask>> {
        let _ = eager;
        self.complete_workflow_task(completion).await?;
        Ok(Vec::new())
    }

    /// Claims up to `req.max` due activity tasks, oldest due first.
    async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>>;

    /// Commits an activity attempt; see [`ActivityTaskCompletion`].
    async fn complete_activity_task(&self, completion: ActivityTaskCompletion) -> Result<()>;

    /// Commits an activity attempt like
    /// [`complete_activity_task`](Self::complete_activity_task) and, if its result made the
    /// workflow's task ready and no lease holds it, claims that task for `eager` in the same
    /// step, so the worker can run it at once (eager workflow task). What it returns is claimed
    /// exactly as by [`claim_workflow_tasks`](Self::claim_workflow_tasks). Backends without it
    /// commit and claim nothing, which is always correct.
    async fn complete_activity_task_and_claim(
        &self,
        completion: ActivityTaskCompletion,
        eager: &ClaimRequest,
    ) -> Result<Option<WorkflowTask>> {
        let _ = eager;
        self.complete_activity_task(completion).await?;
        Ok(None)
    }

    /// Whether [`complete_activity_and_decide`](Self::complete_activity_and_decide) can apply a
    /// decision. A caller that cannot reuse its machine after a refused decision asks first.
    fn decides_ahead(&self) -> bool {
        false
    }

    /// Commits an activity attempt and, in the same step, the workflow task its result wakes,
    /// as `decided` by the caller from that result alone, if and only if that is exactly what
    /// a claim of the task would have handed out: the task is free, the result is its only
    /// due message, and the history still ends at `decided.expected_last_seq`. Then it also
    /// claims for `eager` up to `eager.max` of the activities the decision scheduled, and
    /// returns them (`Some`). Otherwise only the activity's result is committed, as by
    /// [`complete_activity_task`](Self::complete_activity_task), and the caller's decision is
    /// void (`None`). Backends without it always do the latter, which is always correct.
    async fn complete_activity_and_decide(
        &self,
        activity: ActivityTaskCompletion,
        decided: DecidedTask,
        eager: &ClaimRequest,
    ) -> Result<Option<Vec<ActivityTask>>> {
        let _ = (decided, eager);
        self.complete_activity_task(activity).await?;
        Ok(None)
    }

    /// Extends a live lease by `extend` from now. `LeaseLost` if it is not live.
    async fn renew_lease(&self, lease: &Lease, extend: std::time::Duration) -> Result<Lease>;

    /// Gives a claimed task back without completing it; see [`Release`].
    async fn release_task(&self, lease: &Lease, release: Release) -> Result<()>;

    /// Delivers a signal: it waits as a message, in order, until the workflow's next task,
    /// whether or not any worker runs. `Closed` if the workflow has ended.
    async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()>;

    /// Asks a workflow to cancel. `Closed` if it has ended.
    async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()>;

    /// One workflow's summary.
    async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary>;

    /// Workflows matching `query`, newest first, one page at a time.
    async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>>;

    /// Counts over the whole store.
    async fn stats(&self) -> Result<Stats>;

    /// The lines a workflow's code logged, in order.
    async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>>;

    /// Resolves when the store learns that new work may be ready (another process enqueued
    /// it), so that idle workers wake at once instead of at their next poll. Backends without
    /// such notifications never resolve, and workers rely on polling.
    async fn work_signal(&self) {
        std::future::pending::<()>().await;
    }
}
