//! Schedules from the client's side: create, read, describe, change, pause, trigger,
//! backfill and delete. Each change reads the schedule and the store's time, changes the
//! record (see [`loom_storage::schedule`]) and writes it at the version read, reading again
//! when another writer (a worker's tick) came first.

use std::collections::BTreeMap;

use loom_core::{Registry, Timestamp, WorkflowId};
use loom_storage::schedule::{
    Action, IdState, Outcome, Schedule, ScheduleAction, SchedulePolicy, ScheduleSpec,
};
use loom_storage::{ScheduleWrite, StorageError, WorkflowStatus, WorkflowSummary};
use serde::Serialize;

use crate::client::{Client, ClientError};

/// How many times a change reads the schedule again when a tick wrote it meanwhile.
const TRIES: usize = 20;

/// What [`Client::describe_schedule`] shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScheduleDescription {
    /// The schedule as stored.
    pub schedule: Schedule,
    /// The store's time of the reading.
    pub now: Timestamp,
    /// Its next ten fire times (none while paused).
    pub upcoming: Vec<Timestamp>,
    /// The workflows it started that are still open.
    pub running: Vec<WorkflowSummary>,
    /// Its last actions, oldest first, each with its workflow's status now, where it
    /// started one that still exists.
    pub recent: Vec<RecentAction>,
}

/// One of a schedule's last actions, with what became of its workflow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecentAction {
    /// The action.
    #[serde(flatten)]
    pub action: Action,
    /// Its workflow's status now; `None` when it started none, or the workflow was purged.
    pub status: Option<WorkflowStatus>,
}

/// What a schedule does: when, what, how. The parts of a create and of an update.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleDefinition {
    /// When it fires.
    pub spec: ScheduleSpec,
    /// What it starts.
    pub action: ScheduleAction,
    /// Overlaps and downtime.
    pub policy: SchedulePolicy,
}

fn invalid(message: String) -> ClientError {
    ClientError::Storage(StorageError::InvalidArgument(message))
}

/// A schedule id as the store can hold it, checked before any read: an id no schedule can
/// have is refused with its reason rather than sent to the database.
fn checked(id: &str) -> Result<(), ClientError> {
    loom_storage::schedule::check_id(id).map_err(invalid)
}

impl ScheduleDefinition {
    /// Checks the definition against `registry` and `limits`: the spec parses, the workflow
    /// type (and version) is registered, and the input fits it.
    pub fn check(&self, registry: &Registry, limits: &crate::Limits) -> Result<(), ClientError> {
        let def = self;
        def.spec.calendar().map_err(invalid)?;
        def.action.check().map_err(invalid)?;
        let name = &def.action.workflow;
        let Some(newest) = registry.workflow(name) else {
            return Err(ClientError::UnknownWorkflow {
                name: name.clone(),
                known: registry.workflow_names().collect::<Vec<_>>().join(", "),
            });
        };
        let workflow =
            match def.action.version {
                None => newest,
                Some(v) => registry.workflow_version(name, v).ok_or_else(|| {
                    ClientError::UnknownWorkflow {
                        name: format!("{name} version {v}"),
                        known: format!("versions {:?} of {name}", registry.workflow_versions(name)),
                    }
                })?,
            };
        limits
            .check_payload("the input", def.action.input.encoded_len())
            .map_err(ClientError::Payload)?;
        workflow.check_input(&def.action.input).map_err(|e| {
            ClientError::Payload(format!("the input does not fit workflow {name}: {e}"))
        })
    }
}

impl Client {
    /// Creates a schedule: checked against `registry` (the type it starts, its input), stored
    /// with its first fire due after the store's now, or refused (`ScheduleExists` for a
    /// taken id) with nothing written.
    pub async fn create_schedule(
        &self,
        registry: &Registry,
        id: &str,
        def: ScheduleDefinition,
        paused: bool,
    ) -> Result<Schedule, ClientError> {
        def.check(registry, &self.limits())?;
        let now = self.storage().now().await?;
        let mut schedule =
            Schedule::new(id, def.spec, def.action, def.policy, paused, now).map_err(invalid)?;
        self.storage()
            .write_schedule(ScheduleWrite {
                id: id.to_owned(),
                expected: None,
                schedule: Some(schedule.clone()),
                starts: Vec::new(),
                cancel: Vec::new(),
                terminate: Vec::new(),
            })
            .await?;
        schedule.version = schedule.first_version();
        Ok(schedule)
    }

    /// One schedule as stored.
    pub async fn schedule(&self, id: &str) -> Result<Schedule, ClientError> {
        checked(id)?;
        Ok(self.storage().schedule(id).await?)
    }

