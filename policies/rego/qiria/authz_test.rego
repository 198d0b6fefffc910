package qiria.authz_test

import data.qiria.authz
import rego.v1

# A request as Envoy presents it, with the verified identity authz adds.
req(method, path, roles) := {
	"attributes": {"request": {"http": {"method": method, "path": path}}},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
	"identity": {"sub": "alice", "roles": roles},
}

anonymous(method, path) := {
	"attributes": {"request": {"http": {"method": method, "path": path}}},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
	"identity_error": "missing",
}

test_user_submits_scripts_over_grpc_and_rest if {
	authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/SubmitScript", ["User"])
	authz.allow with input as req("POST", "/v1/jobs/scripts", ["User"])
}

test_user_reads_own_jobs_but_not_all if {
	authz.allow with input as req("GET", "/v1/jobs/42", ["User"])
	not authz.allow with input as req("GET", "/v1/admin/jobs", ["User"])
	# The job API's reads are open to every reading role; the gateway scopes them (a User's
	# own jobs only, any job for Auditor and Admin), which a path cannot express.
	authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/ListJobs", ["User"])
	authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/WatchJob", ["User"])
}

test_user_cannot_manage_users_rotate_keys_or_read_audit if {
	not authz.allow with input as req("POST", "/v1/admin/users", ["User"])
	not authz.allow with input as req("POST", "/v1/admin/keys/rotate", ["User"])
	not authz.allow with input as req("GET", "/v1/audit/events", ["User"])
}

test_auditor_reads_any_job_over_the_job_api_and_submits_or_cancels_nothing if {
	authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/GetJob", ["Auditor"])
	authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/ListJobs", ["Auditor"])
	authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/WatchJob", ["Auditor"])
	not authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/TriggerFlow", ["Auditor"])
	not authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/SubmitScript", ["Auditor"])
	not authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/CancelJob", ["Auditor"])
}

test_user_calls_every_rest_route_of_the_job_api if {
	authz.allow with input as req("GET", "/v1/jobs", ["User"])
	authz.allow with input as req("GET", "/v1/jobs/42/events", ["User"])
	authz.allow with input as req("POST", "/v1/jobs/42/cancel", ["User"])
}

test_auditor_reads_jobs_over_rest_as_over_grpc if {
	# The gateway shows an Auditor every job, whichever form asks.
	authz.allow with input as req("GET", "/v1/jobs", ["Auditor"])
	authz.allow with input as req("GET", "/v1/jobs/42", ["Auditor"])
	authz.allow with input as req("GET", "/v1/jobs/42/events", ["Auditor"])
	not authz.allow with input as req("POST", "/v1/jobs/42/cancel", ["Auditor"])
}

test_auditor_reads_but_never_writes if {
	authz.allow with input as req("GET", "/v1/audit/events", ["Auditor"])
	authz.allow with input as req("GET", "/v1/admin/jobs", ["Auditor"])
	not authz.allow with input as req("POST", "/v1/jobs/scripts", ["Auditor"])
	not authz.allow with input as req("POST", "/v1/flows/qiria.demo/hello/executions", ["Auditor"])
}

test_admin_manages_users_and_keys if {
	authz.allow with input as req("PUT", "/v1/admin/users/bob/roles", ["Admin"])
	authz.allow with input as req("POST", "/qiria.admin.v1.KeyService/RotateKeys", ["Admin"])
}

test_only_allowlisted_flows_can_be_triggered if {
	authz.allow with input as req("POST", "/v1/flows/qiria.demo/hello/executions", ["User"])
	not authz.allow with input as req("POST", "/v1/flows/qiria.demo/payroll/executions", ["User"])
	not authz.allow with input as req("POST", "/v1/flows/prod/nightly/executions", ["Admin"])
	not authz.allow with input as req("GET", "/v1/flows/qiria.demo/hello/executions", ["User"])
	# The permission an allowlist entry names is checked like any other.
	not authz.allow with input as req("POST", "/v1/flows/ops/restart/executions", ["User"]) with data.qiria.flows as {"ops": {"restart": "users:manage"}}
	authz.allow with input as req("POST", "/v1/flows/ops/restart/executions", ["Admin"]) with data.qiria.flows as {"ops": {"restart": "users:manage"}}
}

