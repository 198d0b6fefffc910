//! Micro-benchmarks of one decision's parts, on the shipped RBAC bundle.
//! `cargo bench -p qiria-benches` for figures; `cargo test --benches` runs each once.

use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use qiria_benches::{check_request, Fixture};

fn parts(c: &mut Criterion) {
    let fixture = Fixture::new();
    let token = fixture.token("alice", &["User"]);
    let request = check_request(Some(&token), "GET", "/v1/jobs/42");
    fixture.verifier.verify(&token).expect("valid token");

    c.bench_function("input: CheckRequest to input document", |b| {
        b.iter(|| authz::envoy_input::build(&request, Ok(())).expect("input"))
    });
    let input = authz::envoy_input::build(&request, Ok(())).expect("input");
    c.bench_function("policy: evaluate shipped RBAC", |b| {
        b.iter(|| fixture.bundle.evaluate(input.clone()).expect("eval"))
    });
    c.bench_function("token: verify RS256 (cached)", |b| b.iter(|| fixture.verifier.verify(&token).expect("ok")));
    c.bench_function("token: verify RS256 (uncached)", |b| {
        b.iter(|| fixture.verifier.verify_uncached(&token).expect("ok"))
    });
    c.bench_function("check: whole decision in process (decision cache)", |b| {
        b.iter(|| fixture.authorizer.check(&request))
    });
    let uncached = Fixture::without_decision_cache();
    let token = uncached.token("alice", &["User"]);
    let request = check_request(Some(&token), "GET", "/v1/jobs/42");
    c.bench_function("check: whole decision in process (policy evaluated)", |b| {
        b.iter(|| uncached.authorizer.check(&request))
    });
}

fn grpc(c: &mut Criterion) {
    let fixture = Fixture::new();
    let token = fixture.token("alice", &["User"]);
    let request = check_request(Some(&token), "GET", "/v1/jobs/42");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let addr: SocketAddr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = AuthorizationServer::new(authz::check::CheckService(fixture.authorizer.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(qiria_runtime::net::incoming(listener)),
        );
        addr
    });
    let mut client = runtime.block_on(AuthorizationClient::connect(format!("http://{addr}"))).expect("connect");
    c.bench_function("check: over a local gRPC connection", |b| {
        b.iter(|| runtime.block_on(client.check(request.clone())).expect("check"))
    });
}

criterion_group!(benches, parts, grpc);
criterion_main!(benches);
