//! Evaluation is bounded by CPU, not by the wall clock alone, and a panic is contained, in
//! process with two threads evaluating at once (as authz's runtime workers do):
//! - a thread stalled past regorus' wall-clock limit (here: a host builtin that sleeps, which
//!   uses no CPU exactly like a descheduled or CFS-throttled thread) is still allowed;
//! - a policy that really loops is stopped at its CPU budget, and one that stalls for ever is
//!   stopped at the deadline;
//! - a panic inside evaluation denies that request, is counted, and the next evaluation on the
//!   same thread works (the engine was replaced, nothing stays poisoned).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qiria_policy::{BundleOptions, EvalCounters, HostBuiltin, PolicyBundle, PolicyError, Value};

const POLICY: &str = r#"package t
import rego.v1

default allow := false

# Some real work after the builtin, so that regorus looks at its clock again after a stall.
work := count([x | some x in numbers.range(1, 1000)])

allow if {
	input.kind == "stall_once"
	test.stall_once(1)
	work > 0
}

allow if {
	input.kind == "stall_always"
	test.stall_always(1)
	work > 0
}

# 10^8 evaluation steps: a loop regorus can interrupt (one giant builtin call could not be).
allow if {
	input.kind == "loop"
	count([x | some i in numbers.range(1, 10000); some j in numbers.range(1, 10000); x := i * j]) < 0
}

allow if {
	input.kind == "panic"
	test.explode(1)
}

allow if input.kind == "plain"
"#;

fn input(kind: &str) -> Value {
    Value::from_json_str(&format!(r#"{{"kind": "{kind}"}}"#)).unwrap()
}

/// The bundle, with a 20 ms CPU budget, a 400 ms deadline and the test builtins.
fn bundle(counters: Arc<EvalCounters>, stalls: Arc<AtomicU32>) -> PolicyBundle {
    let builtin = |path: &str, function: Arc<dyn Fn(Vec<Value>) -> anyhow::Result<Value> + Send + Sync>| HostBuiltin {
        path: path.into(),
        nargs: 1,
        function,
    };
    let once = stalls.clone();
    let always = stalls;
    let options = BundleOptions {
        decision_rule: Some("data.t.allow".into()),
        rego_v0: false,
        // Room for the retries a loaded machine needs: each one's CPU counts against the budget.
        eval_timeout: Duration::from_millis(30),
        eval_deadline: Duration::from_millis(400),
        run_tests: false,
        counters,
        builtins: vec![
            builtin(
                "test.stall_once",
                Arc::new(move |_| {
                    // Each thread's first call sleeps 120 ms: four times the CPU budget.
                    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
                    if !DONE.with(|d| d.replace(true)) {
                        once.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(120));
                    }
                    Ok(Value::Bool(true))
                }),
            ),
            builtin(
                "test.stall_always",
                Arc::new(move |_| {
                    always.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(120));
                    Ok(Value::Bool(true))
                }),
            ),
            builtin("test.explode", Arc::new(|_| panic!("a bug inside evaluation"))),
        ],
    };
    PolicyBundle::from_sources(Path::new("/p"), vec![(PathBuf::from("/p/t.rego"), POLICY.into())], vec![], &options)
        .unwrap()
}

#[test]
fn a_stalled_thread_is_allowed_and_a_looping_policy_is_stopped() {
    let counters = Arc::new(EvalCounters::default());
    let stalls = Arc::new(AtomicU32::new(0));
    let bundle = bundle(counters.clone(), stalls.clone());

    // Two threads, each stalled once mid-evaluation for four times the budget: both allowed.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2).map(|_| s.spawn(|| bundle.evaluate(input("stall_once")))).collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap().unwrap(), Value::Bool(true), "a stall turned an allow into a deny");
        }
    });
    assert_eq!(stalls.load(Ordering::Relaxed), 2, "both threads stalled");
    assert!(
        counters.stall_retries.load(Ordering::Relaxed) >= 2,
        "the wall-clock limit fired and the evaluation was run again"
    );
    assert_eq!(counters.cpu_limit.load(Ordering::Relaxed), 0);

    // A policy that really loops: stopped at its CPU budget, long before the deadline.
    let started = Instant::now();
    let looping = bundle.evaluate(input("loop"));
    assert!(matches!(looping, Err(PolicyError::CpuLimit(_))), "{looping:?}");
    assert!(started.elapsed() < Duration::from_millis(400), "took {:?}", started.elapsed());
    assert_eq!(counters.cpu_limit.load(Ordering::Relaxed), 1);

    // Stalled on every attempt: stopped at the deadline, not retried for ever.
    let started = Instant::now();
    let stalled = bundle.evaluate(input("stall_always"));
    assert!(matches!(stalled, Err(PolicyError::Deadline(_))), "{stalled:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(counters.deadline.load(Ordering::Relaxed), 1);
}

#[test]
fn a_panic_denies_that_request_only_and_leaves_no_poisoned_engine() {
    let counters = Arc::new(EvalCounters::default());
    let bundle = bundle(counters.clone(), Arc::default());
    assert_eq!(bundle.evaluate(input("plain")).unwrap(), Value::Bool(true));
    let panicked = bundle.evaluate(input("panic"));
    assert!(
        matches!(panicked, Err(PolicyError::Panicked(ref m)) if m.contains("a bug inside evaluation")),
        "{panicked:?}"
    );
    assert_eq!(counters.panics.load(Ordering::Relaxed), 1);
    // Same thread, same engine slot: it works again, and keeps working.
    for _ in 0..3 {
        assert_eq!(bundle.evaluate(input("plain")).unwrap(), Value::Bool(true));
        assert_eq!(bundle.evaluate(input("nothing")).unwrap(), Value::Bool(false));
    }
}
