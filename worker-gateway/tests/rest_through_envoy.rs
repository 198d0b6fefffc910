//! The job API's REST form through a real Envoy + authz, as curl would call it, and straight to
//! the gateway's port: the same service answers as over gRPC (owners, roles, idempotency,
//! validation naming the field, watching), authz decides on the path (a flow off the
//! allowlist never reaches the gateway), and every refusal is JSON in one shape.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use qiria_test_support::authz::Stack;
use serde_json::{json, Value};

fn authz() -> String {
    qiria_test_support::binary("authz").display().to_string()
}

const HELLO: &str = "/v1/flows/qiria.demo/hello/executions";

/// A REST call: HTTP/1.1, as curl sends it by default.
struct Call {
    method: reqwest::Method,
    url: String,
    token: Option<String>,
    headers: Vec<(&'static str, String)>,
    body: Option<(&'static str, Vec<u8>)>,
}

impl Call {
    fn new(method: &str, url: String) -> Self {
        let method = method.parse().expect("method");
        Self { method, url, token: None, headers: Vec::new(), body: None }
    }
    fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn json(self, body: &Value) -> Self {
        self.raw("application/json", serde_json::to_vec(body).expect("json"))
    }
    fn raw(mut self, content_type: &'static str, body: Vec<u8>) -> Self {
        self.body = Some((content_type, body));
        self
    }
    fn request(self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut request = client.request(self.method, self.url);
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        if let Some((content_type, body)) = self.body {
            request = request.header("content-type", content_type).body(body);
        }
        request
    }
    /// The status and the JSON body (`Value::Null` when the body is not JSON).
    async fn send(self, client: &reqwest::Client) -> (u16, Value) {
        let response = self.request(client).send().await.expect("the call is answered");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Refused by authz at Envoy (its answers carry the decision id), not by the gateway.
fn by_authz(body: &Value) -> bool {
    body["decision_id"].as_str().is_some_and(|id| id.len() == 36)
}

fn ids(list: &Value) -> Vec<String> {
    list["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_str().unwrap_or_default().to_string()).collect()
}

/// The lines of a job's events stream read so far, as JSON, reading on until `until` holds for
/// them or the stream ends (`true` when it ended).
async fn read_lines(
    response: &mut reqwest::Response,
    buffer: &mut Vec<u8>,
    lines: &mut Vec<Value>,
    until: impl Fn(&[Value]) -> bool,
) -> bool {
    loop {
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            lines.push(serde_json::from_slice(&line).expect("each line is one JSON object"));
        }
        if until(lines) {
            return false;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.expect("a line in time");
        match chunk.expect("the stream reads") {
            Some(bytes) => buffer.extend_from_slice(&bytes),
            None => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_through_envoy_is_the_same_job_api() {
    let stack = Stack::with_gateway(&authz()).await;
    let http = qiria_test_support::client(false);
    let url = |path: &str| stack.envoy.url(path);
    let (alice, bob) = (stack.token("alice", &["User"]), stack.token("bob", &["User"]));
    let (auditor, admin) = (stack.token("audrey", &["Auditor"]), stack.token("root", &["Admin"]));
    let inputs =
        json!({"inputs": {"when": "'; DROP TABLE jobs; -- $(rm -rf /) {{ 7*7 }}"}, "labels": {"team": "data"}});

    // A User triggers a flow: it waits (no Kestra here) and says why.
    let trigger = || Call::new("POST", url(HELLO)).token(&alice);
    let (status, first) = trigger().header("idempotency-key", "rest-1").json(&inputs).send(&http).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!((first["owner"].as_str(), first["state"].as_str()), (Some("alice"), Some("JOB_STATE_QUEUED")));
    assert_eq!((first["namespace"].as_str(), first["flow_id"].as_str()), (Some("qiria.demo"), Some("hello")));
    assert_eq!((first["kind"].as_str(), first["idempotency_key"].as_str()), (Some("JOB_KIND_FLOW"), Some("rest-1")));
    assert!(first["reason"].as_str().unwrap_or_default().contains("no Kestra"), "{first}");
    assert!(first["created_at"].is_i64(), "seconds as a JSON number: {first}");
    let first_id = first["id"].as_str().expect("an id").to_string();
    // The same key again, by header or in the body (either JSON name), is the same job.
    let (_, again) = trigger().header("idempotency-key", "rest-1").json(&inputs).send(&http).await;
    assert_eq!(again["id"], first_id.as_str(), "one job per idempotency key");
    let (_, again) = trigger().json(&json!({"idempotencyKey": "rest-1"})).send(&http).await;
    assert_eq!(again["id"], first_id.as_str(), "lowerCamelCase names are read too");
    let (status, body) =
        trigger().header("idempotency-key", "rest-1").json(&json!({"idempotency_key": "other"})).send(&http).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("/idempotency_key")), "{body}");
    // The body is optional; the path names the flow, which the body may not contradict.
    let (status, second) = trigger().send(&http).await;
    assert_eq!(status, 200, "{second}");
    let second_id = second["id"].as_str().expect("an id").to_string();
    assert_ne!(second_id, first_id);
    let (status, body) = trigger().json(&json!({"namespace": "company.team"})).send(&http).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("/namespace")), "{body}");
    let script = json!({"language": "python", "body": "print('hi')"});
    let (status, bobs) = Call::new("POST", url("/v1/jobs/scripts")).token(&bob).json(&script).send(&http).await;
    assert_eq!(status, 200, "{bobs}");
    assert!(bobs["reason"].as_str().unwrap_or_default().contains("scripting worker"), "{bobs}");

    // Reads: a User their own jobs, an Auditor every job; a page at a time.
    let get = |id: &str, token: &str| Call::new("GET", url(&format!("/v1/jobs/{id}"))).token(token);
    let (status, job) = get(&first_id, &alice).send(&http).await;
    assert_eq!((status, job["id"].as_str()), (200, Some(first_id.as_str())));
    let list = |token: &str, query: &str| Call::new("GET", url(&format!("/v1/jobs{query}"))).token(token);
    let (status, mine) = list(&alice, "").send(&http).await;
    let mut both = vec![first_id.clone(), second_id.clone()];
    both.sort();
    let mut listed = ids(&mine);
    listed.sort();
    assert_eq!((status, listed), (200, both.clone()));
    // Newest first, ties (the same second) by id: two pages of one are the two jobs.
    let (_, page) = list(&alice, "?page_size=1&page_token=").send(&http).await;
    let token = page["next_page_token"].as_str().expect("a next page").to_string();
    let (_, next) = list(&alice, &format!("?page_size=1&page_token={token}")).send(&http).await;
    let mut paged = [ids(&page), ids(&next)].concat();
    assert_eq!(paged.len(), 2, "{page} {next}");
    paged.sort();
    assert_eq!(paged, both);
    let (status, body) = list(&alice, "?sort=owner").send(&http).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("/sort")), "{body}");
    let (status, body) = list(&alice, "?page_size=1000").send(&http).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("/page_size")), "{body}");
    let (status, all) = list(&auditor, "").send(&http).await;
    assert_eq!((status, ids(&all).len()), (200, 3), "the Auditor reads every job: {all}");
    let (status, job) = get(&first_id, &auditor).send(&http).await;
    assert_eq!((status, job["owner"].as_str()), (200, Some("alice")));

