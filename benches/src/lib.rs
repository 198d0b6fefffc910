//! Shared fixtures of the benchmarks: a loaded key set and policy bundle, tokens, and the
//! `CheckRequest` Envoy sends for a typical API call.

use std::collections::HashMap;
use std::sync::Arc;

use authz::check::Authorizer;
use authz::config::Config;
use authz::decision_cache::DecisionMemo;
use authz::metrics::Metrics;
use qiria_identity::{KeySet, TokenVerifier};
use qiria_policy::{LivePolicy, PolicyBundle};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier, Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use qiria_test_support::tokens::{claims, SigningKey, AUDIENCE, ISSUER};
use qiria_test_support::workspace_root;

pub mod envoy_bench;
pub mod gateway_bench;
pub mod proc_stats;
pub mod report;
pub mod sandbox_bench;
pub mod scaling;

/// The configuration benchmarks run authz with: test issuer, no per-decision log line, and
/// room for an evaluation under callgrind (tens of times slower than natively; a denial for
/// running out of budget there would count the wrong path's instructions).
pub fn config() -> Config {
    let mut config = Config::default();
    config.jwt.issuers = vec![ISSUER.into()];
    config.jwt.audiences = vec![AUDIENCE.into()];
    config.log.decisions = false;
    config.policy.eval_timeout_ms = 2_000;
    config.policy.eval_deadline_ms = 4_000;
    config
}

/// A signing key, the shipped policy bundle and an authorizer using them.
pub struct Fixture {
    /// Signs the tokens.
    pub key: SigningKey,
    /// Verifies them.
    pub verifier: Arc<TokenVerifier<DecisionMemo>>,
    /// The shipped RBAC bundle.
    pub bundle: Arc<PolicyBundle>,
    /// The whole decision path.
    pub authorizer: Arc<Authorizer>,
    _keys: tempfile::TempDir,
}

impl Fixture {
    /// Loads everything from `policies/rego` and a fresh RSA key.
    pub fn new() -> Self {
        Self::with_config(config())
    }

    /// The same with the decision cache off, to measure policy evaluation on every request.
    pub fn without_decision_cache() -> Self {
        let mut config = config();
        config.policy.decision_cache_capacity = 0;
        Self::with_config(config)
    }

    fn with_config(config: Config) -> Self {
        let key = SigningKey::rsa("bench-1");
        let keys = tempfile::tempdir().expect("tempdir");
        key.write_public(keys.path());
        let verifier = Arc::new(TokenVerifier::new(&config.jwt.verifier()));
        verifier.set_keys(KeySet::load_dir(keys.path()).expect("keys"));
        let metrics = Arc::new(Metrics::default());
        let mut options = config.bundle_options(metrics.evaluation.clone());
        options.run_tests = false;
        let policy = Arc::new(LivePolicy::new(workspace_root().join("policies/rego"), options));
        assert!(matches!(policy.reload(), qiria_policy::Reload::Activated { .. }), "the shipped bundle loads");
        let bundle = policy.current().as_ref().cloned().expect("bundle");
        let authorizer = Arc::new(Authorizer::new(verifier.clone(), policy, metrics, &config.answer_settings(), None));
        Self { key, verifier, bundle, authorizer, _keys: keys }
    }

    /// A valid access token.
    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.key.sign(&claims(sub, roles))
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// The `CheckRequest` Envoy sends for `method path` with a bearer token, headers as a curl
/// or gRPC client would send them.
pub fn check_request(token: Option<&str>, method: &str, path: &str) -> CheckRequest {
    let mut headers: HashMap<String, String> = [
        (":authority", "api.qiria.local"),
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        ("accept", "application/json"),
        ("user-agent", "qiria-client/1.0"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6c0f3e0a-52f4-4c3e-9a0e-1b7b2f4d5e6f"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(token) = token {
        headers.insert("authorization".into(), format!("Bearer {token}"));
    }
    let peer = |port| Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "10.0.0.7".into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        principal: "spiffe://cluster.local/ns/qiria/sa/web".into(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(41234)),
            destination: Some(peer(10000)),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "1234567890".into(),
                    method: method.into(),
                    path: path.into(),
                    host: "api.qiria.local".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/2".into(),
                    headers,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}
