//! Exporting traces over OTLP: `loom worker --otlp URL`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
//!
//! The spans exported are Loom's (target `loom::otel`: `StartWorkflow`, `RunWorkflow`,
//! `RunActivity`, each joined to its run's trace) and any of the application's own; the spans
//! of Loom's internal modules, which only give log lines their fields, are left out. The
//! protocol is OTLP over HTTP, `http/protobuf` unless `OTEL_EXPORTER_OTLP_PROTOCOL` says
//! `http/json`; the service is `OTEL_SERVICE_NAME` or `loom-worker`, its instance the worker's
//! id.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// Spans held for export before new ones are dropped, unless `OTEL_BSP_MAX_QUEUE_SIZE` says.
const QUEUE: usize = 32_768;

/// The exporter's provider: shut it down before exiting, so the last spans are sent.
pub(crate) struct Otel {
    provider: SdkTracerProvider,
}

/// Whether traces are to be exported: `--otlp`, or the standard environment variables.
pub(crate) fn wanted(otlp: Option<&str>) -> bool {
    otlp.is_some()
        || [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

impl Otel {
    /// An exporter to `otlp` (a base URL; `/v1/traces` is added unless it is there), or to
    /// where the environment says.
    pub(crate) fn start(otlp: Option<&str>, instance: &str) -> Result<Self, String> {
        let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Ok("http/json") => Protocol::HttpJson,
            Ok("http/protobuf") | Err(_) => Protocol::HttpBinary,
            Ok(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other}: Loom exports http/protobuf or http/json"
                ));
            }
        };
        let mut exporter = SpanExporter::builder().with_http().with_protocol(protocol);
        if let Some(base) = otlp {
            let url = url_of(base)?;
            exporter = exporter.with_endpoint(url);
        }
        let exporter = exporter
            .build()
            .map_err(|e| format!("cannot export traces: {e}"))?;
        let service =
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "loom-worker".to_owned());
        let resource = Resource::builder()
            .with_service_name(service)
            .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
            .build();
        // The specification's queue of 2,048 spans fills in a tenth of a second at Loom's
        // pace (about six spans a workflow), and spans past it are dropped: the default here
        // holds a second and a half of them. OTEL_BSP_MAX_QUEUE_SIZE still decides.
        let mut batch = BatchConfigBuilder::default();
        if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
            batch = batch.with_max_queue_size(QUEUE);
        }
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        Ok(Otel { provider })
    }

    /// The layer that turns spans into OpenTelemetry spans: Loom's and the application's,
    /// at INFO and above, not the spans of Loom's own modules.
    pub(crate) fn layer<S>(&self) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        // No source locations, threads or busy/idle times on every span: each is attributes
        // (and clock reads on every poll) per span, which the spans' own fields make
        // redundant, at a cost measured in `loom bench --otlp` throughput.
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("loom"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|m| {
                *m.level() <= tracing::Level::INFO
                    && !(m.is_span() && m.target().starts_with("loom_"))
            }))
            .boxed()
    }

    /// Sends what is buffered and stops the exporter.
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("loom: sending the last spans failed: {e}");
        }
    }
}

/// The traces endpoint of a base URL.
fn url_of(base: &str) -> Result<String, String> {
    let ok = base.starts_with("http://") || base.starts_with("https://");
    if !ok || base.len() <= "https://".len() {
        return Err(format!(
            "--otlp takes the collector's OTLP/HTTP URL, such as http://127.0.0.1:4318, not {base:?}"
        ));
    }
    let base = base.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    })
}

#[cfg(test)]
mod tests {
    use super::url_of;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(
            url_of("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url_of("https://otel.example/v1/traces/").unwrap(),
            "https://otel.example/v1/traces"
        );
        for bad in ["127.0.0.1:4318", "grpc://x", "http://", ""] {
            assert!(url_of(bad).unwrap_err().contains("--otlp takes"), "{bad}");
        }
    }
}
