//! One activity attempt: run it under its timeouts, commit its result, and decide the next
//! workflow task ahead when the workflow's machine is at hand.

use super::*;

impl Shared {
    /// Runs one activity attempt; returns the workflow task its commit claimed eagerly, if any.
    pub(super) async fn activity_task(
        self: Arc<Self>,
        task: ActivityTask,
        cancel: Arc<loom_core::CancelFlag>,
    ) -> Option<Next> {
        let store_time = StoreTime::new(task.claimed_at, self.clock.now());
        let policy = task.options.retry.clone();
        let started = std::time::Instant::now();
        let activity = self.registry.activity(&task.name).cloned();
        let activity_type = activity.as_ref().map(|a| a.name());
        if let (Some(t), Some(name)) = (self.telemetry(), activity_type) {
            t.activity_started(
                name,
                task.claimed_at.saturating_duration_since(task.ready_at),
            );
        }
        let outcome = if task.deliveries > self.config.max_deliveries {
            Err(Some(Failure::new(
                "worker_lost",
                format!(
                    "attempt {} was handed out {} times without finishing (it crashed or hung its worker each time)",
                    task.attempt, task.deliveries
                ),
            )))
        } else if let Some(activity) = activity {
            self.run_attempt(activity, &task, cancel.clone()).await
        } else if task.deliveries < self.config.max_deliveries {
            // Another worker may have it: give the task back for a while.
            warn!(activity = %task.name, "no activity of this name is registered here; releasing it");
            self.give_back(task.lease, self.config.pause_retry).await;
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
                .then(|| policy.backoff(task.attempt, self.random_unit()))
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
        if let (Some(t), Some(name)) = (self.telemetry(), activity_type) {
            let outcome = match &result {
                _ if cancel.is_cancelled() => AttemptOutcome::cancelled,
                EventKind::ActivityCompleted { .. } => AttemptOutcome::completed,
                EventKind::ActivityTimedOut { .. } => AttemptOutcome::timed_out,
                _ if retry_after.is_some() => AttemptOutcome::retried,
                EventKind::ActivityFailed { failure, .. }
                    if failure.non_retryable || policy.non_retryable.contains(&failure.kind) =>
                {
                    AttemptOutcome::non_retryable
                }
                _ => AttemptOutcome::failed,
            };
            t.activity_ended(name, outcome, started.elapsed());
        }
        // With a free workflow slot, the commit also takes the workflow task the result wakes:
        // decided here from the cached machine if it is at hand, or claimed to run next. The
        // task continues a workflow in flight, so it takes any free slot, however busy the
        // worker: left in the queue it would wait behind every newer workflow's first task,
        // and under a backlog the workflows stranded half-done (each holding its machine in
        // the cache) would grow with the backlog.
        let workflow_slot = self.continuation_slot();
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
        let committed = self
            .commit_retrying(|| self.storage.complete_activity_task(completion.clone()))
            .await;
        match committed {
            Ok(ActivityCommitted::Decided(claimed)) => {
                drop(workflow_slot);
                let Some(ahead) = ahead else {
                    warn!("the store applied a decision this worker did not make");
                    return None;
                };
                self.metrics.decided_ahead.fetch_add(1, Ordering::Relaxed);
                // The code's lines belong to the workflow task this commit made, not to the
                // activity whose result it delivered.
                tracing::info_span!(parent: None, "workflow_task", workflow_id = %workflow_id)
                    .in_scope(|| {
                        for line in &ahead.logs {
                            log_line(&workflow_id, line.level, &line.message);
                        }
                    });
                self.decision_committed(
                    workflow_id,
                    ahead.machine,
                    store_time.now(self.clock.as_ref()),
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
                if let Some(t) = self.telemetry() {
                    t.commit_refused(TaskKind::activity, Refusal::lease_lost);
                }
                debug!("activity result refused: the lease was lost or the workflow ended");
                None
            }
            Err(e) => {
                warn!(error = %e, "reporting the activity result failed; the attempt will run again");
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
    pub(super) fn decide_ahead(
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
            entropy: self.random_u64(),
            messages: vec![result.clone()],
        };
        let limits = self.config.limits;
        // Not past a limit either: the ordinary path pauses or ends the run then.
        let decision = machine
            .activate(activation)
            .ok()
            .filter(|d| d.dropped.is_empty())
            // A run that continues as new commits as a workflow task, with its next run.
            .filter(|_| machine.next_run().is_none())
            .filter(|d| {
                d.events
                    .iter()
                    .all(|e| e.kind.largest_payload() <= limits.max_payload_bytes)
            })
            .filter(|_| machine.last_seq().get() <= limits.max_history_events)?;
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
            affinity: self.affinity(),
        };
        Some(Ahead {
            decided,
            machine,
            scheduled,
            logs,
            activity_slot,
        })
    }

    /// Runs one attempt under its start-to-close timeout (and heartbeat timeout, if set).
    /// `Err(None)` is a timeout; a panic is a retryable failure of kind `panic`.
    pub(super) async fn run_attempt(
        &self,
        activity: Arc<dyn loom_core::DynActivity>,
        task: &ActivityTask,
        cancel: Arc<loom_core::CancelFlag>,
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
        )
        .with_cancel(cancel);
        let limits = self.config.limits;
        let attempt = AssertUnwindSafe(activity.run(ctx, task.input.clone()))
            .catch_unwind()
            .map(move |ran| {
                ran.map(|result| {
                    result.and_then(|payload| {
                        limits
                            .check_payload("the result", payload.encoded_len())
                            .map(|()| payload)
                            .map_err(|e| Failure::non_retryable("payload_too_large", e))
                    })
                })
            });
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
            biased;
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
pub(super) struct StoreTime {
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
pub(super) struct Ahead {
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

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("the activity panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("the activity panicked: {s}")
    } else {
        "the activity panicked".to_owned()
    }
}
