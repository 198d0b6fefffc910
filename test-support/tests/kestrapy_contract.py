"""kestrapy 2.0.3, Kestra's generated Python client, against the Kestra contract double.

Drives the calls the gateway makes (create with inputs and labels, get, search by label with
the client's own QueryFilter, kill, get until KILLED) and the error mappings, over mutual TLS
with basic auth or a bearer token. Every answer's raw JSON is validated strictly with the
client's pydantic models: kestrapy's own deserializer falls back to an unvalidated
`model_construct` when validation fails, so a wrong shape would pass unnoticed through it.

Run by test-support/tests/kestra_double.rs; exits non-zero, saying what differed, on any
mismatch. The credential comes from KESTRA_USERNAME/KESTRA_PASSWORD or KESTRA_TOKEN.
"""

import argparse
import importlib.metadata
import json
import os
import re
import sys
import time
import uuid
import warnings

# kestrapy's generated models warn (pydantic field shadowing) when imported.
warnings.filterwarnings("ignore")

try:
    from pydantic import BaseModel, ValidationError

    from kestrapy import KestraClient
    from kestrapy.exceptions import (
        ApiException,
        BadRequestException,
        ConflictException,
        ForbiddenException,
        NotFoundException,
        UnauthorizedException,
        UnprocessableEntityException,
    )
    from kestrapy.models.execution import Execution
    from kestrapy.models.execution_controller_execution_response import ExecutionControllerExecutionResponse
    from kestrapy.models.execution_metadata import ExecutionMetadata
    from kestrapy.models.label import Label
    from kestrapy.models.misc_controller_ee_configuration import MiscControllerEEConfiguration
    from kestrapy.models.query_filter import QueryFilter
    from kestrapy.models.query_filter_field import QueryFilterField
    from kestrapy.models.query_filter_op import QueryFilterOp
    from kestrapy.models.state import State
    from kestrapy.models.state_history import StateHistory
    from kestrapy.models.state_type import StateType
except ImportError as e:
    print(f"kestrapy is not importable ({e}): pip install kestrapy==2.0.3 regex", file=sys.stderr)
    sys.exit(3)

EXPECTED_VERSION = "2.0.3"

# kestrapy's State model requires `getDuration`, `getStartDate` and `getEndDate`: Kestra's
# OpenAPI document names State's Java getters by their method names. Kestra serializes those
# getters with Jackson as `duration`, `startDate` and `endDate` (the last only once terminal),
# which the model also declares; real Kestra's JSON has no `get…` keys, so kestrapy's strict
# validation fails on every real execution too. Exactly these three "missing" errors are
# tolerated, and reported once; any other error is a mismatch.
OPENAPI_ARTIFACTS = {"getDuration", "getStartDate", "getEndDate"}
# Keys Kestra sends that the client's Execution model does not declare (they land in its
# `additional_properties`): `tenantId` is @Hidden in Kestra's OpenAPI, `outputs` too.
EXECUTION_EXTRAS = {"tenantId", "outputs"}
STATE_KEYS = {"current", "histories", "duration", "startDate", "endDate"}
ID = re.compile(r"^[0-9A-Za-z]{22}$")
TERMINAL = {"SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED", "RETRIED", "SKIPPED", "RESUBMITTED"}

failures = []
artifacts_seen = set()


def mismatch(what):
    failures.append(what)
    print(f"MISMATCH: {what}", flush=True)


def check(condition, what):
    if not condition:
        mismatch(what)
    return condition


def declared_keys(model):
    return {f.alias or name for name, f in model.model_fields.items() if name != "additional_properties"}


