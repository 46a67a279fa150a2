//! Preconditions: what must hold when a write set is applied, and the error when it does not.

use loom_core::{ActivityId, Seq, Timestamp, WorkflowId};

use crate::error::StorageError;
use crate::model::{TaskId, WorkflowStatus};

/// What an applier read of a task, for checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    /// The task's workflow.
    pub workflow: WorkflowId,
    /// `None` for a workflow task; the activity and attempt of an activity task.
    pub activity: Option<(ActivityId, u32)>,
    /// The fencing token of its last claim.
    pub token: u64,
    /// When the lease of its last claim lapses; `None` if it was released since.
    pub lease_expires_at: Option<Timestamp>,
}

impl TaskView {
    /// Whether a lease with `token` holds the task at `now`.
    pub fn held_by(&self, token: u64, now: Timestamp) -> bool {
        self.token == token && self.lease_expires_at.is_some_and(|t| t > now)
    }

    /// Whether no live lease holds the task at `now`.
    pub fn is_free(&self, now: Timestamp) -> bool {
        self.lease_expires_at.is_none_or(|t| t <= now)
    }
}

/// What an applier read of a workflow, for checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowView {
    /// Its status.
    pub status: WorkflowStatus,
    /// The last event of its history.
    pub last_seq: Seq,
    /// The workflow that started it as its child, if one did.
    pub parent: Option<WorkflowId>,
    /// Its current run.
    pub run: u32,
}

/// What an applier found where a check looked (see [`Check::subject`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// A task (for task checks, and for [`Check::Free`]: the workflow's task), or nothing.
    Task(Option<TaskView>),
    /// A workflow, or nothing.
    Workflow(Option<WorkflowView>),
    /// A workflow's earliest message time, `None` when it has none (for
    /// [`Check::NothingDue`]).
    EarliestMessage(Option<Timestamp>),
    /// A schedule's version, or nothing (for [`Check::ScheduleVersion`]).
    ScheduleVersion(Option<u64>),
}

/// One precondition. Each names one row (its [`subject`](Check::subject)); an applier reads
/// that row under the write set's atomicity and asks [`verdict`](Check::verdict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A live lease with this fencing token holds the task (`LeaseLost` otherwise: expired,
    /// claimed again since, released, or the task is gone).
    Leased {
        /// The task.
        task: TaskId,
        /// The token of the caller's claim.
        token: u64,
    },
    /// The task is this workflow's workflow task (`InvalidArgument` otherwise).
    WorkflowTaskOf {
        /// The task.
        task: TaskId,
        /// The workflow.
        workflow: WorkflowId,
    },
    /// The task is a workflow task (`InvalidArgument` otherwise).
    IsWorkflowTask {
        /// The task.
        task: TaskId,
    },
    /// The task is this workflow's attempt `attempt` of activity `activity`
    /// (`InvalidArgument` otherwise).
    ActivityAttempt {
        /// The task.
        task: TaskId,
        /// The workflow.
        workflow: WorkflowId,
        /// The activity.
        activity: ActivityId,
        /// The attempt.
        attempt: u32,
    },
    /// No workflow has this id (`AlreadyExists` otherwise).
    Absent {
        /// The id.
        workflow: WorkflowId,
    },
    /// The workflow exists and has not ended (`NotFound` or `Closed` otherwise).
    Open {
        /// The workflow.
        workflow: WorkflowId,
    },
    /// The workflow's history ends at `expected` (`NotFound` or `Conflict` otherwise).
    LastSeq {
        /// The workflow.
        workflow: WorkflowId,
        /// The last sequence number the caller saw.
        expected: Seq,
    },
    /// The workflow exists and its current run is `run` (`NotFound` or `RunMoved`
    /// otherwise).
    Run {
        /// The workflow.
        workflow: WorkflowId,
        /// The run.
        run: u32,
    },
    /// The workflow exists, has not ended, and was started by `parent` as its child (`NotFound`,
    /// `Closed` or `InvalidArgument` otherwise). A condition of [`Op::If`](super::Op::If): a
    /// parent-close policy reaches only the parent's own children, never an unrelated
    /// workflow that happened to hold the id the parent asked for.
    OpenChildOf {
        /// The child.
        workflow: WorkflowId,
        /// The parent.
        parent: WorkflowId,
    },
    /// No live lease holds the workflow's task. A condition of [`Op::If`](super::Op::If).
    Free {
        /// The workflow.
        workflow: WorkflowId,
    },
    /// The workflow has no workflow task: an operator's pause holds it. A condition of
    /// [`Op::If`](super::Op::If).
    NoWorkflowTask {
        /// The workflow.
        workflow: WorkflowId,
    },
    /// The workflow is paused (`InvalidArgument` otherwise, naming its status; `NotFound`).
    Paused {
        /// The workflow.
        workflow: WorkflowId,
    },
    /// No message of the workflow is due. A condition of [`Op::If`](super::Op::If).
    NothingDue {
        /// The workflow.
        workflow: WorkflowId,
    },
    /// The schedule is at version `expected`, or, with `None`, no schedule has the id
    /// (`ScheduleNotFound`, `ScheduleConflict` or `ScheduleExists` otherwise).
    ScheduleVersion {
        /// The schedule's id.
        schedule: String,
        /// The version the caller read; `None` for a create.
        expected: Option<u64>,
    },
}

