//! Which flows a caller may trigger: the allowlist is policy data (`data.qiria.flows`:
//! namespace → flow → permission), and the policy decides. The gateway asks the same bundle
//! authz runs, about the REST form of the call (`POST /v1/flows/{namespace}/{flow}/executions`),
//! with the caller's verified token as identity — so the gRPC call, whose flow is inside the
//! message where a path-level policy cannot see it, gets exactly the decision the REST route
//! gets from authz. No bundle, an error, or anything but an allow refuses.

use std::collections::HashMap;

use qiria_policy::input::{HttpRequest, InputDocument};
use qiria_policy::{allows, LivePolicy};

use crate::errors::GatewayError;

/// Refuses unless the policy allows `token`'s holder to trigger `namespace/flow`.
pub fn may_trigger(policy: &LivePolicy, token: &str, namespace: &str, flow: &str) -> Result<(), GatewayError> {
    let path = format!("/v1/flows/{namespace}/{flow}/executions");
    let headers = HashMap::new();
    let request = HttpRequest {
        id: "",
        method: "POST",
        path: &path,
        host: "",
        scheme: "https",
        query: "",
        fragment: "",
        protocol: "HTTP/2",
        headers: &headers,
        body: "",
        raw_body: &[],
        size: 0,
    };
    let allowed = InputDocument::new(&request).ok().is_some_and(|mut input| {
        input.set_identity_from_token(token);
        policy.current().as_ref().is_some_and(|bundle| bundle.evaluate(input.into_value()).is_ok_and(|v| allows(&v)))
    });
    if allowed {
        Ok(())
    } else {
        Err(GatewayError::Forbidden("this flow is not on the allowlist for your roles"))
    }
}