def strict(model, raw, where, extras=()):
    """Validates `raw` with `model` strictly; records every difference. True if none."""
    before = len(failures)
    if not check(isinstance(raw, dict), f"{where}: not a JSON object: {raw!r}"):
        return False
    try:
        model.model_validate(raw)
    except ValidationError as e:
        for error in e.errors():
            loc = tuple(str(part) for part in error["loc"])
            if error["type"] == "missing" and len(loc) >= 2 and loc[-2] == "state" and loc[-1] in OPENAPI_ARTIFACTS:
                artifacts_seen.add(loc[-1])
                continue
            shown = repr(error.get("input"))
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            mismatch(f"{where}: {model.__name__} refuses {'.'.join(loc)}: {error['msg']} (input {shown})")
    unknown = set(raw) - declared_keys(model) - set(extras)
    check(not unknown, f"{where}: keys {model.__name__} does not declare: {sorted(unknown)}")
    if "state" in raw and isinstance(raw["state"], dict):
        state = raw["state"]
        check(set(state) <= STATE_KEYS, f"{where}: unexpected state keys {sorted(set(state) - STATE_KEYS)}")
        check(set(state) <= declared_keys(State), f"{where}: state keys State does not declare")
        for history in state.get("histories", []):
            check(set(history) == declared_keys(StateHistory), f"{where}: history {history} is not {{state, date}}")
        terminal = state.get("current") in TERMINAL
        check(("endDate" in state) == terminal, f"{where}: endDate present={('endDate' in state)} in {state.get('current')}")
        check(re.match(r"^PT(\d+H)?(\d+M)?(\d+(\.\d+)?S)?$", str(state.get("duration"))) is not None,
              f"{where}: duration {state.get('duration')!r} is not an ISO-8601 duration")
        if state.get("histories"):
            check(state.get("startDate") == state["histories"][0]["date"], f"{where}: startDate is not the first history")
            check(state["histories"][-1]["state"] == state.get("current"), f"{where}: current is not the last history")
    for label in raw.get("labels") or []:
        check(set(label) == declared_keys(Label), f"{where}: label {label} is not {{key, value}}")
    if isinstance(raw.get("metadata"), dict):
        unknown = set(raw["metadata"]) - declared_keys(ExecutionMetadata)
        check(not unknown, f"{where}: metadata keys ExecutionMetadata does not declare: {sorted(unknown)}")
    return len(failures) == before


class Recorder:
    """The raw HTTP exchanges kestrapy makes (requests' response hook)."""

    def __init__(self, session):
        self.responses = []
        session.hooks["response"].append(lambda response, *args, **kwargs: self.responses.append(response))

    def last(self):
        return self.responses[-1]

    def last_json(self):
        return self.last().json()


def client(args, credential):
    kestra = KestraClient(host=args.url, timeout=10, **credential)
    # KestraClient has no TLS options; its requests session carries them. Without trust_env,
    # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE would silently replace `verify` (and a .netrc the
    # Authorization header).
    kestra._session.trust_env = False
    kestra._session.cert = (args.cert, args.key)
    kestra._session.verify = args.ca
    return kestra, Recorder(kestra._session)


def expect_error(call, exception, status, message, where):
    """`call()` must raise `exception` with a Kestra JSON error whose message starts with `message`."""
    try:
        call()
    except exception as e:
        check(e.status == status, f"{where}: status {e.status}, expected {status}")
        try:
            body = json.loads(e.body)
        except (TypeError, ValueError):
            mismatch(f"{where}: error body is not JSON: {e.body!r}")
            return None
        check(str(body.get("message", "")).startswith(message), f"{where}: message {body.get('message')!r}, expected {message!r}…")
        check(isinstance(body.get("_links", {}).get("self", {}).get("href"), str), f"{where}: no _links.self.href: {body}")
        check(isinstance(body.get("_embedded"), dict), f"{where}: no _embedded: {body}")
        return body
    except ApiException as e:
        mismatch(f"{where}: raised {type(e).__name__} ({e.status}), expected {exception.__name__}")
        return None
    mismatch(f"{where}: no exception, expected {exception.__name__}")
    return None


def when(value, predicate):
    return value if predicate(value) else None


