//! The ext_authz v3 `Check` handler: request → identity → input → policy → decision →
//! `CheckResponse`. Every error on this path becomes a denial; [`Denial`] is the one place
//! where reasons are mapped to HTTP and gRPC statuses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};
use tracing::warn;

use qiria_identity::{IdentityError, TokenVerifier};
use qiria_policy::input::InputError;
use qiria_policy::{LivePolicy, PolicyBundle, PolicyError};

use crate::decision::{Decision, DecisionError, SharedDecision};
use crate::decision_cache::{DecisionCache, DecisionMemo, VerifiedToken};
use crate::decision_log::{DecisionLog, Failure, Ticket};
use crate::envoy_input;
use crate::metrics::{DecisionLabels, Metrics, StripedCounter};

/// Header carrying the verified subject to the upstream.
pub const SUBJECT_HEADER: &str = "x-qiria-subject";
/// Header carrying the verified roles (comma-separated) to the upstream.
pub const ROLES_HEADER: &str = "x-qiria-roles";
/// Header carrying the decision id of a denial to the client. Allowed requests do not carry it
/// upstream (a client-sent copy is removed): every header set costs Envoy ~4,000 instructions
/// per request, and the upstream already has `x-request-id`, which the decision log records.
pub const DECISION_ID_HEADER: &str = "x-qiria-decision-id";
/// Namespace-free key of the decision id in the response's dynamic metadata.
pub const DECISION_ID_KEY: &str = "decision_id";
/// Every header of this prefix is Qiria's to set: a client's copy never reaches the upstream.
const RESERVED_PREFIX: &str = "x-qiria-";
/// The context extension (set per route in Envoy) under which authz forwards the bearer token
/// to an upstream that verifies it again itself (`"true"`).
pub const FORWARD_TOKEN_EXTENSION: &str = "qiria.forward_token";
/// The context extension (set per route in Envoy) that puts the route in shadow mode
/// (`"true"`) — decide and log, but allow — or out of it (`"false"`, over `policy.shadow`).
pub const SHADOW_EXTENSION: &str = "qiria.shadow";

