//! `decide N [--no-cache | --distinct-paths | --never-seen]`: N decisions in process on the
//! shipped bundle, for `valgrind --tool=callgrind --toggle-collect=qiria_decisions`
//! instruction counts. By default one token and one path (a decision cache hit);
//! `--no-cache` evaluates the policy every time; `--distinct-paths` sends `/v1/jobs/1…N`;
//! `--never-seen` a fresh token on every decision (minted before the measured loop).

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let mode = args.next();
    let fixture = match mode.as_deref() {
        Some("--no-cache") => qiria_benches::Fixture::without_decision_cache(),
        _ => qiria_benches::Fixture::new(),
    };
    let request = |token: &str, path: &str| qiria_benches::check_request(Some(token), "GET", path);
    let alice = fixture.token("alice", &["User"]);
    let requests: Vec<_> = match mode.as_deref() {
        Some("--distinct-paths") => (1..=n).map(|i| request(&alice, &format!("/v1/jobs/{i}"))).collect(),
        Some("--never-seen") => {
            (0..n).map(|i| request(&fixture.token(&format!("fresh-{i}"), &["User"]), "/v1/jobs/42")).collect()
        }
        _ => vec![request(&alice, "/v1/jobs/42")],
    };
    // The first allowed decision fills the caches. Under callgrind (50× slower) the very first
    // evaluation, on a cold engine, can exceed the policy's CPU budget and be denied: warm up
    // until one is allowed, so that the measured loop is the path it is meant to be.
    let warm = request(&alice, "/v1/jobs/0");
    let warmed = (0..10).any(|_| fixture.authorizer.check(&warm).0.status.is_some_and(|s| s.code == 0));
    assert!(warmed, "no decision was allowed while warming up");
    assert_eq!(qiria_decisions(&fixture, &requests, n), n, "every decision should allow");
}

/// The measured loop; callgrind is told to count only inside it (`--toggle-collect`).
#[inline(never)]
#[allow(unsafe_code, reason = "no_mangle: callgrind finds the loop by its symbol name")]
#[no_mangle]
pub fn qiria_decisions(
    fixture: &qiria_benches::Fixture,
    requests: &[envoy_types::pb::envoy::service::auth::v3::CheckRequest],
    n: usize,
) -> usize {
    let mut allowed = 0;
    for request in requests.iter().cycle().take(n) {
        let (response, _) = fixture.authorizer.check(request);
        allowed += usize::from(response.status.is_some_and(|s| s.code == 0));
    }
    allowed
}
