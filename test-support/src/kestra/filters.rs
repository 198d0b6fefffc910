//! The search query of `GET /api/v1/{tenant}/executions/search`: Kestra's `filters[…]` form
//! (as kestrapy's serializer writes it, groups included) and the legacy flat form, used only
//! when no `filters[…]` is given, as Kestra 1.x does. A filter the double cannot evaluate is
//! refused (`400 Invalid query filters`), never ignored: ignoring it would return executions
//! the caller did not ask for.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::model::{parse_label, Execution, Label, LabelError, StateType};

/// A parsed search filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// One condition.
    Leaf(Leaf),
    /// All must hold.
    All(Vec<Filter>),
    /// One must hold.
    Any(Vec<Filter>),
}

/// `filters[<field>][<op>](<[key]>)=<value>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    field: Field,
    op: Op,
    key: Option<String>,
    values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Namespace,
    FlowId,
    State,
    Labels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    StartsWith,
    EndsWith,
    Contains,
    Prefix,
}

/// Why a query was refused, and with which status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// 400 `Invalid query filters: …`.
    Filters(String),
    /// 400 `Bad Request: …`.
    BadRequest(String),
    /// 422 (a legacy `labels=` that does not parse).
    Label(String),
}

/// How deep `filters[and|or][i]…` groups may nest (kestrapy writes at most two levels).
const MAX_DEPTH: usize = 3;

#[derive(Default)]
struct Unit {
    leaves: Vec<Leaf>,
    groups: Vec<(bool, BTreeMap<usize, Unit>)>,
}

impl Unit {
    fn group(&mut self, any: bool) -> &mut BTreeMap<usize, Unit> {
        let at = match self.groups.iter().position(|(a, _)| *a == any) {
            Some(at) => at,
            None => {
                self.groups.push((any, BTreeMap::new()));
                self.groups.len() - 1
            }
        };
        &mut self.groups[at].1
    }

    fn into_filter(self) -> Filter {
        let mut all: Vec<Filter> = self.leaves.into_iter().map(Filter::Leaf).collect();
        for (any, units) in self.groups {
            let children = units.into_values().map(Unit::into_filter).collect();
            all.push(if any { Filter::Any(children) } else { Filter::All(children) });
        }
        Filter::All(all)
    }
}

/// The filter of a search query's `(name, value)` pairs.
pub fn parse(pairs: &[(String, String)]) -> Result<Filter, QueryError> {
    if pairs.iter().any(|(name, _)| name.starts_with("filters[")) {
        let mut root = Unit::default();
        for (name, value) in pairs.iter().filter(|(name, _)| name.starts_with("filters[")) {
            let segments = brackets(&name["filters".len()..])
                .ok_or_else(|| QueryError::Filters(format!("`{name}` is not filters[<field>][<operation>]")))?;
            insert(&mut root, &segments, value, 0)?;
        }
        Ok(root.into_filter())
    } else {
        legacy(pairs)
    }
}

/// `[a][b][c]` → `[a, b, c]`.
fn brackets(mut rest: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        out.push(inner[..end].to_string());
        rest = &inner[end + 1..];
    }
    Some(out)
}

fn insert(unit: &mut Unit, segments: &[String], value: &str, depth: usize) -> Result<(), QueryError> {
    let logical = segments.first().map(|s| s.to_ascii_lowercase());
    if let Some(any) = logical.as_deref().and_then(|l| match l {
        "and" => Some(false),
        "or" => Some(true),
        _ => None,
    }) {
        if depth >= MAX_DEPTH {
            return Err(QueryError::Filters("filter groups nest too deep".into()));
        }
        let index = segments
            .get(1)
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| QueryError::Filters("a filter group needs an index: filters[or][0]…".into()))?;
        let child = unit.group(any).entry(index).or_default();
        return insert(child, &segments[2..], value, depth + 1);
    }
    unit.leaves.push(leaf(segments, value)?);
    Ok(())
}

fn leaf(segments: &[String], value: &str) -> Result<Leaf, QueryError> {
    let (field, op, key) = match segments {
        [field, op] => (field, op, None),
        [field, op, key] => (field, op, Some(key.clone())),
        _ => return Err(QueryError::Filters(format!("`[{}]` is not [<field>][<operation>]", segments.join("][")))),
    };
    let field = match field.as_str() {
        "namespace" => Field::Namespace,
        "flowId" => Field::FlowId,
        "state" => Field::State,
        "labels" => Field::Labels,
        other => return Err(QueryError::Filters(format!("field `{other}` is not supported by the double"))),
    };
    let op = match op.as_str() {
        "EQUALS" => Op::Equals,
        "NOT_EQUALS" => Op::NotEquals,
        "IN" => Op::In,
        "NOT_IN" => Op::NotIn,
        "STARTS_WITH" => Op::StartsWith,
        "ENDS_WITH" => Op::EndsWith,
        "CONTAINS" => Op::Contains,
        "PREFIX" => Op::Prefix,
        other => return Err(QueryError::Filters(format!("operation `{other}` is not supported on `{field:?}`"))),
    };
    let supported = match field {
        Field::Namespace | Field::FlowId => key.is_none(),
        Field::State => key.is_none() && matches!(op, Op::Equals | Op::NotEquals | Op::In | Op::NotIn),
        // Kestra's label filter is a map: filters[labels][EQUALS][<key>]=<value>.
        Field::Labels => key.is_some() && matches!(op, Op::Equals | Op::NotEquals),
    };
    if !supported {
        return Err(QueryError::Filters(format!("operation `{op:?}` is not supported on `{field:?}` this way")));
    }
    let values: Vec<String> = if matches!(op, Op::In | Op::NotIn) {
        value.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
    } else {
        vec![value.to_string()]
    };
    if field == Field::State {
        if let Some(bad) = values.iter().find(|v| StateType::parse(v).is_none()) {
            return Err(QueryError::Filters(format!("`{bad}` is not a state")));
        }
    }
    Ok(Leaf { field, op, key, values })
}

