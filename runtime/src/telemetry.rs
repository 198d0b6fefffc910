//! Traces: the spans of the `qiria::trace` target, exported over OTLP/gRPC
//! (`[log.tracing]`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_SERVICE_NAME`,
//! `OTEL_SDK_DISABLED`), and the W3C `traceparent` read from a request's headers so that a
//! service's spans sit inside its caller's trace.
//!
//! With no endpoint, no exporter is built and the `qiria::trace` spans are disabled for every
//! layer: a span macro on a request path then costs one cached branch. Sampling is parent
//! based: a request whose caller sampled it (Envoy's `traceparent` flag) is traced, one whose
//! caller did not is not, and a root is sampled at `sample_ratio`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of every span that is exported.
pub const TARGET: &str = "qiria::trace";

/// `[log.tracing]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector, e.g. `http://otel-collector:4317`; empty: the
    /// `OTEL_EXPORTER_OTLP_*` variables, else no tracing.
    pub endpoint: String,
    /// The share of root traces sampled (a caller's decision wins), unless
    /// `OTEL_TRACES_SAMPLER` says otherwise.
    pub sample_ratio: f64,
    /// How long finished spans wait to be exported together.
    pub batch_delay_ms: u64,
    /// Finished spans held for export at most; more are dropped.
    pub max_queue: usize,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self { endpoint: String::new(), sample_ratio: 0.01, batch_delay_ms: 5000, max_queue: 2048 }
    }
}

/// The exporter's own runtime (its gRPC connection needs one) and the provider, kept for the
/// process's life.
struct Exporting {
    _runtime: tokio::runtime::Runtime,
    provider: SdkTracerProvider,
}

static EXPORTING: OnceLock<Exporting> = OnceLock::new();

/// Whether traces are exported at all.
fn enabled(config: &TracingConfig) -> bool {
    let env = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && (!config.endpoint.is_empty()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The tracer that exports `service`'s spans, when tracing is enabled.
pub(crate) fn tracer(
    config: &TracingConfig,
    service: &str,
) -> std::io::Result<Option<opentelemetry_sdk::trace::Tracer>> {
    if !enabled(config) {
        return Ok(None);
    }
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "log.tracing.sample_ratio: 0.0 to 1.0"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()?;
    let provider = runtime.block_on(async {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if !config.endpoint.is_empty() {
            exporter = exporter.with_endpoint(config.endpoint.clone());
        }
        let exporter = exporter.with_timeout(Duration::from_secs(5)).build().map_err(std::io::Error::other)?;
        // The standard variable wins over the config, as it does for the other settings.
        let delay =
            std::env::var("OTEL_BSP_SCHEDULE_DELAY").ok().and_then(|v| v.parse().ok()).unwrap_or(config.batch_delay_ms);
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(delay))
            .with_max_queue_size(config.max_queue)
            .build();
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| format!("qiria-{service}"));
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
        let mut builder = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
            .with_resource(resource);
        if std::env::var("OTEL_TRACES_SAMPLER").is_err() {
            let root = Sampler::TraceIdRatioBased(config.sample_ratio);
            builder = builder.with_sampler(Sampler::ParentBased(Box::new(root)));
        }
        Ok::<_, std::io::Error>(builder.build())
    })?;
    let tracer = provider.tracer("qiria");
    let _ = EXPORTING.set(Exporting { _runtime: runtime, provider });
    Ok(Some(tracer))
}

/// Exports what is left (at exit).
pub fn shutdown() {
    if let Some(exporting) = EXPORTING.get() {
        let _ = exporting.provider.force_flush();
    }
}

/// Headers as OpenTelemetry's propagator reads them (names in lower case, as Envoy sends
/// them in a `CheckRequest` and HTTP/2 carries them).
struct Headers<'a>(&'a HashMap<String, String>);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The trace context (W3C and B3) among a request's headers or metadata (`get` looks a name
/// up).
pub fn trace_context<'a>(get: impl Fn(&str) -> Option<&'a str>) -> HashMap<String, String> {
    ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"]
        .into_iter()
        .filter_map(|name| get(name).map(|value| (name.to_owned(), value.to_owned())))
        .collect()
}

