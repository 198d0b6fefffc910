//! Prometheus metrics of the decision service, served by the admin server at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a decision counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny`.
    pub outcome: &'static str,
    /// The HTTP status Envoy sends (200 for allow).
    pub status: u16,
}

/// Labels of a reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `rejected`.
    pub result: &'static str,
}

/// All metrics, registered once.
pub struct Metrics {
    registry: Registry,
    /// Decisions by outcome and status.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Time from CheckRequest to CheckResponse, in seconds.
    pub decision_seconds: Histogram,
    /// Policy bundle reloads by result.
    pub policy_reloads: Family<ReloadLabels, Counter>,
    /// Key directory reloads by result.
    pub key_reloads: Family<ReloadLabels, Counter>,
    /// Keys in the live key set.
    pub keys_loaded: Gauge,
    /// Verified tokens in the cache.
    pub cached_tokens: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("qiria_authz");
        let decisions = Family::<DecisionLabels, Counter>::default();
        let decision_seconds = Histogram::new(exponential_buckets(0.000_005, 2.0, 16));
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        let key_reloads = Family::<ReloadLabels, Counter>::default();
        let keys_loaded = Gauge::default();
        let cached_tokens = Gauge::default();
        registry.register("decisions", "Authorization decisions", decisions.clone());
        registry.register("decision_seconds", "Time to decide one CheckRequest", decision_seconds.clone());
        registry.register("policy_reloads", "Policy bundle reloads", policy_reloads.clone());
        registry.register("key_reloads", "Verification key directory reloads", key_reloads.clone());
        registry.register("keys_loaded", "Keys in the live verification key set", keys_loaded.clone());
        registry.register("cached_tokens", "Verified tokens in the cache", cached_tokens.clone());
        Self { registry, decisions, decision_seconds, policy_reloads, key_reloads, keys_loaded, cached_tokens }
    }
}

impl Metrics {
    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The label value for a reload result.
pub fn reload_result(ok: bool) -> ReloadLabels {
    ReloadLabels { result: if ok { "ok" } else { "rejected" } }
}
