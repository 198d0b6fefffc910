//! The Rego policy bundle: every `.rego` file and `data.json`/`data.yaml` document under a
//! directory (OPA bundle layout: a data file in `a/b/` lands at `data.a.b`), parsed and
//! prepared, identified by a content hash (its revision), and evaluated per request on one of
//! a few engines built separately (one per core), so that worker threads share nothing.
//!
//! Evaluation is bounded by CPU, not by the wall clock alone: regorus' limit is wall-clock
//! only, and a thread descheduled mid-evaluation (CFS throttling under a CPU limit stalls for
//! up to a 100 ms period) would turn an allow into a deny. When regorus' limit fires, the
//! thread's own CPU time says whether the policy really ran that long: if not, the evaluation
//! was stalled and runs again, until the overall deadline. A panic inside regorus denies that
//! request and the engine is replaced, so nothing stays poisoned.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qiria_runtime::thread_slot::thread_slot;
use regorus::unstable::{Rule, RuleHead};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use sha2::{Digest, Sha256};

use crate::cpu::thread_cpu_time;
use crate::decision_key::{DecisionKey, DecisionKeyError};

/// How a bundle is loaded and evaluated.
#[derive(Clone)]
pub struct BundleOptions {
    /// The rule whose value is the decision, e.g. `data.qiria.authz.allow`; `None` for tools
    /// that only run tests or queries.
    pub decision_rule: Option<String>,
    /// Parse with Rego v0 syntax.
    pub rego_v0: bool,
    /// CPU time one evaluation may use; past it evaluation fails (and the request is denied).
    pub eval_timeout: Duration,
    /// Wall-clock time one evaluation may take in all, stalls included; keep it below the
    /// caller's own timeout (Envoy's ext_authz timeout).
    pub eval_deadline: Duration,
    /// Refuse the bundle unless all its `test_*` rules pass.
    pub run_tests: bool,
    /// Where evaluation outcomes worth a metric are counted (shared across reloads).
    pub counters: Arc<EvalCounters>,
    /// Builtins the host provides, added to every engine.
    pub builtins: Vec<HostBuiltin>,
}

impl BundleOptions {
    /// Options for tools: no decision rule, a generous limit, no load-time tests, OPA's
    /// builtins that regorus lacks.
    pub fn for_tools(rego_v0: bool) -> Self {
        Self {
            decision_rule: None,
            rego_v0,
            eval_timeout: Duration::from_secs(5),
            eval_deadline: Duration::from_secs(10),
            run_tests: false,
            counters: Arc::default(),
            builtins: crate::builtins::opa_builtins(),
        }
    }
}