/// What a check reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A task, by id.
    Task(TaskId),
    /// A workflow's row.
    Workflow(&'a WorkflowId),
    /// A workflow's workflow task.
    WorkflowTask(&'a WorkflowId),
    /// A workflow's earliest message.
    Messages(&'a WorkflowId),
    /// A schedule's row.
    Schedule(&'a str),
}

impl Check {
    /// The row the check reads.
    pub fn subject(&self) -> Subject<'_> {
        match self {
            Check::Leased { task, .. }
            | Check::WorkflowTaskOf { task, .. }
            | Check::IsWorkflowTask { task }
            | Check::ActivityAttempt { task, .. } => Subject::Task(*task),
            Check::Absent { workflow }
            | Check::Open { workflow }
            | Check::LastSeq { workflow, .. }
            | Check::Run { workflow, .. }
            | Check::Paused { workflow }
            | Check::OpenChildOf { workflow, .. } => Subject::Workflow(workflow),
            Check::Free { workflow } | Check::NoWorkflowTask { workflow } => {
                Subject::WorkflowTask(workflow)
            }
            Check::NothingDue { workflow } => Subject::Messages(workflow),
            Check::ScheduleVersion { schedule, .. } => Subject::Schedule(schedule),
        }
    }

    /// The workflow the check names, if it names one.
    pub fn workflow(&self) -> Option<&WorkflowId> {
        match self {
            Check::Leased { .. } | Check::IsWorkflowTask { .. } | Check::ScheduleVersion { .. } => {
                None
            }
            Check::WorkflowTaskOf { workflow, .. }
            | Check::ActivityAttempt { workflow, .. }
            | Check::Absent { workflow }
            | Check::Open { workflow }
            | Check::LastSeq { workflow, .. }
            | Check::Run { workflow, .. }
            | Check::Paused { workflow }
            | Check::NoWorkflowTask { workflow }
            | Check::OpenChildOf { workflow, .. }
            | Check::Free { workflow }
            | Check::NothingDue { workflow } => Some(workflow),
        }
    }

    /// Whether the check holds on what was `found` at store time `now`, and the error if not.
    /// This is the one definition of every precondition; appliers that evaluate checks
    /// elsewhere (PostgreSQL, on the server) report what they found and get their error
    /// here.
    pub fn verdict(&self, found: &Found, now: Timestamp) -> Result<(), StorageError> {
        let wrong_subject = || StorageError::Unavailable {
            message: format!("the store read the wrong row for the check {self:?}: {found:?}"),
            source: None,
        };
        match self {
            Check::Leased { task, token } => match found {
                Found::Task(Some(t)) if t.held_by(*token, now) => Ok(()),
                Found::Task(_) => Err(StorageError::LeaseLost(*task)),
                _ => Err(wrong_subject()),
            },
            Check::WorkflowTaskOf { task, workflow } => match found {
                Found::Task(Some(t)) if t.activity.is_none() && t.workflow == *workflow => Ok(()),
                Found::Task(_) => Err(StorageError::InvalidArgument(format!(
                    "{task} is not the workflow task of \"{workflow}\""
                ))),
                _ => Err(wrong_subject()),
            },
            Check::IsWorkflowTask { task } => match found {
                Found::Task(Some(t)) if t.activity.is_none() => Ok(()),
                Found::Task(_) => Err(StorageError::InvalidArgument(format!(
                    "{task} is not a workflow task: only a workflow task can pause its workflow"
                ))),
                _ => Err(wrong_subject()),
            },
            Check::ActivityAttempt {
                task,
                workflow,
                activity,
                attempt,
            } => match found {
                Found::Task(Some(t)) => match t.activity {
                    None => Err(StorageError::InvalidArgument(format!(
                        "{task} is not an activity task"
                    ))),
                    Some(_) if t.workflow != *workflow => {
                        Err(StorageError::InvalidArgument(format!(
                            "{task} is an activity task of \"{}\", not of \"{workflow}\"",
                            t.workflow
                        )))
                    }
                    Some((a, n)) if a != *activity || n != *attempt => {
                        Err(StorageError::InvalidArgument(format!(
                            "the result is for {activity} attempt {attempt}, the task is {a} attempt {n}"
                        )))
                    }
                    Some(_) => Ok(()),
                },
                Found::Task(None) => Err(StorageError::LeaseLost(*task)),
                _ => Err(wrong_subject()),
            },
            Check::Absent { workflow } => match found {
                Found::Workflow(None) => Ok(()),
                Found::Workflow(Some(w)) => Err(StorageError::AlreadyExists {
                    id: workflow.clone(),
                    status: w.status,
                }),
                _ => Err(wrong_subject()),
            },
            Check::Open { workflow } => match found {
                Found::Workflow(Some(w)) if !w.status.is_terminal() => Ok(()),
                Found::Workflow(Some(w)) => Err(StorageError::Closed {
                    id: workflow.clone(),
                    status: w.status,
                }),
                Found::Workflow(None) => Err(StorageError::NotFound(workflow.clone())),
                _ => Err(wrong_subject()),
            },
            Check::LastSeq { workflow, expected } => match found {
                Found::Workflow(Some(w)) if w.last_seq == *expected => Ok(()),
                Found::Workflow(Some(w)) => Err(StorageError::Conflict {
                    id: workflow.clone(),
                    expected: *expected,
                    actual: w.last_seq,
                }),
                Found::Workflow(None) => Err(StorageError::NotFound(workflow.clone())),
                _ => Err(wrong_subject()),
            },
            Check::Run { workflow, run } => match found {
                Found::Workflow(Some(w)) if w.run == *run => Ok(()),
                Found::Workflow(Some(w)) => Err(StorageError::RunMoved {
                    id: workflow.clone(),
                    expected: *run,
                    actual: w.run,
                }),
                Found::Workflow(None) => Err(StorageError::NotFound(workflow.clone())),
                _ => Err(wrong_subject()),
            },
            Check::OpenChildOf { workflow, parent } => match found {
                Found::Workflow(Some(w)) if w.parent.as_ref() != Some(parent) => {
                    Err(StorageError::InvalidArgument(format!(
                        "\"{workflow}\" is not a child of \"{parent}\""
                    )))
                }
                Found::Workflow(Some(w)) if w.status.is_terminal() => Err(StorageError::Closed {
                    id: workflow.clone(),
                    status: w.status,
                }),
                Found::Workflow(Some(_)) => Ok(()),
                Found::Workflow(None) => Err(StorageError::NotFound(workflow.clone())),
                _ => Err(wrong_subject()),
            },
            Check::Free { workflow } => match found {
                Found::Task(Some(t)) if t.is_free(now) => Ok(()),
                Found::Task(_) => Err(StorageError::InvalidArgument(format!(
                    "the workflow task of \"{workflow}\" is held or gone"
                ))),
                _ => Err(wrong_subject()),
            },
            Check::NoWorkflowTask { workflow } => match found {
                Found::Task(None) => Ok(()),
                Found::Task(Some(_)) => Err(StorageError::InvalidArgument(format!(
                    "\"{workflow}\" has a workflow task"
                ))),
                _ => Err(wrong_subject()),
            },
            Check::Paused { workflow } => match found {
                Found::Workflow(Some(w)) if w.status == WorkflowStatus::Paused => Ok(()),
                Found::Workflow(Some(w)) => Err(StorageError::InvalidArgument(format!(
                    "workflow {workflow} is {}, not paused",
                    w.status
                ))),
                Found::Workflow(None) => Err(StorageError::NotFound(workflow.clone())),
                _ => Err(wrong_subject()),
            },
            Check::NothingDue { workflow } => match found {
                Found::EarliestMessage(t) if t.is_none_or(|t| t > now) => Ok(()),
                Found::EarliestMessage(_) => Err(StorageError::InvalidArgument(format!(
                    "a message of \"{workflow}\" is due"
                ))),
                _ => Err(wrong_subject()),
            },
            Check::ScheduleVersion { schedule, expected } => match (found, expected) {
                (Found::ScheduleVersion(None), None) => Ok(()),
                (Found::ScheduleVersion(Some(v)), Some(e)) if v == e => Ok(()),
                (Found::ScheduleVersion(Some(_)), None) => {
                    Err(StorageError::ScheduleExists(schedule.clone()))
                }
                (Found::ScheduleVersion(None), Some(_)) => {
                    Err(StorageError::ScheduleNotFound(schedule.clone()))
                }
                (Found::ScheduleVersion(Some(v)), Some(e)) => Err(StorageError::ScheduleConflict {
                    id: schedule.clone(),
                    expected: *e,
                    actual: *v,
                }),
                _ => Err(wrong_subject()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_000);

    fn task(activity: Option<(ActivityId, u32)>, token: u64, lease: Option<i64>) -> Found {
        Found::Task(Some(TaskView {
            workflow: WorkflowId::new("wf"),
            activity,
            token,
            lease_expires_at: lease.map(Timestamp::from_millis),
        }))
    }

    fn wf(status: WorkflowStatus, last: u64) -> Found {
        Found::Workflow(Some(WorkflowView {
            status,
            last_seq: Seq::new(last),
            parent: None,
            run: 1,
        }))
    }

    #[test]
    fn a_lease_holds_only_with_its_token_until_it_lapses() {
        let check = Check::Leased {
            task: TaskId(7),
            token: 3,
        };
        assert!(check.verdict(&task(None, 3, Some(1_001)), NOW).is_ok());
        for found in [
            task(None, 3, Some(1_000)),
            task(None, 4, Some(2_000)),
            task(None, 3, None),
            Found::Task(None),
        ] {
            assert!(
                matches!(
                    check.verdict(&found, NOW),
                    Err(StorageError::LeaseLost(TaskId(7)))
                ),
                "{found:?}"
            );
        }
    }

    #[test]
    fn a_result_must_match_the_task() {
        let a2 = ActivityId(Seq::new(2));
        let check = Check::ActivityAttempt {
            task: TaskId(1),
            workflow: WorkflowId::new("wf"),
            activity: a2,
            attempt: 1,
        };
        assert!(
            check
                .verdict(&task(Some((a2, 1)), 1, Some(2_000)), NOW)
                .is_ok()
        );
        let err = check
            .verdict(&task(Some((a2, 2)), 1, Some(2_000)), NOW)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid request: the result is for activity#2 attempt 1, the task is activity#2 attempt 2"
        );
        assert!(matches!(
            check.verdict(&task(None, 1, Some(2_000)), NOW),
            Err(StorageError::InvalidArgument(_))
        ));
    }

    #[test]
    fn workflow_checks_name_what_they_found() {
        let id = WorkflowId::new("wf");
        let open = Check::Open {
            workflow: id.clone(),
        };
        assert!(open.verdict(&wf(WorkflowStatus::Paused, 3), NOW).is_ok());
        assert!(matches!(
            open.verdict(&wf(WorkflowStatus::Completed, 3), NOW),
            Err(StorageError::Closed {
                status: WorkflowStatus::Completed,
                ..
            })
        ));
        assert!(matches!(
            open.verdict(&Found::Workflow(None), NOW),
            Err(StorageError::NotFound(_))
        ));
        let at = Check::LastSeq {
            workflow: id.clone(),
            expected: Seq::new(3),
        };
        assert!(at.verdict(&wf(WorkflowStatus::Running, 3), NOW).is_ok());
        assert!(matches!(
            at.verdict(&wf(WorkflowStatus::Running, 4), NOW),
            Err(StorageError::Conflict { actual, .. }) if actual == Seq::new(4)
        ));
        let run = Check::Run {
            workflow: id.clone(),
            run: 1,
        };
        assert!(run.verdict(&wf(WorkflowStatus::Running, 3), NOW).is_ok());
        let mut moved = wf(WorkflowStatus::Running, 3);
        if let Found::Workflow(Some(w)) = &mut moved {
            w.run = 2;
        }
        assert!(matches!(
            run.verdict(&moved, NOW),
            Err(StorageError::RunMoved {
                expected: 1,
                actual: 2,
                ..
            })
        ));
        assert!(matches!(
            run.verdict(&Found::Workflow(None), NOW),
            Err(StorageError::NotFound(_))
        ));
        let absent = Check::Absent { workflow: id };
        assert!(absent.verdict(&Found::Workflow(None), NOW).is_ok());
        assert!(matches!(
            absent.verdict(&wf(WorkflowStatus::Failed, 1), NOW),
            Err(StorageError::AlreadyExists {
                status: WorkflowStatus::Failed,
                ..
            })
        ));
    }

    #[test]
    fn conditions_of_a_decision_ahead() {
        let id = WorkflowId::new("wf");
        let free = Check::Free {
            workflow: id.clone(),
        };
        assert!(free.verdict(&task(None, 1, None), NOW).is_ok());
        assert!(free.verdict(&task(None, 1, Some(900)), NOW).is_ok());
        assert!(free.verdict(&task(None, 1, Some(1_001)), NOW).is_err());
        assert!(free.verdict(&Found::Task(None), NOW).is_err());
        let quiet = Check::NothingDue { workflow: id };
        assert!(quiet.verdict(&Found::EarliestMessage(None), NOW).is_ok());
        assert!(
            quiet
                .verdict(
                    &Found::EarliestMessage(Some(Timestamp::from_millis(1_001))),
                    NOW
                )
                .is_ok()
        );
        assert!(
            quiet
                .verdict(&Found::EarliestMessage(Some(NOW)), NOW)
                .is_err()
        );
    }

    #[test]
    fn a_schedule_write_names_the_version_it_read() {
        let at = |expected| Check::ScheduleVersion {
            schedule: "nightly".into(),
            expected,
        };
        assert!(at(None).verdict(&Found::ScheduleVersion(None), NOW).is_ok());
        assert!(
            at(Some(3))
                .verdict(&Found::ScheduleVersion(Some(3)), NOW)
                .is_ok()
        );
        assert!(matches!(
            at(None).verdict(&Found::ScheduleVersion(Some(1)), NOW),
            Err(StorageError::ScheduleExists(id)) if id == "nightly"
        ));
        assert!(matches!(
            at(Some(3)).verdict(&Found::ScheduleVersion(None), NOW),
            Err(StorageError::ScheduleNotFound(_))
        ));
        assert!(matches!(
            at(Some(3)).verdict(&Found::ScheduleVersion(Some(4)), NOW),
            Err(StorageError::ScheduleConflict {
                expected: 3,
                actual: 4,
                ..
            })
        ));
    }

    #[test]
    fn a_check_given_the_wrong_row_is_not_passed() {
        let check = Check::Open {
            workflow: WorkflowId::new("wf"),
        };
        assert!(matches!(
            check.verdict(&Found::Task(None), NOW),
            Err(StorageError::Unavailable { .. })
        ));
    }
}
