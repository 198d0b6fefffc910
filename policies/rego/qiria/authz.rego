# Qiria RBAC: who may call which operation of the mesh.
#
# Decision: data.qiria.authz.allow (bool). Default deny.
# - Public operations (token endpoints, discovery) need no identity.
# - Every other operation maps to exactly one permission (data.qiria.rbac.operations);
#   a verified identity holding a role that grants it may call it (data.qiria.rbac.roles).
# - A path matching no operation, or more than one, is denied.
# The tables are data (data.json beside this file), so security teams change who may do
# what without touching this code.
package qiria.authz

import rego.v1

default allow := false

allow if public_operation

allow if {
	input.identity.sub
	some permission in required_permissions
	count(required_permissions) == 1
	permission in granted_permissions
}

request_method := input.attributes.request.http.method

# The decoded path without its query string, e.g. "/v1/jobs/42".
request_path := concat("/", array.concat([""], input.parsed_path))

public_operation if data.qiria.rbac.public[request_method][request_path]

# Permissions the caller holds through its roles.
granted_permissions contains permission if {
	some role in input.identity.roles
	some permission in data.qiria.rbac.roles[role]
}

# The permission the requested operation needs: an exact route first, else route patterns
# where `*` stands for one path segment.
required_permissions contains permission if {
	permission := data.qiria.rbac.operations[request_method][request_path]
}

required_permissions contains permission if {
	not data.qiria.rbac.operations[request_method][request_path]
	some pattern, permission in data.qiria.rbac.operations[request_method]
	contains(pattern, "*")
	glob.match(pattern, ["/"], request_path)
}

# Why the decision went the way it did (shown by `authz policy eval`).
reason := "public operation" if public_operation

else := sprintf("no verified identity (%s)", [input.identity_error]) if not input.identity

else := "no operation matches this method and path" if count(required_permissions) == 0

else := "operation matches several routes" if count(required_permissions) > 1

else := sprintf("granted by permission %v", [required_permissions]) if allow

else := sprintf("roles %v lack permission %v", [input.identity.roles, required_permissions])
