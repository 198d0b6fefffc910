//! The decision log: one event per logged decision in the shape of OPA's decision logs
//! (`decision_id`, `path`, `input`, `result` or `error`, `timestamp`, `bundles`, `metrics`,
//! `erased`, `masked`, `labels`, plus Qiria's own fields under `qiria`), one JSON line each
//! on standard output — its own stream: the service's log is on standard error. Every denial
//! is logged, and a sample of allows (`allow_sample`).
//!
//! The Check thread only hands over what it holds already — the request it was given, the
//! decision, two timings — to a bounded queue: when the queue is full the event is dropped
//! and counted, and the decision never waits (OPA-Envoy users know the opposite: a slow
//! decision log sink slowing every request). A thread of its own builds the logged input
//! (the whole document, whatever part the policy read), masks it, formats and writes.
//!
//! Masking erases what a JSON pointer names (`/input/…`, `/result/…`), from the defaults
//! (credentials, cookies, the raw body, password, refresh-token and script fields), the
//! configured `mask` list, and the bundle's own `data.system.log.mask` rule as OPA reads it
//! (a set of pointers to erase, or of `{"op": "upsert", "path", "value"}` to replace). When
//! the mask rule fails, the whole input is erased: a log never holds what it was told to hide.
//!
//! The same thread records each denial as an audit event (`access_denied`: decision id,
//! subject, method, path, status, reason), so that the audit trail has them without the Check
//! thread ever waiting for it.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use qiria_identity::IdentityError;
use qiria_policy::{PolicyBundle, Value};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use crate::decision::{Decision, SharedDecision};
use crate::envoy_input;

/// Erased from every event whatever the configuration says (a configured `mask` adds to it).
pub const DEFAULT_MASK: [&str; 10] = [
    "/input/attributes/request/http/headers/authorization",
    "/input/attributes/request/http/headers/proxy-authorization",
    "/input/attributes/request/http/headers/cookie",
    "/input/attributes/request/http/headers/set-cookie",
    // The raw body can hold any secret; its parsed form is masked field by field. (`rawBody`:
    // the protobuf JSON name OPA-Envoy's input has for Envoy's `pack_as_bytes` body.)
    "/input/attributes/request/http/body",
    "/input/attributes/request/http/rawBody",
    "/input/parsed_body/password",
    "/input/parsed_body/refresh_token",
    // What RFC 7009 revocation (and RFC 7662 introspection) posts: a refresh token too.
    "/input/parsed_body/token",
    // The job API's script (`SubmitScript.body`).
    "/input/parsed_body/body",
];

/// The bundle's masking rule, where OPA looks for it.
const MASK_RULE: &str = "data.system.log.mask";
/// The request id Envoy generates (or keeps) and forwards upstream: the decision log's join
/// key with the upstream's and Envoy's own logs.
const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id logged (it comes from the client).
const MAX_REQUEST_ID: usize = 128;
/// Longest path an audit record repeats (it comes from the client).
const MAX_AUDITED_PATH: usize = 2048;
/// Events written in one `write`.
const BATCH: usize = 256;

/// `[decision_log]`: what is logged and how much may wait.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// The share of allowed requests logged, 0.0–1.0 (denials are always logged).
    pub allow_sample: f64,
    /// JSON pointers erased from every event besides [`DEFAULT_MASK`].
    pub mask: Vec<String>,
    /// Events waiting for the writer at most; beyond, they are dropped and counted.
    pub queue: usize,
    /// An event longer than this is written without its input (`erased: ["/input"]`).
    pub max_event_bytes: usize,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        Self { allow_sample: 0.01, mask: Vec::new(), queue: 10_000, max_event_bytes: 256 << 10 }
    }
}

