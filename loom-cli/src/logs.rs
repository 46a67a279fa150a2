//! JSON log lines (`loom worker --log-format json`): one object per line, whose `span` holds
//! the fields of every span the line was written in, merged, so a line carries the workflow
//! id, run, task and trace id of the task it concerns however the spans that hold them nest
//! (a task's own span holds those fields; the `RunWorkflow` or `RunActivity` span inside it
//! holds only what a trace needs).

use std::fmt;

use serde_json::{Map, Value};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format of JSON lines: `timestamp`, `level`, the event's fields (`message` among
/// them), `target`, and `span`: `name` (the innermost span's) and the fields of every span in
/// scope, an inner span's value winning over an outer one's.
pub(crate) struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        let mut fields = String::new();
        JsonFields::new().format_fields(Writer::new(&mut fields), event)?;
        line.extend(object(&fields));
        line.insert("target".into(), event.metadata().target().into());
        if let Some(scope) = ctx.event_scope() {
            let mut span = Map::new();
            let mut name = "";
            for s in scope.from_root() {
                if let Some(f) = s.extensions().get::<FormattedFields<JsonFields>>() {
                    span.extend(object(&f.fields));
                }
                name = s.name();
            }
            span.insert("name".into(), name.into());
            line.insert("span".into(), Value::Object(span));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The members of a JSON object written by `JsonFields` (none for an empty field list).
fn object(json: &str) -> Map<String, Value> {
    match serde_json::from_str(json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::JsonLines;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[test]
    fn a_line_carries_the_fields_of_every_span_it_is_in() {
        let out = Lines::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(JsonLines)
                .with_writer(out.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let task = tracing::info_span!("task", workflow_id = "order-1", task = "task7", n = 1);
            let run = tracing::info_span!(parent: &task, "RunWorkflow", n = 2, quote = "a\"<b>");
            run.in_scope(|| tracing::info!(answer = 42, "inside {}", "both"));
            tracing::warn!("outside");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let inside = &lines[0];
        assert_eq!(inside["message"], "inside both");
        assert_eq!(inside["answer"], 42);
        assert_eq!(inside["level"], "INFO");
        assert!(
            inside["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert_eq!(inside["span"]["name"], "RunWorkflow");
        assert_eq!(inside["span"]["workflow_id"], "order-1");
        assert_eq!(inside["span"]["task"], "task7");
        assert_eq!(inside["span"]["n"], 2, "the inner span's value wins");
        assert_eq!(inside["span"]["quote"], "a\"<b>");
        assert_eq!(lines[1]["message"], "outside");
        assert!(lines[1].get("span").is_none(), "{text}");
    }
}