# Each REST route of the job API needs the permission its gRPC method needs, so every role
# gets the same answer from both forms (the gateway then scopes both the same way).
same_permission_as_grpc(method, path, rpc) if {
	rest := authz.required_permission with input as req(method, path, ["User"])
	grpc_path := concat("", ["/qiria.jobs.v1.JobService/", rpc])
	grpc := authz.required_permission with input as req("POST", grpc_path, ["User"])
	rest == grpc
}

test_rest_trigger_flow_as_grpc if same_permission_as_grpc("POST", "/v1/flows/qiria.demo/hello/executions", "TriggerFlow")

test_rest_submit_script_as_grpc if same_permission_as_grpc("POST", "/v1/jobs/scripts", "SubmitScript")

test_rest_get_job_as_grpc if same_permission_as_grpc("GET", "/v1/jobs/42", "GetJob")

test_rest_list_jobs_as_grpc if same_permission_as_grpc("GET", "/v1/jobs", "ListJobs")

test_rest_cancel_job_as_grpc if same_permission_as_grpc("POST", "/v1/jobs/42/cancel", "CancelJob")

test_rest_watch_job_as_grpc if same_permission_as_grpc("GET", "/v1/jobs/42/events", "WatchJob")

test_rest_erase_user_jobs_as_grpc if same_permission_as_grpc("POST", "/v1/jobs/erase", "EraseUserJobs")

test_only_an_admin_erases_a_users_jobs if {
	authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/EraseUserJobs", ["Admin"])
	not authz.allow with input as req("POST", "/qiria.jobs.v1.JobService/EraseUserJobs", ["User"])
	not authz.allow with input as req("POST", "/v1/jobs/erase", ["Auditor"])
}

test_patterns_match_exactly_one_segment if {
	not authz.allow with input as req("POST", "/v1/flows/qiria.demo/executions", ["User"])
	not authz.allow with input as req("GET", "/v1/jobs/42/logs", ["User"])
}

test_default_deny if {
	not authz.allow with input as req("GET", "/v1/unknown", ["Admin"])
	not authz.allow with input as req("PATCH", "/v1/jobs/42", ["Admin"])
	not authz.allow with input as req("GET", "/v1/jobs", [])
	not authz.allow with input as req("GET", "/v1/jobs", ["Superuser"])
}

test_no_identity_only_reaches_public_operations if {
	authz.allow with input as anonymous("POST", "/v1/auth/token")
	authz.allow with input as anonymous("GET", "/.well-known/jwks.json")
	not authz.allow with input as anonymous("GET", "/v1/jobs")
}

# Two route patterns that can match the same path would make `required_permission` conflict.
test_no_two_patterns_overlap if {
	clashes := {[method, a, b] |
		some method, routes in data.qiria.rbac.route_patterns
		some i, a in routes
		some j, b in routes
		i < j
		overlapping(a.path, b.path)
	}
	count(clashes) == 0
}

test_overlap_detection_works if {
	overlapping(["v1", "jobs", "*"], ["v1", "*", "42"])
	not overlapping(["v1", "jobs", "*"], ["v1", "jobs", "*", "cancel"])
	not overlapping(["v1", "jobs", "*"], ["v1", "users", "*"])
}

overlapping(a, b) if {
	count(a) == count(b)
	every i, x in a {
		compatible(x, b[i])
	}
}

compatible(x, y) if {
	some s in [x, y]
	s == "*"
}

compatible(x, y) if x == y

test_every_role_permission_is_known if {
	exact := {p | some _, routes in data.qiria.rbac.operations; some p in routes}
	patterns := {r.permission | some _, routes in data.qiria.rbac.route_patterns; some r in routes}
	known := exact | patterns
	every _, permissions in data.qiria.rbac.roles {
		every p in permissions {
			p in known
		}
	}
}

test_reason_explains_denials if {
	authz.reason == "roles [\"Auditor\"] lack permission jobs:submit-script" with input as req("POST", "/v1/jobs/scripts", ["Auditor"])
}

