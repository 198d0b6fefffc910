//! The double's configuration file (`kestra-double --config FILE.json`): where it listens, its
//! TLS files, the one credential it accepts, its tenant, its flows (a built-in set when the file
//! names none) and its bounds. Checked whole at load, so a bad file stops the double at start
//! rather than on the first request.
//!
//! ```json
//! {
//!   "listen": "127.0.0.1:8443",
//!   "tls": {"cert": "server.pem", "key": "server.key", "client_ca": "ca.pem"},
//!   "credential": {"kind": "basic", "username": "gateway@qiria.test", "password": "…"},
//!   "tenant": "main",
//!   "index_delay_ms": 1000,
//!   "flows": [{"namespace": "qiria.demo", "id": "hello", "run_ms": 300, "outcome": "SUCCESS",
//!              "inputs": [{"id": "name", "type": "STRING", "required": true}],
//!              "outputs": {"greeting": "hello {{ inputs.name }}"}}]
//! }
//! ```
//!
//! `{"kind": "bearer", "token": "…"}` for an API token; optional: `public_url`,
//! `max_executions` (10000), `max_body_bytes` (1 MiB); a flow may also be `disabled`,
//! `forbidden`, carry `labels` (`[{"key", "value"}]`) and a `revision` (1).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port` to listen on.
    pub listen: String,
    /// PEM files; relative paths are taken from the config file's directory.
    pub tls: TlsFiles,
    /// The one credential every `/api/v1/**` and `/__double/**` request must carry.
    pub credential: Credential,
    /// The tenant in `/api/v1/{tenant}/…`.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// How long a new execution stays invisible to search (Kestra indexes asynchronously).
    #[serde(default = "default_index_delay_ms")]
    pub index_delay_ms: u64,
    /// Base of the `url` a create answers with; default `https://<listen>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Executions kept; beyond, the oldest finished one is dropped.
    #[serde(default = "default_max_executions")]
    pub max_executions: usize,
    /// Largest request body accepted; a larger one is answered 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The flows Kestra knows; empty means [`default_flows`].
    #[serde(default)]
    pub flows: Vec<FlowSpec>,
}

/// Where the server's certificate, its key and the CA of accepted clients are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA that signs every accepted client certificate (PEM).
    pub client_ca: PathBuf,
}

/// Kestra's API credential: OSS basic auth, or an EE API token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Credential {
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// Kestra wants an email here.
        username: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// API token.
        token: String,
    },
}

impl Credential {
    /// The `Authorization` header value that carries it.
    pub fn authorization(&self) -> String {
        use base64::Engine as _;
        match self {
            Self::Basic { username, password } => {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")))
            }
            Self::Bearer { token } => format!("Bearer {token}"),
        }
    }

    /// `basic` or `bearer`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Basic { .. } => "basic",
            Self::Bearer { .. } => "bearer",
        }
    }
}

// Secrets stay out of logs and panic messages.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic {{ username: {username:?}, password: <redacted> }}"),
            Self::Bearer { .. } => write!(f, "Bearer {{ token: <redacted> }}"),
        }
    }
}

/// A flow as the double runs it: no tasks, just how long it runs and how it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Namespace (`^[a-z0-9][a-z0-9._-]*`).
    pub namespace: String,
    /// Flow id (`^[a-zA-Z0-9][a-zA-Z0-9._-]*`).
    pub id: String,
    /// The one revision the double has.
    #[serde(default = "default_revision")]
    pub revision: i64,
    /// Declared inputs.
    #[serde(default)]
    pub inputs: Vec<InputSpec>,
    /// Time spent RUNNING before the outcome.
    #[serde(default)]
    pub run_ms: u64,
    /// How it ends.
    #[serde(default)]
    pub outcome: Outcome,
    /// A create answers 409 (`Requested Flow is disabled`).
    #[serde(default)]
    pub disabled: bool,
    /// A create answers 403, as EE's RBAC does for a namespace the credential may not run.
    #[serde(default)]
    pub forbidden: bool,
    /// Flow labels; they come first in an execution's labels.
    #[serde(default)]
    pub labels: Vec<LabelSpec>,
    /// Outputs once it ends well; string values may use `{{ inputs.<id> }}`.
    #[serde(default)]
    pub outputs: Map<String, Value>,
}

/// A declared input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Input id (`^[a-zA-Z0-9][.a-zA-Z0-9_-]*`; dots nest the value under `inputs`).
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: InputType,
    /// Kestra's default is `true`.
    #[serde(default = "default_required")]
    pub required: bool,
    /// Taken when the request does not send the input (Kestra's `defaults`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Value>,
}