fn legacy(pairs: &[(String, String)]) -> Result<Filter, QueryError> {
    let mut all = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            // The legacy namespace parameter is a prefix: `a.b` also finds `a.b.c`.
            "namespace" => all.push(Filter::Any(vec![
                Filter::Leaf(Leaf { field: Field::Namespace, op: Op::Equals, key: None, values: vec![value.clone()] }),
                Filter::Leaf(Leaf {
                    field: Field::Namespace,
                    op: Op::StartsWith,
                    key: None,
                    values: vec![format!("{value}.")],
                }),
            ])),
            "flowId" => all.push(Filter::Leaf(Leaf {
                field: Field::FlowId,
                op: Op::Equals,
                key: None,
                values: vec![value.clone()],
            })),
            "state" => {
                if StateType::parse(value).is_none() {
                    return Err(QueryError::BadRequest(format!(
                        "Failed to convert argument [state] for value [{value}]"
                    )));
                }
                all.push(Filter::Leaf(Leaf { field: Field::State, op: Op::In, key: None, values: vec![value.clone()] }))
            }
            "labels" => {
                // Kestra's parse rules, except that searching by a `system.` label is fine.
                let (key, value) = match parse_label(value) {
                    Ok(Label { key, value }) | Err(LabelError::System(Label { key, value })) => (key, value),
                    Err(LabelError::Syntax) => {
                        return Err(QueryError::Label(format!("`{value}` is not key:value")));
                    }
                };
                all.push(Filter::Leaf(Leaf {
                    field: Field::Labels,
                    op: Op::Equals,
                    key: Some(key),
                    values: vec![value],
                }))
            }
            _ => {}
        }
    }
    Ok(Filter::All(all))
}

impl Filter {
    /// Whether `execution` (at `now`) matches.
    pub fn matches(&self, execution: &Execution, now: SystemTime) -> bool {
        match self {
            Self::All(all) => all.iter().all(|f| f.matches(execution, now)),
            Self::Any(any) => any.iter().any(|f| f.matches(execution, now)),
            Self::Leaf(leaf) => leaf.matches(execution, now),
        }
    }
}

impl Leaf {
    fn matches(&self, execution: &Execution, now: SystemTime) -> bool {
        let text = |actual: &str| {
            let value = self.values.first().map(String::as_str).unwrap_or_default();
            match self.op {
                Op::Equals => actual == value,
                Op::NotEquals => actual != value,
                Op::In => self.values.iter().any(|v| v == actual),
                Op::NotIn => !self.values.iter().any(|v| v == actual),
                Op::StartsWith => actual.starts_with(value),
                Op::EndsWith => actual.ends_with(value),
                Op::Contains => actual.contains(value),
                // Kestra's PREFIX on namespaces: the namespace itself or one below it.
                Op::Prefix => actual == value || actual.starts_with(&format!("{value}.")),
            }
        };
        match self.field {
            Field::Namespace => text(&execution.namespace),
            Field::FlowId => text(&execution.flow_id),
            Field::State => text(execution.current(now).as_str()),
            Field::Labels => {
                let key = self.key.as_deref().unwrap_or_default();
                let value = self.values.first().map(String::as_str).unwrap_or_default();
                let has = execution.labels.iter().any(|l| l.key == key && l.value == value);
                if self.op == Op::NotEquals {
                    !has
                } else {
                    has
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_filters_form_wins_over_the_legacy_one() {
        let filter = parse(&pairs(&[("filters[labels][EQUALS][job]", "1"), ("namespace", "x")])).expect("parse");
        assert_eq!(
            filter,
            Filter::All(vec![Filter::Leaf(Leaf {
                field: Field::Labels,
                op: Op::Equals,
                key: Some("job".into()),
                values: vec!["1".into()]
            })])
        );
    }

    #[test]
    fn groups_nest_as_kestrapy_writes_them() {
        let filter = parse(&pairs(&[
            ("filters[or][0][flowId][EQUALS]", "a"),
            ("filters[or][1][and][0][flowId][EQUALS]", "b"),
            ("filters[or][1][and][1][state][IN]", "RUNNING,CREATED"),
        ]))
        .expect("parse");
        let Filter::All(top) = filter else { panic!("not a group") };
        let Filter::Any(units) = &top[0] else { panic!("no or group: {top:?}") };
        assert_eq!(units.len(), 2);
    }

    #[test]
    fn unsupported_filters_are_refused() {
        for query in [
            ("filters[startDate][GREATER_THAN]", "2025-01-01T00:00:00Z"),
            ("filters[namespace][REGEX]", ".*"),
            ("filters[labels][EQUALS]", "job:1"),
            ("filters[state][IN]", "NOPE"),
            ("filters[namespace]", "x"),
        ] {
            assert!(matches!(parse(&pairs(&[query])), Err(QueryError::Filters(_))), "{query:?}");
        }
        assert!(matches!(parse(&pairs(&[("labels", "job")])), Err(QueryError::Label(_))));
    }
}
