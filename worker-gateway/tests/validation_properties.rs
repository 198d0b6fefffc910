//! Property tests of the job API's field checks, 1,000 cases per field: every value Kestra's
//! naming rules allow is accepted, every other is refused naming its field, and values full of
//! SQL, shell and template syntax are accepted as the inert data they are (the through-Envoy
//! test shows them arriving in Kestra unchanged).

use std::collections::HashMap;

use proptest::prelude::*;
use worker_gateway::validate::{self, Limits};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() }
}

/// Strings an attacker would try: SQL, shell, template and path syntax, NUL-free.
fn hostile() -> impl Strategy<Value = String> {
    let fragments = prop::sample::select(vec![
        "'; DROP TABLE jobs; --",
        "\" OR 1=1 --",
        "$(rm -rf /)",
        "`id`",
        "; cat /etc/passwd",
        "{{ 7*7 }}",
        "${jndi:ldap://x/a}",
        "#{7*7}",
        "<%= 7*7 %>",
        "../../etc/shadow",
        "\\u0000",
        "\r\nX-Injected: 1",
        "%00%2e%2e",
        "🦀 ünïcödé",
    ]);
    (prop::collection::vec(fragments, 1..4), "[^\u{0}]{0,40}").prop_map(|(parts, tail)| parts.concat() + &tail)
}

/// One character outside `allowed` (and not NUL, which has its own check).
fn outside(allowed: &'static str) -> impl Strategy<Value = char> {
    any::<char>().prop_filter("outside the allowed set", move |c| *c != '\0' && !allowed.contains(*c))
}

const NAMESPACE_CHARS: &str = "abcdefghijklmnopqrstuvwxyz0123456789._-";
const FLOW_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";

fn field_of(error: worker_gateway::errors::GatewayError) -> String {
    error.to_string().split(':').next().unwrap_or_default().to_string()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn namespaces_by_kestras_rule(valid in "[a-z0-9][a-z0-9._-]{0,149}") {
        prop_assert!(validate::namespace(&valid).is_ok());
    }

    #[test]
    fn namespaces_outside_kestras_rule_are_refused(
        head in "[a-z0-9]{0,20}", bad in outside(NAMESPACE_CHARS), tail in "[a-z0-9]{0,20}",
    ) {
        let value = format!("{head}{bad}{tail}");
        prop_assert_eq!(field_of(validate::namespace(&value).unwrap_err()), "/namespace");
    }

    #[test]
    fn namespaces_that_start_wrong_or_run_long_are_refused(first in "[._-]", rest in "[a-z0-9]{0,10}", long in "[a-z]{151,170}") {
        let starts_wrong = format!("{first}{rest}");
        prop_assert!(validate::namespace(&starts_wrong).is_err());
        prop_assert!(validate::namespace(&long).is_err());
    }

    #[test]
    fn flow_ids_by_kestras_rule(valid in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,99}") {
        prop_assert!(validate::flow_id(&valid).is_ok());
    }

    #[test]
    fn flow_ids_outside_kestras_rule_are_refused(head in "[a-z]{0,10}", bad in outside(FLOW_CHARS), tail in "[A-Z]{0,10}") {
        let value = format!("{head}{bad}{tail}");
        prop_assert_eq!(field_of(validate::flow_id(&value).unwrap_err()), "/flow_id");
    }

    #[test]
    fn input_values_are_inert_data(id in "[a-zA-Z0-9][.a-zA-Z0-9_-]{0,30}", value in hostile()) {
        let limits = Limits::default();
        let inputs: HashMap<String, String> = [(id.clone(), value.clone())].into();
        prop_assert!(validate::inputs(&inputs, &limits).is_ok(), "{:?} refused", value);
        let mut with_nul = value;
        with_nul.push('\0');
        let refused = validate::inputs(&[(id.clone(), with_nul)].into(), &limits).unwrap_err();
        prop_assert_eq!(field_of(refused), format!("/inputs/{id}"));
    }

    #[test]
    fn input_ids_outside_kestras_rule_are_refused(head in "[a-z]{1,10}", bad in outside(FLOW_CHARS)) {
        let inputs: HashMap<String, String> = [(format!("{head}{bad}"), "v".to_string())].into();
        prop_assert_eq!(field_of(validate::inputs(&inputs, &Limits::default()).unwrap_err()), "/inputs");
    }

    #[test]
    fn input_values_are_bounded(extra in 1usize..64) {
        let limits = Limits::default();
        let big: HashMap<String, String> = [("a".to_string(), "x".repeat(limits.max_input_bytes + extra))].into();
        prop_assert_eq!(field_of(validate::inputs(&big, &limits).unwrap_err()), "/inputs/a");
        let many: HashMap<String, String> = (0..limits.max_inputs + extra).map(|i| (format!("i{i}"), "v".into())).collect();
        prop_assert_eq!(field_of(validate::inputs(&many, &limits).unwrap_err()), "/inputs");
    }

    #[test]
    fn label_values_are_inert_data(key in "[a-z][a-z0-9_-]{0,30}", value in hostile()) {
        prop_assume!(!key.starts_with("qiria-"));
        let limits = Limits::default();
        prop_assume!(value.len() <= limits.max_label_bytes);
        prop_assert!(validate::labels(&[(key, value)].into(), &limits).is_ok());
    }

    #[test]
    fn label_keys_reserved_or_outside_the_portable_rule_are_refused(
        suffix in "[a-z0-9_-]{0,20}", bad in outside("abcdefghijklmnopqrstuvwxyz0123456789_-"),
    ) {
        let limits = Limits::default();
        let reserved = validate::labels(&[(format!("qiria-{suffix}"), "v".to_string())].into(), &limits);
        prop_assert_eq!(field_of(reserved.unwrap_err()), format!("/labels/qiria-{suffix}"));
        let system = validate::labels(&[(format!("system.{suffix}"), "v".to_string())].into(), &limits);
        prop_assert!(system.is_err());
        let odd = validate::labels(&[(format!("a{bad}"), "v".to_string())].into(), &limits);
        prop_assert_eq!(field_of(odd.unwrap_err()), "/labels");
    }

    #[test]
    fn script_bodies_are_inert_text_without_nul(body in hostile()) {
        let limits = Limits::default();
        prop_assert!(validate::script("python", &body, &limits).is_ok());
        let refused = validate::script("python", &format!("{body}\0"), &limits).unwrap_err();
        prop_assert_eq!(field_of(refused), "/body");
    }

    #[test]
    fn idempotency_keys_are_printable_ascii(valid in "[!-~]{0,128}", bad in "[ -~]{0,10}[\u{0}- \u{7f}-\u{10ffff}][ -~]{0,10}") {
        prop_assert!(validate::idempotency_key(&valid).is_ok());
        prop_assert_eq!(field_of(validate::idempotency_key(&bad).unwrap_err()), "/idempotency_key");
    }
}
