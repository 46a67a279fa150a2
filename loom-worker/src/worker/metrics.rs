//! A worker's counters.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters of a worker's work so far.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Workflow tasks committed.
    pub workflow_tasks: AtomicU64,
    /// Workflow tasks that could not be decided (non-determinism, panic) and paused the run.
    pub workflow_tasks_paused: AtomicU64,
    /// Workflows that ended while this worker ran them.
    pub workflows_finished: AtomicU64,
    /// Runs that continued as new while this worker ran them.
    pub runs_continued: AtomicU64,
    /// Closed workflows this worker purged past their retention.
    pub workflows_purged: AtomicU64,
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
            runs_continued: get(&self.runs_continued),
            workflows_purged: get(&self.workflows_purged),
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[expect(
    missing_docs,
    reason = "the fields mirror WorkerMetrics, documented there"
)]
pub struct MetricsSnapshot {
    pub workflow_tasks: u64,
    pub workflow_tasks_paused: u64,
    pub workflows_finished: u64,
    pub runs_continued: u64,
    pub workflows_purged: u64,
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
