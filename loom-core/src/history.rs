//! Reading a run's history as a whole: the points it may be reset to.
//!
//! A reset starts a new run whose history is a prefix of an earlier run's, and runs the
//! current code from there. The prefix must end where a workflow task's commit could have
//! left the run: after its first event (before any task ran), before an input (the code had
//! issued every command it would issue before that input arrived), or at the history's end
//! while the run is open. The machine delivers inputs one at a time and runs the code until
//! it blocks after each, so every such point is a state replay reaches exactly.

use crate::event::{Event, EventKind, Role};
use crate::types::Seq;

/// The points `history` (one run's, from its `WorkflowStarted`) may be reset to, in order:
/// the sequence numbers of the last event each would keep. Nothing after an event that ends
/// the run is a point.
pub fn reset_points(history: &[Event]) -> Vec<Seq> {
    let mut points = Vec::new();
    for (i, event) in history.iter().enumerate() {
        if event.kind.ends_run() {
            break;
        }
        let boundary = i == 0
            || history
                .get(i + 1)
                .is_none_or(|next| next.kind.role() == Role::Input);
        if boundary {
            points.push(event.seq);
        }
    }
    points
}

/// Whether `seq` is one of [`reset_points`].
pub fn is_reset_point(history: &[Event], seq: Seq) -> bool {
    reset_points(history).contains(&seq)
}

/// The event that a reset `--to last-task` goes back before: the run's first failure (an
/// activity's final failure or timeout, a child's failure, or the run's own failure, timeout
/// or termination), or the event that ended the run if none failed. `None` for an open run
/// without a failure.
pub fn first_failure(history: &[Event]) -> Option<&Event> {
    history
        .iter()
        .find(|e| {
            matches!(
                e.kind,
                EventKind::ActivityFailed { retry_at: None, .. }
                    | EventKind::ActivityTimedOut { retry_at: None, .. }
                    | EventKind::ChildWorkflowFailed { .. }
                    | EventKind::WorkflowFailed { .. }
                    | EventKind::WorkflowTimedOut { .. }
                    | EventKind::WorkflowTerminated { .. }
            )
        })
        .or_else(|| history.iter().find(|e| e.kind.ends_run()))
}

/// The last reset point before the run's [`first_failure`], or the history's last point when
/// the run is open and nothing failed: where to rerun from once a bug is fixed. `None` only
/// for an empty history.
pub fn last_task(history: &[Event]) -> Option<Seq> {
    let points = reset_points(history);
    match first_failure(history) {
        Some(failure) => points.into_iter().rev().find(|p| *p < failure.seq),
        None => points.last().copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Failure;
    use crate::types::{ActivityId, Payload, Timestamp};

    fn history(kinds: Vec<EventKind>) -> Vec<Event> {
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event {
                seq: Seq::new(i as u64 + 1),
                at: Timestamp::from_millis(i as i64),
                kind,
            })
            .collect()
    }

    fn scheduled() -> EventKind {
        EventKind::ActivityScheduled {
            name: "Charge".into(),
            input: Payload::NULL,
            options: Default::default(),
        }
    }

    fn failed(seq: u64, retry: bool) -> EventKind {
        EventKind::ActivityFailed {
            activity_id: ActivityId(Seq::new(seq)),
            attempt: 1,
            failure: Failure::new("card", "declined"),
            retry_at: retry.then(|| Timestamp::from_millis(99)),
        }
    }

    fn seqs(points: Vec<Seq>) -> Vec<u64> {
        points.into_iter().map(Seq::get).collect()
    }

    #[test]
    fn points_are_the_start_the_end_and_each_place_before_an_input() {
        let h = history(vec![
            EventKind::workflow_started("Order", 1, Payload::NULL),
            EventKind::StepStarted { name: "pay".into() },
            scheduled(),
            failed(3, true),
            failed(3, false),
            scheduled(),
        ]);
        assert_eq!(seqs(reset_points(&h)), [1, 3, 4, 6]);
        assert!(is_reset_point(&h, Seq::new(4)));
        assert!(!is_reset_point(&h, Seq::new(2)));
        assert!(!is_reset_point(&h, Seq::new(7)));
        // The first final failure is event 5: the last point before it is 4.
        assert_eq!(last_task(&h).map(Seq::get), Some(4));
    }

    #[test]
    fn nothing_at_or_after_the_end_of_the_run_is_a_point() {
        let h = history(vec![
            EventKind::workflow_started("Order", 1, Payload::NULL),
            scheduled(),
            EventKind::ActivityCompleted {
                activity_id: ActivityId(Seq::new(2)),
                attempt: 1,
                result: Payload::NULL,
            },
            EventKind::WorkflowCompleted {
                output: Payload::NULL,
            },
        ]);
        assert_eq!(seqs(reset_points(&h)), [1, 2]);
        // Nothing failed: back to before the task that completed the run.
        assert_eq!(last_task(&h).map(Seq::get), Some(2));
    }

    #[test]
    fn an_open_run_without_a_failure_goes_back_to_its_end() {
        let h = history(vec![
            EventKind::workflow_started("Order", 1, Payload::NULL),
            scheduled(),
        ]);
        assert_eq!(last_task(&h).map(Seq::get), Some(2));
        assert_eq!(last_task(&[]), None);
    }

    #[test]
    fn a_run_that_failed_in_its_first_task_goes_back_to_its_start() {
        let h = history(vec![
            EventKind::workflow_started("Order", 1, Payload::NULL),
            EventKind::WorkflowFailed {
                failure: Failure::new("bug", "oops"),
            },
        ]);
        assert_eq!(seqs(reset_points(&h)), [1]);
        assert_eq!(last_task(&h).map(Seq::get), Some(1));
    }
}
