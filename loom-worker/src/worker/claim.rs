//! The claim loops, the chains of eagerly claimed steps, and shutdown.

use super::*;

/// Exponential backoff for storage errors: the database going away is waited out, never
/// turned into a workflow failure.
pub(super) struct Backoff(Duration);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_come_sooner_after_work_and_back_off_to_the_interval() {
        let mut poll = PollWait::new(Duration::from_millis(800));
        assert_eq!(
            poll.empty(),
            Duration::from_millis(800),
            "idle from the start"
        );
        poll.found();
        let waits: Vec<u128> = (0..6).map(|_| poll.empty().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 800, 800]);
        poll.found();
        assert_eq!(
            poll.empty(),
            Duration::from_millis(100),
            "found again: short again"
        );
    }

    #[test]
    fn a_short_interval_is_never_exceeded_and_never_below_the_floor() {
        let mut poll = PollWait::new(Duration::from_millis(20));
        poll.found();
        assert_eq!(poll.empty(), Duration::from_millis(5));
        let mut tiny = PollWait::new(Duration::from_millis(2));
        tiny.found();
        assert_eq!(
            tiny.empty(),
            Duration::from_millis(2),
            "the interval caps the floor"
        );
    }
}

/// How long an idle claim loop waits before it polls again, on a store whose signal does not
/// reach it when other processes make work ([`Storage::signals_work`] false): an eighth of
/// the poll interval after a claim that found work (more tends to follow from where that
/// came from), doubling with every empty poll up to the interval. An idle worker polls at
/// the interval; one fed by other processes finds their next work sooner.
pub(super) struct PollWait {
    max: Duration,
    next: Duration,
}

impl PollWait {
    /// The shortest wait, whatever the interval.
    const FLOOR: Duration = Duration::from_millis(5);

    pub(super) fn new(interval: Duration) -> Self {
        PollWait {
            max: interval,
            next: interval,
        }
    }

    /// A claim found work: the next empty poll waits the least.
    pub(super) fn found(&mut self) {
        self.next = (self.max / 8).max(Self::FLOOR).min(self.max);
    }

