//! Where a workflow's tasks stand, read for people: why a workflow is not moving (`loom
//! inspect`, the dashboard's workflow page).

use std::collections::BTreeMap;

use loom_core::{EventKind, Seq, Timestamp, WorkflowId};
use serde::Serialize;

use crate::{Client, ClientError};

/// Where one of a workflow's tasks stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskState {
    /// `workflow_task`, or the activity's name.
    pub task: String,
    /// The activity's id, for an activity task.
    pub activity_id: Option<u64>,
    /// The activity's current attempt.
    pub attempt: Option<u32>,
    /// `running` (a worker holds it), `ready` (claimable, unclaimed), `waiting` (due later:
    /// a retry's backoff, or a released task), or `idle` (a workflow task with nothing due).
    pub state: &'static str,
    /// Running: when the worker's lease lapses. Ready: since when. Waiting: when it is due
    /// (for an activity, its next attempt).
    pub at: Option<Timestamp>,
    /// Ready: how long it has waited for a worker, in milliseconds.
    pub waited_ms: Option<u64>,
    /// Times it was handed out without finishing.
    pub deliveries: u32,
    /// An activity's last failed attempt, as recorded.
    pub last_failure: Option<String>,
}

impl Client {
    /// The state of each of a workflow's tasks, read against this client's clock.
    pub async fn task_states(&self, id: &WorkflowId) -> Result<Vec<TaskState>, ClientError> {
        let store = self.storage();
        let pending = store.pending(id).await?;
        let now = self.now();
        let failures: BTreeMap<u64, String> = if pending.tasks.iter().any(|t| t.activity.is_some())
        {
            let history = store.load_history(id, Seq::ZERO).await?;
            history
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::ActivityFailed {
                        activity_id,
                        attempt,
                        failure,
                        ..
                    } => Some((activity_id.0.get(), format!("attempt {attempt}: {failure}"))),
                    EventKind::ActivityTimedOut {
                        activity_id,
                        attempt,
                        ..
                    } => Some((activity_id.0.get(), format!("attempt {attempt} timed out"))),
                    _ => None,
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(pending
            .tasks
            .iter()
            .map(|t| {
                let (state, at) = match (t.leased_until, t.visible_at) {
                    (Some(until), _) => ("running", Some(until)),
                    (None, Some(v)) if v <= now => ("ready", Some(v)),
                    (None, Some(v)) => ("waiting", Some(v)),
                    (None, None) => ("idle", None),
                };
                let waited_ms = (state == "ready")
                    .then(|| at.map(|v| now.saturating_duration_since(v).as_millis() as u64))
                    .flatten();
                let activity = t.activity.as_ref();
                TaskState {
                    task: activity.map_or_else(|| "workflow_task".to_owned(), |a| a.1.clone()),
                    activity_id: activity.map(|a| a.0.0.get()),
                    attempt: activity.map(|a| a.2),
                    state,
                    at,
                    waited_ms,
                    deliveries: t.deliveries,
                    last_failure: activity.and_then(|a| failures.get(&a.0.0.get()).cloned()),
                }
            })
            .collect())
    }
}
