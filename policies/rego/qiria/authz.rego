# Qiria RBAC: who may call which operation of the mesh.
#
# Decision: data.qiria.authz.allow (bool). Default deny.
# - Public operations (token endpoints, discovery) need no identity.
# - Every other operation maps to exactly one permission (data.qiria.rbac.operations for
#   exact routes, data.qiria.rbac.route_patterns for routes with path parameters);
#   a verified identity holding a role that grants it may call it (data.qiria.rbac.roles).
# - A path matching no operation is denied.
# The tables are data (data.json beside this file), so security teams change who may do
# what without touching this code.
package qiria.authz

import rego.v1

default allow := false

# These decisions depend only on the verified identity, the method and the path, so authz
# may reuse them for the same token and request line (per bundle revision, bounded in time);
# decision_key.rego says more precisely what they read, so that tokens share them.
cache_decisions := true

allow if public_operation

allow if {
	input.identity.sub
	some role in input.identity.roles
	required_permission in object.get(data.qiria.rbac.roles, role, [])
}

request_method := input.attributes.request.http.method

# The decoded path without its query string, e.g. "/v1/jobs/42".
request_path := concat("/", array.concat([""], input.parsed_path))

# Lookups with computed keys go through object.get: regorus resolves `data.x[k]` with a
# variable `k` much more slowly than a builtin call.
public_operation if object.get(data.qiria.rbac.public, [request_method, request_path], false)

# The permission the requested operation needs: an exact route (data.qiria.rbac.operations,
# one lookup) first, else a route pattern (data.qiria.rbac.route_patterns, path segments
# where "*" stands for any one segment). Two matching patterns make this rule conflict,
# which fails the evaluation and so denies; a policy test keeps the data free of overlaps.
required_permission := permission if {
	permission := object.get(data.qiria.rbac.operations, [request_method, request_path], false)
	permission != false
} else := permission if {
	# Triggering a flow: only flows on the allowlist (data.qiria.flows: namespace -> flow ->
	# permission) have an operation at all; any other flow matches nothing and is denied.
	request_method == "POST"
	["v1", "flows", namespace, flow, "executions"] := input.parsed_path
	permission := object.get(data.qiria.flows, [namespace, flow], false)
	permission != false
} else := permission if {
	some route in object.get(data.qiria.rbac.route_patterns, request_method, [])
	count(route.path) == count(input.parsed_path)
	every i, segment in route.path {
		segment in {"*", input.parsed_path[i]}
	}
	permission := route.permission
}

# Permissions the caller holds through its roles (for explanations; `allow` checks directly).
granted_permissions contains permission if {
	some role in input.identity.roles
	some permission in data.qiria.rbac.roles[role]
}

# Why the decision went the way it did (shown by `authz policy eval`).
reason := "public operation" if public_operation

else := sprintf("no verified identity (%s)", [input.identity_error]) if not input.identity

else := "no operation matches this method and path" if not required_permission

else := sprintf("granted by permission %s", [required_permission]) if allow

else := sprintf("roles %v lack permission %s", [input.identity.roles, required_permission])