impl std::fmt::Debug for BundleOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleOptions")
            .field("decision_rule", &self.decision_rule)
            .field("rego_v0", &self.rego_v0)
            .field("eval_timeout", &self.eval_timeout)
            .field("eval_deadline", &self.eval_deadline)
            .field("run_tests", &self.run_tests)
            .field("builtins", &self.builtins.iter().map(|b| b.path.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

/// A builtin function the host provides to policies (`Engine::add_extension`).
#[derive(Clone)]
pub struct HostBuiltin {
    /// Its name in Rego, e.g. `io.jwt.decode`.
    pub path: String,
    /// How many arguments it takes.
    pub nargs: u8,
    /// The function.
    pub function: Arc<dyn Fn(Vec<Value>) -> anyhow::Result<Value> + Send + Sync>,
}

/// Evaluation outcomes counted for metrics; all counts since the process started.
#[derive(Debug, Default)]
pub struct EvalCounters {
    /// Evaluations stopped because they used their whole CPU budget (a policy that loops).
    pub cpu_limit: AtomicU64,
    /// Evaluations stopped at the wall-clock deadline (stalled again and again).
    pub deadline: AtomicU64,
    /// Evaluations run again because regorus' wall-clock limit fired on a stalled thread.
    pub stall_retries: AtomicU64,
    /// Evaluations that panicked inside regorus (denied; the engine was replaced).
    pub panics: AtomicU64,
}

/// Why a bundle was refused, or an evaluation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `.rego` file does not parse.
    #[error("{path}: {message}")]
    Parse {
        /// The offending file.
        path: PathBuf,
        /// regorus' message, with line and column.
        message: String,
    },
    /// A data document is not valid JSON/YAML or clashes with another.
    #[error("{path}: {message}")]
    Data {
        /// The offending file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The directory holds no `.rego` file.
    #[error("no .rego file under {0}")]
    Empty(PathBuf),
    /// The configured decision rule is not declared by any module.
    #[error("decision rule `{0}` is not defined by the bundle")]
    NoDecisionRule(String),
    /// Evaluating the decision rule on a plain request failed.
    #[error("evaluating `{rule}`: {message}")]
    Compile {
        /// The rule evaluated.
        rule: String,
        /// regorus' message.
        message: String,
    },
    /// Some of the bundle's own tests failed.
    #[error("{} policy test(s) failed: {}", .0.len(), .0.join(", "))]
    TestsFailed(Vec<String>),
    /// Evaluation failed at request time.
    #[error("evaluation failed: {0}")]
    Eval(String),
    /// Evaluation used its whole CPU budget.
    #[error("evaluation stopped: it used its {0:?} of CPU")]
    CpuLimit(Duration),
    /// Evaluation did not finish by the deadline (the thread was stalled throughout).
    #[error("evaluation stopped: not finished within {0:?}")]
    Deadline(Duration),
    /// Evaluation panicked inside regorus.
    #[error("evaluation panicked: {0}")]
    Panicked(String),
    /// A module calls a function that is neither a builtin nor defined by the bundle.
    #[error(
        "{file}:{line}:{col}: unknown function `{name}` (not a builtin Qiria supports, nor defined by the bundle)"
    )]
    UnknownFunction {
        /// The function as called.
        name: String,
        /// Where.
        file: String,
        /// Line, 1-based.
        line: u32,
        /// Column, 1-based.
        col: u32,
    },
    /// The bundle's `decision_key` cannot be honoured.
    #[error("{0}")]
    DecisionKey(#[from] DecisionKeyError),
}

/// The outcome of one `test_*` rule.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// Full rule path, e.g. `data.qiria.authz_test.test_user_can_submit`.
    pub name: String,
    /// `None` when the rule is true; otherwise why it failed.
    pub failure: Option<String>,
}

/// A parsed, prepared, tested set of policies and data.
pub struct PolicyBundle {
    id: u64,
    revision: String,
    /// Prepared with the request limit: request engines are replaced by clones of it.
    engine: Engine,
    request_engines: Box<[Mutex<Engine>]>,
    decision_rule: Option<String>,
    tests: Vec<String>,
    files: usize,
    caches_decisions: bool,
    decision_key: Option<DecisionKey>,
    eval_timeout: Duration,
    eval_deadline: Duration,
    counters: Arc<EvalCounters>,
}

impl std::fmt::Debug for PolicyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyBundle")
            .field("revision", &self.revision)
            .field("decision_rule", &self.decision_rule)
            .field("files", &self.files)
            .field("caches_decisions", &self.caches_decisions)
            .field("decision_key", &self.decision_key)
            .finish()
    }
}

/// Evaluation steps between two looks at the clock: reading it on every step costs more
/// than the RBAC policy itself.
const TIMER_CHECK_INTERVAL: NonZeroU32 = match NonZeroU32::new(64) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// Time limit of the evaluation that prepares a freshly loaded bundle.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_BUNDLE_ID: AtomicU64 = AtomicU64::new(1);

/// Bundles up to this many bytes of sources get an independent engine per core.
const COPY_PER_CORE_UP_TO: usize = 4 << 20;

/// How many request engines a bundle keeps: one per core this process may run on.
fn request_engine_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 64)
}

