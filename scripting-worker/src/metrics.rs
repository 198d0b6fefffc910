//! The worker's Prometheus metrics, served at `/metrics`: runs by outcome, limits that fired,
//! calls refused, the pool's occupancy and run durations.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// One label, `name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Named {
    pub(crate) name: &'static str,
}

/// All metrics, registered once.
pub(crate) struct Metrics {
    registry: Registry,
    /// Runs by outcome: `exited` (the script ended by itself), `limited` (a limit stopped
    /// it), `error` (the sandbox could not be made).
    pub(crate) runs: Family<Named, Counter>,
    /// Limits that fired, by limit name.
    pub(crate) limits: Family<Named, Counter>,
    /// Calls refused before a sandbox, by reason: `busy`, `caller`, `invalid`.
    pub(crate) refused: Family<Named, Counter>,
    /// Wall time of a whole run (setup, sandbox, cleanup), in seconds.
    pub(crate) run_seconds: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("qiria_worker");
        let runs = Family::default();
        registry.register("runs", "Sandbox runs by outcome", runs.clone());
        let limits = Family::default();
        registry.register("limit_hits", "Limits that stopped or cut a run", limits.clone());
        let refused = Family::default();
        registry.register("refused", "Calls refused before a sandbox was made", refused.clone());
        let run_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        registry.register("run_seconds", "Wall time of a run, setup to cleanup", run_seconds.clone());
        Self { registry, runs, limits, refused, run_seconds }
    }

    /// Counts one under `name` in `family`.
    pub(crate) fn count(family: &Family<Named, Counter>, name: &'static str) {
        family.get_or_create(&Named { name }).inc();
    }

    /// The Prometheus text, with the pool's gauges (read now) appended.
    pub(crate) fn render(&self, busy: usize, waiting: usize) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut text, &self.registry).is_err() {
            return String::new();
        }
        text.push_str(&format!(
            "# TYPE qiria_worker_sandboxes_busy gauge\nqiria_worker_sandboxes_busy {busy}\n\
             # TYPE qiria_worker_queue_waiting gauge\nqiria_worker_queue_waiting {waiting}\n# EOF\n"
        ));
        qiria_runtime::metrics::render_shared(&mut text);
        text
    }
}
