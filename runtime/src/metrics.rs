//! Metrics every service shares, rendered at the end of its own `/metrics`: audit events by
//! name (`qiria_audit_events_total{event}`) and jobs entering each state
//! (`qiria_jobs_state_changes_total{state}`), counted from the `qiria::audit` events as they
//! are emitted, and the audit trail's delivery to the SIEM ([`crate::siem`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Counts per audit event name, and per job state.
static EVENTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
static JOB_STATES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
/// Names and states are ours, but a bound keeps a bug from growing the map without end.
const MAX_SERIES: usize = 256;

fn count(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(n) = map.get_mut(key) {
        *n += 1;
    } else if map.len() < MAX_SERIES {
        map.insert(key.to_owned(), 1);
    }
}

/// The `tracing` layer that counts audit events.
pub struct AuditCounter;

#[derive(Default)]
struct Names {
    event: Option<String>,
    state: Option<String>,
}

impl tracing::field::Visit for Names {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "event" => self.event = Some(value.to_owned()),
            "state" => self.state = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditCounter {
    /// Sees only `qiria::audit` events: its filter (`logging`) lets nothing else through.
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut names = Names::default();
        event.record(&mut names);
        let Some(name) = names.event else { return };
        count(&EVENTS, &name);
        if name == "job_state_changed" {
            if let Some(state) = names.state {
                count(&JOB_STATES, &state);
            }
        }
    }
}

/// Appends the shared metrics to a service's metrics text (before its `# EOF`, if any).
pub fn render_shared(out: &mut String) {
    let eof = out.ends_with("# EOF\n");
    if eof {
        out.truncate(out.len() - "# EOF\n".len());
    }
    let family = |out: &mut String, name: &str, label: &str, help: &str, map: &Mutex<BTreeMap<String, u64>>| {
        let map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
        for (key, n) in map.iter() {
            let _ = writeln!(out, "{name}_total{{{label}=\"{key}\"}} {n}");
        }
    };
    family(out, "qiria_audit_events", "event", "Audit events emitted, by event", &EVENTS);
    family(out, "qiria_jobs_state_changes", "state", "Jobs entering each state", &JOB_STATES);
    crate::siem::render_metrics(out);
    if eof {
        out.push_str("# EOF\n");
    }
}
