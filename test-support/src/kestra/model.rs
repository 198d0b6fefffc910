//! What the double holds and how it looks on the wire: executions whose state is a function of
//! time (a planned timeline, shown up to "now"), their Execution JSON in Kestra's shape, the
//! label and input rules of a create, the bounded store, and the queued test faults.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::{FlowSpec, InputType, Outcome};

/// CREATED → RUNNING, and KILLING → KILLED: how long Kestra's executor takes to move one on.
pub const STEP: Duration = Duration::from_millis(100);

/// Kestra's `State.Type` (the values this double reaches, plus the rest for parsing filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs, reason = "Kestra's own state names")]
pub enum StateType {
    Created,
    Submitted,
    Running,
    Paused,
    Restarted,
    Killing,
    Success,
    Warning,
    Failed,
    Killed,
    Cancelled,
    Queued,
    Retrying,
    Retried,
    Skipped,
    Breakpoint,
    Resubmitted,
}

impl StateType {
    const ALL: [StateType; 17] = [
        Self::Created,
        Self::Submitted,
        Self::Running,
        Self::Paused,
        Self::Restarted,
        Self::Killing,
        Self::Success,
        Self::Warning,
        Self::Failed,
        Self::Killed,
        Self::Cancelled,
        Self::Queued,
        Self::Retrying,
        Self::Retried,
        Self::Skipped,
        Self::Breakpoint,
        Self::Resubmitted,
    ];

    /// The wire name (`CREATED`…).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Submitted => "SUBMITTED",
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Restarted => "RESTARTED",
            Self::Killing => "KILLING",
            Self::Success => "SUCCESS",
            Self::Warning => "WARNING",
            Self::Failed => "FAILED",
            Self::Killed => "KILLED",
            Self::Cancelled => "CANCELLED",
            Self::Queued => "QUEUED",
            Self::Retrying => "RETRYING",
            Self::Retried => "RETRIED",
            Self::Skipped => "SKIPPED",
            Self::Breakpoint => "BREAKPOINT",
            Self::Resubmitted => "RESUBMITTED",
        }
    }

    /// The state named `name`, if Kestra has one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Kestra's `isTerminated()`.
    pub fn is_terminated(self) -> bool {
        matches!(
            self,
            Self::Success
                | Self::Warning
                | Self::Failed
                | Self::Killed
                | Self::Cancelled
                | Self::Retried
                | Self::Skipped
                | Self::Resubmitted
        )
    }
}

/// An execution label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

impl Label {
    /// `key=value`.
    pub fn new(key: &str, value: &str) -> Self {
        Self { key: key.to_string(), value: value.to_string() }
    }
}

/// The label Kestra adds to every execution (the execution id unless the caller sent one).
pub const CORRELATION_ID: &str = "system.correlationId";

/// An execution.
#[derive(Debug, Clone)]
pub struct Execution {
    /// 22 base62 characters.
    pub id: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Flow revision.
    pub flow_revision: i64,
    /// Flow labels, request labels, `system.correlationId`.
    pub labels: Vec<Label>,
    /// Typed inputs.
    pub inputs: Map<String, Value>,
    /// Shown once the execution ended well.
    pub outputs: Map<String, Value>,
    /// When the create stored it.
    pub created: SystemTime,
    /// Every state it will pass through, with when; only those up to now are shown.
    timeline: Vec<(StateType, SystemTime)>,
}

/// Why a kill was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum KillRefused {
    /// Already in a terminal state.
    Finished,
}

impl Execution {
    /// Execution `id` of `flow`, created at `now`, planned to run to the flow's outcome.
    pub fn new(id: String, flow: &FlowSpec, labels: Vec<Label>, inputs: Map<String, Value>, now: SystemTime) -> Self {
        let created = truncate_to_micros(now);
        let running = created + STEP;
        let end = running + Duration::from_millis(flow.run_ms);
        let outcome = match flow.outcome {
            Outcome::Success => StateType::Success,
            Outcome::Failed => StateType::Failed,
            Outcome::Warning => StateType::Warning,
        };
        let outputs = match flow.outcome {
            Outcome::Failed => Map::new(),
            _ => render_outputs(&flow.outputs, &inputs),
        };
        Self {
            id,
            namespace: flow.namespace.clone(),
            flow_id: flow.id.clone(),
            flow_revision: flow.revision,
            labels,
            inputs,
            outputs,
            created,
            timeline: vec![(StateType::Created, created), (StateType::Running, running), (outcome, end)],
        }
    }

