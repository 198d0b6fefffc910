//! Load-time check that every function a bundle calls exists: a regorus builtin, a builtin
//! the host provides, or a function the bundle itself defines. regorus only finds out when
//! evaluation reaches the call, which for a rule off the paths tried at load means a denial at
//! run time; a bundle calling an unknown function is refused at load instead, naming the
//! function, file and line.

use std::collections::BTreeSet;

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead};

/// A call to a function nobody provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnknownCall {
    /// The function as written, e.g. `crypto.x509.parse_rsa_private_key`.
    pub name: String,
    /// The file that calls it.
    pub file: String,
    /// Where, 1-based.
    pub line: u32,
    /// Where, 1-based.
    pub col: u32,
}

/// Every call in `modules` to a function that is neither a regorus builtin, nor in `host`,
/// nor defined by the modules.
/// Builtins regorus 0.14 registers but does not implement (they return undefined): a policy
/// calling one would load and then deny silently, so they count as unknown.
const STUBS: &[&str] = &["http.send"];

pub(crate) fn unknown_calls(modules: &[Ref<Module>], host: &BTreeSet<String>) -> Vec<UnknownCall> {
    let defined = regorus::utils::gather_functions(modules).unwrap_or_default();
    let mut unknown = Vec::new();
    for module in modules {
        let package = regorus::utils::get_path_string(&module.package.refr, Some("data")).unwrap_or_default();
        // `import data.lib` makes `lib.f` name `data.lib.f` (or the `as` alias does).
        let imports: Vec<(String, String)> = module
            .imports
            .iter()
            .filter_map(|import| {
                let path = regorus::utils::get_path_string(&import.refr, None).ok()?;
                let alias = match &import.r#as {
                    Some(alias) => alias.text().to_string(),
                    None => path.rsplit('.').next()?.to_string(),
                };
                Some((alias, path))
            })
            .collect();
        let known = |name: &str| {
            let imported = imports.iter().find_map(|(alias, path)| {
                let rest = name.strip_prefix(alias.as_str())?;
                (rest.is_empty() || rest.starts_with('.')).then(|| format!("{path}{rest}"))
            });
            (regorus::unstable::BUILTINS.contains_key(name) && !STUBS.contains(&name))
                || host.contains(name)
                || defined.contains_key(name)
                || defined.contains_key(&format!("{package}.{name}"))
                || imported.is_some_and(|full| defined.contains_key(&full))
        };
        let mut visit = |fcn: &Ref<Expr>| {
            let Ok(name) = regorus::utils::get_path_string(fcn, None) else { return };
            if !known(&name) {
                let span = fcn.span();
                unknown.push(UnknownCall { name, file: span.source.file().clone(), line: span.line, col: span.col });
            }
        };
        for rule in &module.policy {
            rule_calls(rule, &mut visit);
        }
    }
    unknown
}

fn rule_calls(rule: &Ref<Rule>, visit: &mut dyn FnMut(&Ref<Expr>)) {
    match rule.as_ref() {
        Rule::Spec { head, bodies, .. } => {
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    expr_calls(refr, visit);
                    if let Some(assign) = assign {
                        expr_calls(&assign.value, visit);
                    }
                }
                RuleHead::Set { refr, key, .. } => {
                    expr_calls(refr, visit);
                    if let Some(key) = key {
                        expr_calls(key, visit);
                    }
                }
                RuleHead::Func { args, assign, .. } => {
                    for arg in args {
                        expr_calls(arg, visit);
                    }
                    if let Some(assign) = assign {
                        expr_calls(&assign.value, visit);
                    }
                }
            }
            for body in bodies {
                if let Some(assign) = &body.assign {
                    expr_calls(&assign.value, visit);
                }
                query_calls(&body.query, visit);
            }
        }
        Rule::Default { args, value, .. } => {
            for arg in args {
                expr_calls(arg, visit);
            }
            expr_calls(value, visit);
        }
    }
}

fn query_calls(query: &Ref<Query>, visit: &mut dyn FnMut(&Ref<Expr>)) {
    for stmt in &query.stmts {
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn { key, value, collection, .. } => {
                if let Some(key) = key {
                    expr_calls(key, visit);
                }
                expr_calls(value, visit);
                expr_calls(collection, visit);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => expr_calls(expr, visit),
            Literal::Every { domain, query, .. } => {
                expr_calls(domain, visit);
                query_calls(query, visit);
            }
        }
        // `with` replaces what a rule sees, not what it calls: only the replacement value counts.
        for with in &stmt.with_mods {
            expr_calls(&with.r#as, visit);
        }
    }
}

fn expr_calls(expr: &Ref<Expr>, visit: &mut dyn FnMut(&Ref<Expr>)) {
    match expr.as_ref() {
        Expr::Call { fcn, params, .. } => {
            visit(fcn);
            for param in params {
                expr_calls(param, visit);
            }
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for item in items {
                expr_calls(item, visit);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, key, value) in fields {
                expr_calls(key, visit);
                expr_calls(value, visit);
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            expr_calls(term, visit);
            query_calls(query, visit);
        }
        Expr::ObjectCompr { key, value, query, .. } => {
            expr_calls(key, visit);
            expr_calls(value, visit);
            query_calls(query, visit);
        }
        Expr::UnaryExpr { expr, .. } => expr_calls(expr, visit),
        Expr::RefDot { refr, .. } => expr_calls(refr, visit),
        Expr::RefBrack { refr, index, .. } => {
            expr_calls(refr, visit);
            expr_calls(index, visit);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            expr_calls(lhs, visit);
            expr_calls(rhs, visit);
        }
        Expr::Membership { key, value, collection, .. } => {
            if let Some(key) = key {
                expr_calls(key, visit);
            }
            expr_calls(value, visit);
            expr_calls(collection, visit);
        }
        // Scalars and variables call nothing; so do expression kinds of regorus extensions
        // this crate does not enable.
        _ => {}
    }
}
