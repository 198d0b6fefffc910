# The promises of decision_key.rego, kept (remove both files to go without a decision key).
package qiria.decision_key_test

import data.qiria.authz
import data.qiria.authz_test
import rego.v1

# decision_key.rego promises that the "*" segments of a keyed route are never read: no exact
# operation, public operation or flow route may fall inside one, or two paths sharing a key
# could need different permissions.
test_keyed_routes_hold_no_exact_or_flow_route if {
	exact := {[method, split(trim_prefix(path, "/"), "/")] |
		some table in [data.qiria.rbac.operations, data.qiria.rbac.public]
		some method, paths in table
		some path, _ in paths
	}
	flow := {["POST", ["v1", "flows", "*", "*", "executions"]]}
	clashes := {[method, path] |
		some [method, path] in exact | flow
		some route in object.get(authz.decision_key.routes, method, [])
		authz_test.overlapping(path, route)
	}
	count(clashes) == 0
}

test_decision_key_reads_roles_and_every_route_pattern if {
	authz.decision_key.identity == ["roles"]
	every method, routes in data.qiria.rbac.route_patterns {
		count(authz.decision_key.routes[method]) == count(routes)
	}
}

# Two requests of one key decide alike: other subjects, other ids.
test_one_key_one_decision if {
	first := {"attributes": {"request": {"http": {"method": "GET", "path": "/v1/jobs/1"}}}, "parsed_path": ["v1", "jobs", "1"], "identity": {"sub": "alice", "roles": ["User"]}}
	second := {"attributes": {"request": {"http": {"method": "GET", "path": "/v1/jobs/2"}}}, "parsed_path": ["v1", "jobs", "2"], "identity": {"sub": "bob", "roles": ["User"]}}
	authz.allow with input as first
	authz.allow with input as second
	authz.reason == "granted by permission jobs:read" with input as first
	authz.reason == "granted by permission jobs:read" with input as second
}
