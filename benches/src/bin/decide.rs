//! `decide N [--no-cache]`: N decisions in process on the shipped bundle, for
//! `valgrind --tool=callgrind --toggle-collect=qiria_decisions` instruction counts.

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let fixture = if args.next().as_deref() == Some("--no-cache") {
        qiria_benches::Fixture::without_decision_cache()
    } else {
        qiria_benches::Fixture::new()
    };
    let token = fixture.token("alice", &["User"]);
    let request = qiria_benches::check_request(Some(&token), "GET", "/v1/jobs/42");
    // The first allowed decision fills the caches. Under callgrind (50× slower) the very first
    // evaluation, on a cold engine, can exceed the policy's CPU budget and be denied: warm up
    // until one is allowed, so that the measured loop is the path it is meant to be.
    let warmed = (0..10).any(|_| fixture.authorizer.check(&request).0.status.is_some_and(|s| s.code == 0));
    assert!(warmed, "no decision was allowed while warming up");
    assert_eq!(qiria_decisions(&fixture, &request, n), n, "every decision should allow");
}

/// The measured loop; callgrind is told to count only inside it (`--toggle-collect`).
#[inline(never)]
#[allow(unsafe_code, reason = "no_mangle: callgrind finds the loop by its symbol name")]
#[no_mangle]
pub fn qiria_decisions(
    fixture: &qiria_benches::Fixture,
    request: &envoy_types::pb::envoy::service::auth::v3::CheckRequest,
    n: usize,
) -> usize {
    let mut allowed = 0;
    for _ in 0..n {
        let (response, _) = fixture.authorizer.check(request);
        allowed += usize::from(response.status.is_some_and(|s| s.code == 0));
    }
    allowed
}
