//! Errors as workflow and activity code sees them, and as histories record them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{Payload, PayloadError, WorkflowId};

/// An application error, as recorded in a history: a machine-readable `kind`, a message for
/// people, whether retrying can help, and optional structured details.
///
/// `Failure` deliberately does not implement `std::error::Error`, so that any error converts
/// into it with `?` inside an activity (`impl<E: Error> From<E> for Failure`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// A stable, machine-readable name for the kind of error, e.g. `card_declined`. Retry
    /// policies list non-retryable kinds by this name.
    pub kind: String,
    /// A sentence for people.
    pub message: String,
    /// Set when retrying cannot help, whatever the retry policy says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_retryable: bool,
    /// Structured details, if the code that failed attached any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Payload>,
}

impl Failure {
    /// A retryable failure of the given kind.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Failure {
            kind: kind.into(),
            message: message.into(),
            non_retryable: false,
            details: None,
        }
    }

    /// A failure that no retry policy will retry.
    pub fn non_retryable(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Failure {
            non_retryable: true,
            ..Failure::new(kind, message)
        }
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: Payload) -> Self {
        self.details = Some(details);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::new("error", e.to_string())
    }
}

/// Why an activity gave no result, as workflow code sees it once retries are exhausted.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ActivityError {
    /// The last attempt failed and the retry policy allows no more.
    #[error("activity {activity} failed after {attempts} attempt(s): {failure}")]
    Failed {
        /// The activity's name.
        activity: String,
        /// The failure of the last attempt.
        failure: Failure,
        /// How many attempts ran.
        attempts: u32,
    },
    /// The last attempt exceeded its start-to-close timeout and the policy allows no more.
    #[error("activity {activity} timed out after {attempts} attempt(s)")]
    TimedOut {
        /// The activity's name.
        activity: String,
        /// How many attempts ran.
        attempts: u32,
    },
    /// The workflow was asked to cancel while it waited for this activity.
    #[error("cancelled while waiting for activity {activity}")]
    Cancelled {
        /// The activity's name.
        activity: String,
    },
}

/// Why a child workflow gave no output, as its parent's code sees it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The child failed, or could not be started (its id was taken: failure kind
    /// `already_exists`).
    #[error("child workflow {workflow_id} failed: {failure}")]
    Failed {
        /// The child's workflow id.
        workflow_id: WorkflowId,
        /// Its error.
        failure: Failure,
    },
    /// The child ended cancelled.
    #[error("child workflow {workflow_id} was cancelled")]
    Cancelled {
        /// The child's workflow id.
        workflow_id: WorkflowId,
    },
    /// The parent was asked to cancel while it waited for this child. The child itself is
    /// handled by its parent-close policy when the parent ends.
    #[error("cancelled while waiting for child workflow {workflow_id}")]
    ParentCancelled {
        /// The child's workflow id.
        workflow_id: WorkflowId,
    },
}

impl From<ChildError> for WorkflowError {
    fn from(e: ChildError) -> Self {
        match e {
            ChildError::ParentCancelled { .. } => WorkflowError::Cancelled,
            ChildError::Failed { ref failure, .. } => WorkflowError::Failed(Failure {
                message: e.to_string(),
                ..failure.clone()
            }),
            ChildError::Cancelled { .. } => {
                WorkflowError::Failed(Failure::new("child_cancelled", e.to_string()))
            }
        }
    }
}

/// Why a typed signal wait gave no payload.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// A signal of this name arrived with a payload that does not decode as its type (sent
    /// without a check): the code may skip it and wait again. Converted with `?`, it fails
    /// the run.
    #[error("signal {signal:?} arrived with a payload that does not fit: {error}")]
    BadPayload {
        /// The signal's name.
        signal: String,
        /// Why it does not decode.
        error: String,
        /// The payload as it arrived.
        payload: Payload,
    },
    /// The workflow was asked to cancel while it waited.
    #[error("cancelled while waiting for a signal")]
    Cancelled,
}

impl From<SignalError> for WorkflowError {
    fn from(e: SignalError) -> Self {
        match e {
            SignalError::Cancelled => WorkflowError::Cancelled,
            SignalError::BadPayload { .. } => {
                WorkflowError::Failed(Failure::non_retryable("bad_signal", e.to_string()))
            }
        }
    }
}

/// How a workflow run ends when it does not return its output.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// The workflow was cancelled: returned by an await that a cancel request interrupted.
    /// A workflow that returns it after a cancel request ends `Cancelled`.
    #[error("cancelled")]
    Cancelled,
    /// The workflow failed with this error.
    #[error("{0}")]
    Failed(Failure),
    /// Not an error: the run ends and the workflow continues as a new run with this input
    /// (see `WorkflowContext::continue_as_new`).
    #[error("continued as new")]
    ContinueAsNew(ContinueAsNew),
}

/// The next run's input, for [`WorkflowError::ContinueAsNew`]. Made by
/// `WorkflowContext::continue_as_new`, which encodes the input with the workflow's type.
#[derive(Clone, Debug, PartialEq)]
pub struct ContinueAsNew {
    pub(crate) input: Payload,
}

impl ContinueAsNew {
    /// The next run's input.
    pub fn input(&self) -> &Payload {
        &self.input
    }
}

impl WorkflowError {
    /// A failure of the given kind and message.
    pub fn failed(kind: impl Into<String>, message: impl Into<String>) -> Self {
        WorkflowError::Failed(Failure::new(kind, message))
    }

    /// Whether this is a cancellation.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, WorkflowError::Cancelled)
    }
}

impl From<ActivityError> for WorkflowError {
    fn from(e: ActivityError) -> Self {
        match e {
            ActivityError::Cancelled { .. } => WorkflowError::Cancelled,
            ActivityError::Failed { ref failure, .. } => WorkflowError::Failed(Failure {
                message: e.to_string(),
                ..failure.clone()
            }),
            ActivityError::TimedOut { .. } => {
                WorkflowError::Failed(Failure::new("activity_timed_out", e.to_string()))
            }
        }
    }
}

impl From<PayloadError> for WorkflowError {
    fn from(e: PayloadError) -> Self {
        WorkflowError::Failed(Failure::non_retryable("payload", e.to_string()))
    }
}

impl From<Failure> for WorkflowError {
    fn from(f: Failure) -> Self {
        WorkflowError::Failed(f)
    }
}