/// What a bundle is built from, to build its engines.
struct Sources<'a> {
    root: &'a Path,
    rego: &'a [(PathBuf, String)],
    data: &'a [(PathBuf, Vec<String>, String)],
    options: &'a BundleOptions,
}

impl Sources<'_> {
    /// A new engine with every policy and data document parsed afresh (nothing shared with
    /// another engine), its time limit set for preparation.
    fn engine(&self) -> Result<Engine, PolicyError> {
        let mut engine = Engine::new();
        engine.set_rego_v0(self.options.rego_v0);
        // Builtin errors (bad arguments, division by zero) become evaluation errors and so
        // denials, instead of silently undefined values.
        engine.set_strict_builtin_errors(true);
        // The first evaluation prepares the engine, which takes far longer than a request may:
        // it gets a generous limit, requests get the configured one (see `prepare`).
        engine.set_execution_timer_config(timer(self.options.eval_timeout.max(PREPARE_TIMEOUT)));
        for builtin in &self.options.builtins {
            let function = builtin.function.clone();
            engine
                .add_extension(builtin.path.clone(), builtin.nargs, Box::new(move |args| function(args)))
                .map_err(|e| PolicyError::Parse { path: self.root.to_path_buf(), message: e.to_string() })?;
        }
        for (path, text) in self.rego {
            let name = path.strip_prefix(self.root).unwrap_or(path).display().to_string();
            engine
                .add_policy(name, text.clone())
                .map_err(|e| PolicyError::Parse { path: path.clone(), message: e.to_string() })?;
        }
        for (path, prefix, text) in self.data {
            let bad = |message: String| PolicyError::Data { path: path.clone(), message };
            let mut value = if path.extension().is_some_and(|e| e == "json") {
                Value::from_json_str(text).map_err(|e| bad(e.to_string()))?
            } else {
                Value::from_yaml_str(text).map_err(|e| bad(e.to_string()))?
            };
            for segment in prefix.iter().rev() {
                let mut wrapper = std::collections::BTreeMap::new();
                wrapper.insert(Value::from(segment.as_str()), value);
                value = Value::from(wrapper);
            }
            engine.add_data(value).map_err(|e| bad(e.to_string()))?;
        }
        Ok(engine)
    }

    /// Evaluates `rule` once, which prepares the engine and surfaces errors that only show at
    /// evaluation time, then sets the request time limit.
    fn prepare(&self, engine: &mut Engine, rule: &str) -> Result<(), PolicyError> {
        engine.set_input(probe_input());
        engine
            .eval_rule(rule.to_string())
            .map_err(|e| PolicyError::Compile { rule: rule.to_string(), message: e.to_string() })?;
        engine.set_execution_timer_config(timer(self.options.eval_timeout));
        Ok(())
    }
}

fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig { limit, check_interval: TIMER_CHECK_INTERVAL }
}

