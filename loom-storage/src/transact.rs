//! Backends that apply write sets in transactions of their own: the one implementation of
//! [`Storage`] for `MemoryStorage`, SQLite and redb.
//!
//! Such a backend implements [`Transact`]: apply one [`WriteSet`] atomically with
//! [`engine::apply`](crate::engine::apply), and run reads on a consistent snapshot through
//! [`Read`]. Everything else, every method of `Storage`, is written once here.

use async_trait::async_trait;
use loom_core::{Event, EventKind, LogRecord, Payload, Seq, Timestamp, WorkflowId};

use crate::Storage;
use crate::engine::{self, Applied, WriteSet};
use crate::error::Result;
use crate::model::{
    ActivityCommitted, ActivityTask, ActivityTaskCompletion, Backlog, ClaimRequest, Lease,
    ListQuery, Page, Pending, Release, Reset, RunSummary, Stats, Termination, WorkflowSummary,
    WorkflowTask, WorkflowTaskCompletion,
};
use crate::schedule::{DueSchedules, Schedule, ScheduleWrite};

/// The reads of a snapshot.
pub trait Read {
    /// The events of a history after `after`, in order (`NotFound` for no such workflow).
    fn load_history(&mut self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>>;
    /// The history of one run (see [`Storage::load_run`]).
    fn load_run(&mut self, id: &WorkflowId, run: u32) -> Result<Vec<Event>>;
    /// The earlier runs of a workflow, oldest first (see [`Storage::runs`]).
    fn runs(&mut self, id: &WorkflowId) -> Result<Vec<RunSummary>>;
    /// One workflow's summary.
    fn describe(&mut self, id: &WorkflowId) -> Result<WorkflowSummary>;
    /// A page of workflows, newest first.
    fn list(&mut self, query: &ListQuery) -> Result<Page<WorkflowSummary>>;
    /// Counts at store time `now`.
    fn stats(&mut self, now: Timestamp) -> Result<Stats>;
    /// The open tasks by kind at store time `now`.
    fn backlog(&mut self, now: Timestamp) -> Result<Backlog>;
    /// A workflow's log lines, in order.
    fn logs(&mut self, id: &WorkflowId) -> Result<Vec<LogRecord>>;
    /// A workflow's tasks and messages.
    fn pending(&mut self, id: &WorkflowId, now: Timestamp) -> Result<Pending>;
    /// One schedule, if there is one.
    fn schedule(&mut self, id: &str) -> Result<Option<Schedule>>;
    /// Up to `limit` schedules by id, after `after`.
    fn schedules(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<Schedule>>;
    /// Up to `limit` schedules with `wake_at <= now`, by `(wake_at, id)`, and the least
    /// `wake_at` after `now`.
    fn due_schedules(
        &mut self,
        now: Timestamp,
        limit: usize,
    ) -> Result<(Vec<Schedule>, Option<Timestamp>)>;
}

/// A read to run on a snapshot at store time `now`.
pub type ReadJob<T> = Box<dyn FnOnce(&mut dyn Read, Timestamp) -> Result<T> + Send>;

/// A backend that applies write sets itself. Implementing it implements [`Storage`].
#[async_trait]
pub trait Transact: Send + Sync + 'static {
    /// Applies `ws` with [`engine::apply`] in one transaction, at the store's now, and
    /// answers once the commit is as durable as [`WriteSet::needs_sync`] asks. A failed check
    /// or an error writes nothing.
    async fn transact(&self, ws: WriteSet) -> Result<Applied>;

    /// Runs `read` on a consistent snapshot.
    async fn read<T: Send + 'static>(&self, read: ReadJob<T>) -> Result<T>;

    /// See [`Storage::work_signal`].
    fn work_signal(&self) -> crate::WorkSignal<'_> {
        Box::pin(std::future::pending())
    }

    /// See [`Storage::counters`].
    fn counters(&self) -> crate::StoreCounters {
        crate::StoreCounters::default()
    }
}

async fn run<T: Transact + ?Sized>(store: &T, ws: WriteSet) -> Result<Applied> {
    if ws.checks.is_empty() && ws.ops.is_empty() {
        return Ok(Applied::default());
    }
    store.transact(ws).await
}

#[async_trait]
impl<T: Transact> Storage for T {
    async fn create_workflow(&self, id: &WorkflowId, started: Event) -> Result<()> {
        run(self, engine::create(id, started)?).await.map(drop)
    }

    async fn load_history(&self, id: &WorkflowId, after: Seq) -> Result<Vec<Event>> {
        let id = id.clone();
        self.read(Box::new(move |r, _| r.load_history(&id, after)))
            .await
    }

    async fn claim_workflow_tasks(&self, req: &ClaimRequest) -> Result<Vec<WorkflowTask>> {
        Ok(run(self, engine::claim_workflow_tasks(req))
            .await?
            .workflow_tasks)
    }

