//! Tags: typed business keys on a workflow (`customer=42`, `vip=true`), to find it by.
//!
//! A workflow's tags are set at its start and by its code (`ctx.set_tag`, recorded in the
//! history as `TagSet`, so replay is deterministic); stores index them for
//! `loom list --tag`. Tags belong to the workflow, not to a run: the last value set for a key
//! stays until another replaces it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::Timestamp;

/// The longest tag key, in bytes.
pub const MAX_TAG_KEY: usize = 64;

/// The longest text tag value, in bytes.
pub const MAX_TAG_TEXT: usize = 256;

/// The most tags a workflow may carry.
pub const MAX_TAGS: usize = 32;

/// A workflow's tags, by key.
pub type Tags = BTreeMap<String, TagValue>;

/// A tag's value: text, a whole number, a truth value or a time. Serialized with its type as
/// the key: `{"int": 42}`, `{"text": "ada"}`, `{"bool": true}`, `{"time": 1796558796638}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagValue {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
    /// True or false.
    Bool(bool),
    /// A time.
    Time(Timestamp),
}

impl TagValue {
    /// The type's name: `text`, `int`, `bool` or `time`.
    pub fn kind(&self) -> &'static str {
        match self {
            TagValue::Text(_) => "text",
            TagValue::Int(_) => "int",
            TagValue::Bool(_) => "bool",
            TagValue::Time(_) => "time",
        }
    }

    /// The value as the text an equality filter compares: the text itself, the number in
    /// decimal, `true`/`false`, a time's milliseconds since the epoch. So `customer=42`
    /// finds a workflow whether its code tagged it with the number 42 or the text "42".
    pub fn text(&self) -> String {
        match self {
            TagValue::Text(s) => s.clone(),
            TagValue::Int(n) => n.to_string(),
            TagValue::Bool(b) => b.to_string(),
            TagValue::Time(t) => t.as_millis().to_string(),
        }
    }

    /// The value as the number a range filter compares: an int's value, a time's
    /// milliseconds since the epoch; `None` for text and truth values, which have no order.
    pub fn number(&self) -> Option<i64> {
        match self {
            TagValue::Int(n) => Some(*n),
            TagValue::Time(t) => Some(t.as_millis()),
            TagValue::Text(_) | TagValue::Bool(_) => None,
        }
    }

    /// The value a person typed, times included: an RFC 3339 time (`2026-12-06T10:00:00Z`,
    /// or without the zone, read as UTC) a time, otherwise as [`infer`](Self::infer) reads it.
    pub fn parse(text: &str) -> TagValue {
        if let Ok(t) = humantime::parse_rfc3339_weak(text)
            && let Ok(since) = t.duration_since(std::time::UNIX_EPOCH)
            && let Ok(ms) = i64::try_from(since.as_millis())
        {
            return TagValue::Time(crate::Timestamp::from_millis(ms));
        }
        TagValue::infer(text)
    }

    /// The value a person typed: `true`/`false` a truth value, a decimal number an int,
    /// anything else text. ([`parse`](Self::parse) reads times too.)
    pub fn infer(text: &str) -> TagValue {
        match text {
            "true" => TagValue::Bool(true),
            "false" => TagValue::Bool(false),
            _ => text
                .parse::<i64>()
                .map_or_else(|_| TagValue::Text(text.to_owned()), TagValue::Int),
        }
    }
}

impl fmt::Display for TagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagValue::Text(s) => write!(f, "{s:?}"),
            other => f.write_str(&other.text()),
        }
    }
}

impl From<&str> for TagValue {
    fn from(s: &str) -> Self {
        TagValue::Text(s.to_owned())
    }
}

impl From<String> for TagValue {
    fn from(s: String) -> Self {
        TagValue::Text(s)
    }
}

impl From<i64> for TagValue {
    fn from(n: i64) -> Self {
        TagValue::Int(n)
    }
}

impl From<i32> for TagValue {
    fn from(n: i32) -> Self {
        TagValue::Int(i64::from(n))
    }
}

impl From<u32> for TagValue {
    fn from(n: u32) -> Self {
        TagValue::Int(i64::from(n))
    }
}

impl From<bool> for TagValue {
    fn from(b: bool) -> Self {
        TagValue::Bool(b)
    }
}

impl From<Timestamp> for TagValue {
    fn from(t: Timestamp) -> Self {
        TagValue::Time(t)
    }
}

/// Whether a tag can be stored: a key of 1 to [`MAX_TAG_KEY`] bytes of ASCII letters, digits,
/// `_`, `-` and `.`, and a text value of at most [`MAX_TAG_TEXT`] bytes without NUL
/// characters. The error says what is wrong.
pub fn check_tag(key: &str, value: &TagValue) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_TAG_KEY {
        return Err(format!(
            "a tag key has 1 to {MAX_TAG_KEY} characters, not {}",
            key.len()
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "the tag key {key:?} holds {c:?}: keys are ASCII letters, digits, '_', '-' and '.'"
        ));
    }
    if let TagValue::Text(s) = value {
        if s.len() > MAX_TAG_TEXT {
            return Err(format!(
                "the text of tag {key:?} is {} bytes, past the limit of {MAX_TAG_TEXT}",
                s.len()
            ));
        }
        if s.contains('\0') {
            return Err(format!("the text of tag {key:?} holds a NUL character"));
        }
    }
    Ok(())
}

/// Whether every tag of `tags` can be stored, and there are at most [`MAX_TAGS`].
pub fn check_tags(tags: &Tags) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "{} tags, past the limit of {MAX_TAGS} per workflow",
            tags.len()
        ));
    }
    tags.iter().try_for_each(|(k, v)| check_tag(k, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_compare_as_text_and_as_numbers() {
        assert_eq!(TagValue::infer("42"), TagValue::Int(42));
        assert_eq!(TagValue::infer("true"), TagValue::Bool(true));
        assert_eq!(TagValue::infer("ada"), TagValue::Text("ada".into()));
        assert_eq!(TagValue::Int(42).text(), TagValue::Text("42".into()).text());
        assert_eq!(TagValue::Time(Timestamp::from_millis(5)).number(), Some(5));
        assert_eq!(TagValue::Bool(true).number(), None);
        assert_eq!(
            serde_json::to_string(&TagValue::Int(7)).expect("encode"),
            r#"{"int":7}"#
        );
    }

    #[test]
    fn keys_and_texts_are_checked() {
        assert!(check_tag("customer.id", &TagValue::Int(1)).is_ok());
        assert!(check_tag("", &TagValue::Int(1)).is_err());
        assert!(check_tag("a b", &TagValue::Int(1)).is_err());
        assert!(check_tag(&"k".repeat(MAX_TAG_KEY + 1), &TagValue::Int(1)).is_err());
        assert!(check_tag("k", &TagValue::Text("x".repeat(MAX_TAG_TEXT + 1))).is_err());
        assert!(check_tag("k", &TagValue::Text("a\0b".into())).is_err());
        let many: Tags = (0..=MAX_TAGS)
            .map(|i| (format!("k{i}"), TagValue::Int(0)))
            .collect();
        assert!(check_tags(&many).unwrap_err().contains("limit"));
    }
}
