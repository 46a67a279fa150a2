//! Storage errors with meanings, whatever the backend said.

use loom_core::{Seq, WorkflowId};

use crate::model::{TaskId, WorkflowStatus};

/// A backend's own error, kept as the source of a [`StorageError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a storage call, by meaning. Callers branch on the variant; the backend's
/// own error, when there is one, is attached as the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// No workflow with this id.
    #[error("no workflow with id {0}")]
    NotFound(WorkflowId),
    /// A workflow with this id already exists; nothing was written.
    #[error("a workflow with id {id} already exists ({status})")]
    AlreadyExists {
        /// The id.
        id: WorkflowId,
        /// The existing workflow's status.
        status: WorkflowStatus,
    },
    /// The history moved on since the caller read it (optimistic concurrency); nothing was
    /// written.
    #[error("workflow {id} has events up to {actual}, the caller expected {expected}")]
    Conflict {
        /// The workflow.
        id: WorkflowId,
        /// The last sequence number the caller expected.
        expected: Seq,
        /// The actual last sequence number.
        actual: Seq,
    },
    /// The workflow continued as a new run since the caller read it; nothing was written.
    #[error("workflow {id} is on run {actual}, the caller expected run {expected}")]
    RunMoved {
        /// The workflow.
        id: WorkflowId,
        /// The run the caller expected.
        expected: u32,
        /// The workflow's current run.
        actual: u32,
    },
    /// No schedule with this id.
    #[error("no schedule with id {0}")]
    ScheduleNotFound(String),
    /// A schedule with this id already exists; nothing was written.
    #[error("a schedule with id {0} already exists")]
    ScheduleExists(String),
    /// The schedule was written since the caller read it; nothing was written.
    #[error("schedule {id} is at version {actual}, the caller read version {expected}")]
    ScheduleConflict {
        /// The schedule.
        id: String,
        /// The version the caller read.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// The caller's lease on this task expired, was taken by another worker, or the task no
    /// longer exists; nothing was written.
    #[error("the lease on task {0} is no longer held")]
    LeaseLost(TaskId),
    /// The workflow has ended and accepts no more signals or cancel requests.
    #[error("workflow {id} has already ended ({status})")]
    Closed {
        /// The workflow.
        id: WorkflowId,
        /// How it ended.
        status: WorkflowStatus,
    },
    /// The request itself is malformed (not a retry matter).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The database could not be reached or is busy; retrying later may succeed. Never a
    /// reason to fail a workflow.
    #[error("storage unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The database rejected the write as invalid (a constraint it enforces, a value it cannot
    /// hold): nothing was written, and the same write will be rejected again. A bug or a
    /// damaged database, not a busy one; never a reason to fail a workflow either.
    #[error("the database rejected the write: {message}")]
    Rejected {
        /// What was rejected.
        message: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The database cannot be used by this build: written by a newer Loom, or not a Loom
    /// database at all. Nothing was changed.
    #[error("incompatible storage: {0}")]
    Incompatible(String),
    /// Stored data cannot be read back: a tampered or damaged database.
    #[error("corrupt storage: {message}")]
    Corrupt {
        /// What is damaged, and where.
        message: String,
        /// The backend's or decoder's error.
        #[source]
        source: Option<BoxError>,
    },
}

impl StorageError {
    /// The error for asking workflow `id`, now on run `current`, for a run it never had.
    pub fn no_such_run(id: &WorkflowId, run: u32, current: u32) -> Self {
        StorageError::InvalidArgument(if current == 1 {
            format!("workflow {id} has one run, run 1; there is no run {run}")
        } else {
            format!("workflow {id} has runs 1 to {current}; there is no run {run}")
        })
    }

    /// An `Unavailable` error with a cause.
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StorageError::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A `Rejected` error with a cause.
    pub fn rejected(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StorageError::Rejected {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A `Corrupt` error with a cause.
    pub fn corrupt(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StorageError::Corrupt {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }
}

/// The result of a storage call.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// `url` with its password, if it has one, shown as `***`: for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_kept_out_of_messages() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("mysql://root:s3cret@db:3306/loom"),
            "mysql://root:***@db:3306/loom"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("mysql://db/loom"), "mysql://db/loom");
    }
}
