//! Options recorded with commands: an activity's retry policy and timeouts, a child
//! workflow's id and parent-close policy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::failure::Failure;
use crate::types::WorkflowId;

/// Durations in histories are whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// How an activity is retried: exponential backoff with jitter, up to a number of attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// The most attempts to run, the first included; `0` means no limit.
    pub max_attempts: u32,
    /// The delay before the second attempt.
    #[serde(with = "millis", rename = "initial_interval_ms")]
    pub initial_interval: Duration,
    /// Each further delay is the previous one times this factor (at least 1.0).
    pub backoff_coefficient: f64,
    /// No delay is longer than this.
    #[serde(with = "millis", rename = "max_interval_ms")]
    pub max_interval: Duration,
    /// Failure kinds (`Failure::kind`) that are never retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    /// Three attempts, one second apart at first, doubling, at most a minute.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            max_interval: Duration::from_secs(60),
            non_retryable: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn no_retries() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Whether attempt number `attempt` (1-based), having failed with `failure` (or timed out
    /// when `failure` is `None`), may be followed by another attempt.
    pub fn allows_retry(&self, attempt: u32, failure: Option<&Failure>) -> bool {
        if self.max_attempts != 0 && attempt >= self.max_attempts {
            return false;
        }
        match failure {
            Some(f) => !f.non_retryable && !self.non_retryable.contains(&f.kind),
            None => true,
        }
    }

    /// The delay after attempt number `attempt` (1-based) failed, before the next attempt.
    ///
    /// `jitter` is a number in `[0, 1)` supplied by the caller (loom-core has no randomness of
    /// its own); it spreads the delay by up to 20% either way so that many activities failing
    /// together do not retry together. The result never exceeds `max_interval`.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let coefficient = self.backoff_coefficient.max(1.0);
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial_interval.as_secs_f64() * coefficient.powi(exponent);
        let spread = 1.0 + 0.2 * (2.0 * jitter.clamp(0.0, 1.0) - 1.0);
        let secs = (base * spread).min(self.max_interval.as_secs_f64());
        if secs.is_finite() && secs > 0.0 {
            Duration::from_secs_f64(secs)
        } else {
            Duration::ZERO
        }
    }
}

/// Options recorded with a scheduled activity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityOptions {
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// The longest one attempt may run before it is cancelled and counted as timed out.
    #[serde(with = "millis", rename = "start_to_close_timeout_ms")]
    pub start_to_close_timeout: Duration,
    /// If set, an attempt that does not heartbeat within this interval is counted as timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// The trace of the run that scheduled the activity (a W3C `traceparent`), which its
    /// attempts join. Loom sets it when the activity is scheduled; what code sets is
    /// replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Default for ActivityOptions {
    /// The default retry policy and a five-minute start-to-close timeout.
    fn default() -> Self {
        ActivityOptions {
            retry: RetryPolicy::default(),
            start_to_close_timeout: Duration::from_secs(300),
            heartbeat_timeout_ms: None,
            traceparent: None,
        }
    }
}

/// What happens to a child workflow that is still running when its parent ends (completes,
/// fails, is cancelled). Recorded with the child's `ChildWorkflowScheduled` event, so a change
/// of code never changes it for children already started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParentClosePolicy {
    /// The child is asked to cancel, in the same commit that ends the parent: it sees a
    /// cancel request and may run its own compensation before it ends `cancelled`.
    #[default]
    RequestCancel,
    /// The child runs on, on its own; its end is not reported to anyone.
    Abandon,
    /// The child is ended at once, without running its code again: a terminate request is
    /// posted to it in the same commit that ends the parent, and the runtime that claims the
    /// child's next task appends `WorkflowTerminated`.
    Terminate,
}

impl ParentClosePolicy {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ParentClosePolicy::RequestCancel => "request_cancel",
            ParentClosePolicy::Abandon => "abandon",
            ParentClosePolicy::Terminate => "terminate",
        }
    }
}

/// Options of one child workflow, chosen by the parent's code.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildOptions {
    /// The child's workflow id. `None` (the default) derives it from the parent's id and the
    /// command's position in the parent's history (`"{parent}/{seq}"`), so a replay or a retried
    /// workflow task always names the same child and never starts a second one.
    pub id: Option<WorkflowId>,
    /// What happens to the child if the parent ends first.
    pub parent_close: ParentClosePolicy,
    /// The child's timeouts, from its start: past the first, it ends `timed_out` and the
    /// parent sees a failure of kind `timed_out`. The run timeout is each attempt's.
    pub timeouts: crate::event::Timeouts,
    /// How a failed run of the child is retried, as a new run under the same id with the same
    /// input, after the policy's backoff; the parent hears only of the last attempt's end.
    /// `None` (the default): the child's first failure is final.
    pub retry: Option<RetryPolicy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_interval: Duration::from_millis(100),
            backoff_coefficient: 2.0,
            max_interval: Duration::from_millis(1_000),
            non_retryable: vec![],
        };
        // jitter 0.5 is the midpoint: no spread.
        assert_eq!(p.backoff(1, 0.5), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 0.5), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(400));
        assert_eq!(p.backoff(5, 0.5), Duration::from_millis(1_000));
        assert_eq!(p.backoff(60, 0.5), Duration::from_millis(1_000));
        // The spread stays within 20%.
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(80));
        assert!(p.backoff(1, 0.999_999) <= Duration::from_millis(120));
    }

    #[test]
    fn retry_stops_at_max_attempts_and_non_retryable_kinds() {
        let p = RetryPolicy {
            non_retryable: vec!["card_declined".into()],
            ..RetryPolicy::default()
        };
        let flaky = Failure::new("network", "reset");
        assert!(p.allows_retry(1, Some(&flaky)));
        assert!(p.allows_retry(2, None));
        assert!(!p.allows_retry(3, Some(&flaky)));
        assert!(!p.allows_retry(1, Some(&Failure::new("card_declined", "no"))));
        assert!(!p.allows_retry(1, Some(&Failure::non_retryable("bad", "no"))));
        let unlimited = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(unlimited.allows_retry(1_000, None));
    }

    #[test]
    fn options_serialize_durations_as_millis() {
        let json = serde_json::to_value(ActivityOptions::default()).expect("serialize");
        assert_eq!(json["start_to_close_timeout_ms"], 300_000);
        assert_eq!(json["retry"]["initial_interval_ms"], 1_000);
        let back: ActivityOptions = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, ActivityOptions::default());
    }
}
