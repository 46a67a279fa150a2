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

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
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
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        // Version 00 of the W3C format, as the propagator writes it.
        return format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
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
    let cx = remote(tp).unwrap_or_else(|| {
        let carrier = HashMap::from([(TRACEPARENT.to_owned(), tp.to_owned())]);
        TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier)
    });
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The context of a version-00 `traceparent`, the form every trace Loom stores has (it writes
/// them itself, or refuses them at the start), read without the propagator's general path: a
/// run's every task joins its trace, and this is measurably cheaper. Anything else is `None`,
/// for the propagator to read.
fn remote(tp: &str) -> Option<Context> {
    let (version, rest) = tp.split_at_checked(3)?;
    if version != "00-" || rest.len() != 52 {
        return None;
    }
    let (trace, rest) = rest.split_at_checked(32)?;
    let (span, flags) = rest.strip_prefix('-')?.split_at_checked(16)?;
    let sampled = match flags {
        "-01" => TraceFlags::SAMPLED,
        "-00" => TraceFlags::NOT_SAMPLED,
        _ => return None,
    };
    let is_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !(is_hex(trace) && is_hex(span)) {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        sampled,
        true,
        TraceState::NONE,
    );
    sc.is_valid()
        .then(|| Context::new().with_remote_span_context(sc))
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

    /// The fast reading of a stored `traceparent` agrees with the propagator's, and leaves
    /// every other form to it.
    #[test]
    fn the_fast_path_reads_what_the_propagator_reads() {
        let propagator = |tp: &str| {
            let carrier = HashMap::from([(TRACEPARENT.to_owned(), tp.to_owned())]);
            TraceContextPropagator::new()
                .extract_with_context(&Context::new(), &carrier)
                .span()
                .span_context()
                .clone()
        };
        for tp in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        ] {
            let fast = remote(tp).expect("read fast");
            assert_eq!(fast.span().span_context(), &propagator(tp), "{tp}");
        }
        for tp in [
            "",
            "garbage",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03",
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333é-01",
            "00-0af7651916cd43dd8448eb211c8031é-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319é-b7ad6b716920333-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033é-01",
        ] {
            assert!(remote(tp).is_none(), "{tp:?} is left to the propagator");
        }
    }
}
