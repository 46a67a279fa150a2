//! Schedules: every worker looks for the schedules whose time has come and ticks them. No
//! other process is needed, and any number of workers may run this loop: a tick is written
//! at the version it read, so when two workers tick one schedule at once, one write lands
//! and the other is refused and dropped, and each fire starts at most one workflow.

use std::collections::BTreeMap;

use loom_core::{Event, EventKind, HISTORY_FORMAT, Timeouts};
use loom_storage::schedule::{FireSource, Schedule};

use super::*;

/// How many due schedules one look ticks.
const BATCH: usize = 64;

/// How many due schedules one look reads: those of types this worker does not know are
/// passed over, so that they cannot hide the others.
const LOOK: usize = 1_024;

impl Shared {
    /// Ticks the schedules that are due, then sleeps until the next one is (or the poll
    /// interval, if that is sooner: a schedule created or triggered elsewhere is seen within
    /// it), until `stop`. A store error is logged and the look made again after the poll
    /// interval.
    pub(super) async fn schedule_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let poll = self.config.poll_interval;
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = match self.storage.due_schedules(LOOK).await {
                Ok(due) => {
                    // All at once: their writes share a group commit where the store has one.
                    let ticks = due
                        .due
                        .iter()
                        .filter(|s| self.knows(s))
                        .take(BATCH)
                        .cloned()
                        .map(|schedule| self.tick_schedule(schedule, due.now));
                    let ticked = futures::future::join_all(ticks)
                        .await
                        .into_iter()
                        .filter(|wrote| *wrote)
                        .count();
                    if ticked == BATCH {
                        Duration::ZERO
                    } else {
                        due.next
                            .map_or(poll, |n| n.saturating_duration_since(due.now).min(poll))
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading the due schedules failed; trying again");
                    poll
                }
            };
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Whether this worker has the workflow type (and version) a schedule starts.
    pub(super) fn knows(&self, schedule: &Schedule) -> bool {
        self.started_type(schedule).is_some()
    }

    /// The name and version of the workflow type a schedule starts, as this worker's registry
    /// has it: the version the schedule pins, or the newest.
    fn started_type(&self, schedule: &Schedule) -> Option<(String, u32)> {
        let action = &schedule.action;
        let def = match action.version {
            Some(v) => self.registry.workflow_version(&action.workflow, v),
            None => self.registry.workflow(&action.workflow),
        }?;
        Some((def.name().to_owned(), def.version()))
    }

    /// Ticks one schedule read at store time `now`: what is known of the ids it may touch is
    /// read, the tick decided, and written at the version read. Answers whether it wrote.
    /// A schedule whose workflow type this worker does not know is left to a worker that
    /// does.
    async fn tick_schedule(&self, mut schedule: Schedule, now: Timestamp) -> bool {
        let Some((name, version)) = self.started_type(&schedule) else {
            debug!(schedule = %schedule.id, workflow = %schedule.action.workflow,
                "a due schedule starts a workflow type this worker does not know; left to others");
            return false;
        };
        let client = Client::new(self.storage.clone());
        let ids: BTreeMap<_, _> = match client.id_states(schedule.candidates(now)).await {
            Ok(ids) => ids,
            Err(e) => {
                warn!(schedule = %schedule.id, error = %e, "reading a schedule's workflows failed");
                return false;
            }
        };
        let read = schedule.version;
        let before = schedule.state.counts;
        let tick = schedule.tick(now, &ids);
        let started: Vec<_> = tick.starts.iter().map(|(_, fire)| *fire).collect();
        let write = tick.into_write(&schedule, read, |_, fire| {
            let span = tracing::Span::none();
            Event {
                seq: loom_core::Seq::FIRST,
                at: now,
                kind: EventKind::WorkflowStarted {
                    traceparent: Some(crate::trace::traceparent_of(&span, None)),
                    tags: schedule.action.tags_for(&schedule.id, fire.nominal),
                    reset: None,
                    attempt: 1,
                    retry: None,
                    name: name.clone(),
                    version,
                    input: schedule.action.input.clone(),
                    format: HISTORY_FORMAT,
                    timeouts: Timeouts::default(),
                    parent: None,
                    run: 1,
                },
            }
        });
        match self.storage.write_schedule(write).await {
            Ok(()) => {}
            Err(
                e @ (StorageError::ScheduleConflict { .. }
                | StorageError::ScheduleNotFound(_)
                | StorageError::AlreadyExists { .. }),
            ) => {
                // Another worker ticked it first, or it was changed or deleted meanwhile:
                // its next look reads it again.
                debug!(schedule = %schedule.id, error = %e, "a schedule's tick was refused");
                return false;
            }
            Err(e) => {
                warn!(schedule = %schedule.id, error = %e, "writing a schedule's tick failed");
                return false;
            }
        }
        if !started.is_empty() {
            self.workflow_work.notify_one();
        }
        let after = schedule.state.counts;
        if after.missed > before.missed {
            warn!(schedule = %schedule.id, missed = after.missed - before.missed,
                "fire times of a schedule were older than its catch-up window: missed");
        }
        if let Some(t) = self.telemetry() {
            t.schedule_fires("started", after.started - before.started);
            t.schedule_fires("skipped", after.skipped - before.skipped);
            t.schedule_fires("missed", after.missed - before.missed);
            t.schedule_fires(
                "already_started",
                after.already_started - before.already_started,
            );
            for fire in started.iter().filter(|f| f.source == FireSource::Scheduled) {
                t.schedule_late(now.saturating_duration_since(fire.nominal));
            }
        }
        true
    }
}