/// Why a request is denied; each reason has exactly one status.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    /// The policy denied and the request had no valid identity.
    #[error("unauthenticated ({0})")]
    Unauthenticated(IdentityError),
    /// The policy denied a request with a valid identity.
    #[error("forbidden")]
    Forbidden,
    /// The input document could not be built.
    #[error("bad request: {0}")]
    BadRequest(#[from] InputError),
    /// No policy bundle has been loaded yet.
    #[error("no policy loaded")]
    NoPolicy,
    /// Evaluation failed (error, time limit).
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// The decision rule's value is not a decision.
    #[error("{0}")]
    Decision(#[from] DecisionError),
    /// A verified claim cannot be carried in a header.
    #[error("claim `{0}` holds characters that cannot go in a header")]
    UnsafeClaim(&'static str),
}

impl Denial {
    /// HTTP status for Envoy to send, gRPC code for the CheckResponse, short error code.
    fn status(&self) -> (u16, tonic::Code, &'static str) {
        match self {
            Self::Unauthenticated(_) => (401, tonic::Code::Unauthenticated, "unauthenticated"),
            Self::Forbidden | Self::UnsafeClaim(_) => (403, tonic::Code::PermissionDenied, "forbidden"),
            Self::BadRequest(_) => (400, tonic::Code::InvalidArgument, "bad_request"),
            Self::NoPolicy => (503, tonic::Code::Unavailable, "unavailable"),
            Self::Policy(_) | Self::Decision(_) => (403, tonic::Code::PermissionDenied, "forbidden"),
        }
    }

    /// The policy made no decision: why, as the decision log's `error` says it.
    fn failure(&self) -> Option<Failure> {
        let code = match self {
            Self::BadRequest(_) => "input_error",
            Self::NoPolicy => "no_policy",
            Self::Policy(_) => "eval_error",
            Self::Decision(_) => "malformed_decision",
            Self::Unauthenticated(_) | Self::Forbidden | Self::UnsafeClaim(_) => return None,
        };
        Some(Failure { code, message: self.to_string() })
    }
}

/// Everything a decision needs; shared by all connections.
pub struct Authorizer {
    verifier: Arc<TokenVerifier<DecisionMemo>>,
    policy: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    log: Option<DecisionLog>,
    forward_token: bool,
    shadow: bool,
    cache: Option<DecisionCache>,
    counters: DecisionCounters,
}

/// How an [`Authorizer`] answers, besides what the policy says.
#[derive(Debug, Clone)]
pub struct AnswerSettings {
    /// Decide and log, but allow every request (routes may say otherwise, [`SHADOW_EXTENSION`]).
    pub shadow: bool,
    /// Forward the bearer token upstream on every allowed request (else only on routes that
    /// set the [`FORWARD_TOKEN_EXTENSION`]).
    pub forward_token: bool,
    /// Decisions shared between requests (a bundle's `decision_key`; else requests without a
    /// verified token, when it declares its decisions reusable); 0 never reuses a decision.
    pub decision_cache_capacity: u64,
    /// How long a decision may be reused.
    pub decision_cache_ttl: std::time::Duration,
}

/// Handles on the most frequent decision counters, resolved once instead of per request.
struct DecisionCounters {
    allowed: StripedCounter,
    unauthenticated: StripedCounter,
    forbidden: StripedCounter,
}

impl Authorizer {
    /// Wires the verifier, the live policy slot and the metrics.
    pub fn new(
        verifier: Arc<TokenVerifier<DecisionMemo>>,
        policy: Arc<LivePolicy>,
        metrics: Arc<Metrics>,
        settings: &AnswerSettings,
        log: Option<DecisionLog>,
    ) -> Self {
        let counter = |outcome, status| metrics.decisions.get_or_create(&DecisionLabels { outcome, status }).clone();
        let counters = DecisionCounters {
            allowed: counter("allow", 200),
            unauthenticated: counter("deny", 401),
            forbidden: counter("deny", 403),
        };
        Self {
            verifier,
            policy,
            counters,
            metrics,
            log,
            forward_token: settings.forward_token,
            shadow: settings.shadow,
            cache: DecisionCache::new(settings.decision_cache_capacity, settings.decision_cache_ttl),
        }
    }

    /// Decides one request. Never fails: every error is a denial. When the decision is to be
    /// logged, the [`Ticket`] to hand to [`Self::log`] with the request.
    pub fn check(&self, request: &CheckRequest) -> (CheckResponse, Option<Ticket>) {
        let started = Instant::now();
        let decision_id = uuid::Uuid::new_v4().to_string();
        // A guard, not a clone of the Arc: no reference-count traffic per request.
        let bundle = self.policy.current();
        let revision = bundle.as_ref().map(|b| b.revision()).unwrap_or_default();
        let http = request.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let authorization = http.and_then(|h| h.headers.get("authorization")).map(String::as_str);
        let identity = tracing::info_span!(target: "qiria::trace", "verify_token")
            .in_scope(|| self.verifier.verify_header(authorization));

        let mut cached = false;
        let evaluating = Instant::now();
        let evaluated = tracing::info_span!(target: "qiria::trace", "evaluate_policy").in_scope(|| {
            bundle
                .as_deref()
                .ok_or(Denial::NoPolicy)
                .and_then(|bundle| self.decide(bundle, request, http, &identity, &mut cached))
        });
        let eval = if cached {
            self.metrics.decision_cache_hits.inc();
            std::time::Duration::ZERO
        } else {
            evaluating.elapsed()
        };
        let logged_outcome = self.log.as_ref().map(|_| match &evaluated {
            Ok(decision) => Ok(decision.clone()),
            Err(denial) => Err(denial.failure().unwrap_or(Failure { code: "denied", message: denial.to_string() })),
        });
        let metadata = metadata(&decision_id, evaluated.as_ref().ok().and_then(|d| d.dynamic_metadata.as_ref()));
        let sent = http.map(|h| &h.headers);
        let forward_token = self.forward_token || forwards_token(request);
        let verified = identity.as_ref().ok().map(|identity| (&*identity.subject, &*identity.roles));
        let (mut response, status) = match (evaluated, &identity) {
            (Ok(decision), Ok(_)) if decision.allowed => allow(&decision, verified, sent, forward_token, &decision_id),
            (Ok(decision), Err(_)) if decision.allowed => allow(&decision, None, sent, forward_token, &decision_id),
            (Ok(decision), Err(reason)) => deny(&Denial::Unauthenticated(*reason), &decision, &decision_id),
            (Ok(decision), Ok(_)) => deny(&Denial::Forbidden, &decision, &decision_id),
            (Err(denial), _) => {
                if matches!(denial, Denial::Policy(_) | Denial::Decision(_)) {
                    warn!(target: "qiria::decision", decision_id, revision, error = %denial, "policy failed; denying");
                }
                deny(&denial, &Decision::default(), &decision_id)
            }
        };
        let allowed = matches!(response.http_response, Some(HttpResponse::OkResponse(_)));
        let shadow = !allowed && self.shadows(request);
        if shadow {
            // Not enforced: the request goes on as a plain allow would let it (with the
            // identity headers only when the token was verified); the log and the metrics say
            // what the policy decided.
            let plain = Decision { allowed: true, ..Decision::default() };
            response = allow(&plain, verified, sent, forward_token, &decision_id).0;
        }
        response.dynamic_metadata = Some(metadata);
        match (allowed, status, shadow) {
            (true, 200, _) => self.counters.allowed.inc(),
            (false, 401, false) => self.counters.unauthenticated.inc(),
            (false, 403, false) => self.counters.forbidden.inc(),
            (allowed, status, shadow) => {
                let outcome = match (allowed, shadow) {
                    (true, _) => "allow",
                    (false, true) => "shadow_deny",
                    (false, false) => "deny",
                };
                self.metrics.decisions.get_or_create(&DecisionLabels { outcome, status }).inc()
            }
        };
        let handler = started.elapsed();
        self.metrics.decision_seconds.observe(handler);
        let ticket = match (&self.log, logged_outcome) {
            (Some(log), Some(outcome)) if log.wants(allowed) => Some(Ticket {
                decision_id,
                timestamp: std::time::SystemTime::now(),
                bundle: (*bundle).clone(),
                outcome,
                allowed,
                status,
                identity: identity.as_ref().map(|_| ()).map_err(|e| *e),
                subject: identity.as_ref().ok().map(|i| i.subject.to_string()),
                cached,
                shadow,
                eval,
                handler,
            }),
            _ => None,
        };
        (response, ticket)
    }

    /// Hands a decision to the decision log (which never makes the caller wait).
    pub fn log(&self, ticket: Ticket, request: CheckRequest) {
        if let Some(log) = &self.log {
            log.submit(ticket, request);
        }
    }

    /// Whether a denial of `request` is only logged: `policy.shadow`, unless its route says.
    fn shadows(&self, request: &CheckRequest) -> bool {
        let route = request.attributes.as_ref().and_then(|a| a.context_extensions.get(SHADOW_EXTENSION));
        match route.map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            _ => self.shadow,
        }
    }

    /// The policy's decision for this request: remembered, when the bundle allows reuse and
    /// the same request was decided before, else evaluated (and remembered).
    fn decide(
        &self,
        bundle: &PolicyBundle,
        request: &CheckRequest,
        http: Option<&HttpRequest>,
        identity: &VerifiedToken,
        cached: &mut bool,
    ) -> Result<SharedDecision, Denial> {
        let cache = self.cache.as_ref().filter(|_| bundle.caches_decisions());
        let key = cache.map(|c| c.key(bundle, http, identity));
        if let (Some(cache), Some(key)) = (cache, key) {
            if let Some(decision) = cache.recall(bundle, identity, key) {
                *cached = true;
                return Ok(decision);
            }
        }
        let input = envoy_input::build(request, identity.as_ref().map(|_| ()))?;
        let decision = SharedDecision::new(Decision::from_value(&bundle.evaluate(input)?)?);
        if let (Some(cache), Some(key)) = (cache, key) {
            cache.remember(bundle, identity, key, &decision);
        }
        Ok(decision)
    }
}

/// Whether the route asks authz to forward the bearer token (its upstream verifies it again).
fn forwards_token(request: &CheckRequest) -> bool {
    request
        .attributes
        .as_ref()
        .and_then(|a| a.context_extensions.get(FORWARD_TOKEN_EXTENSION))
        .is_some_and(|v| v == "true")
}

fn allow(
    decision: &Decision,
    identity: Option<(&str, &str)>,
    // The request headers authz was shown (Envoy sends them all, names in lower case).
    sent: Option<&HashMap<String, String>>,
    forward_token: bool,
    decision_id: &str,
) -> (CheckResponse, u16) {
    let reserved = |name: &str| {
        // By bytes: a policy's header name may hold a multi-byte character where the prefix ends,
        // and slicing the str there would panic on the request path.
        name.as_bytes().get(..RESERVED_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
    };
    let mut headers: Vec<HeaderValueOption> =
        decision.headers.iter().filter(|(k, _)| !reserved(k)).map(|(k, v)| header(k, v)).collect();
    let mut to_remove: Vec<String> =
        decision.request_headers_to_remove.iter().filter(|k| !reserved(k)).cloned().collect();
    match identity {
        Some((subject, roles)) => {
            if !header_safe(subject) {
                return deny(&Denial::UnsafeClaim("sub"), &Decision::default(), decision_id);
            }
            if !header_safe(roles) {
                return deny(&Denial::UnsafeClaim("roles"), &Decision::default(), decision_id);
            }
            headers.push(header(SUBJECT_HEADER, subject));
            headers.push(header(ROLES_HEADER, roles));
        }
        // Removed whether authz saw them or not: the identity headers are what upstreams trust.
        None => to_remove.extend([SUBJECT_HEADER.to_string(), ROLES_HEADER.to_string()]),
    }
    // Every other `x-qiria-*` header is removed, but only when the client really sent one:
    // removing a header the request does not carry still costs Envoy ~1,600 instructions.
    // (Envoy sends header names in lower case.)
    if let Some(sent) = sent {
        let ours = |name: &str| name == SUBJECT_HEADER || name == ROLES_HEADER;
        to_remove.extend(sent.keys().filter(|name| name.starts_with(RESERVED_PREFIX) && !ours(name)).cloned());
    }
    if !forward_token {
        to_remove.push("authorization".to_string());
    }
    let ok = OkHttpResponse {
        headers,
        headers_to_remove: to_remove,
        response_headers_to_add: decision.response_headers_to_add.iter().map(|(k, v)| header(k, v)).collect(),
        query_parameters_to_set: decision
            .query_parameters_to_set
            .iter()
            .map(|(k, v)| QueryParameter { key: k.clone(), value: v.clone() })
            .collect(),
        query_parameters_to_remove: decision.query_parameters_to_remove.clone(),
        ..Default::default()
    };
    let response = CheckResponse {
        status: Some(rpc::Status { code: tonic::Code::Ok as i32, ..Default::default() }),
        http_response: Some(HttpResponse::OkResponse(ok)),
        dynamic_metadata: None,
    };
    (response, 200)
}

/// What authz answers when the policy plainly allows a verified identity's request (with the
/// default `jwt.forward_token = false`): the benchmark's floor replays it, so that Envoy's cost
/// of applying authz's answer is measured on the answer itself, not on a copy of its shape.
pub fn plain_allow(subject: &str, roles: &str, decision_id: &str) -> CheckResponse {
    let decision = Decision { allowed: true, ..Decision::default() };
    let (mut response, _) = allow(&decision, Some((subject, roles)), None, false, decision_id);
    response.dynamic_metadata = Some(metadata(decision_id, None));
    response
}

/// A denial: the policy's own status, headers and body when it gave them, ours otherwise.
fn deny(denial: &Denial, policy_decision: &Decision, decision_id: &str) -> (CheckResponse, u16) {
    let (default_status, code, error) = denial.status();
    let status = policy_decision.http_status.unwrap_or(default_status);
    let mut headers = vec![header("content-type", "application/json"), header(DECISION_ID_HEADER, decision_id)];
    if let Denial::Unauthenticated(reason) = denial {
        let challenge = match reason {
            IdentityError::Missing => "Bearer realm=\"qiria\"",
            _ => "Bearer realm=\"qiria\", error=\"invalid_token\"",
        };
        headers.push(header("www-authenticate", challenge));
    }
    headers.extend(policy_decision.headers.iter().map(|(k, v)| header(k, v)));
    let body = policy_decision
        .body
        .clone()
        .unwrap_or_else(|| serde_json::json!({ "error": error, "decision_id": decision_id }).to_string());
    let denied = DeniedHttpResponse { status: Some(HttpStatus { code: i32::from(status) }), headers, body };
    let response = CheckResponse {
        status: Some(rpc::Status { code: code as i32, message: error.to_string(), details: Vec::new() }),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        dynamic_metadata: None,
    };
    (response, status)
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.to_string(), raw_value: Vec::new() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Visible ASCII and spaces only: a claim must not be able to smuggle header syntax.
fn header_safe(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Dynamic metadata for Envoy: the policy's own entries, then ours (which it cannot override).
/// Only the decision id, as OPA-Envoy does: Envoy pays ~4,000 instructions per field per
/// request; the bundle revision, the outcome and the reason are in the decision log, which the
/// decision id joins to Envoy's access log.
fn metadata(decision_id: &str, policy: Option<&Struct>) -> Struct {
    let mut fields = policy.map(|p| p.fields.clone()).unwrap_or_default();
    fields.insert(DECISION_ID_KEY.to_string(), PbValue { kind: Some(Kind::StringValue(decision_id.to_string())) });
    Struct { fields }
}

/// The tonic service around an [`Authorizer`].
pub struct CheckService(pub Arc<Authorizer>);

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        // The span Envoy's trace continues in (W3C `traceparent` among the request's headers);
        // disabled, and nearly free, unless traces are exported.
        let span = tracing::info_span!(
            target: "qiria::trace",
            "ext_authz.check",
            otel.kind = "server",
            qiria.decision = tracing::field::Empty,
            qiria.status = tracing::field::Empty,
            qiria.reason = tracing::field::Empty,
            qiria.revision = tracing::field::Empty,
            qiria.decision_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            continue_trace(&span, &request);
        }
        let (response, ticket) = span.in_scope(|| self.0.check(request.get_ref()));
        if !span.is_disabled() {
            record_decision(&span, &response, &self.0.policy);
        }
        if let Some(ticket) = ticket {
            self.0.log(ticket, request.into_inner());
        }
        Ok(Response::new(response))
    }
}

/// The trace `request` belongs to: Envoy's ext_authz call carries its own span's context
/// (`traceparent`, or B3 with Envoy's Zipkin tracer) in the gRPC metadata; without it, the
/// HTTP request's (a client's or an outer proxy's).
fn continue_trace(span: &tracing::Span, request: &Request<CheckRequest>) {
    let trace = qiria_runtime::telemetry::trace_context(|name| request.metadata().get(name)?.to_str().ok());
    if !trace.is_empty() {
        qiria_runtime::telemetry::continue_trace(span, &trace);
        return;
    }
    let http = request.get_ref().attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
    if let Some(http) = http {
        qiria_runtime::telemetry::continue_trace(span, &http.headers);
    }
}

/// The decision on its span: outcome, status, reason, bundle revision, decision id.
fn record_decision(span: &tracing::Span, response: &CheckResponse, policy: &LivePolicy) {
    let (decision, status) = match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => ("allow", 200),
        Some(HttpResponse::DeniedResponse(denied)) => ("deny", denied.status.as_ref().map_or(403, |s| s.code)),
        Some(HttpResponse::ErrorResponse(_)) | None => ("deny", 403),
    };
    span.record("qiria.decision", decision);
    span.record("qiria.status", status);
    if let Some(reason) = response.status.as_ref().map(|s| s.message.as_str()).filter(|m| !m.is_empty()) {
        span.record("qiria.reason", reason);
    }
    if let Some(bundle) = policy.current().as_ref() {
        span.record("qiria.revision", bundle.revision());
    }
    let id = response.dynamic_metadata.as_ref().and_then(|m| m.fields.get(DECISION_ID_KEY));
    if let Some(Kind::StringValue(id)) = id.and_then(|v| v.kind.as_ref()) {
        span.record("qiria.decision_id", id.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_header_with_a_multibyte_character_where_the_reserved_prefix_ends_is_kept() {
        // "x-qiria" is 7 bytes, then 'é' is 2: byte 8, where "x-qiria-" ends, is inside it.
        let decision = Decision {
            allowed: true,
            headers: vec![("x-qiriaé".into(), "kept".into()), ("X-Qiria-Subject".into(), "forged".into())],
            ..Default::default()
        };
        let (response, _) = allow(&decision, None, None, true, "id");
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else { panic!("not an allow") };
        let names: Vec<_> = ok.headers.iter().filter_map(|h| h.header.as_ref().map(|h| h.key.as_str())).collect();
        assert_eq!(names, ["x-qiriaé"], "the reserved one is dropped, the other kept");
    }
}
