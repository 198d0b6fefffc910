//! A real OTLP/gRPC trace receiver (the official protobufs of `opentelemetry-proto`, their
//! `TraceService/Export`), on a loopback port, keeping every span it is sent: what Envoy's
//! OpenTelemetry tracer and our services export, for a test to follow a trace through them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The exporter's `service.name`.
    pub service: String,
    pub name: String,
    /// Hex.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// String forms of the attributes.
    pub attributes: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Spans {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource in request.into_inner().resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            let service = attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref().and_then(|v| v.value.as_ref()).map(text))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| {
                                (
                                    kv.key.clone(),
                                    kv.value.as_ref().and_then(|v| v.value.as_ref()).map(text).unwrap_or_default(),
                                )
                            })
                            .collect(),
                    });
                }
            }
        }
        if let Ok(mut spans) = self.0.lock() {
            spans.extend(received);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running receiver.
pub struct OtlpReceiver {
    /// Its port on 127.0.0.1 (gRPC, h2c).
    pub port: u16,
    spans: Spans,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts it on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind otlp");
        let port = listener.local_addr().expect("addr").port();
        let spans = Spans::default();
        let service = TraceServiceServer::new(spans.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        Self { port, spans, task }
    }

    /// `http://127.0.0.1:<port>`, for an exporter's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