    /// A claim found nothing: how long to wait before the next one.
    pub(super) fn empty(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

impl Shared {
    /// Claims tasks of one kind as slots free up and runs each under a renewed lease, until
    /// stopped; then drains what is running.
    ///
    /// The slots are taken before the claim, never after: a claimed task starts at once, so
    /// its lease is renewed from the moment it is granted. (Claiming first and then waiting
    /// for a slot let a task's lease lapse unrenewed while a chain held the slot, and another
    /// worker ran it too.) The slots go back while the loop waits for work, so a chain can
    /// borrow them for its next step meanwhile.
    pub(super) async fn claim_loop(self: Arc<Self>, kind: Kind, stop: watch::Receiver<bool>) {
        let (slots, wake) = match kind {
            Kind::Workflow => (self.workflow_slots.clone(), &*self.workflow_work),
            Kind::Activity => (self.activity_slots.clone(), &self.activity_work),
        };
        let mut running = JoinSet::new();
        let mut backoff = Backoff::new();
        let adaptive = !self.storage.signals_work();
        let mut poll = PollWait::new(self.config.poll_interval);
        while !*stop.borrow() {
            while running.try_join_next().is_some() {}
            // One slot (waiting for a task or a chain step to end), and a claim of as many
            // tasks as there are free slots now. Only that one slot is held while the claim is
            // in flight, so that a chain's eager step still finds the others free.
            // Every `select!` here is biased (polled in the order written): the worker's
            // choices must follow from what happened, never from a coin, so that a seeded
            // simulation replays it exactly.
            let first = tokio::select! {
                biased;
                () = wait_stop(stop.clone()) => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let req = self.claim_request(1 + slots.available_permits());
            // Subscribed before the claim: work another process makes ready while the claim
            // runs wakes this loop, instead of waiting for the next poll.
            let signal = self.storage.work_signal();
            if let Some(t) = self.telemetry() {
                t.claimed(match kind {
                    Kind::Workflow => crate::telemetry::TaskKind::workflow,
                    Kind::Activity => crate::telemetry::TaskKind::activity,
                });
            }
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
                    drop(first);
                    warn!(error = %e, ?kind, "claiming tasks failed; backing off");
                    backoff.wait().await;
                    continue;
                }
            };
            if tasks.is_empty() {
                drop(first);
                let wait = if adaptive {
                    poll.empty()
                } else {
                    self.config.poll_interval
                };
                tokio::select! {
                    biased;
                    () = wait_stop(stop.clone()) => break,
                    () = wake.notified() => {}
                    () = signal => {}
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            poll.found();
            // Each claimed task takes a slot now or goes back now: a claimed task never waits,
            // unrenewed, for a slot. (One goes back only if a chain took a slot meanwhile.)
            let mut first = Some(first);
            for task in tasks {
                let permit = first
                    .take()
                    .or_else(|| slots.clone().try_acquire_owned().ok());
                let Some(permit) = permit else {
                    let _ = self
                        .storage
                        .release_task(&task.lease(), Release::default())
                        .await;
                    continue;
                };
                self.track(task.lease());
                running.spawn(self.clone().run_chain(task, permit));
            }
        }
        self.drain(running).await;
    }

    /// Lets running tasks finish within the grace period, then cancels the rest and releases
    /// their leases so another worker takes them at once.
    pub(super) async fn drain(&self, mut running: JoinSet<()>) {
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                biased;
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

    /// Runs a claimed task, then the task its commit claimed eagerly (the workflow task an
    /// activity's result woke, the activity a workflow task scheduled), and so on: one
    /// workflow's sequential steps follow each other without a trip through the claim loops.
    /// Each task holds a slot of its kind while it runs.
    pub(super) async fn run_chain(
        self: Arc<Self>,
        mut task: Claimed,
        mut permit: OwnedSemaphorePermit,
    ) {
        loop {
            let (lease, (span, attempt)) = (task.lease(), task.spans());
            let kind = usize::from(matches!(task, Claimed::Activity(_)));
            self.track(lease);
            self.metrics.running.fetch_add(1, Ordering::SeqCst);
            self.running[kind].fetch_add(1, Ordering::SeqCst);
            let cancel = loom_core::CancelFlag::new();
            let work = match task {
                Claimed::Workflow(t) => self.clone().workflow_task(t).boxed(),
                Claimed::Activity(t) => self
                    .clone()
                    .activity_task(t, cancel.clone())
                    .instrument(attempt.unwrap_or_else(tracing::Span::none))
                    .boxed(),
            };
            let next = self
                .clone()
                .with_renewal(
                    lease,
                    if kind == 0 {
                        TaskKind::workflow
                    } else {
                        TaskKind::activity
                    },
                    cancel,
                    work,
                )
                .instrument(span)
                .await
                .flatten();
            self.untrack(lease.task);
            self.metrics.running.fetch_sub(1, Ordering::SeqCst);
            self.running[kind].fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            match next {
                Some(Next(t, p)) => (task, permit) = (t, p),
                None => return,
            }
        }
    }

    /// A slot for the workflow task an activity's result wakes: any free workflow slot while
    /// the worker is not shutting down, whatever the load (unlike [`eager_slot`]), since the
    /// task continues a workflow in flight rather than taking new work off the queue.
    ///
    /// [`eager_slot`]: Self::eager_slot
    pub(super) fn continuation_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.free_slot(&self.workflow_slots)
    }

    /// A free slot of `slots`, unless the worker is shutting down.
    fn free_slot(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        slots.clone().try_acquire_owned().ok()
    }

    /// A slot for an eager claim, while at most half of each kind's slots run tasks and the
    /// worker is not shutting down. A busy worker has its claim loops batching claims already
    /// (an eager claim is a claim of one, measured at about a fifth less throughput under a
    /// backlog), and takes new work off the queue oldest first; a lightly loaded one gains
    /// the hand-off's latency. (The step an activity's result wakes is not new work: see
    /// [`continuation_slot`](Self::continuation_slot).) Load is counted in
    /// running tasks, not free slots: a claim loop holds a slot while its claim is in flight,
    /// which is not load.
    pub(super) fn eager_slot(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        let light =
            |running: &AtomicUsize, of: usize| running.load(Ordering::SeqCst) * 2 <= of.max(1);
        if !light(&self.running[0], self.config.workflow_concurrency)
            || !light(&self.running[1], self.config.activity_concurrency)
        {
            return None;
        }
        self.free_slot(slots)
    }

    pub(super) async fn take_eager(
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
                    if let Some(t) = self.telemetry() {
                        t.eager(match task {
                            Claimed::Workflow(_) => crate::telemetry::TaskKind::workflow,
                            Claimed::Activity(_) => crate::telemetry::TaskKind::activity,
                        });
                    }
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
}

/// The two kinds of task a worker claims.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Workflow,
    Activity,
}

/// The task a commit claimed eagerly, with the slot it will run in.
pub(super) struct Next(Claimed, OwnedSemaphorePermit);

/// A claimed task of either kind.
pub(super) enum Claimed {
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

    /// The task's spans: its own, which gives log lines their fields (the workflow, the task,
    /// the trace id), and for an activity attempt the `RunActivity` span inside it, which joins
    /// the run's trace and carries what a trace needs. A workflow task's `RunWorkflow` span is
    /// made once its history is loaded and the run's trace known.
    fn spans(&self) -> (tracing::Span, Option<tracing::Span>) {
        match self {
            Claimed::Workflow(t) => (
                info_span!(
                    "workflow_task",
                    workflow_id = t.workflow_id.as_str(),
                    run = t.run,
                    workflow = t.workflow_name.as_str(),
                    task = %t.lease.task,
                    trace_id = tracing::field::Empty,
                ),
                None,
            ),
            Claimed::Activity(t) => {
                let traceparent = t.options.traceparent.as_deref();
                let task = info_span!(
                    "activity_task",
                    workflow_id = t.workflow_id.as_str(),
                    activity = t.name.as_str(),
                    activity_id = %t.activity_id,
                    attempt = t.attempt,
                    task = %t.lease.task,
                    trace_id = crate::trace::trace_id(traceparent),
                );
                let attempt = info_span!(
                    target: crate::trace::TARGET,
                    parent: &task,
                    "RunActivity",
                    otel.name = tracing::field::Empty,
                    otel.kind = "consumer",
                    workflow_id = t.workflow_id.as_str(),
                    activity_id = %t.activity_id,
                    attempt = t.attempt,
                );
                if !attempt.is_disabled() {
                    attempt.record("otel.name", format!("RunActivity:{}", t.name));
                    crate::trace::join(&attempt, traceparent);
                }
                (task, Some(attempt))
            }
        }
    }
}

pub(super) async fn wait_stop(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