impl PolicyBundle {
    /// Loads, prepares and (if asked) tests every policy and data file under `dir`.
    pub fn load_dir(dir: &Path, options: &BundleOptions) -> Result<Self, PolicyError> {
        let mut rego = Vec::new();
        let mut data = Vec::new();
        collect_files(dir, &mut rego, &mut data)?;
        rego.sort();
        data.sort();
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| PolicyError::Io { path: path.clone(), source })
        };
        let rego = rego.iter().map(|p| Ok((p.clone(), read(p)?))).collect::<Result<Vec<_>, PolicyError>>()?;
        let data = data
            .iter()
            .map(|p| {
                let prefix = p.parent().and_then(|d| d.strip_prefix(dir).ok()).unwrap_or(Path::new(""));
                let prefix = prefix.iter().filter_map(|c| c.to_str()).map(str::to_string).collect();
                Ok((p.clone(), prefix, read(p)?))
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;
        if rego.is_empty() {
            return Err(PolicyError::Empty(dir.to_path_buf()));
        }
        Self::from_sources(dir, rego, data, options)
    }

    /// Builds a bundle from policy texts and data texts (`(path, data prefix, text)`).
    pub fn from_sources(
        root: &Path,
        rego: Vec<(PathBuf, String)>,
        data: Vec<(PathBuf, Vec<String>, String)>,
        options: &BundleOptions,
    ) -> Result<Self, PolicyError> {
        let mut hasher = Sha256::new();
        for (path, text) in &rego {
            hash_file(&mut hasher, root, path, text);
        }
        for (path, _, text) in &data {
            hash_file(&mut hasher, root, path, text);
        }
        let sources = Sources { root, rego: &rego, data: &data, options };
        let mut engine = sources.engine()?;
        let host = options.builtins.iter().map(|b| b.path.clone()).collect();
        if let Some(call) = crate::calls::unknown_calls(engine.get_modules(), &host).into_iter().next() {
            return Err(PolicyError::UnknownFunction {
                name: call.name,
                file: call.file,
                line: call.line,
                col: call.col,
            });
        }
        let (rules, tests) = declared_rules(&mut engine);
        if let Some(rule) = &options.decision_rule {
            if !rules.contains(rule) {
                return Err(PolicyError::NoDecisionRule(rule.clone()));
            }
            sources.prepare(&mut engine, rule)?;
        }
        engine.set_execution_timer_config(timer(options.eval_timeout));
        let decision_key = match &options.decision_rule {
            Some(rule) => declared_key(&mut engine, rule, &rules)?,
            None => None,
        };
        let caches_decisions = decision_key.is_some()
            || options.decision_rule.as_ref().is_some_and(|rule| declares_cacheable(&mut engine, rule, &rules));
        // One engine per core for requests, each built from the sources on its own: clones of
        // one engine share its modules and data through reference counts that evaluation
        // touches on every step, and that shared cache line held two cores to 1.6 × one.
        // A bundle too big to hold once per core is cloned instead: it scales less, but fits.
        let size: usize = rego.iter().map(|(_, t)| t.len()).chain(data.iter().map(|(_, _, t)| t.len())).sum();
        let request_engines = match &options.decision_rule {
            Some(rule) => (0..request_engine_count())
                .map(|_| {
                    if size > COPY_PER_CORE_UP_TO {
                        return Ok(Mutex::new(engine.clone()));
                    }
                    let mut engine = sources.engine()?;
                    sources.prepare(&mut engine, rule)?;
                    Ok(Mutex::new(engine))
                })
                .collect::<Result<_, PolicyError>>()?,
            None => Box::default(),
        };
        let bundle = Self {
            id: NEXT_BUNDLE_ID.fetch_add(1, Ordering::Relaxed),
            revision: hex::encode(&hasher.finalize()[..8]),
            engine,
            request_engines,
            decision_rule: options.decision_rule.clone(),
            tests,
            files: rego.len() + data.len(),
            caches_decisions,
            decision_key,
            eval_timeout: options.eval_timeout,
            eval_deadline: options.eval_deadline.max(options.eval_timeout),
            counters: options.counters.clone(),
        };
        if options.run_tests {
            let failed: Vec<String> = bundle
                .run_tests()
                .into_iter()
                .filter_map(|t| t.failure.map(|why| format!("{} ({why})", t.name)))
                .collect();
            if !failed.is_empty() {
                return Err(PolicyError::TestsFailed(failed));
            }
        }
        Ok(bundle)
    }

    /// The content hash of the bundle's files.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Number of files in the bundle.
    pub fn files(&self) -> usize {
        self.files
    }

    /// Unique to this load of the bundle: decisions remembered outside it carry it, so that
    /// after a reload none of them is used again.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the decision rule's package declares `cache_decisions := true`: its decisions
    /// depend only on the verified identity, the method and the path, so callers may reuse them.
    pub fn caches_decisions(&self) -> bool {
        self.caches_decisions
    }

    /// What the bundle declared its decisions read (`decision_key`), if it did: one decision
    /// then serves every request with the same key, across tokens.
    pub fn decision_key(&self) -> Option<&DecisionKey> {
        self.decision_key.as_ref()
    }

    /// Evaluates the decision rule for `input` on this thread's request engine.
    pub fn evaluate(&self, input: Value) -> Result<Value, PolicyError> {
        let rule = self.decision_rule.as_ref().ok_or_else(|| PolicyError::Eval("no decision rule".into()))?;
        let slot = self
            .request_engines
            .get(thread_slot() % self.request_engines.len().max(1))
            .ok_or_else(|| PolicyError::Eval("no request engine".into()))?;
        // Threads are dealt engines round-robin (`thread_slot`), so the lock is uncontended
        // but for threads beyond one per core. A panic is caught below and the engine
        // replaced, so the lock is never poisoned; were it, the engine is replaced too.
        let mut engine = slot.lock().unwrap_or_else(|poisoned| {
            let mut engine = poisoned.into_inner();
            *engine = self.engine.clone();
            engine
        });
        let (started, mut spent) = (Instant::now(), Duration::ZERO);
        // Set once: a retry after a stall evaluates the same input again.
        engine.set_input(input);
        loop {
            let cpu_before = thread_cpu_time();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| engine.eval_rule(rule.clone())));
            let error = match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                Err(panic) => {
                    // The engine may be half-way through an update: start again from the
                    // prepared one.
                    *engine = self.engine.clone();
                    self.counters.panics.fetch_add(1, Ordering::Relaxed);
                    return Err(PolicyError::Panicked(panic_message(panic.as_ref())));
                }
            };
            if !is_time_limit(&error) {
                return Err(PolicyError::Eval(error.to_string()));
            }
            // regorus' limit is wall-clock: it fires as well when this thread was merely not
            // running. Only CPU really spent by this evaluation (all its attempts) counts
            // against the policy.
            spent += thread_cpu_time().saturating_sub(cpu_before);
            if spent + spent / 8 >= self.eval_timeout {
                self.counters.cpu_limit.fetch_add(1, Ordering::Relaxed);
                return Err(PolicyError::CpuLimit(self.eval_timeout));
            }
            if started.elapsed() + self.eval_timeout > self.eval_deadline {
                self.counters.deadline.fetch_add(1, Ordering::Relaxed);
                return Err(PolicyError::Deadline(self.eval_deadline));
            }
            self.counters.stall_retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Evaluates any query against `input` on a fresh clone (for tools, not the hot path).
    pub fn query(&self, input: Value, query: &str) -> Result<Value, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let results = engine.eval_query(query.to_string(), false).map_err(|e| PolicyError::Eval(e.to_string()))?;
        Ok(results
            .result
            .into_iter()
            .next()
            .and_then(|r| r.expressions.into_iter().next())
            .map(|e| e.value)
            .unwrap_or(Value::Undefined))
    }

    /// Runs every `test_*` rule, OPA style: a test passes when its value is `true`.
    pub fn run_tests(&self) -> Vec<TestResult> {
        self.tests
            .iter()
            .map(|name| {
                let mut engine = self.engine.clone();
                // A test runs at load, not on a request: the request limit (wall time inside
                // regorus) would fail a bundle's tests on a busy machine (85 ms seen in CI).
                engine.set_execution_timer_config(timer(self.eval_timeout.max(PREPARE_TIMEOUT)));
                let failure = match engine.eval_rule(name.clone()) {
                    Ok(Value::Bool(true)) => None,
                    Ok(Value::Undefined) => Some("undefined".to_string()),
                    Ok(other) => Some(format!("value {other}")),
                    Err(e) => Some(format!("error: {e}")),
                };
                TestResult { name: name.clone(), failure }
            })
            .collect()
    }
}

