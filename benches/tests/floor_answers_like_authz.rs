//! The floor's "answer like authz" (`noop-authz --answer-like-authz`, row (e')) must be what
//! authz really answers to a plainly allowed request, or that row measures something else.

use authz::check::{plain_allow, DECISION_ID_KEY};
use envoy_types::pb::google::protobuf::value::Kind;
use qiria_benches::{check_request, Fixture};

#[test]
fn plain_allow_is_what_check_answers_to_an_allowed_request() {
    let fixture = Fixture::new();
    let token = fixture.token("alice", &["User"]);
    let (answer, _) = fixture.authorizer.check(&check_request(Some(&token), "GET", "/v1/jobs/42"));
    let decision_id = match answer.dynamic_metadata.as_ref().and_then(|m| m.fields.get(DECISION_ID_KEY)) {
        Some(value) => match &value.kind {
            Some(Kind::StringValue(id)) => id.clone(),
            other => panic!("decision id is not a string: {other:?}"),
        },
        None => panic!("no decision id in {answer:?}"),
    };
    assert_eq!(answer, plain_allow("alice", "User", &decision_id));
}