/// Kestra's input types, as the double converts their text parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs, reason = "Kestra's own input type names")]
pub enum InputType {
    String,
    Enum,
    Select,
    Secret,
    Email,
    Uri,
    Int,
    Float,
    Boolean,
    Bool,
    Datetime,
    Date,
    Time,
    Duration,
    Json,
    Array,
    Multiselect,
    Yaml,
    File,
}

/// The state a flow ends in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs, reason = "the outcomes' names say what they are")]
pub enum Outcome {
    #[default]
    Success,
    Failed,
    Warning,
}

/// A flow label.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

fn default_tenant() -> String {
    "main".to_string()
}
fn default_index_delay_ms() -> u64 {
    1000
}
fn default_max_executions() -> usize {
    10_000
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_revision() -> i64 {
    1
}
fn default_required() -> bool {
    true
}

/// The flows a config without `flows` gets.
pub fn default_flows() -> Vec<FlowSpec> {
    let flow = |namespace: &str, id: &str| FlowSpec {
        namespace: namespace.to_string(),
        id: id.to_string(),
        revision: 1,
        inputs: Vec::new(),
        run_ms: 0,
        outcome: Outcome::Success,
        disabled: false,
        forbidden: false,
        labels: Vec::new(),
        outputs: Map::new(),
    };
    let mut outputs = Map::new();
    outputs.insert("greeting".to_string(), json!("hello {{ inputs.name }}"));
    vec![
        FlowSpec {
            inputs: vec![InputSpec { id: "name".into(), kind: InputType::String, required: true, defaults: None }],
            run_ms: 300,
            outputs,
            ..flow("qiria.demo", "hello")
        },
        FlowSpec { run_ms: 200, outcome: Outcome::Failed, ..flow("qiria.demo", "fails") },
        FlowSpec { run_ms: 120_000, ..flow("qiria.demo", "slow") },
        FlowSpec { disabled: true, ..flow("qiria.demo", "disabled") },
        FlowSpec { forbidden: true, ..flow("qiria.secret", "payroll") },
    ]
}

impl Config {
    /// Reads and checks `path`; relative TLS paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut config: Config = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for file in [&mut config.tls.cert, &mut config.tls.key, &mut config.tls.client_ca] {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        config.check()?;
        Ok(config)
    }

    /// The flows served: the configured ones, or the built-in set.
    pub fn flows(&self) -> Vec<FlowSpec> {
        if self.flows.is_empty() {
            default_flows()
        } else {
            self.flows.clone()
        }
    }

    /// Checks the names against Kestra's own rules, so the double never serves a flow Kestra
    /// could not hold.
    pub fn check(&self) -> Result<(), String> {
        if !is_name(&self.tenant, |c| c.is_ascii_lowercase() || c.is_ascii_digit(), |c| "_-".contains(c)) {
            return Err(format!("tenant `{}` is not a Kestra tenant id", self.tenant));
        }
        if self.max_executions == 0 || self.max_body_bytes == 0 {
            return Err("max_executions and max_body_bytes must be positive".into());
        }
        match &self.credential {
            Credential::Basic { username, password } if username.is_empty() || password.is_empty() => {
                return Err("basic credential: empty username or password".into())
            }
            Credential::Basic { username, .. } if username.contains(':') => {
                return Err("basic credential: a username cannot hold `:`".into())
            }
            Credential::Bearer { token } if token.is_empty() => return Err("bearer credential: empty token".into()),
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for flow in self.flows() {
            let name = format!("{}/{}", flow.namespace, flow.id);
            let lower = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
            if flow.namespace.len() > 150 || !is_name(&flow.namespace, lower, |c| "._-".contains(c)) {
                return Err(format!("flow {name}: bad namespace"));
            }
            if flow.id.len() > 100 || !is_name(&flow.id, |c| c.is_ascii_alphanumeric(), |c| "._-".contains(c)) {
                return Err(format!("flow {name}: bad flow id"));
            }
            if !seen.insert(name.clone()) {
                return Err(format!("flow {name} is declared twice"));
            }
            let mut inputs = std::collections::HashSet::new();
            for input in &flow.inputs {
                if !is_name(&input.id, |c| c.is_ascii_alphanumeric(), |c| "._-".contains(c))
                    || !inputs.insert(input.id.as_str())
                {
                    return Err(format!("flow {name}: bad or repeated input id `{}`", input.id));
                }
            }
            for label in &flow.labels {
                if label.key.is_empty() || label.value.is_empty() || label.key.starts_with("system.") {
                    return Err(format!("flow {name}: bad label `{}`", label.key));
                }
            }
        }
        Ok(())
    }
}

/// Whether `s` is one `first` character followed by `first`/`rest` characters.
fn is_name(s: &str, first: impl Fn(char) -> bool, rest: impl Fn(char) -> bool) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        None => false,
        Some(c) if first(c) => chars.all(|c| first(c) || rest(c)),
        Some(_) => false,
    }
}