/// Whether regorus stopped an evaluation at its time limit.
fn is_time_limit(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(cause.downcast_ref::<regorus::LimitError>(), Some(regorus::LimitError::TimeLimitExceeded { .. }))
    }) || error.to_string().contains("exceeded time limit")
}

/// What a panic said, for the log (regorus panics with a message, never with secrets).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Whether the decision rule's package says `cache_decisions := true`: its decisions depend
/// only on the verified identity, the method and the path.
fn declares_cacheable(engine: &mut Engine, decision_rule: &str, rules: &BTreeSet<String>) -> bool {
    let Some((package, _)) = decision_rule.rsplit_once('.') else { return false };
    let rule = format!("{package}.cache_decisions");
    rules.contains(&rule) && matches!(engine.eval_rule(rule), Ok(Value::Bool(true)))
}

/// The decision rule's package's `decision_key`, parsed, if it declares one. Declared but not
/// a constant the key can honour, the bundle is refused: a key it cannot keep exactly would
/// reuse decisions where the policy decides differently.
fn declared_key(
    engine: &mut Engine,
    decision_rule: &str,
    rules: &BTreeSet<String>,
) -> Result<Option<DecisionKey>, PolicyError> {
    let Some((package, _)) = decision_rule.rsplit_once('.') else { return Ok(None) };
    let rule = format!("{package}.decision_key");
    if !rules.contains(&rule) {
        return Ok(None);
    }
    let value = engine.eval_rule(rule.clone()).map_err(|e| PolicyError::Compile { rule, message: e.to_string() })?;
    Ok(Some(DecisionKey::from_value(&value)?))
}

