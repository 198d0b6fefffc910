//! Through a real Envoy with the default-like `allow_sample = 0`: no allowed request is
//! logged, every denial is. (Its own test binary: the sample is set in the environment the
//! test helper passes on, which is this process's.)

use qiria_test_support::authz::Stack;
use qiria_test_support::call::Protocol::Http1;

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");

#[tokio::test]
async fn allows_are_sampled_and_every_denial_is_logged() {
    std::env::set_var("QIRIA_AUTHZ_DECISION_LOG__ALLOW_SAMPLE", "0.0");
    let stack = Stack::start(AUTHZ).await;
    for _ in 0..20 {
        assert_eq!(stack.send(Http1, "GET", "/healthz", None, &[]).await.status, 200);
    }
    let mut denials = Vec::new();
    for _ in 0..5 {
        let denied = stack.send(Http1, "GET", "/v1/jobs/42", Some("not-a-token"), &[]).await;
        assert_eq!(denied.status, 401);
        denials.push(denied.decision_key().expect("a decision id"));
    }
    for id in &denials {
        assert_eq!(stack.authz.decision_log(id).await["qiria"]["allowed"], false);
    }
    // The allows were decided before the denials and the writer keeps their order: had any
    // been logged, it would be there by now.
    let logged = stack.authz.decision_logs();
    assert_eq!(logged.len(), denials.len(), "allow_sample = 0 logs no allow: {logged:#?}");
    let allowed = stack.authz.metrics().await;
    assert!(allowed.contains("qiria_authz_decisions_total{outcome=\"allow\",status=\"200\"} 20"), "{allowed}");
}