    /// Up to `limit` schedules by id, after `after` when given.
    pub async fn schedules(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Schedule>, ClientError> {
        if after.is_some_and(|a| a.contains('\0')) {
            return Err(invalid("a schedule id cannot hold NUL".into()));
        }
        Ok(self.storage().schedules(after, limit).await?)
    }

    /// A schedule with its next ten fire times, the workflows it started that still run, and
    /// its last actions with their workflows' statuses.
    pub async fn describe_schedule(&self, id: &str) -> Result<ScheduleDescription, ClientError> {
        checked(id)?;
        let storage = self.storage();
        let schedule = storage.schedule(id).await?;
        let now = storage.now().await?;
        let upcoming = if schedule.paused {
            Vec::new()
        } else {
            schedule.upcoming(now, 10)
        };
        let mut running = Vec::new();
        for id in &schedule.state.running {
            match storage.describe(id).await {
                Ok(s) if !s.status.is_terminal() => running.push(s),
                Ok(_) | Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut recent = Vec::new();
        for action in &schedule.state.recent {
            let status = match &action.outcome {
                Outcome::Started { workflow } | Outcome::AlreadyStarted { workflow } => {
                    match storage.describe(workflow).await {
                        Ok(s) => Some(s.status),
                        Err(StorageError::NotFound(_)) => None,
                        Err(e) => return Err(e.into()),
                    }
                }
                Outcome::Skipped | Outcome::Missed => None,
            };
            recent.push(RecentAction {
                action: action.clone(),
                status,
            });
        }
        Ok(ScheduleDescription {
            schedule,
            now,
            upcoming,
            running,
            recent,
        })
    }

    /// Reads schedule `id`, changes it with `change` at the store's now, and writes it at the
    /// version read; again if a tick wrote it meanwhile.
    async fn change_schedule(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Schedule, Timestamp) -> Result<(), String>,
    ) -> Result<Schedule, ClientError> {
        checked(id)?;
        let storage = self.storage();
        let mut tries = 0;
        loop {
            let mut schedule = storage.schedule(id).await?;
            let now = storage.now().await?;
            let version = schedule.version;
            change(&mut schedule, now).map_err(invalid)?;
            let write = ScheduleWrite {
                id: id.to_owned(),
                expected: Some(version),
                schedule: Some(schedule.clone()),
                starts: Vec::new(),
                cancel: Vec::new(),
                terminate: Vec::new(),
            };
            match storage.write_schedule(write).await {
                Ok(()) => {
                    schedule.version = version + 1;
                    return Ok(schedule);
                }
                Err(StorageError::ScheduleConflict { .. }) if tries < TRIES => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Replaces a schedule's spec, action and policies, checked as a create is; fires of the
    /// new spec are taken from now on. Its state (running workflows, buffered fires, counts,
    /// last actions) is kept.
    pub async fn update_schedule(
        &self,
        registry: &Registry,
        id: &str,
        def: ScheduleDefinition,
    ) -> Result<Schedule, ClientError> {
        def.check(registry, &self.limits())?;
        self.change_schedule(id, |s, now| {
            s.update(def.spec.clone(), def.action.clone(), def.policy, now)
        })
        .await
    }

    /// Pauses a schedule with a note: its spec's fires are not taken until it is unpaused.
    pub async fn pause_schedule(&self, id: &str, note: &str) -> Result<Schedule, ClientError> {
        loom_storage::schedule::check_note(note).map_err(invalid)?;
        self.change_schedule(id, |s, now| {
            s.set_paused(true, note.to_owned(), now);
            Ok(())
        })
        .await
    }

    /// Lets a paused schedule fire again, from now on (the fires it was paused through are not
    /// taken).
    pub async fn unpause_schedule(&self, id: &str, note: &str) -> Result<Schedule, ClientError> {
        loom_storage::schedule::check_note(note).map_err(invalid)?;
        self.change_schedule(id, |s, now| {
            s.set_paused(false, note.to_owned(), now);
            Ok(())
        })
        .await
    }

    /// Asks for a fire now, under the schedule's overlap policy, paused or not. A worker
    /// starts it at its next look (within its poll interval).
    pub async fn trigger_schedule(&self, id: &str) -> Result<Schedule, ClientError> {
        self.change_schedule(id, |s, now| {
            s.trigger(now);
            Ok(())
        })
        .await
    }

    /// Asks for the spec's fire times in `[from, to]`, under the overlap policy and whatever
    /// the catch-up window; a fire whose workflow exists already is recorded as such, not
    /// started again.
    pub async fn backfill_schedule(
        &self,
        id: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Schedule, ClientError> {
        self.change_schedule(id, |s, now| s.backfill(from, to, now))
            .await
    }

    /// Deletes a schedule. The workflows it started are left as they are.
    pub async fn delete_schedule(&self, id: &str) -> Result<(), ClientError> {
        checked(id)?;
        let storage = self.storage();
        let mut tries = 0;
        loop {
            let schedule = storage.schedule(id).await?;
            let write = ScheduleWrite {
                id: id.to_owned(),
                expected: Some(schedule.version),
                schedule: None,
                starts: Vec::new(),
                cancel: Vec::new(),
                terminate: Vec::new(),
            };
            match storage.write_schedule(write).await {
                Ok(()) => return Ok(()),
                Err(StorageError::ScheduleConflict { .. }) if tries < TRIES => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What the store knows of each id: free, open or closed.
    pub(crate) async fn id_states(
        &self,
        ids: Vec<WorkflowId>,
    ) -> Result<BTreeMap<WorkflowId, IdState>, StorageError> {
        let mut states = BTreeMap::new();
        for id in ids {
            let state = match self.storage().describe(&id).await {
                Ok(s) if s.status.is_terminal() => IdState::Closed,
                Ok(_) => IdState::Open,
                Err(StorageError::NotFound(_)) => IdState::Free,
                Err(e) => return Err(e),
            };
            states.insert(id, state);
        }
        Ok(states)
    }
}
