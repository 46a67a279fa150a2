//! Output: text for people, one JSON document for scripts.

use std::time::{Duration, UNIX_EPOCH};

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use loom_core::{Payload, Timestamp};
use serde::Serialize;

use crate::Fail;

/// A timestamp as RFC 3339 in UTC, to the millisecond.
pub(crate) fn time(t: Timestamp) -> String {
    let ms = u64::try_from(t.as_millis()).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A duration for people: `350ms`, `2.4s`, `3m 5s`.
pub(crate) fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// A payload on one line, cut to `max` characters.
pub(crate) fn payload(p: &Payload, max: usize) -> String {
    p.preview(max)
}

/// Prints one JSON document on stdout.
pub(crate) fn json(value: &impl Serialize) -> Result<(), Fail> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Fail::failed(format!("cannot encode the output as JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// A table with a header row, sized to the terminal.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    t
}

/// Tags as `key=value` pairs, times in RFC 3339.
pub(crate) fn tags(tags: &loom_core::Tags) -> String {
    tags.iter()
        .map(|(k, v)| match v {
            loom_core::TagValue::Time(t) => format!("{k}={}", time(*t)),
            loom_core::TagValue::Text(s) => format!("{k}={s}"),
            other => format!("{k}={}", other.text()),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(Duration::from_millis(350)), "350ms");
        assert_eq!(duration(Duration::from_millis(2_440)), "2.4s");
        assert_eq!(duration(Duration::from_secs(185)), "3m 5s");
        assert_eq!(time(Timestamp::from_millis(0)), "1970-01-01T00:00:00.000Z");
    }
}
