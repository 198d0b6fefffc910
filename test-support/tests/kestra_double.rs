//! The Kestra contract double, from outside: mutual TLS and the credential, the create → get →
//! search → kill path with Kestra's JSON, its error bodies, the asynchronous search index, the
//! test faults and bounds; and kestrapy, Kestra's own generated client, driving it with every
//! answer validated against the client's models.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use qiria_test_support::kestra::{
    mtls_client_builder, Credential, CredentialKind, FlowSpec, ForeignPki, KestraDouble, KestraOptions,
};
use qiria_test_support::{wait_until, workspace_root};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const BOUNDARY: &str = "qiria-test-boundary-7MA4YWxkTrZu0gW";

/// A multipart body as Kestra's create takes it: text parts, and `(name, filename, content)`
/// file parts.
fn multipart(texts: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in texts {
        body.extend(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
        );
    }
    for (name, filename, content) in files {
        body.extend(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .bytes(),
        );
        body.extend_from_slice(content);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").bytes());
    body
}

/// `POST /api/v1/{tenant}/executions/{flow}` with `inputs` as text parts and `labels`.
async fn create(double: &KestraDouble, flow: &str, inputs: &[(&str, &str)], labels: &[&str]) -> reqwest::Response {
    let query: Vec<(&str, &str)> = labels.iter().map(|l| ("labels", *l)).collect();
    double
        .request(Method::POST, &format!("/api/v1/{}/executions/{flow}", double.tenant()))
        .query(&query)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(multipart(inputs, &[]))
        .send()
        .await
        .expect("create")
}

/// Creates an execution of `flow` (no inputs, no labels); its id.
async fn created_id(double: &KestraDouble, flow: &str) -> String {
    let created = json_of(create(double, flow, &[], &[]).await, StatusCode::OK).await;
    created["id"].as_str().expect("id").to_string()
}

async fn json_of(response: reqwest::Response, status: StatusCode) -> Value {
    let got = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn get(double: &KestraDouble, id: &str) -> Value {
    let response = double.request(Method::GET, &format!("/api/v1/main/executions/{id}")).send().await.expect("get");
    json_of(response, StatusCode::OK).await
}

async fn search(double: &KestraDouble, query: &[(&str, &str)]) -> Value {
    let response =
        double.request(Method::GET, "/api/v1/main/executions/search").query(query).send().await.expect("search");
    json_of(response, StatusCode::OK).await
}

/// Waits until execution `id` is in `state`; its JSON then.
async fn wait_for_state(double: &KestraDouble, id: &str, state: &str) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    let reached = wait_until(Duration::from_secs(20), || async {
        let seen = get(double, id).await;
        let done = seen["state"]["current"] == state;
        *last.borrow_mut() = seen;
        done
    })
    .await;
    let last = last.into_inner();
    assert!(reached, "{id} never reached {state}; last seen: {last}");
    last
}

/// Checks a Micronaut JSON error: status, `message` prefix, `_links.self`, `_embedded`.
async fn assert_kestra_error(response: reqwest::Response, status: StatusCode, message: &str, path: &str) -> Value {
    let body = json_of(response, status).await;
    let text = body["message"].as_str().unwrap_or_default();
    assert!(text.starts_with(message), "message {text:?} does not start with {message:?}: {body}");
    assert_eq!(body["_links"]["self"], json!({"href": path, "templated": false}), "{body}");
    assert!(body["_embedded"].is_object(), "{body}");
    body
}

fn labels_of(execution: &Value) -> Vec<(String, String)> {
    execution["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (l["key"].as_str().unwrap_or_default().to_string(), l["value"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn states_of(execution: &Value) -> Vec<String> {
    execution["state"]["histories"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["state"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn only_clients_with_a_certificate_of_the_ca_get_through_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = KestraDouble::start(dir.path(), KestraOptions::default()).await;
    let ping = format!("{}/ping", double.url());

    let anonymous = mtls_client_builder(double.ca_pem(), None).build().expect("client");
    let refused = anonymous.get(&ping).send().await;
    assert!(refused.is_err(), "a client without a certificate got {refused:?}");

    let foreign = ForeignPki::write(&dir.path().join("foreign"));
    let intruder = mtls_client_builder(double.ca_pem(), Some((&foreign.client_cert_pem, &foreign.client_key_pem)))
        .build()
        .expect("client");
    let refused = intruder.get(&ping).send().await;
    assert!(refused.is_err(), "a client with a foreign CA's certificate got {refused:?}");

    // Not TLS at all: refused in the handshake too, and the connection simply closed.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", double.port())).await.expect("connect");
        plain.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
        assert!(!String::from_utf8_lossy(&answer).contains("pong"), "plain HTTP got an answer");
    }

    // The refusals were the server's, in the handshake, and it kept serving.
    let logged =
        wait_until(Duration::from_secs(5), || async { double.output().matches("TLS handshake").count() >= 3 }).await;
    assert!(logged, "no handshake refusals logged:\n{}", double.output());
    let pong = double.client().get(&ping).send().await.expect("ping");
    assert_eq!(pong.status(), StatusCode::OK);
    assert_eq!(pong.text().await.expect("body"), "pong");

    // HTTP/2 is offered too (ALPN).
    let h2 = mtls_client_builder(double.ca_pem(), Some((double.client_cert_pem(), double.client_key_pem())))
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    let configs = h2
        .get(double.api_url("/configs"))
        .header("authorization", double.authorization())
        .send()
        .await
        .expect("configs over h2");
    assert_eq!(configs.version(), reqwest::Version::HTTP_2);
    assert_eq!(configs.status(), StatusCode::OK);
}

#[tokio::test]
async fn every_api_call_needs_the_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let basic = KestraDouble::start(&dir.path().join("basic"), KestraOptions::default()).await;
    let bearer = KestraDouble::start(
        &dir.path().join("bearer"),
        KestraOptions { credential: CredentialKind::Bearer, ..KestraOptions::default() },
    )
    .await;
    let Credential::Bearer { token } = bearer.credential().clone() else { panic!("bearer double without a token") };

    async fn refused(double: &KestraDouble, path: &str, authorization: Option<&str>) {
        let mut request = double.client().get(format!("{}{path}", double.url()));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path} with {authorization:?}");
        let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(challenge.as_deref(), Some(r#"Basic realm="Kestra""#));
        assert!(response.bytes().await.expect("body").is_empty(), "a 401 has an empty body");
    }
    for path in ["/api/v1/main/configs", "/api/v1/main/executions/search", "/api/v1/configs", "/__double/executions"] {
        refused(&basic, path, None).await;
        refused(&basic, path, Some("Basic Z2F0ZXdheUBxaXJpYS50ZXN0Ondyb25n")).await;
        refused(&basic, path, Some(&format!("Bearer {token}"))).await;
        refused(&bearer, path, None).await;
        refused(&bearer, path, Some(&basic.authorization())).await;
        refused(&bearer, path, Some("Bearer not-the-token")).await;
    }

    let configs = basic.request(Method::GET, "/api/v1/main/configs").send().await.expect("configs");
    let configs = json_of(configs, StatusCode::OK).await;
    assert_eq!(configs["version"], "2.0.3-double");
    assert_eq!(configs["isBasicAuthEnabled"], true);
    let configs = bearer.request(Method::GET, "/api/v1/configs").send().await.expect("configs");
    assert_eq!(json_of(configs, StatusCode::OK).await["isBasicAuthEnabled"], false);
    let pong = basic.client().get(format!("{}/ping", basic.url())).send().await.expect("ping");
    assert_eq!(pong.status(), StatusCode::OK, "/ping needs no credential");

    // The credential as the gateway's secret directory holds it.
    let secrets = dir.path().join("secrets");
    basic.write_credential(&secrets.join("basic")).expect("basic files");
    bearer.write_credential(&secrets.join("bearer")).expect("bearer files");
    let read = |p: &str| std::fs::read_to_string(secrets.join(p)).expect("secret file");
    let Credential::Basic { username, password } = basic.credential().clone() else { panic!("not basic") };
    assert_eq!((read("basic/username"), read("basic/password")), (username, password));
    assert_eq!(read("bearer/token"), token);
    assert!(!secrets.join("bearer/username").exists());
    basic.write_tls_secret(&secrets.join("tls")).expect("tls files");
    for file in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(read(&format!("tls/{file}")).starts_with("-----BEGIN"), "{file}");
    }
}

#[tokio::test]
async fn an_execution_is_created_found_at_once_searchable_after_the_index_delay_and_runs_to_its_outcome() {
    const DELAY: Duration = Duration::from_millis(3000);
    let dir = tempfile::tempdir().expect("tempdir");
    let options = KestraOptions { index_delay_ms: DELAY.as_millis() as u64, ..KestraOptions::default() };
    let double = KestraDouble::start(dir.path(), options).await;

    let sent = Instant::now();
    let created = create(
        &double,
        "qiria.demo/hello",
        &[("name", "world"), ("undeclared", "x")],
        &["qiria-job:J-1", "team: a:b "],
    )
    .await;
    let created = json_of(created, StatusCode::OK).await;
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 22, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    assert_eq!(created["state"]["current"], "CREATED");
    assert_eq!(states_of(&created), ["CREATED"]);
    assert!(created["state"]["startDate"].is_string() && created["state"]["duration"].is_string(), "{created}");
    assert!(created["state"].get("endDate").is_none(), "no endDate before the end: {created}");
    assert!(created.get("outputs").is_none(), "no outputs before the end: {created}");
    assert_eq!(created["namespace"], "qiria.demo");
    assert_eq!(created["flowId"], "hello");
    assert_eq!(created["flowRevision"], 1);
    assert_eq!(created["tenantId"], "main");
    assert_eq!(created["originalId"], id.as_str());
    assert_eq!(created["deleted"], false);
    assert_eq!(created["metadata"]["attemptNumber"], 1);
    assert_eq!(created["inputs"], json!({"name": "world"}), "undeclared parts are ignored");
    let url = created["url"].as_str().expect("url");
    assert_eq!(url, format!("{}/ui/main/executions/qiria.demo/hello/{id}", double.url()));
    let expected_labels = [("qiria-job", "J-1"), ("team", "a:b"), ("system.correlationId", id.as_str())]
        .map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(labels_of(&created), expected_labels);

    // GET reads the store: the execution is there at once, without the create's url.
    let got = get(&double, &id).await;
    assert_eq!(got["id"], id.as_str());
    assert!(got.get("url").is_none());

    // Search reads the index: not yet. Both query forms the gateway sends.
    let by_label = [("filters[labels][EQUALS][qiria-job]", "J-1"), ("filters[namespace][EQUALS]", "qiria.demo")];
    let legacy = [("labels", "qiria-job:J-1"), ("namespace", "qiria"), ("flowId", "hello")];
    let early = search(&double, &by_label).await;
    let early_legacy = search(&double, &legacy).await;
    // Everything above ran inside the delay, or the "not yet" would prove nothing.
    assert!(sent.elapsed() < DELAY, "the machine is too slow for this check: {:?} passed", sent.elapsed());
    assert_eq!(early, json!({"results": [], "total": 0}));
    assert_eq!(early_legacy, json!({"results": [], "total": 0}));
    assert_eq!(double.executions().await.len(), 1, "the ground truth has it");

    let indexed =
        wait_until(Duration::from_secs(15), || async { search(&double, &by_label).await["total"] == 1 }).await;
    assert!(indexed, "never indexed");
    assert!(sent.elapsed() >= DELAY, "indexed after {:?}, before the delay", sent.elapsed());
    let found = search(&double, &by_label).await;
    assert_eq!(found["results"][0]["id"], id.as_str());
    assert_eq!(search(&double, &legacy).await["results"][0]["id"], id.as_str());
    for other in [
        vec![("filters[labels][EQUALS][qiria-job]", "J-2")],
        vec![("filters[flowId][EQUALS]", "slow")],
        vec![("filters[namespace][EQUALS]", "qiria")],
        vec![("labels", "qiria-job:J-2")],
        vec![("namespace", "qiria.demo.x")],
    ] {
        assert_eq!(search(&double, &other).await["total"], 0, "{other:?}");
    }
    let paged = search(&double, &[("filters[flowId][EQUALS]", "hello"), ("page", "2"), ("size", "1")]).await;
    assert_eq!(paged, json!({"results": [], "total": 1}));

    let done = wait_for_state(&double, &id, "SUCCESS").await;
    assert_eq!(states_of(&done), ["CREATED", "RUNNING", "SUCCESS"]);
    assert_eq!(done["outputs"], json!({"greeting": "hello world"}));
    assert_eq!(done["state"]["endDate"], done["state"]["histories"][2]["date"]);
    let state = search(&double, &[("filters[state][IN]", "SUCCESS,FAILED")]).await;
    assert_eq!(state["total"], 1);

    // A flow without required inputs takes an empty body; it ends FAILED, without outputs.
    let response =
        double.request(Method::POST, "/api/v1/main/executions/qiria.demo/fails").send().await.expect("create");
    let failed = json_of(response, StatusCode::OK).await;
    let failed = wait_for_state(&double, failed["id"].as_str().expect("id"), "FAILED").await;
    assert!(failed.get("outputs").is_none(), "{failed}");
    assert_eq!(failed["inputs"], json!({}));
}

#[tokio::test]
async fn a_kill_ends_an_execution_in_killed_on_both_kill_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = KestraDouble::start(dir.path(), KestraOptions::default()).await;
    let first = created_id(&double, "qiria.demo/slow").await;
    wait_for_state(&double, &first, "RUNNING").await;
    let path = format!("/api/v1/main/executions/{first}/actions/kill");
    let killing = double.request(Method::DELETE, &path).send().await.expect("kill");
    let killing = json_of(killing, StatusCode::ACCEPTED).await;
    assert_eq!(killing["id"], first.as_str());
    assert_eq!(killing["state"]["current"], "KILLING");
    let killed = wait_for_state(&double, &first, "KILLED").await;
    assert_eq!(states_of(&killed), ["CREATED", "RUNNING", "KILLING", "KILLED"]);
    assert!(killed["state"]["endDate"].is_string());

    // Kestra 1.x's path: 202 and no body.
    let second = created_id(&double, "qiria.demo/slow").await;
    let legacy = format!("/api/v1/main/executions/{second}/kill");
    let response = double.request(Method::DELETE, &legacy).send().await.expect("legacy kill");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.bytes().await.expect("body").is_empty());
    wait_for_state(&double, &second, "KILLED").await;

    // A finished execution: refused only without the cascade.
    let no_cascade = double.request(Method::DELETE, &path).query(&[("isOnKillCascade", "false")]);
    let response = no_cascade.send().await.expect("kill");
    assert_kestra_error(
        response,
        StatusCode::CONFLICT,
        "Illegal state: Execution is already finished, can't kill it",
        &path,
    )
    .await;
    let again = double.request(Method::DELETE, &path).send().await.expect("kill");
    assert_eq!(json_of(again, StatusCode::ACCEPTED).await["state"]["current"], "KILLED");
    let again = double.request(Method::DELETE, &legacy).query(&[("isOnKillCascade", "true")]).send().await;
    assert_eq!(again.expect("kill").status(), StatusCode::ACCEPTED);

    for unknown in ["/api/v1/main/executions/0000000000000000000000/actions/kill", "/api/v1/main/executions/nope/kill"]
    {
        let response = double.request(Method::DELETE, unknown).send().await.expect("kill");
        assert_kestra_error(response, StatusCode::NOT_FOUND, "Not Found", unknown).await;
    }
    // #18759: a POST to the kill path is a create of flow `kill`.
    let post = format!("/api/v1/main/executions/{second}/kill");
    let response = double.request(Method::POST, &post).send().await.expect("post");
    assert_kestra_error(response, StatusCode::NOT_FOUND, "Not Found: Requested Flow is not found.", &post).await;
    assert_eq!(double.executions().await.len(), 2);
}

