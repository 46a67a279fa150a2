//! Leases: which this worker holds, and their renewal while a task runs.

use super::*;

impl Shared {
    pub(super) fn leases_guard(&self) -> std::sync::MutexGuard<'_, BTreeMap<TaskId, Lease>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn track(&self, lease: Lease) {
        self.leases_guard().insert(lease.task, lease);
    }

    pub(super) fn untrack(&self, task: TaskId) {
        self.leases_guard().remove(&task);
    }

    /// Gives a running task back to the store, claimable again `after` from now. If that
    /// fails, the lease lapses instead and the task is handed out then.
    pub(super) async fn give_back(&self, lease: Lease, after: Duration) {
        let release = Release { after, pause: None };
        if let Err(e) = self
            .storage
            .release_task(&self.current_lease(lease), release)
            .await
        {
            debug!(error = %e, "could not give a task back; its lease will lapse instead");
        }
    }

    /// Runs `work` while renewing its lease every third of the lease. If the lease is lost
    /// (it lapsed, or the workflow cancelled the activity and the store deleted its task),
    /// `cancel` is set, so that an activity watching its context stops on its own, and the
    /// work gets the shutdown grace to do so before it is dropped (`None`): whatever it would
    /// commit would be refused anyway.
    pub(super) async fn with_renewal<T>(
        self: Arc<Self>,
        lease: Lease,
        kind: TaskKind,
        cancel: Arc<loom_core::CancelFlag>,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let renew = async {
            let mut current = lease;
            loop {
                tokio::time::sleep(self.config.lease / 3).await;
                match self.storage.renew_lease(&current, self.config.lease).await {
                    Ok(renewed) => {
                        if let Some(t) = self.telemetry() {
                            t.lease_renewed();
                        }
                        current = renewed;
                        self.leases_guard().insert(renewed.task, renewed);
                    }
                    Err(StorageError::LeaseLost(_)) => {
                        self.metrics.leases_lost.fetch_add(1, Ordering::Relaxed);
                        if let Some(t) = self.telemetry() {
                            t.lease_lost(kind);
                        }
                        warn!(task = %lease.task, "lease lost while the task ran; abandoning it");
                        return;
                    }
                    Err(e) => debug!(error = %e, "renewing a lease failed; will retry"),
                }
            }
        };
        tokio::pin!(work);
        tokio::select! {
            biased;
            done = &mut work => return Some(done),
            () = renew => {}
        }
        cancel.cancel();
        // The work's own commit is refused; its result is not wanted.
        let _ = tokio::time::timeout(self.config.shutdown_grace, work).await;
        None
    }

    /// Runs a commit, and runs it again while the store answers that it is unavailable (a
    /// restart, a cut connection), backing off from 25 ms to a second, for at most a lease's
    /// length: the worker still holds the task and the work, so the commit lands as soon as
    /// the store is back instead of the task waiting for its lease to lapse. A commit that
    /// did land with its answer lost is refused when run again (its lease is spent, or the
    /// history moved on), as any refused commit is.
    pub(super) async fn commit_retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        let deadline = tokio::time::Instant::now() + self.config.lease;
        let mut pause = Duration::from_millis(25);
        loop {
            match attempt().await {
                Err(e @ StorageError::Unavailable { .. })
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    debug!(error = %e, "the store could not take a commit; trying it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    pub(super) fn current_lease(&self, lease: Lease) -> Lease {
        self.leases_guard()
            .get(&lease.task)
            .copied()
            .unwrap_or(lease)
    }
}
