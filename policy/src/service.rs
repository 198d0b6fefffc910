//! The policy of a service that authorizes its own callers in-process (the issuer's admin API,
//! the worker-gateway): zero trust means Envoy's decision is the first gate, not the only one.
//! Such a service evaluates authz's bundle on the same input shape; this module owns the
//! settings it loads the bundle with and how a decision value is read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use regorus::Value;
use serde::{Deserialize, Serialize};

use crate::{BundleOptions, EvalCounters};

/// `[policy]` of a service that authorizes its own callers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallerPolicyConfig {
    /// Directory of `.rego` files and data (OPA bundle layout): authz's bundle.
    pub dir: PathBuf,
    /// The rule that decides.
    pub decision_rule: String,
    /// Parse as Rego v0.
    pub rego_v0: bool,
    /// CPU time one evaluation may use (ms).
    pub eval_timeout_ms: u64,
    /// Wall-clock time one evaluation may take, stalls included (ms).
    pub eval_deadline_ms: u64,
    /// How often the directory is re-read (ms).
    pub poll_interval_ms: u64,
}

impl Default for CallerPolicyConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies/rego"),
            decision_rule: "data.qiria.authz.allow".into(),
            rego_v0: false,
            eval_timeout_ms: 50,
            eval_deadline_ms: 400,
            poll_interval_ms: 2_000,
        }
    }
}

impl CallerPolicyConfig {
    /// The first setting that cannot work (its key under `policy.`), and why.
    pub fn invalid(&self) -> Option<(&'static str, &'static str)> {
        (self.eval_deadline_ms < self.eval_timeout_ms || self.eval_timeout_ms == 0)
            .then_some(("policy.eval_deadline_ms", "must be at least policy.eval_timeout_ms (at least 1)"))
    }

    /// How the bundle is loaded. Its own tests run in authz and CI; here a bundle that loads
    /// is enough.
    pub fn bundle_options(&self) -> BundleOptions {
        BundleOptions {
            decision_rule: Some(self.decision_rule.clone()),
            rego_v0: self.rego_v0,
            eval_timeout: Duration::from_millis(self.eval_timeout_ms),
            eval_deadline: Duration::from_millis(self.eval_deadline_ms),
            run_tests: false,
            counters: Arc::new(EvalCounters::default()),
            builtins: crate::opa_builtins(),
        }
    }
}

/// Whether a decision rule's value allows: `true`, or an OPA-Envoy object with
/// `allowed: true`. Anything else (an error, undefined, a malformed object) does not.
pub fn allows(value: &Value) -> bool {
    match value {
        Value::Bool(allowed) => *allowed,
        Value::Object(fields) => matches!(fields.get(&Value::from("allowed")), Some(Value::Bool(true))),
        _ => false,
    }
}