/// Flow, inputs, labels; the status and message start Kestra answers.
type RefusedCreate =
    (&'static str, &'static [(&'static str, &'static str)], &'static [&'static str], StatusCode, &'static str);

#[tokio::test]
async fn refusals_carry_kestras_status_and_json_error_and_create_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = KestraOptions { max_body_bytes: 64 * 1024, ..KestraOptions::default() };
    let double = KestraDouble::start(dir.path(), options).await;
    let create_path = |flow: &str| format!("/api/v1/main/executions/{flow}");

    let cases: [RefusedCreate; 7] = [
        ("qiria.demo/nope", &[], &[], StatusCode::NOT_FOUND, "Not Found: Requested Flow is not found."),
        ("qiria.demo/disabled", &[], &[], StatusCode::CONFLICT, "Illegal state: Requested Flow is disabled."),
        ("qiria.secret/payroll", &[], &[], StatusCode::FORBIDDEN, "Forbidden"),
        (
            "qiria.demo/hello",
            &[("name", "x")],
            &["qiria-job:"],
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid queryString parameter",
        ),
        (
            "qiria.demo/hello",
            &[("name", "x")],
            &["nocolon"],
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid queryString parameter",
        ),
        (
            "qiria.demo/hello",
            &[("name", "x")],
            &["system.from:api"],
            StatusCode::UNPROCESSABLE_ENTITY,
            "Illegal argument: System labels can only be set by Kestra itself",
        ),
        ("qiria.demo/hello", &[("name", "x")], &["a:1", "a:2"], StatusCode::CONFLICT, "Illegal state: Duplicate key a"),
    ];
    for (flow, inputs, labels, status, message) in cases {
        assert_kestra_error(create(&double, flow, inputs, labels).await, status, message, &create_path(flow)).await;
    }

    let missing = create(&double, "qiria.demo/hello", &[], &["qiria-job:1"]).await;
    let body = assert_kestra_error(
        missing,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid entity: ",
        &create_path("qiria.demo/hello"),
    )
    .await;
    assert_eq!(
        body["_embedded"]["errors"],
        json!([{"message": "Invalid input for `name`, missing required input, but received `null`", "path": "name"}])
    );

    let other_tenant = "/api/v1/elsewhere/executions/search";
    let response = double.request(Method::GET, other_tenant).send().await.expect("search");
    assert_kestra_error(response, StatusCode::NOT_FOUND, "Not Found", other_tenant).await;
    let unknown = "/api/v1/main/executions/0000000000000000000000";
    let response = double.request(Method::GET, unknown).send().await.expect("get");
    assert_kestra_error(response, StatusCode::NOT_FOUND, "Not Found", unknown).await;
    let search_path = "/api/v1/main/executions/search";
    for query in
        [[("filters[startDate][GREATER_THAN]", "2025-01-01T00:00:00Z")], [("filters[namespace][REGEX]", "q.*")]]
    {
        let response = double.request(Method::GET, search_path).query(&query).send().await.expect("search");
        assert_kestra_error(response, StatusCode::BAD_REQUEST, "Invalid query filters", search_path).await;
    }
    let path = create_path("qiria.demo/hello");
    let json_body = double.request(Method::POST, &path).json(&json!({"name": "x"})).send().await.expect("create");
    assert_kestra_error(json_body, StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type", &path).await;
    let huge = "x".repeat(100 * 1024);
    let too_large = double
        .request(Method::POST, &path)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(multipart(&[("name", &huge)], &[]))
        .send()
        .await
        .expect("create");
    assert_kestra_error(too_large, StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large", &path).await;

    assert!(
        double.executions().await.is_empty(),
        "a refused create created something: {:?}",
        double.executions().await
    );
}

#[tokio::test]
async fn file_inputs_and_flow_labels_follow_kestra() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow: FlowSpec = serde_json::from_value(json!({
        "namespace": "qiria.files", "id": "ingest", "run_ms": 50,
        "labels": [{"key": "team", "value": "data"}, {"key": "tier", "value": "1"}],
        "inputs": [
            {"id": "report", "type": "FILE"},
            {"id": "legacy", "type": "FILE", "required": false},
            {"id": "count", "type": "INT", "defaults": 3},
            {"id": "note", "type": "STRING", "required": false}
        ]
    }))
    .expect("flow");
    let double = KestraDouble::start(dir.path(), KestraOptions { flows: vec![flow], ..KestraOptions::default() }).await;
    let path = "/api/v1/main/executions/qiria.files/ingest";
    let body = multipart(&[], &[("report", "q1.csv", b"a,b\n1,2\n"), ("files", "legacy", b"old style")]);
    let response = double
        .request(Method::POST, path)
        .query(&[("labels", "tier:2"), ("labels", "system.correlationId:job-7")])
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body)
        .send()
        .await
        .expect("create");
    let created = json_of(response, StatusCode::OK).await;
    let id = created["id"].as_str().expect("id");
    assert_eq!(
        created["inputs"],
        json!({
            "report": format!("kestra:///qiria/files/ingest/executions/{id}/inputs/report/q1.csv"),
            "legacy": format!("kestra:///qiria/files/ingest/executions/{id}/inputs/legacy/legacy"),
            "count": 3
        })
    );
    let labels = [("team", "data"), ("tier", "2"), ("system.correlationId", "job-7")]
        .map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(labels_of(&created), labels, "flow labels, then the request's; a caller's correlation id is kept");
    // Only that flow exists: the built-in ones are replaced.
    let response = create(&double, "qiria.demo/hello", &[("name", "x")], &[]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn faults_shape_the_next_creates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = KestraDouble::start(dir.path(), KestraOptions::default()).await;
    let path = "/api/v1/main/executions/qiria.demo/hello";
    double.fault(json!([{"status": 503}, {"status": 500, "after_create": true}, {"delay_ms": 3000}])).await;

    let unavailable = create(&double, "qiria.demo/hello", &[("name", "a")], &[]).await;
    assert_kestra_error(unavailable, StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", path).await;
    assert!(double.executions().await.is_empty(), "a 503 fault creates nothing");

    let failed_after = create(&double, "qiria.demo/hello", &[("name", "b")], &[]).await;
    assert_kestra_error(failed_after, StatusCode::INTERNAL_SERVER_ERROR, "Internal server error", path).await;
    assert_eq!(double.executions().await.len(), 1, "a 500 after_create fault leaves the execution");

    // The delay is the property here: a client that gives up before it sees no answer,
    // although the execution exists.
    let impatient = mtls_client_builder(double.ca_pem(), Some((double.client_cert_pem(), double.client_key_pem())))
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let timed_out = impatient
        .post(double.api_url("/executions/qiria.demo/hello"))
        .header("authorization", double.authorization())
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(multipart(&[("name", "c")], &[]))
        .send()
        .await;
    assert!(timed_out.as_ref().is_err_and(reqwest::Error::is_timeout), "{timed_out:?}");
    let all = double.executions().await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1]["inputs"]["name"], "c");

    let normal = create(&double, "qiria.demo/hello", &[("name", "d")], &[]).await;
    assert_eq!(normal.status(), StatusCode::OK, "the queue is empty again");

    double.fault(json!({"status": 503})).await;
    double.reset().await;
    let after_reset = create(&double, "qiria.demo/hello", &[("name", "e")], &[]).await;
    assert_eq!(after_reset.status(), StatusCode::OK, "reset drops queued faults");

    let bad =
        double.request(Method::POST, "/__double/faults").json(&json!([{"status": 200}])).send().await.expect("fault");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_store_is_bounded_and_drops_the_oldest_finished_execution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = KestraDouble::start(dir.path(), KestraOptions { max_executions: 3, ..KestraOptions::default() }).await;
    let slow = json_of(create(&double, "qiria.demo/slow", &[], &[]).await, StatusCode::OK).await;
    let mut finished = Vec::new();
    for _ in 0..2 {
        let failed = json_of(create(&double, "qiria.demo/fails", &[], &[]).await, StatusCode::OK).await;
        let id = failed["id"].as_str().expect("id").to_string();
        wait_for_state(&double, &id, "FAILED").await;
        finished.push(id);
    }
    let newest = json_of(create(&double, "qiria.demo/slow", &[], &[]).await, StatusCode::OK).await;
    let ids: Vec<Value> = double.executions().await.into_iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, [slow["id"].clone(), json!(finished[1]), newest["id"].clone()]);
}