impl DecisionLogConfig {
    /// The field at fault, and why.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if !(0.0..=1.0).contains(&self.allow_sample) {
            return Some(("decision_log.allow_sample", "must be between 0.0 and 1.0".into()));
        }
        if self.queue == 0 || self.queue > 1_000_000 {
            return Some(("decision_log.queue", "must be 1..=1000000".into()));
        }
        if self.max_event_bytes < 1024 {
            return Some(("decision_log.max_event_bytes", "must be at least 1024".into()));
        }
        self.mask
            .iter()
            .find(|p| !(p.starts_with("/input/") || p.starts_with("/result/")))
            .map(|p| ("decision_log.mask", format!("{p:?} is not a JSON pointer under /input/ or /result/")))
    }
}

/// What the Check thread knows of a decision to log, besides its request.
pub struct Ticket {
    pub decision_id: String,
    pub timestamp: SystemTime,
    /// The bundle that decided (its revision, its mask rule).
    pub bundle: Option<Arc<PolicyBundle>>,
    /// The policy's decision, or why there is none.
    pub outcome: Result<SharedDecision, Failure>,
    pub allowed: bool,
    /// The HTTP status Envoy sends.
    pub status: u16,
    pub identity: Result<(), IdentityError>,
    pub subject: Option<String>,
    pub cached: bool,
    /// Decided but not enforced (shadow mode): the request was allowed whatever the result.
    pub shadow: bool,
    pub eval: Duration,
    pub handler: Duration,
}

/// A decision the policy could not make, as OPA's event carries it.
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct LogCounters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub queued: AtomicU64,
}

/// The Check side of the log.
pub struct DecisionLog {
    sender: SyncSender<(Ticket, CheckRequest)>,
    allow_sample: f64,
    counters: Arc<LogCounters>,
}

impl DecisionLog {
    /// Starts the writer thread, writing to standard output. `decision_rule` names the
    /// event's `path` (`data.envoy.authz.allow` → `envoy/authz/allow`).
    pub fn start(config: &DecisionLogConfig, decision_rule: &str, counters: Arc<LogCounters>) -> std::io::Result<Self> {
        Self::start_with(config, decision_rule, counters, Box::new(std::io::stdout()))
    }

    /// [`Self::start`] writing to `out`.
    pub fn start_with(
        config: &DecisionLogConfig,
        decision_rule: &str,
        counters: Arc<LogCounters>,
        out: Box<dyn Write + Send>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel(config.queue);
        let mut mask: Vec<String> = DEFAULT_MASK.iter().map(|p| (*p).to_owned()).collect();
        mask.extend(config.mask.iter().cloned());
        let writer = Writer {
            path: decision_rule.strip_prefix("data.").unwrap_or(decision_rule).replace('.', "/"),
            mask,
            max_event_bytes: config.max_event_bytes,
            counters: counters.clone(),
            out,
            mask_rule: None,
        };
        std::thread::Builder::new().name("decision-log".into()).spawn(move || writer.run(receiver))?;
        Ok(Self { sender, allow_sample: config.allow_sample, counters })
    }

    /// Whether this decision is logged: every denial, a sample of allows.
    pub fn wants(&self, allowed: bool) -> bool {
        !allowed || self.allow_sample >= 1.0 || (self.allow_sample > 0.0 && rand::random::<f64>() < self.allow_sample)
    }