/// A span continues the trace whose `traceparent` a job recorded (empty: none).
pub fn continue_recorded(span: &tracing::Span, traceparent: &str) {
    if !traceparent.is_empty() {
        continue_trace(span, &HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]));
    }
}

/// The `traceparent` that carries `span`'s trace, or an empty string.
pub fn traceparent(span: &tracing::Span) -> String {
    trace_headers(span).into_iter().find(|(name, _)| name == "traceparent").map(|(_, v)| v).unwrap_or_default()
}

/// Makes `span` a child of the trace in `headers`: W3C `traceparent`/`tracestate`, else B3
/// (`b3` single header, or `x-b3-traceid`/`x-b3-spanid`/`x-b3-sampled`, as Envoy's Zipkin
/// tracer sends them); nothing when there is none or the span is disabled.
pub fn continue_trace(span: &tracing::Span, headers: &HashMap<String, String>) {
    if span.is_disabled() {
        return;
    }
    let propagator = TraceContextPropagator::new();
    let parent = if headers.contains_key("traceparent") {
        propagator.extract(&Headers(headers))
    } else if let Some(traceparent) = b3_as_traceparent(headers) {
        propagator.extract(&Headers(&HashMap::from([("traceparent".to_owned(), traceparent)])))
    } else {
        return;
    };
    let _ = span.set_parent(parent);
}

/// A B3 context as the W3C `traceparent` that says the same (64-bit trace ids are padded on
/// the left, as B3 specifies); `None` when there is none or it is malformed.
fn b3_as_traceparent(headers: &HashMap<String, String>) -> Option<String> {
    let (trace, span, sampled) = match headers.get("b3") {
        // `{trace}-{span}[-{sampled}[-{parent}]]`; a lone `0`/`1`/`d` carries no context.
        Some(single) => {
            let mut parts = single.split('-');
            let (trace, span) = (parts.next()?, parts.next()?);
            (trace.to_owned(), span.to_owned(), parts.next().unwrap_or("1").to_owned())
        }
        None => (
            headers.get("x-b3-traceid")?.clone(),
            headers.get("x-b3-spanid")?.clone(),
            headers.get("x-b3-sampled").cloned().unwrap_or_else(|| "1".into()),
        ),
    };
    let hex = |s: &str, lens: &[usize]| lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&trace, &[16, 32]) || !hex(&span, &[16]) {
        return None;
    }
    let flags = if matches!(sampled.as_str(), "1" | "d" | "true") { "01" } else { "00" };
    Some(format!("00-{:0>32}-{span}-{flags}", trace.to_ascii_lowercase()).to_ascii_lowercase())
}

/// The `traceparent` (and `tracestate`) that carries `span`'s trace to a callee.
pub fn trace_headers(span: &tracing::Span) -> Vec<(String, String)> {
    struct Out(Vec<(String, String)>);
    impl Injector for Out {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_owned(), value));
        }
    }
    if span.is_disabled() {
        return Vec::new();
    }
    let mut out = Out(Vec::new());
    TraceContextPropagator::new().inject_context(&span.context(), &mut out);
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn b3_contexts_read_as_the_traceparent_they_mean() {
        let multi = map(&[
            ("x-b3-traceid", "80F198EE56343BA864FE8B2A57D3EFF7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ]);
        assert_eq!(
            b3_as_traceparent(&multi).as_deref(),
            Some("00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01")
        );
        let short = map(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]);
        assert_eq!(
            b3_as_traceparent(&short).as_deref(),
            Some("00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-00")
        );
        for bad in [map(&[("b3", "1")]), map(&[("x-b3-traceid", "xyz"), ("x-b3-spanid", "e457b5a2e4d86bd1")]), map(&[])]
        {
            assert_eq!(b3_as_traceparent(&bad), None, "{bad:?}");
        }
    }
}