/// The workspace's Python with kestrapy 2.0.3; panics saying how to install it otherwise.
fn kestrapy_python() -> std::path::PathBuf {
    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "no {} (the workspace's venv): create it with ./dev, then install kestrapy",
        python.display()
    );
    let probe = Command::new(&python)
        .args(["-W", "ignore", "-c", "import importlib.metadata as m, kestrapy; print(m.version('kestrapy'))"])
        .output()
        .expect("run python");
    let version = String::from_utf8_lossy(&probe.stdout).trim().to_string();
    assert!(
        probe.status.success() && version == "2.0.3",
        "kestrapy 2.0.3 is not usable in {} (found {version:?}): run `{} -m pip install kestrapy==2.0.3 regex` \
         (kestrapy imports `regex` without declaring it)\n{}",
        python.display(),
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

/// Runs the kestrapy script against `double`; what it printed if it found a mismatch.
fn run_kestrapy(python: &Path, double: &KestraDouble, index_delay_ms: u64) -> Result<(), String> {
    let script = workspace_root().join("test-support/tests/kestrapy_contract.py");
    let mut command = Command::new(python);
    command
        .arg(&script)
        .args(["--url", &double.url(), "--tenant", double.tenant()])
        .arg("--ca")
        .arg(double.ca_pem())
        .arg("--cert")
        .arg(double.client_cert_pem())
        .arg("--key")
        .arg(double.client_key_pem())
        .args(["--index-delay-ms", &index_delay_ms.to_string()]);
    // Secrets go by environment, not argv (visible to every process).
    match double.credential() {
        Credential::Basic { username, password } => {
            command.env("KESTRA_USERNAME", username).env("KESTRA_PASSWORD", password)
        }
        Credential::Bearer { token } => command.env("KESTRA_TOKEN", token),
    };
    let out = command.output().expect("run the kestrapy script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stdout.contains("kestrapy contract: OK") {
        return Ok(());
    }
    Err(format!(
        "kestrapy found the double unfaithful ({}):\n{stdout}\n{stderr}\n--- double's log ---\n{}",
        out.status,
        double.output()
    ))
}

#[tokio::test]
async fn kestrapy_drives_the_double_with_basic_auth() {
    let python = kestrapy_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let double =
        KestraDouble::start(dir.path(), KestraOptions { index_delay_ms: 1000, ..KestraOptions::default() }).await;
    let outcome =
        tokio::task::spawn_blocking(move || run_kestrapy(&python, &double, 1000)).await.expect("kestrapy run");
    if let Err(report) = outcome {
        panic!("{report}");
    }
}

#[tokio::test]
async fn kestrapy_drives_the_double_with_a_bearer_token() {
    let python = kestrapy_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let options =
        KestraOptions { credential: CredentialKind::Bearer, index_delay_ms: 1000, ..KestraOptions::default() };
    let double = KestraDouble::start(dir.path(), options).await;
    let outcome =
        tokio::task::spawn_blocking(move || run_kestrapy(&python, &double, 1000)).await.expect("kestrapy run");
    if let Err(report) = outcome {
        panic!("{report}");
    }
}
