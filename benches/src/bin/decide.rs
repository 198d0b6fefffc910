//! `decide N [--no-cache]`: N decisions in process on the shipped bundle, for
//! `valgrind --tool=callgrind` instruction counts (the bench runs it at two N and divides the
//! difference, so setup cost cancels out).

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
    let mut allowed = 0;
    for _ in 0..n {
        let response = fixture.authorizer.check(&request);
        allowed += usize::from(response.status.is_some_and(|s| s.code == 0));
    }
    assert_eq!(allowed, n, "every decision should allow");
}
