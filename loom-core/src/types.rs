//! Small value types shared by every layer: time, sequence numbers, ids and payloads.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since the Unix epoch.
///
/// Loom writes time into histories that outlive processes and machines, so it never uses
/// `Instant`. loom-core never reads a clock: every timestamp it sees was passed in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The latest representable time; used as "never".
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// A timestamp `ms` milliseconds after the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        let ms = self.0.saturating_sub(earlier.0).max(0);
        Duration::from_millis(ms.unsigned_abs())
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC to the millisecond (`2026-12-06T12:50:48.056Z`); a time before the
    /// epoch as its milliseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match u64::try_from(self.0) {
            Ok(ms) => {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
                write!(f, "{}", humantime::format_rfc3339_millis(at))
            }
            Err(_) => write!(f, "{}ms", self.0),
        }
    }
}

/// The position of an event in one workflow's history, starting at 1.
///
/// Sequence numbers are decided by loom-core from the history, never by a storage backend,
/// so that every backend stores the same history for the same run.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// "Before the first event": the expected last sequence number of an empty history.
    pub const ZERO: Seq = Seq(0);
    /// The sequence number of a workflow's first event, `WorkflowStarted`.
    pub const FIRST: Seq = Seq(1);

    /// Wraps a raw sequence number.
    pub const fn new(n: u64) -> Self {
        Seq(n)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The sequence number after this one.
    pub const fn next(self) -> Self {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The id of one workflow instance, chosen by the caller or generated at start.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkflowId(String);

impl WorkflowId {
    /// Wraps an id. See [`check`](Self::check) for which ids a store accepts.
    pub fn new(id: impl Into<String>) -> Self {
        WorkflowId(id.into())
    }

    /// Whether a store accepts this id: non-empty text without NUL characters (which some
    /// databases cannot store), and not `.` or `..` (which no URL can name as a path segment:
    /// browsers resolve them away). The error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Err("a workflow id cannot be empty".into())
        } else if self.0 == "." || self.0 == ".." {
            Err(format!(
                "a workflow id cannot be {:?}: no URL names it as a path segment",
                self.0
            ))
        } else if self.0.contains('\0') {
            Err("a workflow id cannot contain a NUL character".into())
        } else {
            Ok(())
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for WorkflowId {
    fn from(s: &str) -> Self {
        WorkflowId(s.to_owned())
    }
}

impl From<String> for WorkflowId {
    fn from(s: String) -> Self {
        WorkflowId(s)
    }
}

/// The id of one activity within a workflow: the sequence number of its `ActivityScheduled`
/// event. Unique within the workflow and decided by the history alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActivityId(pub Seq);

impl fmt::Display for ActivityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "activity{}", self.0)
    }
}

/// The id of one durable timer within a workflow: the sequence number of its `TimerScheduled`
/// event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimerId(pub Seq);

impl fmt::Display for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timer{}", self.0)
    }
}

/// The handle of one child workflow within its parent: the sequence number of the parent's
/// `ChildWorkflowScheduled` event. The child's own workflow id is recorded in that event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChildId(pub Seq);

impl fmt::Display for ChildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "child{}", self.0)
    }
}

/// A serialized value crossing the boundary between typed user code and the untyped history:
/// workflow inputs and outputs, activity inputs and results, signal payloads, state values.
///
/// Payloads are JSON values. Comparing two payloads compares their JSON values exactly; the
/// workspace enables serde_json's `float_roundtrip` so a float survives storage unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Payload(serde_json::Value);

impl Payload {
    /// The JSON `null` payload, for `()` inputs and outputs.
    pub const NULL: Payload = Payload(serde_json::Value::Null);

    /// Serializes a typed value into a payload.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, PayloadError> {
        serde_json::to_value(value)
            .map(Payload)
            .map_err(|e| PayloadError(e.to_string()))
    }

    /// Deserializes the payload into a typed value.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        T::deserialize(&self.0).map_err(|e| PayloadError(e.to_string()))
    }

    /// Wraps a JSON value.
    pub fn from_json(value: serde_json::Value) -> Self {
        Payload(value)
    }

    /// Parses JSON text into a payload.
    pub fn parse(text: &str) -> Result<Self, PayloadError> {
        serde_json::from_str(text)
            .map(Payload)
            .map_err(|e| PayloadError(e.to_string()))
    }

    /// How many bytes the payload takes as JSON text, as stores keep it; counted without
    /// building the text.
    pub fn encoded_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // Writing a JSON value to a sink that never fails cannot fail.
        let _ = serde_json::to_writer(&mut count, &self.0);
        count.0
    }

    /// The JSON value.
    pub fn as_json(&self) -> &serde_json::Value {
        &self.0
    }

    /// Consumes the payload, returning the JSON value.
    pub fn into_json(self) -> serde_json::Value {
        self.0
    }

    /// A short, single-line rendering for error messages: the JSON text, cut at `max` chars.
    pub fn preview(&self, max: usize) -> String {
        let text = self.0.to_string();
        if text.chars().count() <= max {
            return text;
        }
        let cut: String = text.chars().take(max).collect();
        format!("{cut}...")
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A payload could not be encoded or decoded as the expected type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payload does not match the expected type: {0}")]
pub struct PayloadError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_millis(1_000);
        assert_eq!(
            t.saturating_add(Duration::from_millis(500)).as_millis(),
            1_500
        );
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert_eq!(
            t.saturating_duration_since(Timestamp::from_millis(2_000)),
            Duration::ZERO
        );
        assert_eq!(
            Timestamp::from_millis(2_500).saturating_duration_since(t),
            Duration::from_millis(1_500)
        );
    }

    #[test]
    fn payload_round_trips_floats_exactly() {
        let x = 0.1_f64 + 0.2_f64;
        let p = Payload::encode(&x).expect("encode");
        let text = serde_json::to_string(&p).expect("to string");
        let back = Payload::parse(&text).expect("parse");
        assert_eq!(p, back);
        assert_eq!(back.decode::<f64>().expect("decode"), x);
    }

    #[test]
    fn payload_decode_reports_type_mismatch() {
        let p = Payload::encode(&"text").expect("encode");
        let err = p.decode::<u32>().expect_err("a string is not a u32");
        assert!(err.to_string().contains("expected type"), "{err}");
    }

    #[test]
    fn preview_cuts_long_payloads() {
        let p = Payload::encode(&"x".repeat(100)).expect("encode");
        let s = p.preview(10);
        assert!(s.ends_with("...") && s.len() == 13, "{s}");
    }
}
