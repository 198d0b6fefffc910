use std::time::Instant;
fn time(name: &str, rego: &str, data: Option<&str>, input: &regorus::Value, rule: &str) {
    let mut e = regorus::Engine::new();
    e.add_policy("p.rego".into(), rego.into()).unwrap();
    if let Some(d) = data {
        e.add_data(regorus::Value::from_json_str(d).unwrap()).unwrap();
    }
    e.set_input(input.clone());
    let v = e.eval_rule(rule.into()).unwrap();
    let n = 5000;
    let t = Instant::now();
    for _ in 0..n {
        e.set_input(input.clone());
        e.eval_rule(rule.into()).unwrap();
    }
    println!("{name}: {:.1} us  -> {v}", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
fn main() {
    let f = qiria_benches::Fixture::new();
    let tok = f.token("alice", &["User"]);
    let req = qiria_benches::check_request(Some(&tok), "GET", "/v1/jobs/42");
    let id = f.verifier.verify(&tok).unwrap();
    let input = authz::input::build(&req, Ok(&id)).unwrap();
    let data = std::fs::read_to_string("policies/rego/qiria/data.json").unwrap();
    let data = format!("{{\"qiria\": {data}}}");
    time("trivial", "package t\nallow := true", None, &input, "data.t.allow");
    time(
        "input field",
        "package t\nallow if input.attributes.request.http.method == \"GET\"",
        None,
        &input,
        "data.t.allow",
    );
    time("trivial+data", "package t\nallow := true", Some(&data), &input, "data.t.allow");
    time(
        "exact lookup",
        "package t\nallow if data.qiria.rbac.operations.GET[\"/v1/jobs\"]",
        Some(&data),
        &input,
        "data.t.allow",
    );
    time(
        "concat path",
        "package t\np := concat(\"/\", array.concat([\"\"], input.parsed_path))\nallow if p",
        Some(&data),
        &input,
        "data.t.allow",
    );
    let m = "package t\nimport rego.v1\n";
    let pat = "some route in data.qiria.rbac.route_patterns.GET\n count(route.path) == count(input.parsed_path)\n every i, segment in route.path { segment in {\"*\", input.parsed_path[i]} }\n x := route.permission\n";
    time("pattern only", &format!("{m}perm := x if {{ {pat} }}"), Some(&data), &input, "data.t.perm");
    time(
        "pattern via method rule",
        &format!(
            "{m}meth := input.attributes.request.http.method\nperm := x if {{ {} }}",
            pat.replace(".GET", "[meth]")
        ),
        Some(&data),
        &input,
        "data.t.perm",
    );
    time("exact else pattern", &format!("{m}p := concat(\"/\", array.concat([\"\"], input.parsed_path))\nperm := x if {{ x := data.qiria.rbac.operations.GET[p] }} else := x if {{ {pat} }}"), Some(&data), &input, "data.t.perm");
    time("exact else pattern, strings.join", &format!("{m}p := concat(\"/\", input.parsed_path)\nperm := x if {{ x := data.qiria.rbac.operations.GET[p] }} else := x if {{ {pat} }}"), Some(&data), &input, "data.t.perm");
    time("every only", &format!("{m}perm := x if {{ route := data.qiria.rbac.route_patterns.GET[0]\n every i, segment in route.path {{ segment in {{\"*\", input.parsed_path[i]}} }}\n x := 1 }}"), Some(&data), &input, "data.t.perm");
    time("no every", &format!("{m}perm := x if {{ route := data.qiria.rbac.route_patterns.GET[0]\n count(route.path) == count(input.parsed_path)\n x := 1 }}"), Some(&data), &input, "data.t.perm");
    time(
        "pattern only, package qiria.authz",
        &format!("package qiria.authz\nimport rego.v1\nperm := x if {{ {pat} }}"),
        Some(&data),
        &input,
        "data.qiria.authz.perm",
    );
    let data2 = data.replace("\"rbac\"", "\"rbac2\"");
    time(
        "pattern only, package qiria.authz, other data",
        &format!(
            "package qiria.authz\nimport rego.v1\nperm := x if {{ {} }}",
            pat.replace("qiria.rbac", "qiria.rbac2")
        ),
        Some(&data2),
        &input,
        "data.qiria.authz.perm",
    );
    let data3 = format!("{{\"rbacdata\": {}}}", &std::fs::read_to_string("policies/rego/qiria/data.json").unwrap());
    time(
        "pattern only, package qiria.authz, root data",
        &format!(
            "package qiria.authz\nimport rego.v1\nperm := x if {{ {} }}",
            pat.replace("qiria.rbac", "rbacdata.rbac")
        ),
        Some(&data3),
        &input,
        "data.qiria.authz.perm",
    );
    let full = std::fs::read_to_string("policies/rego/qiria/authz.rego").unwrap();
    time("full", &full, Some(&data), &input, "data.qiria.authz.allow");
    time(
        "undefined data lookup",
        "package t\nallow if data.qiria.rbac.public.GET[\"/nope\"]",
        Some(&data),
        &input,
        "data.t.allow",
    );
    time(
        "object.get lookup",
        "package t\nallow if object.get(data.qiria.rbac.public, [\"GET\", \"/nope\"], false)",
        Some(&data),
        &input,
        "data.t.allow",
    );
    time(
        "local var lookup",
        "package t\nallow if { p := data.qiria.rbac.public; p.GET[\"/nope\"] }",
        Some(&data),
        &input,
        "data.t.allow",
    );
    let hdr = "package t\nimport rego.v1\nm := input.attributes.request.http.method\np := concat(\"/\", array.concat([\"\"], input.parsed_path))\n";
    time("rule-ref keys", &format!("{hdr}allow if data.qiria.rbac.public[m][p]"), Some(&data), &input, "data.t.allow");
    time(
        "local-var keys",
        &format!("{hdr}allow if {{ a := m; b := p; data.qiria.rbac.public[a][b] }}"),
        Some(&data),
        &input,
        "data.t.allow",
    );
    time(
        "object.get keys",
        &format!("{hdr}allow if object.get(data.qiria.rbac.public, [m, p], false)"),
        Some(&data),
        &input,
        "data.t.allow",
    );
    time("full request_method", &full, Some(&data), &input, "data.qiria.authz.request_method");
    time("full request_path", &full, Some(&data), &input, "data.qiria.authz.request_path");
    time("full public_operation", &full, Some(&data), &input, "data.qiria.authz.public_operation");
    time("full granted", &full, Some(&data), &input, "data.qiria.authz.granted_permissions");
    time("full required_permission", &full, Some(&data), &input, "data.qiria.authz.required_permission");
}