def poll(what, timeout, probe):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            mismatch(f"{what}: not within {timeout} s")
            return None
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tenant", default="main")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--index-delay-ms", type=int, default=1000)
    args = parser.parse_args()
    tenant = args.tenant

    version = importlib.metadata.version("kestrapy")
    if version != EXPECTED_VERSION:
        print(f"kestrapy {version} is installed; this contract is kestrapy {EXPECTED_VERSION}", file=sys.stderr)
        return 3
    if os.environ.get("KESTRA_TOKEN"):
        credential, kind = {"token": os.environ["KESTRA_TOKEN"]}, "bearer"
        wrong = {"token": "not-" + os.environ["KESTRA_TOKEN"]}
    else:
        credential, kind = {"username": os.environ["KESTRA_USERNAME"], "password": os.environ["KESTRA_PASSWORD"]}, "basic"
        # A deliberately wrong password: the double must refuse it (bandit B105 is about real ones).
        wrong = {"username": os.environ["KESTRA_USERNAME"], "password": "wrong"}  # nosec B105
    kestra, recorder = client(args, credential)
    executions = kestra.executions

    # Instance configuration (kestrapy reads it at /api/v1/configs, without the tenant).
    configuration = kestra.misc.configuration()
    # `isBasicAuthEnabled` is OSS's configuration field (kestra-api.md); kestrapy models EE's.
    strict(MiscControllerEEConfiguration, recorder.last_json(), "configs", extras={"isBasicAuthEnabled"})
    check(configuration.version == "2.0.3-double", f"configs: version {configuration.version!r}")

    # A wrong credential: 401, empty body, the Basic challenge.
    intruder, intruder_recorder = client(args, wrong)
    expect_401 = None
    try:
        intruder.executions.search_executions(tenant)
    except UnauthorizedException as e:
        expect_401 = e
    if check(expect_401 is not None, "wrong credential: no UnauthorizedException"):
        response = intruder_recorder.last()
        check(response.content == b"", f"401 body is not empty: {response.content!r}")
        check(response.headers.get("WWW-Authenticate") == 'Basic realm="Kestra"',
              f"401 challenge: {response.headers.get('WWW-Authenticate')!r}")

    # Create with inputs and the gateway's job label.
    job = uuid.uuid4().hex
    created_at = time.monotonic()
    created = executions.create_execution(tenant, "qiria.demo", "hello", labels=[f"qiria-job:{job}"], inputs={"name": "kestrapy"})
    raw = recorder.last_json()
    strict(ExecutionControllerExecutionResponse, raw, "create", extras=EXECUTION_EXTRAS)
    check(isinstance(created, ExecutionControllerExecutionResponse), f"create returned {type(created).__name__}")
    execution_id = raw.get("id", "")
    check(ID.match(execution_id) is not None, f"create: id {execution_id!r} is not 22 base62 characters")
    check(created.state.current == StateType.CREATED, f"create: state {created.state.current!r}")
    check(raw.get("inputs") == {"name": "kestrapy"}, f"create: inputs {raw.get('inputs')}")
    check(raw.get("labels") == [{"key": "qiria-job", "value": job}, {"key": "system.correlationId", "value": execution_id}],
          f"create: labels {raw.get('labels')}")
    check(raw.get("originalId") == execution_id and raw.get("deleted") is False, "create: originalId/deleted")
    check(str(raw.get("url", "")).endswith(f"/ui/{tenant}/executions/qiria.demo/hello/{execution_id}"), f"create: url {raw.get('url')!r}")

    # Get: at once, whatever the index.
    got = executions.execution(execution_id, tenant)
    strict(Execution, recorder.last_json(), "get", extras=EXECUTION_EXTRAS)
    check(got.id == execution_id and got.flow_id == "hello" and got.namespace == "qiria.demo", f"get: {got.id} {got.flow_id}")

    # Search by label with the client's own filters, until the index has it.
    filters = [
        QueryFilter(field=QueryFilterField.LABELS, operation=QueryFilterOp.EQUALS, value={"qiria-job": job}),
        QueryFilter(field=QueryFilterField.NAMESPACE, operation=QueryFilterOp.EQUALS, value="qiria.demo"),
    ]

    def search():
        page = executions.search_executions(tenant, page=1, size=10, filters=filters)
        sent = recorder.last().request.url
        check(f"filters%5Blabels%5D%5BEQUALS%5D%5Bqiria-job%5D={job}" in sent, f"search: kestrapy sent {sent}")
        check(isinstance(page, dict) and isinstance(page.get("total"), int) and isinstance(page.get("results"), list),
              f"search: not {{results, total}}: {page!r}")
        for i, result in enumerate(page.get("results", [])):
            strict(Execution, result, f"search result {i}", extras=EXECUTION_EXTRAS)
        return page

    first = search()
    if time.monotonic() - created_at < args.index_delay_ms / 1000:
        check(first.get("total") == 0, f"search: found before the index delay: {first}")
    page = poll("search by label", args.index_delay_ms / 1000 + 10, lambda: when(search(), lambda p: p.get("total")))
    if page:
        check([r["id"] for r in page["results"]] == [execution_id], f"search: {page}")

    finished = poll("hello SUCCESS", 10, lambda: when(executions.execution(execution_id, tenant), lambda e: e.state.current == StateType.SUCCESS))
    if finished:
        raw = recorder.last_json()
        strict(Execution, raw, "get finished", extras=EXECUTION_EXTRAS)
        check(raw.get("outputs") == {"greeting": "hello kestrapy"}, f"outputs: {raw.get('outputs')}")
        check([h["state"] for h in raw["state"]["histories"]] == ["CREATED", "RUNNING", "SUCCESS"], f"histories: {raw['state']}")

    # Kill a running execution; get until KILLED.
    slow = executions.create_execution(tenant, "qiria.demo", "slow", labels=[f"qiria-job:{job}-slow"])
    strict(ExecutionControllerExecutionResponse, recorder.last_json(), "create slow", extras=EXECUTION_EXTRAS)
    killed = executions.kill_execution(slow.id, tenant)
    strict(Execution, recorder.last_json(), "kill", extras=EXECUTION_EXTRAS)
    check(isinstance(killed, Execution) and killed.id == slow.id, f"kill returned {killed!r}")
    check(killed.state.current in (StateType.KILLING, StateType.KILLED), f"kill: state {killed.state.current!r}")
    done = poll("KILLED", 10, lambda: when(executions.execution(slow.id, tenant), lambda e: e.state.current == StateType.KILLED))
    if done:
        raw = recorder.last_json()
        strict(Execution, raw, "get killed", extras=EXECUTION_EXTRAS)
        check([h["state"] for h in raw["state"]["histories"]][-2:] == ["KILLING", "KILLED"], f"killed histories: {raw['state']}")
    expect_error(lambda: executions.kill_execution(slow.id, tenant, is_on_kill_cascade=False), ConflictException, 409,
                 "Illegal state: Execution is already finished, can't kill it", "kill finished")

    # Error mappings the gateway relies on.
    expect_error(lambda: executions.create_execution(tenant, "qiria.demo", "nope"), NotFoundException, 404,
                 "Not Found: Requested Flow is not found.", "unknown flow")
    body = expect_error(lambda: executions.create_execution(tenant, "qiria.demo", "hello", labels=[f"qiria-job:{job}-x"]),
                        UnprocessableEntityException, 422, "Invalid entity: ", "missing input")
    if body:
        errors = body["_embedded"].get("errors") or [{}]
        check(errors[0].get("path") == "name" and "missing required input" in errors[0].get("message", ""), f"422 errors: {errors}")
    expect_error(lambda: executions.create_execution(tenant, "qiria.demo", "disabled"), ConflictException, 409,
                 "Illegal state: Requested Flow is disabled.", "disabled flow")
    expect_error(lambda: executions.create_execution(tenant, "qiria.secret", "payroll"), ForbiddenException, 403,
                 "Forbidden", "forbidden flow")
    expect_error(lambda: executions.create_execution(tenant, "qiria.demo", "hello", labels=["system.from:api"], inputs={"name": "x"}),
                 UnprocessableEntityException, 422, "Illegal argument: System labels", "system label")
    expect_error(lambda: executions.execution("0" * 22, tenant), NotFoundException, 404, "Not Found", "unknown execution")
    start_filter = [QueryFilter(field=QueryFilterField.START_DATE, operation=QueryFilterOp.GREATER_THAN, value="2025-01-01T00:00:00Z")]
    expect_error(lambda: executions.search_executions(tenant, filters=start_filter), BadRequestException, 400,
                 "Invalid query filters", "unsupported filter")
    expect_error(lambda: executions.search_executions("elsewhere"), NotFoundException, 404, "Not Found", "other tenant")

    if artifacts_seen:
        print(f"note: tolerated the OpenAPI-only State fields kestrapy requires: {sorted(artifacts_seen)}")
    if failures:
        print(f"kestrapy contract: {len(failures)} mismatch(es) ({kind})")
        return 1
    print(f"kestrapy contract: OK ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