    // An Auditor submits and cancels nothing: authz refuses at Envoy, on the path.
    let (status, body) = Call::new("POST", url(HELLO)).token(&auditor).json(&inputs).send(&http).await;
    assert!(status == 403 && by_authz(&body), "{status} {body}");
    let cancel = |id: &str, token: &str| Call::new("POST", url(&format!("/v1/jobs/{id}/cancel"))).token(token);
    let (status, body) = cancel(&first_id, &auditor).send(&http).await;
    assert!(status == 403 && by_authz(&body), "{status} {body}");

    // Another User can neither see nor cancel alice's jobs, nor learn they exist.
    let (status, body) = get(&first_id, &bob).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    assert!(!by_authz(&body), "the gateway's own answer: {body}");
    assert_eq!(cancel(&first_id, &bob).send(&http).await.0, 404);
    let (_, his) = list(&bob, "").send(&http).await;
    assert_eq!(ids(&his), vec![bobs["id"].as_str().unwrap_or_default().to_string()]);

    // Bad requests are refused naming the field, as a JSON pointer; nothing is recorded.
    let (status, body) = trigger().json(&json!({"extra": 1})).send(&http).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!((body["error"].as_str(), body["field"].as_str()), (Some("invalid_argument"), Some("/extra")));
    let (status, body) = trigger().json(&json!({"inputs": {"when": "a\u{0}b"}})).send(&http).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("/inputs/when")), "{body}");
    assert_eq!(body["message"], "/inputs/when: must not contain NUL");
    let (status, body) = trigger().json(&json!({"inputs": {"when": 7}})).send(&http).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("/inputs/when")), "{body}");
    let (status, body) = trigger().raw("application/json", b"{\"inputs\":".to_vec()).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_argument")), "{body}");
    let (status, body) = trigger().raw("text/plain", b"{}".to_vec()).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (415, Some("unsupported_media_type")), "{body}");
    let big = json!({"inputs": {"when": "x".repeat(300 * 1024)}});
    let (status, body) = trigger().json(&big).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("payload_too_large")), "{body}");
    assert_eq!(ids(&list(&alice, "").send(&http).await.1).len(), 2, "no refused request made a job");

    // A flow off the allowlist: authz refuses from the path; the gateway never hears of it.
    let off = Call::new("POST", url("/v1/flows/company.team/weekly/executions")).token(&alice).json(&inputs);
    let (status, body) = off.send(&http).await;
    assert!(status == 403 && by_authz(&body), "{status} {body}");

    // alice watches her second job; an Admin cancels it; the stream says so and ends.
    let events = Call::new("GET", url(&format!("/v1/jobs/{second_id}/events"))).token(&alice);
    let mut stream = events.request(&http).send().await.expect("the stream opens");
    assert_eq!(stream.status(), 200);
    let content_type = stream.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(content_type, "application/x-ndjson");
    let (mut buffer, mut lines) = (Vec::new(), Vec::new());
    assert!(!read_lines(&mut stream, &mut buffer, &mut lines, |l| !l.is_empty()).await, "the first event");
    assert_eq!(lines[0]["job"]["state"], "JOB_STATE_QUEUED", "{lines:?}");
    let (status, cancelled) = cancel(&second_id, &admin).send(&http).await;
    assert_eq!((status, cancelled["state"].as_str()), (200, Some("JOB_STATE_CANCELLED")), "{cancelled}");
    assert!(read_lines(&mut stream, &mut buffer, &mut lines, |_| false).await, "the stream ends with the job");
    let last = lines.last().expect("events");
    assert_eq!(last["job"]["state"], "JOB_STATE_CANCELLED", "{lines:?}");
    assert!(lines.iter().all(|l| l.as_object().is_some_and(|o| o.len() == 1 && o.contains_key("job"))), "{lines:?}");
    // A finished job cannot be cancelled again; alice cancels her own live job.
    let (status, body) = cancel(&second_id, &alice).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("failed_precondition")), "{body}");
    let (status, own) = cancel(&first_id, &alice).send(&http).await;
    assert_eq!((status, own["state"].as_str()), (200, Some("JOB_STATE_CANCELLED")), "{own}");

    // No token: authz answers 401 before anything reaches the gateway.
    let (status, body) = Call::new("GET", url("/v1/jobs")).send(&http).await;
    assert!(status == 401 && by_authz(&body), "{status} {body}");

    // Audited, without the inputs or the script.
    let output = stack.gateway.as_ref().expect("a gateway").output();
    assert!(output.contains("job_submitted") && output.contains("job_cancelled"), "{output}");
    assert!(!output.contains("DROP TABLE") && !output.contains("print('hi')"), "request contents reached the log");
}

