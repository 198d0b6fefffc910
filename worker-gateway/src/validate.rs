//! Every field checked before anything is stored or leaves: Kestra's own naming rules for
//! namespaces, flow ids and input ids, bounded input and label maps, portable label keys,
//! script bodies without NUL and under a size cap. Values are never interpreted: SQL, shell
//! or template text travels as inert data. Errors name the field as a JSON pointer.

use std::collections::HashMap;

use crate::errors::GatewayError;

/// The bounds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Flow inputs per request.
    pub max_inputs: usize,
    /// Bytes per input value.
    pub max_input_bytes: usize,
    /// Labels per request.
    pub max_labels: usize,
    /// Bytes per label value.
    pub max_label_bytes: usize,
    /// Bytes of a script body.
    pub max_script_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inputs: 32,
            max_input_bytes: 4096,
            max_labels: 16,
            max_label_bytes: 256,
            max_script_bytes: 64 * 1024,
        }
    }
}

/// `^[a-z0-9][a-z0-9._-]*$`, 1 to 150 characters (Kestra's namespace rule).
pub fn namespace(value: &str) -> Result<(), GatewayError> {
    let ok = value.len() <= 150
        && starts(value, |c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    check(ok, "/namespace", "1 to 150 of a-z 0-9 . _ -, starting with a letter or digit")
}

/// `^[a-zA-Z0-9][a-zA-Z0-9._-]*$`, 1 to 100 characters (Kestra's flow id rule).
pub fn flow_id(value: &str) -> Result<(), GatewayError> {
    let ok = value.len() <= 100
        && starts(value, |c| c.is_ascii_alphanumeric())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    check(ok, "/flow_id", "1 to 100 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
}

/// Flow inputs: ids by Kestra's rule (`^[a-zA-Z0-9][.a-zA-Z0-9_-]*$`), bounded values.
pub fn inputs(inputs: &HashMap<String, String>, limits: &Limits) -> Result<(), GatewayError> {
    if inputs.len() > limits.max_inputs {
        return Err(GatewayError::invalid("/inputs", format!("at most {} inputs", limits.max_inputs)));
    }
    for (id, value) in inputs {
        let ok = id.len() <= 100
            && starts(id, |c| c.is_ascii_alphanumeric())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        check(ok, "/inputs", "input ids are 1 to 100 of A-Z a-z 0-9 . _ -, starting with a letter or digit")?;
        text(value, &format!("/inputs/{}", pointer(id)), limits.max_input_bytes)?;
    }
    Ok(())
}

/// Labels: portable keys (`^[a-z][a-z0-9_-]*$`: never Kestra's `system.`, nor the gateway's
/// own `qiria-`, which ties an execution to its job), non-empty bounded values.
pub fn labels(labels: &HashMap<String, String>, limits: &Limits) -> Result<(), GatewayError> {
    if labels.len() > limits.max_labels {
        return Err(GatewayError::invalid("/labels", format!("at most {} labels", limits.max_labels)));
    }
    for (key, value) in labels {
        let ok = key.len() <= 64
            && starts(key, |c| c.is_ascii_lowercase())
            && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
        check(ok, "/labels", "label keys are 1 to 64 of a-z 0-9 _ -, starting with a letter")?;
        let field = format!("/labels/{}", pointer(key));
        if key.starts_with("qiria-") {
            return Err(GatewayError::invalid(field, "keys starting with qiria- are the gateway's own"));
        }
        if value.is_empty() {
            return Err(GatewayError::invalid(field, "must not be empty"));
        }
        text(value, &field, limits.max_label_bytes)?;
    }
    Ok(())
}

/// A script: `python`, 1 byte to the cap, no NUL.
pub fn script(language: &str, body: &str, limits: &Limits) -> Result<(), GatewayError> {
    check(language == "python", "/language", "must be \"python\"")?;
    if body.is_empty() {
        return Err(GatewayError::invalid("/body", "must not be empty"));
    }
    text(body, "/body", limits.max_script_bytes)
}

/// An idempotency key: empty (one is generated), or 1 to 128 printable ASCII characters.
pub fn idempotency_key(value: &str) -> Result<(), GatewayError> {
    let ok = value.len() <= 128 && value.bytes().all(|b| (0x21..0x7f).contains(&b));
    check(ok, "/idempotency_key", "at most 128 printable ASCII characters, no spaces")
}

/// A job id as the gateway issues them (a UUID).
pub fn job_id(value: &str) -> Result<(), GatewayError> {
    check(uuid::Uuid::parse_str(value).is_ok(), "/id", "must be a job id")
}

fn text(value: &str, field: &str, max: usize) -> Result<(), GatewayError> {
    if value.len() > max {
        return Err(GatewayError::invalid(field, format!("at most {max} bytes")));
    }
    if value.contains('\0') {
        return Err(GatewayError::invalid(field, "must not contain NUL"));
    }
    Ok(())
}

fn starts(value: &str, first: impl Fn(char) -> bool) -> bool {
    value.chars().next().is_some_and(first)
}

fn check(ok: bool, field: &str, reason: &str) -> Result<(), GatewayError> {
    if ok {
        Ok(())
    } else {
        Err(GatewayError::invalid(field, reason))
    }
}

/// `key` escaped for a JSON pointer (RFC 6901).
pub(crate) fn pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kestra_naming_rules() {
        assert!(namespace("company.team").is_ok());
        assert!(namespace("Company").is_err());
        assert!(namespace("").is_err());
        assert!(namespace(".team").is_err());
        assert!(namespace(&"a".repeat(151)).is_err());
        assert!(flow_id("Nightly_Report-2").is_ok());
        assert!(flow_id("nightly report").is_err());
        assert!(flow_id("../etc").is_err());
    }

    #[test]
    fn errors_name_the_field_as_a_json_pointer() {
        let limits = Limits::default();
        let bad: HashMap<String, String> = [("a/b".to_string(), "x\0".to_string())].into();
        assert!(inputs(&bad, &limits).unwrap_err().to_string().starts_with("/inputs"));
        let ok: HashMap<String, String> = [("when".to_string(), "'; DROP TABLE jobs; --".to_string())].into();
        assert!(inputs(&ok, &limits).is_ok(), "SQL is inert data");
        let nul: HashMap<String, String> = [("when".to_string(), "a\0b".to_string())].into();
        assert_eq!(inputs(&nul, &limits).unwrap_err().to_string(), "/inputs/when: must not contain NUL");
        let system: HashMap<String, String> = [("system.correlationId".to_string(), "x".to_string())].into();
        assert!(labels(&system, &limits).is_err());
        assert!(script("python", &"x".repeat(limits.max_script_bytes + 1), &limits)
            .unwrap_err()
            .to_string()
            .starts_with("/body"));
        assert!(script("bash", "ls", &limits).unwrap_err().to_string().starts_with("/language"));
    }
}
