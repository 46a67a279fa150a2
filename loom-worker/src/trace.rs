//! Distributed traces: the trace a workflow run belongs to, and the spans that join it.
//!
//! A run's trace is stored with it, as a W3C `traceparent` in its `WorkflowStarted` event
//! (loom-core copies it into every activity it schedules and every child it starts). The
//! client that starts a workflow takes it from its `StartWorkflow` span when an OpenTelemetry
//! layer is installed, so the caller's trace continues; otherwise the run begins a trace of
//! its own. Workers parent their `RunWorkflow` and `RunActivity` spans on it, whichever worker
//! and process they run in. Spans go through `tracing`; an application that installs
//! `tracing-opentelemetry` (as `loom worker --otlp` does) exports them.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span Loom means for tracing backends: export these, and leave out the
/// spans of Loom's own modules, which only give log lines their fields.
pub const TARGET: &str = "loom::otel";

const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of `span` when an OpenTelemetry layer gave it a context; otherwise
/// `fallback`, or a fresh trace (sampled, with a random trace id and parent id).
pub(crate) fn traceparent_of(span: &Span, fallback: Option<String>) -> String {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        if let Some(tp) = carrier.remove(TRACEPARENT) {
            return tp;
        }
    }
    if let Some(tp) = fallback {
        return tp;
    }
    format!(
        "00-{:032x}-{:016x}-01",
        rand::random::<u128>().max(1),
        rand::random::<u64>().max(1)
    )
}

/// Whether `traceparent` is a W3C trace context this crate can join.
pub(crate) fn is_valid(traceparent: &str) -> bool {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new()
        .extract(&carrier)
        .span()
        .span_context()
        .is_valid()
}

/// Makes `span` a child of the trace context `traceparent` names. Call it before the span is
/// entered; without an OpenTelemetry layer, or with no or a malformed `traceparent`, it does
/// nothing.
pub(crate) fn join(span: &Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    if span.is_disabled() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), tp.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of a `traceparent` (its second part), for log lines.
pub(crate) fn trace_id(traceparent: Option<&str>) -> Option<&str> {
    traceparent?.split('-').nth(1).filter(|id| id.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_layer_a_fresh_trace_is_well_formed() {
        let tp = traceparent_of(&Span::none(), None);
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        let carrier = HashMap::from([(TRACEPARENT.to_owned(), tp.clone())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        assert!(cx.span().span_context().is_valid(), "{tp} does not parse");
        assert_ne!(
            traceparent_of(&Span::none(), None),
            tp,
            "each start begins its own trace"
        );
        let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned();
        assert_eq!(
            trace_id(Some(&given)),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(trace_id(Some("garbage")), None);
        assert!(is_valid(&given));
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert_eq!(trace_id(None), None);
        assert_eq!(traceparent_of(&Span::none(), Some(given.clone())), given);
    }
}
