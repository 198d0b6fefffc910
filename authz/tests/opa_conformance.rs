//! OPA-Envoy policy shapes beyond `opa_envoy_compat.rs`, each through a real Envoy and authz,
//! each with requests it allows and requests it denies: a JWT verified in Rego against a JWKS
//! held in `data`, rules on `parsed_query` and headers, every field of the result object, and
//! a rule on the client certificate of a mutual-TLS listener.
//!
//! Where authz answers differently from OPA-Envoy the assertion states authz's behaviour and a
//! comment says what OPA-Envoy does: a denial of a request without a valid Qiria identity is a
//! 401 with a `Bearer` challenge and a JSON body (OPA-Envoy: 403, empty body), unless the
//! policy sets `http_status`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use qiria_test_support::authz::{copy_dir, Authz, Stack};
use qiria_test_support::call::{Protocol::Http1, Reply};
use qiria_test_support::envoy::Envoy;
use qiria_test_support::tls::{pki, TestPki};
use qiria_test_support::tokens::{now, tampered, SigningKey};
use qiria_test_support::upstream::{Echo, EchoUpstream};
use qiria_test_support::wait_until;
use serde_json::json;

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A denial authz answers on its own terms for a request without a valid Qiria identity (the
/// policy set no status): 401 with a challenge. OPA-Envoy answers 403 without a body.
#[track_caller]
fn assert_denied_unauthenticated(reply: &Reply, case: &str) {
    assert_eq!(reply.status, 401, "{case}: {}", reply.body);
    assert!(!reply.reached_upstream(), "{case}");
    assert!(reply.headers.get("www-authenticate").is_some(), "{case}");
}

// ---------------------------------------------------------------------------------------------
// 1. RS256 tokens verified in Rego against a JWKS in `data`.
// ---------------------------------------------------------------------------------------------

const IDP: &str = "https://idp.example";
const API_AUDIENCE: &str = "orders-api";

/// One TLV of DER with the expected tag: its content and what follows it.
fn der(bytes: &[u8], tag: u8) -> (&[u8], &[u8]) {
    assert_eq!(bytes[0], tag, "unexpected DER tag");
    let (len, start) = match bytes[1] {
        short if short < 0x80 => (usize::from(short), 2),
        0x81 => (usize::from(bytes[2]), 3),
        0x82 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
        other => panic!("DER length form {other:#x}"),
    };
    (&bytes[start..start + len], &bytes[start + len..])
}

/// The public JWK (RFC 7517) of an RSA signing key, as an identity provider publishes it.
fn rsa_jwk(key: &SigningKey) -> serde_json::Value {
    let body: String = key.public_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let spki = STANDARD.decode(body).expect("SPKI base64");
    // SubjectPublicKeyInfo { AlgorithmIdentifier, BIT STRING { RSAPublicKey { n, e } } }
    let (spki, _) = der(&spki, 0x30);
    let (_algorithm, rest) = der(spki, 0x30);
    let (bits, _) = der(rest, 0x03);
    let (rsa, _) = der(&bits[1..], 0x30);
    let (n, rest) = der(rsa, 0x02);
    let (e, _) = der(rest, 0x02);
    let unsigned = |b: &[u8]| b.iter().position(|&x| x != 0).map_or(Vec::new(), |i| b[i..].to_vec());
    json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": key.kid,
        "n": URL_SAFE_NO_PAD.encode(unsigned(n)), "e": URL_SAFE_NO_PAD.encode(unsigned(e)),
    })
}

/// The identity provider's claims: `role`, its issuer and our audience, five minutes to live.
fn idp_claims(role: &str) -> serde_json::Value {
    let now = now();
    json!({"iss": IDP, "aud": API_AUDIENCE, "sub": "ada", "role": role, "iat": now, "exp": now + 300})
}