    /// Hands the event over, or drops it (counted) when the writer is behind.
    pub fn submit(&self, ticket: Ticket, request: CheckRequest) {
        match self.sender.try_send((ticket, request)) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Whether a bundle defines the mask rule, remembered for the last bundle seen.
struct MaskRule {
    bundle_id: u64,
    defined: bool,
}

struct Writer {
    path: String,
    mask: Vec<String>,
    max_event_bytes: usize,
    counters: Arc<LogCounters>,
    out: Box<dyn Write + Send>,
    mask_rule: Option<MaskRule>,
}

impl Writer {
    fn run(mut self, receiver: Receiver<(Ticket, CheckRequest)>) {
        let mut batch = Vec::new();
        while let Ok(first) = receiver.recv() {
            batch.clear();
            let mut n = 0;
            for (ticket, request) in std::iter::once(first).chain(receiver.try_iter().take(BATCH - 1)) {
                self.counters.queued.fetch_sub(1, Relaxed);
                if !ticket.allowed {
                    audit_denial(&ticket, &request);
                }
                let event = self.event(&ticket, &request);
                if serde_json::to_writer(&mut batch, &event).is_ok() {
                    batch.push(b'\n');
                    n += 1;
                }
            }
            // Whole lines per write: a reader (or a file shared with another stream) never
            // sees half an event.
            if self.out.write_all(&batch).and_then(|()| self.out.flush()).is_ok() {
                self.counters.written.fetch_add(n, Relaxed);
            } else {
                self.counters.dropped.fetch_add(n, Relaxed);
            }
        }
    }

    fn event(&mut self, ticket: &Ticket, request: &CheckRequest) -> Json {
        let input = match envoy_input::build(request, ticket.identity.as_ref().map(|_| ())) {
            Ok(input) => serde_json::to_value(&input).unwrap_or(Json::Null),
            // The request was denied for it; there is no input to log.
            Err(_) => Json::Null,
        };
        let revision = ticket.bundle.as_ref().map(|b| b.revision()).unwrap_or_default();
        let mut event = json!({
            "decision_id": ticket.decision_id,
            "labels": { "app": "qiria-authz", "version": env!("CARGO_PKG_VERSION") },
            "path": self.path,
            "input": input,
            "timestamp": prost_types::Timestamp::from(ticket.timestamp).to_string(),
            "bundles": { "authz": { "revision": revision } },
            "metrics": {
                "timer_rego_query_eval_ns": ticket.eval.as_nanos() as u64,
                "timer_server_handler_ns": ticket.handler.as_nanos() as u64,
            },
            "qiria": {
                "allowed": ticket.allowed,
                "status": ticket.status,
                "subject": ticket.subject,
                "identity_error": ticket.identity.err().map(|e| e.code()),
                "request_id": request_id(request),
                "cached": ticket.cached,
                "shadow": ticket.shadow,
            },
        });
        match &ticket.outcome {
            Ok(decision) => event["result"] = result(decision),
            Err(failure) => event["error"] = json!({ "code": failure.code, "message": failure.message }),
        }
        let (mut erased, mut masked) = (Vec::new(), Vec::new());
        for pointer in &self.mask {
            if erase(&mut event, pointer) {
                erased.push(Json::String(pointer.clone()));
            }
        }
        if let Some(bundle) = &ticket.bundle {
            self.apply_mask_rule(bundle, &mut event, &mut erased, &mut masked);
        }
        if serde_json::to_vec(&event).map_or(true, |bytes| bytes.len() > self.max_event_bytes) {
            event["input"] = Json::Null;
            erased.push(Json::String("/input".into()));
        }
        if !erased.is_empty() {
            event["erased"] = Json::Array(erased);
        }
        if !masked.is_empty() {
            event["masked"] = Json::Array(masked);
        }
        event
    }

    /// OPA's `system.log.mask`: evaluated with `input` = the event's `input` and `result`.
    fn apply_mask_rule(
        &mut self,
        bundle: &PolicyBundle,
        event: &mut Json,
        erased: &mut Vec<Json>,
        masked: &mut Vec<Json>,
    ) {
        let known = self.mask_rule.as_ref().filter(|m| m.bundle_id == bundle.id()).map(|m| m.defined);
        if known == Some(false) {
            return;
        }
        let document = json!({ "input": event["input"], "result": event.get("result").cloned().unwrap_or(Json::Null) });
        let outcome = Value::from_json_str(&document.to_string())
            .map_err(|e| e.to_string())
            .and_then(|input| bundle.query(input, MASK_RULE).map_err(|e| e.to_string()));
        let rules = match outcome {
            Ok(Value::Undefined) => {
                self.mask_rule = Some(MaskRule { bundle_id: bundle.id(), defined: false });
                return;
            }
            Ok(value) => serde_json::to_value(&value).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        self.mask_rule = Some(MaskRule { bundle_id: bundle.id(), defined: true });
        let rules = match rules {
            Ok(Json::Array(rules)) => rules,
            Ok(_) | Err(_) => {
                tracing::warn!(target: "qiria::decision", "system.log.mask failed or is not a set; the input is erased");
                event["input"] = Json::Null;
                erased.push(Json::String("/input".into()));
                return;
            }
        };
        for rule in &rules {
            // A pointer alone erases; an object says what to do (OPA's two forms).
            let (op, pointer) = match rule {
                Json::String(pointer) => ("remove", pointer.as_str()),
                Json::Object(op) => match op.get("path").and_then(Json::as_str) {
                    Some(pointer) => (op.get("op").and_then(Json::as_str).unwrap_or("remove"), pointer),
                    None => continue,
                },
                _ => continue,
            };
            match op {
                "upsert" if upsert(event, pointer, rule.get("value").cloned().unwrap_or(Json::Null)) => {
                    masked.push(Json::String(pointer.to_owned()));
                }
                "remove" if erase(event, pointer) => erased.push(Json::String(pointer.to_owned())),
                _ => {}
            }
        }
    }
}

/// A denial as an audit event, from this thread: when the trail is slow this thread waits,
/// the queue fills and events are dropped (counted) — a decision never waits for the trail.
fn audit_denial(ticket: &Ticket, request: &CheckRequest) {
    let http = request.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
    let method = http.map(|h| h.method.as_str()).unwrap_or_default();
    let path = http.map(|h| h.path.split('?').next().unwrap_or_default()).unwrap_or_default();
    let path: String = path.chars().take(MAX_AUDITED_PATH).collect();
    let reason = match (&ticket.outcome, ticket.identity) {
        (Err(failure), _) => failure.code,
        (Ok(_), Err(error)) => error.code(),
        (Ok(_), Ok(())) => "forbidden",
    };
    qiria_runtime::audit::record(qiria_runtime::audit::AuditEvent::AccessDenied {
        decision_id: &ticket.decision_id,
        subject: ticket.subject.as_deref(),
        method,
        path: &path,
        status: ticket.status,
        reason,
        shadow: ticket.shadow,
    });
}

/// The decision rule's value as the event's `result`: `true`/`false` for a plain decision,
/// else OPA-Envoy's object with the fields the policy set.
fn result(decision: &Decision) -> Json {
    let plain = Decision { allowed: decision.allowed, ..Decision::default() };
    if *decision == plain {
        return Json::Bool(decision.allowed);
    }
    let pairs = |pairs: &[(String, String)]| {
        let mut map = Map::new();
        for (k, v) in pairs {
            map.insert(k.clone(), Json::String(v.clone()));
        }
        Json::Object(map)
    };
    let mut out = Map::new();
    out.insert("allowed".into(), Json::Bool(decision.allowed));
    if !decision.headers.is_empty() {
        out.insert("headers".into(), pairs(&decision.headers));
    }
    if !decision.response_headers_to_add.is_empty() {
        out.insert("response_headers_to_add".into(), pairs(&decision.response_headers_to_add));
    }
    if !decision.request_headers_to_remove.is_empty() {
        out.insert("request_headers_to_remove".into(), json!(decision.request_headers_to_remove));
    }
    if !decision.query_parameters_to_set.is_empty() {
        out.insert("query_parameters_to_set".into(), pairs(&decision.query_parameters_to_set));
    }
    if !decision.query_parameters_to_remove.is_empty() {
        out.insert("query_parameters_to_remove".into(), json!(decision.query_parameters_to_remove));
    }
    if let Some(body) = &decision.body {
        out.insert("body".into(), Json::String(body.clone()));
    }
    if let Some(status) = decision.http_status {
        out.insert("http_status".into(), json!(status));
    }
    Json::Object(out)
}

fn request_id(request: &CheckRequest) -> Option<String> {
    let http = request.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
    let id = http.headers.get(REQUEST_ID_HEADER)?;
    Some(id.chars().take(MAX_REQUEST_ID).collect())
}

/// The parent of `pointer` and its last token, unescaped (RFC 6901).
fn split(pointer: &str) -> Option<(&str, String)> {
    let (parent, last) = pointer.rsplit_once('/')?;
    Some((parent, last.replace("~1", "/").replace("~0", "~")))
}

/// Removes what `pointer` names; whether there was something.
fn erase(event: &mut Json, pointer: &str) -> bool {
    let Some((parent, key)) = split(pointer) else { return false };
    match event.pointer_mut(parent) {
        Some(Json::Object(map)) => map.remove(&key).is_some(),
        _ => false,
    }
}

/// Sets what `pointer` names to `value` (its parent must exist); whether it was set.
fn upsert(event: &mut Json, pointer: &str, value: Json) -> bool {
    let Some((parent, key)) = split(pointer) else { return false };
    match event.pointer_mut(parent) {
        Some(Json::Object(map)) => {
            map.insert(key, value);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_erases_exactly_what_it_names() {
        let mut event = json!({ "input": { "a": { "b": 1, "c": 2, "x/y": 3 }, "d": [1] }, "result": true });
        assert!(erase(&mut event, "/input/a/b"));
        assert!(erase(&mut event, "/input/a/x~1y"));
        assert!(!erase(&mut event, "/input/a/b"), "already gone");
        assert!(!erase(&mut event, "/input/nothing/here"));
        assert!(!erase(&mut event, "/input/d/0"), "array items are not erased");
        assert_eq!(event, json!({ "input": { "a": { "c": 2 }, "d": [1] }, "result": true }));
        assert!(upsert(&mut event, "/input/a/c", json!("**REDACTED**")));
        assert!(!upsert(&mut event, "/input/none/c", json!(1)));
        assert_eq!(event["input"]["a"]["c"], "**REDACTED**");
    }

    #[test]
    fn the_sample_logs_every_denial_and_the_share_of_allows_asked_for() {
        let counters = Arc::new(LogCounters::default());
        let config = |allow_sample| DecisionLogConfig { allow_sample, ..DecisionLogConfig::default() };
        let none = DecisionLog::start_with(&config(0.0), "data.a.allow", counters.clone(), Box::new(std::io::sink()))
            .expect("start");
        assert!(none.wants(false));
        assert!((0..1000).all(|_| !none.wants(true)));
        let all = DecisionLog::start_with(&config(1.0), "data.a.allow", counters.clone(), Box::new(std::io::sink()))
            .expect("start");
        assert!((0..1000).all(|_| all.wants(true)));
        let some =
            DecisionLog::start_with(&config(0.1), "data.a.allow", counters, Box::new(std::io::sink())).expect("start");
        let logged = (0..10_000).filter(|_| some.wants(true)).count();
        assert!((600..1400).contains(&logged), "{logged} of 10000 at 10 %");
    }

    #[test]
    fn settings_are_checked() {
        assert!(DecisionLogConfig::default().invalid().is_none());
        for bad in [
            DecisionLogConfig { allow_sample: 1.5, ..DecisionLogConfig::default() },
            DecisionLogConfig { queue: 0, ..DecisionLogConfig::default() },
            DecisionLogConfig { mask: vec!["input/password".into()], ..DecisionLogConfig::default() },
        ] {
            assert!(bad.invalid().is_some(), "{bad:?}");
        }
    }

    #[test]
    fn plain_decisions_are_booleans_and_others_objects() {
        assert_eq!(result(&Decision { allowed: true, ..Decision::default() }), json!(true));
        assert_eq!(result(&Decision::default()), json!(false));
        let custom =
            Decision { allowed: false, http_status: Some(429), body: Some("slow".into()), ..Decision::default() };
        assert_eq!(result(&custom), json!({ "allowed": false, "http_status": 429, "body": "slow" }));
    }
}