    async fn complete_workflow_task(
        &self,
        completion: WorkflowTaskCompletion,
    ) -> Result<Vec<ActivityTask>> {
        Ok(run(self, engine::complete_workflow_task(completion)?)
            .await?
            .activity_tasks)
    }

    async fn claim_activity_tasks(&self, req: &ClaimRequest) -> Result<Vec<ActivityTask>> {
        Ok(run(self, engine::claim_activity_tasks(req))
            .await?
            .activity_tasks)
    }

    async fn complete_activity_task(
        &self,
        completion: ActivityTaskCompletion,
    ) -> Result<ActivityCommitted> {
        Ok(run(self, engine::complete_activity_task(completion)?)
            .await?
            .activity_committed())
    }

    async fn renew_lease(&self, lease: &Lease, extend: std::time::Duration) -> Result<Lease> {
        run(self, engine::renew(lease, extend))
            .await?
            .renewed(lease)
    }

    async fn release_task(&self, lease: &Lease, release: Release) -> Result<()> {
        run(self, engine::release(lease, release)).await.map(drop)
    }

    async fn forget_affinity(&self, owner: &str) -> Result<()> {
        run(self, engine::forget_affinity(owner)?).await.map(drop)
    }

    async fn signal(&self, id: &WorkflowId, name: &str, payload: Payload) -> Result<()> {
        let kind = EventKind::SignalReceived {
            name: name.to_owned(),
            payload,
        };
        run(self, engine::deliver(id, kind)?).await.map(drop)
    }

    async fn request_cancel(&self, id: &WorkflowId, reason: Option<String>) -> Result<()> {
        let kind = EventKind::CancelRequested { reason };
        run(self, engine::deliver(id, kind)?).await.map(drop)
    }

    async fn terminate(&self, termination: Termination) -> Result<()> {
        run(self, engine::terminate(termination)?).await.map(drop)
    }

    async fn pause(&self, id: &WorkflowId, reason: &str) -> Result<()> {
        run(self, engine::pause(id, reason)?).await.map(drop)
    }

    async fn reset(&self, reset: Reset) -> Result<()> {
        run(self, engine::reset(reset)?).await.map(drop)
    }

    async fn resume(&self, id: &WorkflowId) -> Result<()> {
        run(self, engine::resume(id)?).await.map(drop)
    }

    async fn purge(&self, purge: &crate::Purge) -> Result<Vec<WorkflowId>> {
        Ok(run(self, engine::purge(purge)?).await?.purged)
    }

    async fn load_run(&self, id: &WorkflowId, run: u32) -> Result<Vec<Event>> {
        let id = id.clone();
        self.read(Box::new(move |r, _| r.load_run(&id, run))).await
    }

    async fn runs(&self, id: &WorkflowId) -> Result<Vec<RunSummary>> {
        let id = id.clone();
        self.read(Box::new(move |r, _| r.runs(&id))).await
    }

    async fn describe(&self, id: &WorkflowId) -> Result<WorkflowSummary> {
        let id = id.clone();
        self.read(Box::new(move |r, _| r.describe(&id))).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page<WorkflowSummary>> {
        let query = query.clone();
        self.read(Box::new(move |r, _| r.list(&query))).await
    }

    async fn stats(&self) -> Result<Stats> {
        self.read(Box::new(|r, now| r.stats(now))).await
    }

    async fn backlog(&self) -> Result<Backlog> {
        self.read(Box::new(|r, now| r.backlog(now))).await
    }

    async fn logs(&self, id: &WorkflowId) -> Result<Vec<LogRecord>> {
        let id = id.clone();
        self.read(Box::new(move |r, _| r.logs(&id))).await
    }

    async fn pending(&self, id: &WorkflowId) -> Result<Pending> {
        let id = id.clone();
        self.read(Box::new(move |r, now| r.pending(&id, now))).await
    }

    async fn now(&self) -> Result<Timestamp> {
        self.read(Box::new(|_, now| Ok(now))).await
    }

    async fn schedule(&self, id: &str) -> Result<Schedule> {
        let id = id.to_owned();
        self.read(Box::new(move |r, _| {
            r.schedule(&id)?
                .ok_or(crate::StorageError::ScheduleNotFound(id))
        }))
        .await
    }

    async fn schedules(&self, after: Option<&str>, limit: usize) -> Result<Vec<Schedule>> {
        let after = after.map(str::to_owned);
        self.read(Box::new(move |r, _| r.schedules(after.as_deref(), limit)))
            .await
    }

    async fn due_schedules(&self, limit: usize) -> Result<DueSchedules> {
        self.read(Box::new(move |r, now| {
            let (due, next) = r.due_schedules(now, limit)?;
            Ok(DueSchedules { now, due, next })
        }))
        .await
    }

    async fn write_schedule(&self, write: ScheduleWrite) -> Result<()> {
        run(self, engine::write_schedule(write)?).await.map(drop)
    }

    fn work_signal(&self) -> crate::WorkSignal<'_> {
        Transact::work_signal(self)
    }

    fn counters(&self) -> crate::StoreCounters {
        Transact::counters(self)
    }
}