#[tokio::test]
async fn straight_to_the_gateways_port_no_valid_token_means_no_access() {
    let stack = Stack::with_gateway(&authz()).await;
    let http = qiria_test_support::client(false);
    let direct = |path: &str| format!("{}{path}", stack.gateway.as_ref().expect("a gateway").url());

    // Forged identity headers, no token: the gateway reads only the token.
    let forged = |call: Call| {
        call.header("x-qiria-subject", "alice").header("x-qiria-roles", "Admin").header("x-qiria-decision-id", "x")
    };
    let (status, body) = forged(Call::new("POST", direct(HELLO))).json(&json!({})).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthenticated")), "{body}");
    let response = forged(Call::new("GET", direct("/v1/jobs"))).request(&http).send().await.expect("answered");
    assert_eq!(response.status(), 401);
    let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok());
    assert_eq!(challenge, Some("Bearer realm=\"qiria\""));
    let stranger = qiria_test_support::tokens::SigningKey::rsa("test-rsa-1");
    let unsigned = stranger.sign(&qiria_test_support::tokens::claims("alice", &["Admin"]));
    assert_eq!(Call::new("GET", direct("/v1/jobs")).token(&unsigned).send(&http).await.0, 401);
    // Authentication comes before the body is read: a bad body without a token learns 401,
    // not what is wrong with the body.
    let (status, body) = Call::new("POST", direct(HELLO)).json(&json!({"extra": 1})).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthenticated")), "{body}");

    // A valid token is the gateway's own gate, over plain HTTP/1.1 with no Envoy.
    let alice = stack.token("alice", &["User"]);
    let (status, job) = Call::new("POST", direct(HELLO)).token(&alice).send(&http).await;
    assert_eq!(status, 200, "{job}");
    let auditor = stack.token("audrey", &["Auditor"]);
    let (status, body) = Call::new("POST", direct(HELLO)).token(&auditor).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("permission_denied")), "the gateway refuses: {body}");
    // Off the allowlist, with no authz in front: the gateway asks the policy itself.
    let (status, body) =
        Call::new("POST", direct("/v1/flows/company.team/weekly/executions")).token(&alice).send(&http).await;
    assert_eq!(status, 403, "{body}");

    // Its own bounds and refusals, JSON too.
    let big = json!({"inputs": {"when": "x".repeat(300 * 1024)}});
    let (status, body) = Call::new("POST", direct(HELLO)).token(&alice).json(&big).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("payload_too_large")), "{body}");
    let (status, body) = Call::new("GET", direct("/v1/nothing")).token(&alice).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    let id = job["id"].as_str().unwrap_or_default();
    let (status, body) = Call::new("DELETE", direct(&format!("/v1/jobs/{id}"))).token(&alice).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (405, Some("method_not_allowed")), "{body}");
    let (status, body) = Call::new("GET", direct("/v1/jobs/not-a-job")).token(&alice).send(&http).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
}

