# What the RBAC decisions of data.qiria.authz read, so that authz reuses one decision for
# every request with the same key: the same method and route, the same roles — another token
# or another job id in the path shares the decision. Without this file, authz still reuses a
# decision for the same token and request line (`cache_decisions`).
#
# The promise it makes, which the tests beside it keep: the decision reads of a request only
# its method, its path (a route pattern's "*" segments not at all), whether an identity was
# verified (else why not: `reason` says it) and the identity's `roles`. Exact routes never
# fall inside a pattern, or two paths of one key could need different permissions.
package qiria.authz

import rego.v1

decision_key := {
	"identity": ["roles"],
	"routes": {method: [route.path | some route in routes] | some method, routes in data.qiria.rbac.route_patterns},
}