/// A bare `GET /` with no identity: enough to make every rule's evaluation path compile.
fn probe_input() -> Value {
    Value::from_json_str(
        r#"{"attributes":{"request":{"http":{"method":"GET","path":"/","headers":{}}}},
            "parsed_path":[""],"parsed_query":{},"truncated_body":false,"identity_error":"missing"}"#,
    )
    .unwrap_or(Value::Undefined)
}

/// Every rule path the modules declare, and those among them that are tests (`test_*`).
fn declared_rules(engine: &mut Engine) -> (BTreeSet<String>, Vec<String>) {
    let mut rules = BTreeSet::new();
    for module in engine.get_modules() {
        let package = module.package.refr.span().text().to_string();
        for rule in &module.policy {
            let head = match rule.as_ref() {
                Rule::Spec { head: RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. }, .. } => refr,
                Rule::Default { refr, .. } => refr,
                _ => continue,
            };
            let name = head.span().text();
            let name = name.split(['[', '.']).next().unwrap_or(name);
            rules.insert(format!("data.{package}.{name}"));
        }
    }
    let tests =
        rules.iter().filter(|r| r.rsplit('.').next().is_some_and(|n| n.starts_with("test_"))).cloned().collect();
    (rules, tests)
}

fn hash_file(hasher: &mut Sha256, root: &Path, path: &Path, text: &str) {
    hasher.update(path.strip_prefix(root).unwrap_or(path).as_os_str().as_encoded_bytes());
    hasher.update([0]);
    hasher.update(text.as_bytes());
    hasher.update([0]);
}

fn collect_files(dir: &Path, rego: &mut Vec<PathBuf>, data: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let io = |source| PolicyError::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, rego, data)?;
        } else if name.ends_with(".rego") {
            rego.push(path);
        } else if matches!(name, "data.json" | "data.yaml" | "data.yml") {
            data.push(path);
        }
    }
    Ok(())
}

