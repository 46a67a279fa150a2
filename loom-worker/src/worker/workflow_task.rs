//! One workflow task: replay or reuse the cached machine, decide, commit.

use super::*;

impl Shared {
    pub(super) async fn release_paused(&self, lease: Lease, why: PauseReason, reason: String) {
        self.metrics
            .workflow_tasks_paused
            .fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.telemetry() {
            t.paused(why);
        }
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

    /// Ends a run without its code: terminated at its parent's request (the `terminate`
    /// parent-close policy) or past its history limit, or timed out. Commits `end` in place of
    /// a decision, consuming every message.
    async fn end_from_outside(&self, task: WorkflowTask, end: EventKind) {
        let id = task.workflow_id.clone();
        // The cached machine, if any, knows when the run started, for its duration.
        let started_at = self
            .cache_guard()
            .as_mut()
            .and_then(|c| c.pop(&id))
            .map(|m| m.started_at());
        let family = match self.storage.describe(&id).await {
            Ok(summary) => crate::client::family_of(self.storage.as_ref(), &summary).await,
            Err(e) => Err(e),
        };
        let family = match family {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "reading the run to terminate failed; the task will be retried");
                self.give_back(task.lease, self.config.poll_interval).await;
                return;
            }
        };
        let completion = WorkflowTaskCompletion {
            lease: self.current_lease(task.lease),
            workflow_id: id.clone(),
            expected_last_seq: task.last_seq,
            events: vec![loom_core::Event {
                seq: task.last_seq.next(),
                at: task.claimed_at,
                kind: end,
            }],
            consumed: task.messages.iter().map(|m| m.id).collect(),
            progress: Some(family),
            logs: Vec::new(),
            next_run: None,
            eager: None,
            affinity: None,
        };
        let outcome = match &completion.events[0].kind {
            EventKind::WorkflowTimedOut { .. } => RunOutcome::timed_out,
            _ => RunOutcome::terminated,
        };
        let committed = self
            .commit_retrying(|| self.storage.complete_workflow_task(completion.clone()))
            .await;
        match committed {
            Ok(_) => {
                if let (Some(t), Some(def)) = (
                    self.telemetry(),
                    self.registry.workflow(&task.workflow_name),
                ) {
                    let ran = started_at.map(|s| task.claimed_at.saturating_duration_since(s));
                    t.run_ended(def.name(), outcome, ran);
                }
                debug!(workflow = %id, "ended without its code");
                self.finished.notify_waiters();
            }
            Err(e) => warn!(error = %e, "terminating the run failed; the task will be retried"),
        }
    }

    /// The next run's first event, on the newest version of its type this worker has: a run
    /// that continues as new (or is retried) is where a workflow moves to new code.
    fn on_newest_version(&self, mut started: loom_core::Event) -> loom_core::Event {
        if let EventKind::WorkflowStarted { name, version, .. } = &mut started.kind
            && let Some(newest) = self.registry.workflow(name)
        {
            *version = newest.version();
        }
        started
    }

    /// Runs one workflow task; returns the activity its commit claimed eagerly, if any.
    pub(super) async fn workflow_task(self: Arc<Self>, task: WorkflowTask) -> Option<Next> {
        let id = task.workflow_id.clone();
        if task.deliveries > self.config.max_deliveries {
            let reason = format!(
                "its task was handed out {} times without completing (it crashed or hung its worker each time)",
                task.deliveries
            );
            warn!(%reason, "pausing workflow");
            self.release_paused(task.lease, PauseReason::stalled, reason)
                .await;
            return None;
        }
        let end = task.messages.iter().find_map(|m| match &m.kind {
            EventKind::TerminateRequested { reason } => Some(EventKind::WorkflowTerminated {
                reason: reason.clone(),
            }),
            EventKind::TimeoutFired { scope } => {
                Some(EventKind::WorkflowTimedOut { scope: *scope })
            }
            _ => None,
        });
        if let Some(end) = end {
            // Carried out without the code, so it works whatever types this worker knows.
            self.end_from_outside(task, end).await;
            return None;
        }
        if self.registry.workflow(&task.workflow_name).is_none() {
            let known: Vec<&str> = self.registry.workflow_names().collect();
            let reason = format!(
                "this worker has no workflow type {:?} registered (it has: {})",
                task.workflow_name,
                known.join(", ")
            );
            warn!(%reason, "pausing workflow");
            self.release_paused(task.lease, PauseReason::unknown_type, reason)
                .await;
            return None;
        }
        let started = std::time::Instant::now();
        if let (Some(t), Some(def)) = (
            self.telemetry(),
            self.registry.workflow(&task.workflow_name),
        ) {
            let waited = task.claimed_at.saturating_duration_since(task.ready_at);
            t.workflow_task_started(def.name(), waited);
        }
        let cached = self.cache_guard().as_mut().and_then(|c| c.pop(&id));
        let current = |m: &WorkflowMachine| m.last_seq() == task.last_seq && m.run() == task.run;
        let mut machine = match cached.filter(current) {
            Some(m) => {
                self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = self.telemetry() {
                    t.cache_hit();
                }
                m
            }
            None => {
                self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
                let history = match self.storage.load_history(&id, Seq::ZERO).await {
                    Ok(h) => h,
                    Err(e) => {
                        warn!(error = %e, "loading the history failed; the task will be retried");
                        self.give_back(task.lease, Duration::ZERO).await;
                        return None;
                    }
                };
                if let Some(t) = self.telemetry() {
                    t.cache_miss(history.len());
                }
                if history.last().map(|e| e.seq) != Some(task.last_seq) {
                    // The claim and the history disagree (a store that is not read-your-writes
                    // across connections, or a fault): deciding now could consume a message
                    // the machine does not know. Give the task back and try again later.
                    debug!(
                        claimed = %task.last_seq,
                        loaded = history.len(),
                        "the history does not end where the claim said; retrying the task"
                    );
                    self.give_back(task.lease, self.config.poll_interval).await;
                    return None;
                }
                // The version the run started with executes it.
                let version = match history.first().map(|e| &e.kind) {
                    Some(EventKind::WorkflowStarted { version, .. }) => *version,
                    _ => 0,
                };
                let Some(def) = self
                    .registry
                    .workflow_version(&task.workflow_name, version)
                    .or_else(|| self.registry.workflow(&task.workflow_name))
                    .cloned()
                else {
                    self.give_back(task.lease, self.config.poll_interval).await;
                    return None;
                };
                match WorkflowMachine::new(def, id.clone(), history) {
                    Ok(m) if m.run() != task.run => {
                        debug!(
                            claimed = task.run,
                            loaded = m.run(),
                            "the history is of another run; retrying the task"
                        );
                        self.give_back(task.lease, self.config.poll_interval).await;
                        return None;
                    }
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "the history cannot be replayed; pausing workflow");
                        self.release_paused(task.lease, PauseReason::of(&e), e.to_string())
                            .await;
                        return None;
                    }
                }
            }
        };
        // The span that joins the run's trace, now that the run (and its trace) is known. It
        // carries what a trace needs; the fields log lines want besides (the task, the trace
        // id) are on the task's own span around it, which is not exported.
        let traceparent = machine.traceparent();
        tracing::Span::current().record("trace_id", crate::trace::trace_id(traceparent.as_deref()));
        let run_span = tracing::info_span!(
            target: crate::trace::TARGET,
            "RunWorkflow",
            otel.name = tracing::field::Empty,
            otel.kind = "consumer",
            workflow_id = id.as_str(),
            run = task.run,
        );
        if !run_span.is_disabled() {
            run_span.record("otel.name", format!("RunWorkflow:{}", task.workflow_name));
            crate::trace::join(&run_span, traceparent.as_deref());
        }
        // The task's time is the store's clock at the claim, never this worker's own.
        let activation = Activation {
            now: task.claimed_at,
            entropy: self.random_u64(),
            messages: task.messages.iter().map(|m| m.kind.clone()).collect(),
        };
        let decision = match run_span.in_scope(|| machine.activate(activation)) {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "the workflow task cannot be decided; pausing workflow");
                self.release_paused(task.lease, PauseReason::of(&e), e.to_string())
                    .await;
                return None;
            }
        };
        for (kind, reason) in &decision.dropped {
            debug!(message = kind.type_name(), %reason, last_seq = %task.last_seq, "dropped a message");
        }
        let limits = self.config.limits;
        if machine.last_seq().get() > limits.max_history_events && machine.next_run().is_none() {
            let reason = format!(
                "the history reached {} events, Loom's limit (Limits::max_history_events): a workflow that goes on for ever must continue as new before then (ctx.continue_as_new)",
                limits.max_history_events
            );
            warn!(%reason, "ending the run");
            self.end_from_outside(task, EventKind::WorkflowTerminated { reason })
                .await;
            return None;
        }
        if let Some(e) = decision.events.iter().find_map(|e| {
            limits
                .check_payload(
                    &format!("{} at {}", e.kind.type_name(), e.seq),
                    e.kind.largest_payload(),
                )
                .err()
        }) {
            warn!(error = %e, "the workflow task records a payload over the limit; pausing workflow");
            self.release_paused(task.lease, PauseReason::limit, e).await;
            return None;
        }
        if machine.last_seq().get() > limits.history_warning_events {
            warn!(
                events = machine.last_seq().get(),
                limit = limits.max_history_events,
                "the history is long: it replays slowly after a cache miss, and the run is ended at the limit"
            );
        }
        let scheduled = activities_scheduled(&decision.events);
        let finished = machine.outcome().is_some();
        run_span.in_scope(|| {
            for line in &decision.logs {
                log_line(&id, line.level, &line.message);
            }
            debug!(
                token = task.lease.token,
                from = %task.last_seq,
                to = %machine.last_seq(),
                consumed = ?task.messages.iter().map(|m| m.id.0).collect::<Vec<_>>(),
                "workflow task decided"
            );
        });
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
            // Messages after the run's end are left for the store to carry to the next run.
            consumed: task
                .messages
                .iter()
                .enumerate()
                .filter(|(i, _)| !decision.left_for_next_run.contains(i))
                .map(|(_, m)| m.id)
                .collect(),
            progress: Some(machine.progress()),
            logs: decision.logs,
            next_run: machine
                .next_run()
                .map(|started| self.on_newest_version(started)),
            eager: slot.as_ref().map(|_| self.claim_request(1)),
            affinity: if finished { None } else { self.affinity() },
        };
        let committed = self
            .commit_retrying(|| self.storage.complete_workflow_task(completion.clone()))
            .instrument(run_span.clone())
            .await;
        match committed {
            Ok(claimed) => {
                debug!(eager = claimed.len(), "workflow task committed");
                if let Some(t) = self.telemetry() {
                    t.workflow_task_committed(
                        machine.workflow_type(),
                        started.elapsed(),
                        task.last_seq == Seq::FIRST,
                    );
                }
                self.decision_committed(id, machine, task.claimed_at, scheduled, claimed, slot)
                    .await
            }
            Err(e @ (StorageError::LeaseLost(_) | StorageError::Conflict { .. })) => {
                // Another worker owns the workflow now; our decision is void and our machine
                // stale. Nothing was written.
                self.metrics.commits_refused.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = self.telemetry() {
                    let reason = match e {
                        StorageError::LeaseLost(_) => Refusal::lease_lost,
                        _ => Refusal::conflict,
                    };
                    t.commit_refused(TaskKind::workflow, reason);
                }
                debug!(error = %e, "workflow task commit refused");
                None
            }
            Err(e) => {
                warn!(error = %e, "committing the workflow task failed; it will be retried");
                None
            }
        }
    }

    /// After a workflow task's decision committed: counts it, wakes the activity loop for the
    /// activities not claimed with it, keeps the machine for the next task (or announces the
    /// end), and returns the claimed activity as the chain's next step.
    pub(super) async fn decision_committed(
        &self,
        id: WorkflowId,
        machine: WorkflowMachine,
        at: Timestamp,
        scheduled: usize,
        claimed: Vec<ActivityTask>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Option<Next> {
        self.metrics.workflow_tasks.fetch_add(1, Ordering::Relaxed);
        if scheduled > claimed.len() {
            self.activity_work.notify_one();
        }
        if let Some(t) = self.telemetry() {
            let outcome = match machine.outcome() {
                // A failure its retry policy retries begins another run.
                Some(loom_core::Outcome::Failed { .. }) if machine.next_run().is_some() => {
                    Some(RunOutcome::retried)
                }
                Some(o) => Some(RunOutcome::of(&o)),
                None => None,
            };
            if let Some(outcome) = outcome {
                let ran = at.saturating_duration_since(machine.started_at());
                t.run_ended(machine.workflow_type(), outcome, Some(ran));
            }
        }
        if machine.next_run().is_some() {
            // The next run starts from its own history; this machine is of no more use.
            self.metrics.runs_continued.fetch_add(1, Ordering::Relaxed);
        } else if machine.outcome().is_some() {
            self.metrics
                .workflows_finished
                .fetch_add(1, Ordering::Relaxed);
            self.finished.notify_waiters();
        } else if let Some(cache) = self.cache_guard().as_mut()
            && let Some((evicted, _)) = cache.push(id.clone(), machine)
            && evicted != id
            && let Some(t) = self.telemetry()
        {
            t.cache_eviction();
        }
        self.take_eager(claimed.into_iter().map(Claimed::Activity), slot)
            .await
    }
}

pub(super) fn log_line(id: &WorkflowId, level: LogLevel, message: &str) {
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
pub(super) fn activities_scheduled(events: &[loom_core::Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ActivityScheduled { .. }))
        .count()
}