    /// The states reached by `now` (never empty: CREATED is at creation).
    pub fn history(&self, now: SystemTime) -> &[(StateType, SystemTime)] {
        let reached = self.timeline.iter().take_while(|(_, at)| *at <= now).count();
        &self.timeline[..reached.max(1)]
    }

    /// The state at `now`.
    pub fn current(&self, now: SystemTime) -> StateType {
        self.history(now).last().map_or(StateType::Created, |(state, _)| *state)
    }

    /// Whether Kestra's search index has it at `now`.
    pub fn indexed(&self, now: SystemTime, delay: Duration) -> bool {
        now >= self.created + delay
    }

    /// Kills it at `now`: KILLING now, KILLED one step later. A kill of a KILLING execution
    /// changes nothing.
    pub fn kill(&mut self, now: SystemTime) -> Result<(), KillRefused> {
        let now = truncate_to_micros(now);
        let current = self.current(now);
        if current.is_terminated() {
            return Err(KillRefused::Finished);
        }
        if current == StateType::Killing {
            return Ok(());
        }
        let reached = self.history(now).len();
        self.timeline.truncate(reached);
        let last = self.timeline.last().map_or(now, |(_, at)| *at);
        let killing = now.max(last);
        self.timeline.push((StateType::Killing, killing));
        self.timeline.push((StateType::Killed, killing + STEP));
        Ok(())
    }

    /// When it ends as planned now (for `wait=true`).
    pub fn planned_end(&self) -> SystemTime {
        self.timeline.last().map_or(self.created, |(_, at)| *at)
    }

    /// The Execution JSON at `now`: Kestra's field names, nulls omitted; `url` only on a
    /// create's answer.
    pub fn to_json(&self, tenant: &str, now: SystemTime, url: Option<String>) -> Value {
        let history = self.history(now);
        let current = self.current(now);
        let first = history.first().map_or(self.created, |(_, at)| *at);
        // Kestra's State.getDuration(): first to last history, or to now while there is one.
        let last = if history.len() > 1 { history.last().map_or(now, |(_, at)| *at) } else { now };
        let state = StateJson {
            current: current.as_str(),
            histories: history
                .iter()
                .map(|(state, at)| HistoryJson { state: state.as_str(), date: instant(*at) })
                .collect(),
            duration: java_duration(last.duration_since(first).unwrap_or_default()),
            start_date: instant(first),
            end_date: (current.is_terminated() || current == StateType::Paused)
                .then(|| history.last().map(|(_, at)| instant(*at)))
                .flatten(),
        };
        let ended_well = matches!(current, StateType::Success | StateType::Warning);
        let json = ExecutionJson {
            id: &self.id,
            namespace: &self.namespace,
            flow_id: &self.flow_id,
            flow_revision: self.flow_revision,
            tenant_id: tenant,
            labels: &self.labels,
            inputs: &self.inputs,
            outputs: (ended_well && !self.outputs.is_empty()).then_some(&self.outputs),
            state,
            original_id: &self.id,
            deleted: false,
            metadata: MetadataJson { attempt_number: 1, original_created_date: instant(self.created) },
            url,
        };
        serde_json::to_value(json).unwrap_or(Value::Null)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionJson<'a> {
    id: &'a str,
    namespace: &'a str,
    flow_id: &'a str,
    flow_revision: i64,
    tenant_id: &'a str,
    labels: &'a [Label],
    inputs: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<&'a Map<String, Value>>,
    state: StateJson,
    original_id: &'a str,
    deleted: bool,
    metadata: MetadataJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateJson {
    current: &'static str,
    histories: Vec<HistoryJson>,
    duration: String,
    start_date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_date: Option<String>,
}

#[derive(Serialize)]
struct HistoryJson {
    state: &'static str,
    date: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetadataJson {
    attempt_number: u32,
    original_created_date: String,
}

/// `{{ inputs.<id> }}` in string outputs replaced by the input's text.
fn render_outputs(template: &Map<String, Value>, inputs: &Map<String, Value>) -> Map<String, Value> {
    template
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::String(text) => {
                    let mut out = text.clone();
                    for (id, input) in flatten(inputs, "") {
                        let shown = match &input {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        for pattern in [format!("{{{{ inputs.{id} }}}}"), format!("{{{{inputs.{id}}}}}")] {
                            out = out.replace(&pattern, &shown);
                        }
                    }
                    Value::String(out)
                }
                other => other.clone(),
            };
            (key.clone(), value)
        })
        .collect()
}

fn flatten(map: &Map<String, Value>, prefix: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (key, value) in map {
        let id = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        out.push((id.clone(), value.clone()));
        if let Value::Object(inner) = value {
            out.extend(flatten(inner, &id));
        }
    }
    out
}

/// A Kestra "friendly id": a random 128-bit number in base62, left-padded to 22 characters.
pub fn new_id() -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n: u128 = rand::random();
    let mut out = [b'0'; 22];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn truncate_to_micros(t: SystemTime) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::new(since.as_secs(), since.subsec_micros() * 1000)
}