#[tokio::test]
async fn rs256_tokens_verified_in_rego_against_a_jwks_in_data() {
    // The provider publishes two keys; the bundle holds its JWKS as data.jwks.
    let (signing, rotated) = (SigningKey::rsa("idp-1"), SigningKey::rsa("idp-2"));
    let bundle = tempfile::tempdir().unwrap();
    copy_dir(&fixture("opa-envoy-jwks"), bundle.path());
    std::fs::create_dir(bundle.path().join("jwks")).unwrap();
    let jwks = json!({"keys": [rsa_jwk(&signing), rsa_jwk(&rotated)]});
    std::fs::write(bundle.path().join("jwks/data.json"), jwks.to_string()).unwrap();
    let stack = Stack::with_policy(AUTHZ, bundle.path(), &["--decision-rule", "data.envoy.authz.allow"]).await;
    let send = |method: &'static str, path: &'static str, token: String| {
        let stack = &stack;
        async move { stack.send(Http1, method, path, Some(&token), &[]).await }
    };
    let with = |role: &str, field: &str, value: serde_json::Value| {
        let mut claims = idp_claims(role);
        claims[field] = value;
        claims
    };

    // Allowed: the role's method and path glob, signed by either key of the set.
    let reply = send("GET", "/orders/7", signing.sign(&idp_claims("viewer"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.upstream_header("authorization").is_empty(), "authz strips the token on allow");
    assert_eq!(send("POST", "/orders", signing.sign(&idp_claims("clerk"))).await.status, 200);
    assert_eq!(send("GET", "/orders/7", rotated.sign(&idp_claims("clerk"))).await.status, 200, "second key");
    // `aud` as an array holding our audience is our audience (OPA's validAudience).
    let audiences = with("viewer", "aud", json!(["billing", API_AUDIENCE]));
    assert_eq!(send("GET", "/orders/7", signing.sign(&audiences)).await.status, 200);

    // Denied by the role table: a viewer may not POST; `*` does not cross a `/`.
    let viewer = signing.sign(&idp_claims("viewer"));
    assert_denied_unauthenticated(&send("POST", "/orders", viewer.clone()).await, "viewer POST");
    assert_denied_unauthenticated(&send("GET", "/orders/7/lines", viewer.clone()).await, "glob depth");

    // Denied by io.jwt.decode_verify.
    let stranger = SigningKey::rsa("idp-1"); // the kid of a key in the set, another key
    let unknown = SigningKey::rsa("nobody"); // a kid not in the set: every RS256 key is tried
    let cases: Vec<(&str, String)> = vec![
        ("tampered role", tampered(&viewer, |p| p["role"] = "clerk".into())),
        ("expired", signing.sign(&with("clerk", "exp", json!(now() - 60)))),
        ("not yet valid", signing.sign(&with("clerk", "nbf", json!(now() + 600)))),
        ("wrong audience", signing.sign(&with("clerk", "aud", json!("billing")))),
        ("no audience", {
            let mut claims = idp_claims("clerk");
            claims.as_object_mut().unwrap().remove("aud");
            signing.sign(&claims)
        }),
        ("wrong issuer", signing.sign(&with("clerk", "iss", json!("https://evil.example")))),
        ("same kid, key not in the JWKS", stranger.sign(&idp_claims("clerk"))),
        ("unknown kid, key not in the JWKS", unknown.sign(&idp_claims("clerk"))),
    ];
    for (case, token) in cases {
        assert_denied_unauthenticated(&send("POST", "/orders", token).await, case);
    }
    let reply = stack.send(Http1, "POST", "/orders", None, &[]).await;
    assert_denied_unauthenticated(&reply, "no token");
}

// ---------------------------------------------------------------------------------------------
// 2. Rules on `input.parsed_query` and on headers.
// ---------------------------------------------------------------------------------------------

/// Headers a request is sent with.
type Headers = &'static [(&'static str, &'static str)];

#[tokio::test]
async fn query_and_header_rules_see_what_envoy_sends() {
    let stack =
        Stack::with_policy(AUTHZ, &fixture("opa-envoy-request"), &["--decision-rule", "data.envoy.authz.allow"]).await;
    let get = |path: &'static str, headers: Headers| {
        let stack = &stack;
        async move { stack.send(Http1, "GET", path, None, headers).await }
    };
    let acme: Headers = &[("X-Tenant", "acme")]; // Envoy hands the policy `x-tenant`

    let allowed: &[(&str, Headers)] = &[
        ("/catalogue?lang=en", acme),
        ("/catalogue?lang=en", &[("x-tenant", "globex")]),
        ("/catalogue?page=2&lang=en", acme),
        ("/items?id=1&id=22&id=333", acme),
        ("/items?id=7", acme),
        ("/search?q=red+shoes", &[]),
        ("/search?q=red%20shoes", &[]),
    ];
    for (path, headers) in allowed {
        let reply = get(path, headers).await;
        assert_eq!(reply.status, 200, "{path} {headers:?}: {}", reply.body);
    }
    let reply = get("/catalogue?lang=en&x=1", acme).await;
    assert_eq!(reply.echo.as_ref().map(|e| e.path.as_str()), Some("/catalogue?lang=en&x=1"), "query untouched");

    let denied: &[(&str, Headers, &str)] = &[
        ("/catalogue?lang=fr", acme, "another value"),
        ("/catalogue?lang=en&lang=fr", acme, "a repeated parameter is a list of all its values"),
        ("/catalogue?lang=EN", acme, "values are compared as they are"),
        ("/catalogue?Lang=en", acme, "parameter names are case-sensitive"),
        ("/catalogue?lang", acme, "a parameter without a value is [\"\"]"),
        ("/catalogue?lang=en", &[], "no tenant header"),
        ("/catalogue?lang=en", &[("x-tenant", "initech")], "a tenant not in data"),
        ("/catalogue?lang=en", &[("x-tenant", "acme"), ("x-tenant", "globex")], "Envoy joins repeats: acme,globex"),
        ("/catalogue?lang=en", &[("x-tenant", "ACME")], "header values are compared as they are"),
        ("/items?id=1&id=2&id=3&id=4", acme, "more than three"),
        ("/items?id=1&id=x", acme, "one not numeric"),
        ("/items", acme, "no id at all"),
        ("/search?q=red+shoes&debug", &[], "`debug` alone is present"),
        ("/search?q=red+shoes&debug=", &[], "`debug=` is present"),
        ("/search?q=red&q=shoes", &[], "two values are not one phrase"),
        ("/search?q=red%2Bshoes", &[], "an escaped + is a +"),
    ];
    for (path, headers, case) in denied {
        assert_denied_unauthenticated(&get(path, headers).await, &format!("{path} {headers:?}: {case}"));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The result object.
// ---------------------------------------------------------------------------------------------

fn echo(reply: &Reply) -> &Echo {
    reply.echo.as_ref().unwrap_or_else(|| panic!("not allowed through: {} {}", reply.status, reply.body))
}

fn response_header(reply: &Reply, name: &str) -> Vec<String> {
    reply.headers.get_all(name).iter().map(|v| v.to_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test]
async fn every_field_of_the_result_object_takes_effect() {
    let stack =
        Stack::with_policy(AUTHZ, &fixture("opa-envoy-result"), &["--decision-rule", "data.envoy.authz.result"]).await;

    // Allow: `headers` to the upstream, `response_headers_to_add` to the client; the status and
    // body of the result are ignored on allow, as in OPA-Envoy.
    let reply = stack.send(Http1, "GET", "/tagged", None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(response_header(&reply, "cache-control"), ["no-store"]);
    // A list of values. Upstream, Envoy sets request headers one after the other, so the last
    // value is the one that arrives, with OPA-Envoy too. To the client, authz sends each value
    // with OVERWRITE_IF_EXISTS_OR_ADD and only the last arrives; OPA-Envoy sends no append
    // action and Envoy (1.40) adds them all: `x-trace: t1` and `x-trace: t2`.
    assert_eq!(reply.upstream_header("x-tags"), ["blue"]);
    assert_eq!(response_header(&reply, "x-trace"), ["t2"]);

    // `headers` replaces a client's copy (as with OPA-Envoy); `request_headers_to_remove`
    // strips.
    let sent = [("x-user-tier", "platinum"), ("x-debug-token", "let-me-in"), ("x-other", "kept")];
    let reply = stack.send(Http1, "GET", "/tier", None, &sent).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.upstream_header("x-user-tier"), ["gold"]);
    assert!(reply.upstream_header("x-debug-token").is_empty());
    assert_eq!(reply.upstream_header("x-other"), ["kept"]);

    // `query_parameters_to_set` replaces the client's value, `query_parameters_to_remove`
    // drops a parameter; the others stay.
    let reply = stack.send(Http1, "GET", "/query?lang=fr&debug=1&page=2", None, &[]).await;
    let path = &echo(&reply).path;
    assert!(path.starts_with("/query?"), "{path}");
    let mut query: Vec<&str> = path.split_once('?').map_or("", |(_, q)| q).split('&').collect();
    query.sort_unstable();
    assert_eq!(query, ["lang=en", "page=2"], "{path}");

    // Deny: the policy's status, `headers` to the client, its body; no
    // `response_headers_to_add` on a denial (Envoy applies those on allow only).
    let reply = stack.send(Http1, "GET", "/account", None, &[]).await;
    assert_eq!(reply.status, 302);
    assert_eq!(response_header(&reply, "location"), ["https://login.example/?next=%2Faccount"]);
    // Every value of a list, as with OPA-Envoy (Envoy adds a denial's headers in turn).
    assert_eq!(response_header(&reply, "x-login-methods"), ["sso", "password"]);
    assert_eq!(reply.body, "log in first");
    assert!(reply.headers.get("x-not-on-deny").is_none());
    assert!(!reply.reached_upstream());
    // authz labels every denial `application/json`, whatever the body (OPA-Envoy: Envoy's
    // `text/plain` for a body), and adds its decision id.
    assert_eq!(response_header(&reply, "content-type"), ["application/json"]);
    assert!(reply.headers.get("x-qiria-decision-id").is_some());

    // A plain denial with the policy's status: 403, empty body, as the policy said.
    let reply = stack.send(Http1, "GET", "/elsewhere", None, &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (403, ""));
    // The route that set a status and a body on allow, denied: now they apply.
    let reply = stack.send(Http1, "POST", "/tagged", None, &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (418, "only GET"));
}

/// OPA-Envoy takes `headers` (and `response_headers_to_add`) as an object *or a list of
/// objects*; authz takes only the object: a list is a malformed decision, which denies.
#[tokio::test]
async fn headers_as_a_list_of_objects_is_refused_where_opa_envoy_takes_it() {
    let stack =
        Stack::with_policy(AUTHZ, &fixture("opa-envoy-result"), &["--decision-rule", "data.envoy.authz.result"]).await;
    let reply = stack.send(Http1, "GET", "/list-form", None, &[]).await;
    // OPA-Envoy: 200, with x-a: 1 and x-b: 2 upstream.
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(!reply.reached_upstream());
    // authz says why, under the decision id the client got.
    let decision_id = reply.decision_key().unwrap();
    let output = stack.authz.output();
    let warned = output.lines().any(|l| l.contains(&decision_id) && l.contains("malformed decision: `headers`"));
    assert!(warned, "{output}");
}

/// OPA-Envoy's docs build the result object from one rule per field with a reference head
/// (`result["allowed"] := allow`, `result["headers"] := headers`, ...) and query
/// `data.envoy.authz.result`, the document those rules make. authz refuses such a bundle at
/// load ("not a valid rule path": regorus evaluates rules, not documents assembled from them),
/// so it never serves; a complete `result := {...}` rule works (the test above).
#[tokio::test]
async fn a_result_assembled_from_reference_head_rules_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    std::fs::create_dir(&keys_dir).unwrap();
    let rule = ["--decision-rule", "data.envoy.authz.result"];
    let authz = Authz::spawn(Path::new(AUTHZ), &fixture("opa-envoy-result-partial"), &keys_dir, dir.path(), &rule);
    let refused = wait_until(Duration::from_secs(15), || async {
        authz.output().contains("policy_rejected") && authz.output().contains("not a valid rule path")
    })
    .await;
    assert!(refused, "{}", authz.output());
    assert_eq!(authz.policy_revision().await, "", "no policy serves");
}

// ---------------------------------------------------------------------------------------------
// 4. A rule on the client certificate, behind a mutual-TLS listener.
// ---------------------------------------------------------------------------------------------

const RUNNER: &str = "spiffe://qiria.test/ns/jobs/sa/runner";
const FRONTEND: &str = "spiffe://qiria.test/ns/web/sa/frontend";

/// Envoy's mutual-TLS listener with `pki`'s server certificate, trusting `pki`'s CA for
/// clients, in front of authz and the upstream.
async fn mtls_envoy(pki: &TestPki, dir: &Path, authz: &Authz, upstream: &EchoUpstream) -> Envoy {
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let values = [
        ("AUTHZ_PORT", authz.grpc_port.to_string()),
        ("UPSTREAM_PORT", upstream.port.to_string()),
        ("SERVER_CERT", write("server.crt", &pki.server_cert_pem)),
        ("SERVER_KEY", write("server.key", &pki.server_key_pem)),
        ("CLIENT_CA", write("client-ca.crt", &pki.ca_pem)),
    ];
    Envoy::start_from("envoy/envoy-mtls.template.yaml", &values).await
}

/// An HTTPS client of `pki`'s server, presenting the client certificate of `identity`, if any.
fn mtls_client(pki: &TestPki, identity: Option<&TestPki>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("CA"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    if let Some(identity) = identity {
        // reqwest's rustls identity is one PEM: the certificate, then its key.
        let pem = format!("{}\n{}", identity.client_cert_pem, identity.client_key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("client identity"));
    }
    builder.build().expect("TLS client")
}

#[tokio::test]
async fn a_client_certificate_rule_decides_on_the_peer_certificate() {
    // `tls::pki` makes a CA per call, all with the same subject (which one Envoy listener
    // cannot tell apart): one listener per CA, both in front of the same authz and policy.
    let (runner, frontend, rogue) = (pki(RUNNER), pki(FRONTEND), pki(RUNNER));
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    copy_dir(&fixture("opa-envoy-mtls"), &policy_dir);
    let keys_dir = dir.path().join("keys");
    std::fs::create_dir(&keys_dir).unwrap();
    let rule = ["--decision-rule", "data.envoy.authz.allow"];
    let authz = Authz::start(Path::new(AUTHZ), &policy_dir, &keys_dir, dir.path(), &rule).await;
    let upstream = EchoUpstream::start().await;
    let runners = mtls_envoy(&runner, &dir.path().join("runners"), &authz, &upstream).await;
    let frontends = mtls_envoy(&frontend, &dir.path().join("frontends"), &authz, &upstream).await;
    let get = |envoy: &Envoy, client: reqwest::Client, path: &str| {
        let url = envoy.https_url(path);
        async move { client.get(url).send().await }
    };
    let status = |reply: Result<reqwest::Response, reqwest::Error>| reply.expect("an answer").status().as_u16();

    // Allowed: the runner's SPIFFE id and subject, on its paths.
    let reply = get(&runners, mtls_client(&runner, Some(&runner)), "/jobs/42").await.expect("an answer");
    assert_eq!(reply.status(), 200, "{}", authz.output());
    assert!(reply.headers().contains_key("x-echo-upstream"));

    // Denied: the runner elsewhere; a verified certificate with another SPIFFE id; none.
    let as_runner = mtls_client(&runner, Some(&runner));
    assert_eq!(status(get(&runners, as_runner.clone(), "/admin/users").await), 401, "a path not granted");
    assert_eq!(status(get(&runners, as_runner, "/jobs/42/logs").await), 401, "`*` does not cross a `/`");
    let as_frontend = mtls_client(&frontend, Some(&frontend));
    assert_eq!(status(get(&frontends, as_frontend, "/jobs/42").await), 401, "another SPIFFE id");
    let anonymous = mtls_client(&runner, None);
    assert_eq!(status(get(&runners, anonymous, "/jobs/42").await), 401, "no client certificate");

    // A certificate Envoy cannot verify never reaches the policy: the handshake fails.
    let as_rogue = mtls_client(&runner, Some(&rogue));
    assert!(get(&runners, as_rogue, "/jobs/42").await.is_err(), "an untrusted client CA must fail the handshake");

    // One decision per request that got through the handshake: one allowed, four denied.
    let counts = || {
        let decided = authz.decision_logs();
        let allowed = decided.iter().filter(|l| l["qiria"]["allowed"] == true).count();
        (allowed, decided.len() - allowed)
    };
    let logged = wait_until(Duration::from_secs(5), || async { counts() == (1, 4) }).await;
    assert!(logged, "{:?}: {}", counts(), authz.output());
}
