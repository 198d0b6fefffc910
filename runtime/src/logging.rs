//! Logging setup: one line per event on standard error, JSON by default (for collectors),
//! text for humans; the level is a `tracing` filter from configuration. With an audit trail
//! configured, every audit event is also appended to it (`audit_trail`), whatever the level,
//! and with `log.siem` the trail is delivered to the SIEM (`siem`).

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer;

use crate::audit_trail::TrailLayer;
use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; a bad filter falls back to `info` rather than to silence.
/// Panics (the request paths catch them) are logged as events too, so that they reach the
/// collector as JSON instead of as free text on standard error. A configured audit trail that
/// cannot be opened (no key, an unreadable file) is an error: the service does not start
/// without the trail it was told to keep.
pub fn init(config: &LogConfig, service: &str) -> std::io::Result<()> {
    std::panic::set_hook(Box::new(|info| tracing::error!(target: "qiria::panic", panic = %info, "panic")));
    let filter = tracing_subscriber::EnvFilter::try_new(&config.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The exported spans are the tracing layer's alone: in the log they would only add
    // fields to every line (and cost a span per request with tracing off).
    let filter = match format!("{}=off", crate::telemetry::TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let traces = crate::telemetry::tracer(&config.tracing, service)?
        .map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only(crate::telemetry::TARGET)));
    let trail = match &config.audit_trail {
        Some(path) => {
            let layer = TrailLayer::start(path.clone(), service, &config.audit_key_dir, config.audit_checkpoint_every)
                .map_err(|e| std::io::Error::new(e.kind(), format!("audit trail {}: {e}", path.display())))?;
            if let Some(siem) = &config.siem {
                crate::siem::start(path, layer.head(), service, siem)?;
            }
            Some(layer.with_filter(only(AUDIT)))
        }
        None if config.siem.is_some() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "log.siem delivers the audit trail: set log.audit_trail too",
            ))
        }
        None => None,
    };
    let fmt = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(WithTraceIds)
            .json()
            .flatten_event(true)
            .with_filter(PerCall(filter))
            .boxed(),
        LogFormat::Text => {
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(PerCall(filter)).boxed()
        }
    };
    // Every layer is filtered, and absent ones are left out rather than passed as `None`: an
    // unfiltered layer, or a `None` one, makes every span of tonic and h2 be created, entered
    // and closed on every request, at a cost near that of the whole decision.
    let counter = crate::metrics::AuditCounter.with_filter(only(AUDIT));
    let mut layers = vec![fmt, counter.boxed()];
    layers.extend(trail.map(Layer::boxed));
    layers.extend(traces.map(Layer::boxed));
    tracing_subscriber::registry().with(layers).init();
    Ok(())
}

/// The target of audit events.
const AUDIT: &str = "qiria::audit";

/// A per-layer filter letting through `target` only.
fn only(target: &'static str) -> PerCall<tracing_subscriber::filter::FilterFn<impl Fn(&Metadata<'_>) -> bool>> {
    PerCall(tracing_subscriber::filter::filter_fn(move |m| m.target() == target))
}

/// A per-layer filter asked on every call, never once per callsite. tracing-subscriber carries
/// each filter's verdict from `enabled` to `on_event` in a thread-local, and a callsite every
/// filter accepts is cached as "always", which skips `enabled`: the event is then judged on
/// whatever the last `enabled` on that thread left there. sqlx's query logger asks
/// `tracing::enabled!` after every query, and the issuer's audit events after it were dropped
/// (tokio-rs/tracing#2519). "Sometimes" makes every dispatch ask.
struct PerCall<F>(F);

impl<S, F: Filter<S>> Filter<S> for PerCall<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        match self.0.callsite_enabled(meta) {
            never if never.is_never() => never,
            _ => Interest::sometimes(),
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, cx)
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        self.0.on_record(id, values, cx)
    }

    fn on_enter(&self, id: &Id, cx: Context<'_, S>) {
        self.0.on_enter(id, cx)
    }

    fn on_exit(&self, id: &Id, cx: Context<'_, S>) {
        self.0.on_exit(id, cx)
    }

    fn on_close(&self, id: Id, cx: Context<'_, S>) {
        self.0.on_close(id, cx)
    }
}

/// Standard error, each JSON line with the `trace_id` and `span_id` of the span it was
/// written in (when that span is traced), so that a log line leads to its trace.
struct WithTraceIds;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for WithTraceIds {
    type Writer = TraceLine;

    fn make_writer(&'a self) -> TraceLine {
        TraceLine { line: Vec::new(), ids: current_ids() }
    }
}

/// The trace and span id of the current span, if it is part of a trace.
fn current_ids() -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

/// One line, written to standard error whole when the formatter is done with it.
struct TraceLine {
    line: Vec<u8>,
    ids: Option<(String, String)>,
}

impl std::io::Write for TraceLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TraceLine {
    fn drop(&mut self) {
        if let (Some((trace, span)), true) = (&self.ids, self.line.ends_with(b"}\n")) {
            let at = self.line.len() - 2;
            let ids = format!(",\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"");
            self.line.splice(at..at, ids.into_bytes());
        }
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &self.line);
    }
}