/// An instant as Java's `Instant.toString()` writes it: UTC, `Z`, 0/3/6/9 fraction digits.
pub fn instant(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{}Z", fraction(since.subsec_nanos()))
}

/// A duration as Java's `Duration.toString()` writes it (`PT0.003S`, `PT2M0.5S`, `PT0S`).
pub fn java_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s, nanos) = (secs / 3600, secs % 3600 / 60, secs % 60, d.subsec_nanos());
    let mut out = String::from("PT");
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if s == 0 && nanos == 0 && out.len() > 2 {
        return out;
    }
    out.push_str(&s.to_string());
    if nanos > 0 {
        let digits = format!("{nanos:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('S');
    out
}

fn fraction(nanos: u32) -> String {
    match nanos {
        0 => String::new(),
        n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
        n if n % 1000 == 0 => format!(".{:06}", n / 1000),
        n => format!(".{n:09}"),
    }
}

// Howard Hinnant's days-to-civil: the proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Why a `labels=key:value` parameter was refused (Kestra answers 422).
#[derive(Debug, PartialEq, Eq)]
pub enum LabelError {
    /// No `:`, or an empty key or value.
    Syntax,
    /// A `system.` key Kestra keeps for itself.
    System(Label),
}

/// One `labels=` query value, by Kestra's parse rules: key before the first `:`, value after
/// it, both trimmed and non-empty; `system.*` is Kestra's except `system.correlationId`.
pub fn parse_label(raw: &str) -> Result<Label, LabelError> {
    let (key, value) = raw.split_once(':').ok_or(LabelError::Syntax)?;
    let (key, value) = (key.trim(), value.trim());
    if key.is_empty() || value.is_empty() || key.contains(char::is_whitespace) {
        return Err(LabelError::Syntax);
    }
    let label = Label::new(key, value);
    if key.starts_with("system.") && key != CORRELATION_ID {
        return Err(LabelError::System(label));
    }
    Ok(label)
}

/// One multipart part of a create.
#[derive(Debug, Clone)]
pub struct Part {
    /// Form field name.
    pub name: String,
    /// Set for file parts.
    pub filename: Option<String>,
    /// Content.
    pub data: Vec<u8>,
}

/// One `_embedded.errors[]` entry of a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// What is wrong.
    pub message: String,
    /// The input id.
    pub path: String,
}

/// The typed inputs of an execution of `flow` from the create's parts, by Kestra's rules:
/// undeclared parts ignored, missing ones take their default, missing optional ones are left
/// out, missing required ones are an error. File parts become `kestra:///` URIs (the content
/// is not kept: nothing reads it back from the double).
pub fn read_inputs(flow: &FlowSpec, parts: &[Part], execution_id: &str) -> Result<Map<String, Value>, Vec<InputError>> {
    let mut inputs = Map::new();
    let mut errors = Vec::new();
    for input in &flow.inputs {
        // ≥ 0.24 names a file part by input id; older clients sent `files` with filename = id.
        let part = parts.iter().rev().find(|p| p.name == input.id).or_else(|| {
            (input.kind == InputType::File)
                .then(|| parts.iter().rev().find(|p| p.name == "files" && p.filename.as_deref() == Some(&input.id)))
                .flatten()
        });
        let value = match part {
            Some(part) if part.filename.is_some() && input.kind == InputType::File => {
                if part.data.is_empty() {
                    errors.push(invalid(&input.id, "Can't upload file: the file is empty"));
                    continue;
                }
                let name = part.filename.as_deref().unwrap_or_default();
                let name = if part.name == "files" || name.is_empty() { input.id.as_str() } else { name };
                let file: String = name.chars().map(|c| if c == '/' || c == '\\' { '_' } else { c }).collect();
                Value::String(format!(
                    "kestra:///{}/{}/executions/{execution_id}/inputs/{}/{file}",
                    flow.namespace.replace('.', "/"),
                    flow.id,
                    input.id
                ))
            }
            Some(part) => match convert(input.kind, &String::from_utf8_lossy(&part.data)) {
                Ok(value) => value,
                Err(why) => {
                    errors.push(invalid(&input.id, &why));
                    continue;
                }
            },
            None => match &input.defaults {
                Some(default) => default.clone(),
                None if input.required => {
                    errors.push(invalid(&input.id, "missing required input, but received `null`"));
                    continue;
                }
                None => continue,
            },
        };
        insert_nested(&mut inputs, &input.id, value);
    }
    if errors.is_empty() {
        Ok(inputs)
    } else {
        Err(errors)
    }
}