/// JSON values of every kind, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The names `TriggerFlowRequest` defines, proto and JSON spellings.
const KNOWN: &[&str] = &["namespace", "flow_id", "flowId", "inputs", "labels", "idempotency_key", "idempotencyKey"];

#[test]
fn json_objects_with_one_unknown_key_are_refused_naming_that_key() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stack = runtime.block_on(Stack::with_gateway(&authz()));
    let http = qiria_test_support::client(false);
    let alice = stack.token("alice", &["User"]);
    let url = stack.envoy.url(HELLO);
    let strategy = (
        // Any printable key, `/` and `~` included (a JSON pointer escapes them), none known.
        "\\PC{1,16}|[a-z/~]{1,6}".prop_filter("not a field", |k| !KNOWN.contains(&k.as_str())),
        any_json(),
        prop::collection::btree_map("[a-z][a-z0-9_]{0,8}", "[^\u{0}]{0,20}", 0..3),
    );
    let mut runner = TestRunner::new(Config { cases: 1_000, failure_persistence: None, ..Config::default() });
    let outcome = runner.run(&strategy, |(key, value, inputs)| {
        let mut body = json!({"inputs": inputs, "labels": {"team": "data"}});
        body[key.as_str()] = value;
        let (status, refused) = runtime.block_on(Call::new("POST", url.clone()).token(&alice).json(&body).send(&http));
        let pointer = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
        prop_assert_eq!(status, 400, "{}", refused);
        prop_assert_eq!(refused["field"].as_str(), Some(pointer.as_str()), "{}", refused);
        prop_assert_eq!(refused["error"].as_str(), Some("invalid_argument"));
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    let list = Call::new("GET", stack.envoy.url("/v1/jobs")).token(&alice);
    let (_, jobs) = runtime.block_on(list.send(&http));
    assert_eq!(ids(&jobs), Vec::<String>::new(), "no refused request made a job");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// SQL, shell and template text in inputs is read as the data it is, unchanged.
    #[test]
    fn hostile_strings_in_inputs_read_unchanged(
        value in (prop::collection::vec(prop::sample::select(vec![
            "'; DROP TABLE jobs; --", "$(rm -rf /)", "`id`", "{{ 7*7 }}", "${jndi:ldap://x/a}", "<%= 7*7 %>",
            "\\\"", "\r\nX-Injected: 1", "%00", "🦀",
        ]), 1..4), "[^\u{0}]{0,20}").prop_map(|(parts, tail)| parts.concat() + &tail),
    ) {
        let request: worker_gateway::pb::TriggerFlowRequest =
            worker_gateway::json::decode(json!({"inputs": {"when": value.clone()}})).expect("reads");
        prop_assert_eq!(&request.inputs["when"], &value);
    }
}