/// The revision the directory's current content would load as, without parsing it: cheap
/// enough to poll, and equal to [`PolicyBundle::revision`] of a bundle loaded from it.
pub fn dir_fingerprint(dir: &Path) -> Result<String, PolicyError> {
    let (mut rego, mut data) = (Vec::new(), Vec::new());
    collect_files(dir, &mut rego, &mut data)?;
    rego.sort();
    data.sort();
    let mut hasher = Sha256::new();
    for path in rego.iter().chain(&data) {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io { path: path.clone(), source })?;
        hash_file(&mut hasher, dir, path, &text);
    }
    Ok(hex::encode(&hasher.finalize()[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BundleOptions {
        BundleOptions {
            decision_rule: Some("data.t.allow".into()),
            rego_v0: false,
            eval_timeout: Duration::from_millis(100),
            eval_deadline: Duration::from_millis(400),
            run_tests: true,
            counters: Arc::default(),
            builtins: Vec::new(),
        }
    }

    fn bundle(rego: &str) -> Result<PolicyBundle, PolicyError> {
        PolicyBundle::from_sources(Path::new("/p"), vec![(PathBuf::from("/p/t.rego"), rego.into())], vec![], &options())
    }

    #[test]
    fn evaluates_and_runs_its_own_tests() {
        let b = bundle(
            "package t\ndefault allow := false\nallow if input.ok\ntest_ok if allow with input as {\"ok\": true}\n",
        )
        .unwrap();
        assert_eq!(b.evaluate(Value::from_json_str(r#"{"ok":true}"#).unwrap()).unwrap(), Value::Bool(true));
        assert_eq!(b.evaluate(Value::from_json_str(r#"{}"#).unwrap()).unwrap(), Value::Bool(false));
        assert_eq!(b.run_tests().len(), 1);
    }

    #[test]
    fn failing_test_parse_error_and_missing_rule_are_refused() {
        let failing = bundle("package t\ndefault allow := false\ntest_bad if allow\n").unwrap_err();
        assert!(matches!(failing, PolicyError::TestsFailed(ref t) if t[0].contains("data.t.test_bad")), "{failing}");
        assert!(matches!(bundle("package t\nallow if {").unwrap_err(), PolicyError::Parse { .. }));
        assert!(matches!(bundle("package t\ndeny := true\n").unwrap_err(), PolicyError::NoDecisionRule(_)));
    }

    #[test]
    fn data_files_land_under_their_directory() {
        let b = PolicyBundle::from_sources(
            Path::new("/p"),
            vec![(PathBuf::from("/p/t.rego"), "package t\nallow := data.x.y.v == 1\n".into())],
            vec![(PathBuf::from("/p/x/y/data.json"), vec!["x".into(), "y".into()], r#"{"v":1}"#.into())],
            &options(),
        )
        .unwrap();
        assert_eq!(b.evaluate(Value::new_object()).unwrap(), Value::Bool(true));
    }

    #[test]
    fn evaluation_past_the_time_limit_fails() {
        let b = bundle(
            "package t\ndefault allow := false\nallow if {\n input.heavy\n count([x | some x in numbers.range(1, 2000000)]) > 0\n}\n",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let result = b.evaluate(Value::from_json_str(r#"{"heavy": true}"#).unwrap());
        assert!(matches!(result, Err(PolicyError::CpuLimit(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn evaluates_from_more_threads_than_it_has_engines() {
        let b = bundle("package t\nallow := input.x == 1\n").unwrap();
        assert!(!b.request_engines.is_empty());
        std::thread::scope(|s| {
            for t in 0..(b.request_engines.len() * 4) {
                let b = &b;
                s.spawn(move || {
                    for i in 0..50 {
                        let x = (t + i) % 2;
                        let input = Value::from_json_str(&format!("{{\"x\": {x}}}")).unwrap();
                        assert_eq!(b.evaluate(input).unwrap(), Value::from(x == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn a_declared_decision_key_is_parsed_at_load_and_one_it_cannot_honour_refused() {
        let keyed = bundle(
            "package t\nallow := true\ndecision_key := {\"identity\": [\"roles\"], \"routes\": {\"GET\": [[\"v1\", \"*\"]]}}\n",
        )
        .unwrap();
        assert!(keyed.caches_decisions(), "a key implies reuse");
        let key = keyed.decision_key().unwrap();
        assert_eq!((key.claims(), key.route("GET", "/v1/7")), (&[crate::KeyedClaim::Roles][..], Some(0)));
        assert!(bundle("package t\nallow := true\ncache_decisions := true\n").unwrap().decision_key().is_none());
        let refused = bundle("package t\nallow := true\ndecision_key := {\"identity\": [\"email\"]}\n").unwrap_err();
        assert!(matches!(refused, PolicyError::DecisionKey(_)), "{refused}");
        assert!(refused.to_string().contains("claim `email`"), "{refused}");
        let refused = bundle("package t\nallow := true\ndecision_key := 1 / 0\n").unwrap_err();
        assert!(matches!(refused, PolicyError::Compile { .. } | PolicyError::DecisionKey(_)), "{refused}");
    }

    #[test]
    fn decision_cache_only_when_declared() {
        assert!(!bundle("package t\nallow := true\n").unwrap().caches_decisions());
        let cached = bundle("package t\nallow := true\ncache_decisions := true\n").unwrap();
        assert!(cached.caches_decisions());
        let again = bundle("package t\nallow := true\ncache_decisions := true\n").unwrap();
        assert_ne!(cached.id(), again.id(), "every load is told apart");
    }

    #[test]
    fn fingerprint_of_a_directory_is_the_revision_it_loads_as() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x")).unwrap();
        std::fs::write(dir.path().join("t.rego"), "package t\nallow := data.x.v == 1\n").unwrap();
        std::fs::write(dir.path().join("x/data.json"), r#"{"v":1}"#).unwrap();
        let bundle = PolicyBundle::load_dir(dir.path(), &options()).unwrap();
        assert_eq!(dir_fingerprint(dir.path()).unwrap(), bundle.revision());
    }

    #[test]
    fn http_send_which_regorus_only_stubs_is_refused_at_load() {
        let err = bundle(
            "package t\nimport rego.v1\nallow if http.send({\"method\": \"get\", \"url\": \"x\"}).status_code == 200\n",
        )
        .unwrap_err();
        assert!(matches!(&err, PolicyError::UnknownFunction { name, line: 3, .. } if name == "http.send"), "{err}");
    }

    #[test]
    fn a_call_to_an_unknown_function_is_refused_at_load_with_file_and_line() {
        let err = bundle("package t\nimport rego.v1\nallow := false\nuse if {\n  input.x\n  crypto.x509.parse_rsa_private_key(\"k\")\n}\n")
            .unwrap_err();
        assert!(
            matches!(&err, PolicyError::UnknownFunction { name, file, line: 6, .. } if name == "crypto.x509.parse_rsa_private_key" && file.ends_with("t.rego")),
            "{err}"
        );
        // Functions of the bundle, imported ones, builtins and host builtins are all known.
        let ok = PolicyBundle::from_sources(
            Path::new("/p"),
            vec![
                (PathBuf::from("/p/lib.rego"), "package lib\nimport rego.v1\ndouble(x) := x * 2\n".into()),
                (
                    PathBuf::from("/p/t.rego"),
                    "package t\nimport rego.v1\nimport data.lib\nimport data.lib as l\nhalf(x) := x / 2\n\
                     allow if { lib.double(2) == 4; l.double(1) == 2; data.lib.double(3) == 6; half(4) == 2; \
                     count([x | some x in [1]; upper(\"a\") == \"A\"]) == 1; \
                     io.jwt.decode(\"e30.e30.\") }\n"
                        .into(),
                ),
            ],
            vec![],
            &BundleOptions { decision_rule: Some("data.t.allow".into()), ..BundleOptions::for_tools(false) },
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn revision_changes_with_content() {
        let a = bundle("package t\nallow := true\n").unwrap();
        let b = bundle("package t\nallow := false\n").unwrap();
        assert_ne!(a.revision(), b.revision());
    }
}