fn invalid(id: &str, why: &str) -> InputError {
    InputError { message: format!("Invalid input for `{id}`, {why}"), path: id.to_string() }
}

fn convert(kind: InputType, text: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("it must be {what}, but received `{text}`");
    match kind {
        InputType::Int => text.trim().parse::<i64>().map(Value::from).map_err(|_| bad("an integer")),
        InputType::Float => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| bad("a number")),
        InputType::Boolean | InputType::Bool => match text.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(bad("`true` or `false`")),
        },
        InputType::Json | InputType::Array | InputType::Multiselect => {
            let value: Value = serde_json::from_str(text).map_err(|_| bad("JSON"))?;
            match (kind, &value) {
                (InputType::Array | InputType::Multiselect, v) if !v.is_array() => Err(bad("a JSON array")),
                _ => Ok(value),
            }
        }
        _ => Ok(Value::String(text.to_string())),
    }
}

/// Dotted ids (`a.b`) nest, as Kestra returns them.
fn insert_nested(map: &mut Map<String, Value>, id: &str, value: Value) {
    match id.split_once('.') {
        None => {
            map.insert(id.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = map.entry(head.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

/// A queued test fault for the next create (`POST /__double/faults`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Answer this status (with a Kestra error body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Create the execution first, then answer `status`.
    #[serde(default)]
    pub after_create: bool,
    /// Hold the answer this long after the execution exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// Every execution, in creation order, bounded; and the faults queued.
pub struct Store {
    executions: HashMap<String, Execution>,
    order: VecDeque<String>,
    faults: VecDeque<Fault>,
    max: usize,
}

/// Faults that can be queued at once.
pub const MAX_FAULTS: usize = 1000;

impl Store {
    /// Empty, keeping at most `max` executions.
    pub fn new(max: usize) -> Self {
        Self { executions: HashMap::new(), order: VecDeque::new(), faults: VecDeque::new(), max: max.max(1) }
    }

    /// Stores `execution`; when full, the oldest finished one (else the oldest) goes first.
    pub fn insert(&mut self, execution: Execution, now: SystemTime) {
        while self.executions.len() >= self.max {
            let victim = self
                .order
                .iter()
                .position(|id| self.executions.get(id).is_none_or(|e| e.current(now).is_terminated()))
                .unwrap_or(0);
            match self.order.remove(victim) {
                Some(id) => {
                    self.executions.remove(&id);
                }
                None => break,
            }
        }
        self.order.push_back(execution.id.clone());
        self.executions.insert(execution.id.clone(), execution);
    }

    /// The execution `id`.
    pub fn get(&self, id: &str) -> Option<&Execution> {
        self.executions.get(id)
    }

    /// The execution `id`, to change.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Execution> {
        self.executions.get_mut(id)
    }

    /// All executions, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Execution> {
        self.order.iter().filter_map(|id| self.executions.get(id))
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.executions.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.executions.is_empty()
    }

    /// Queues `faults`; false (nothing queued) if the queue would overflow.
    pub fn queue_faults(&mut self, faults: Vec<Fault>) -> bool {
        if self.faults.len() + faults.len() > MAX_FAULTS {
            return false;
        }
        self.faults.extend(faults);
        true
    }

    /// The fault for this create, if one is queued.
    pub fn next_fault(&mut self) -> Option<Fault> {
        self.faults.pop_front()
    }

    /// Drops queued faults.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kestra::config::default_flows;

    #[test]
    fn instants_and_durations_are_written_as_java_writes_them() {
        assert_eq!(instant(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(1_738_314_000, 123_456_000);
        assert_eq!(instant(t), "2025-01-31T09:00:00.123456Z");
        assert_eq!(instant(UNIX_EPOCH + Duration::new(951_782_400, 120_000_000)), "2000-02-29T00:00:00.120Z");
        assert_eq!(java_duration(Duration::ZERO), "PT0S");
        assert_eq!(java_duration(Duration::from_millis(3)), "PT0.003S");
        assert_eq!(java_duration(Duration::from_secs(120)), "PT2M");
        assert_eq!(java_duration(Duration::from_millis(3_723_500)), "PT1H2M3.5S");
    }

    #[test]
    fn ids_are_22_base62_characters() {
        for _ in 0..100 {
            let id = new_id();
            assert_eq!(id.len(), 22);
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        }
    }

    #[test]
    fn labels_follow_kestras_parse_rules() {
        assert_eq!(parse_label("job: 42 "), Ok(Label::new("job", "42")));
        assert_eq!(parse_label("url:https://x/y:z"), Ok(Label::new("url", "https://x/y:z")));
        assert_eq!(parse_label("system.correlationId:abc"), Ok(Label::new(CORRELATION_ID, "abc")));
        assert_eq!(parse_label("job:"), Err(LabelError::Syntax));
        assert_eq!(parse_label(":42"), Err(LabelError::Syntax));
        assert_eq!(parse_label("job"), Err(LabelError::Syntax));
        assert_eq!(parse_label("system.from:api"), Err(LabelError::System(Label::new("system.from", "api"))));
    }

    #[test]
    fn state_follows_time_and_a_kill_ends_it() {
        let flows = default_flows();
        let slow = flows.iter().find(|f| f.id == "slow").expect("slow flow");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut e = Execution::new(new_id(), slow, vec![], Map::new(), t0);
        assert_eq!(e.current(t0), StateType::Created);
        assert_eq!(e.current(t0 + STEP), StateType::Running);
        let at = t0 + Duration::from_secs(1);
        e.kill(at).expect("kill");
        assert_eq!(e.current(at), StateType::Killing);
        assert_eq!(e.current(at + STEP), StateType::Killed);
        assert_eq!(e.kill(at + STEP), Err(KillRefused::Finished));
        let json = e.to_json("main", at + STEP, None);
        let states: Vec<&str> =
            json["state"]["histories"].as_array().into_iter().flatten().filter_map(|h| h["state"].as_str()).collect();
        assert_eq!(states, ["CREATED", "RUNNING", "KILLING", "KILLED"]);
        assert!(json["state"]["endDate"].is_string());
        assert_eq!(json["state"]["duration"], "PT1.1S");
    }

    #[test]
    fn inputs_are_typed_defaulted_and_required() {
        let flow: FlowSpec = serde_json::from_value(serde_json::json!({
            "namespace": "n", "id": "f",
            "inputs": [
                {"id": "count", "type": "INT"},
                {"id": "a.b", "type": "STRING"},
                {"id": "opt", "type": "STRING", "required": false},
                {"id": "dflt", "type": "BOOLEAN", "defaults": true},
                {"id": "doc", "type": "FILE"}
            ]
        }))
        .expect("flow");
        let part = |name: &str, filename: Option<&str>, data: &str| Part {
            name: name.into(),
            filename: filename.map(str::to_string),
            data: data.as_bytes().to_vec(),
        };
        let parts = [
            part("count", None, "42"),
            part("a.b", None, "x"),
            part("doc", Some("r.csv"), "1,2"),
            part("zz", None, ""),
        ];
        let inputs = read_inputs(&flow, &parts, "EXEC").expect("inputs");
        assert_eq!(
            Value::Object(inputs),
            serde_json::json!({"count": 42, "a": {"b": "x"}, "dflt": true,
                               "doc": "kestra:///n/f/executions/EXEC/inputs/doc/r.csv"})
        );
        let errors = read_inputs(&flow, &[part("count", None, "many")], "EXEC").expect_err("invalid");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["count", "a.b", "doc"]);
        assert!(errors[1].message.contains("missing required input, but received `null`"), "{errors:?}");
    }
}
