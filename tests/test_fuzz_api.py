"""Schemathesis fuzzes every operation of `/api/openapi.json` in-process against the Flask app
with valid credentials (an admin API key for operator routes, a registered node's key for node
routes) and real ids in the paths: no response is a 5xx, and every response conforms to the
document (status code declared, content type declared, body matching its schema).

CI runs a bounded, deterministic run: every phase but the stateful one, positive and negative
data, `FUZZ_EXAMPLES` (default 4) fuzzed cases per operation and mode, seed `FUZZ_SEED`.
`make fuzz` runs the same with more examples (`FUZZ_EXAMPLES=200` by default).

Below the fuzz test: one plain regression test per failure the fuzzer found, with its input.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from bundle_helpers import CONFIG, register_node, route_config, run_jobs, submit
from conftest import bearer, make_key, make_project, make_user
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from sqlalchemy import update

from sentinel_cp import throttle
from sentinel_cp.accounts import SCOPES
from sentinel_cp.db import db, utcnow

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20250101"))
FUZZ_VERBOSE = bool(os.environ.get("FUZZ_VERBOSE"))
# FUZZ_CHECKS (comma-separated schemathesis check names) swaps in others for exploration.
CHECKS = tuple(
    os.environ.get(
        "FUZZ_CHECKS",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
    ).split(",")
)
# Schemathesis does not fuzz the document it was loaded from.
NOT_FUZZED = {"GET /api/openapi.json"}
ADMIN = "fuzz-admin@example.com"
SLUG = "alpha"
NODE_KEY_HEADER = "X-Sentinel-Node-Key"
GRACE = timedelta(seconds=60)


@dataclass
class FuzzWorld:
    """Real things for the path parameters (so fuzzing gets past 404) and the credentials."""

    admin_key: str
    node_key: str
    path_parameters: dict[str, str]
    # Operations that would destroy what the others need get things of their own.
    sacrificial: dict[tuple[str, str], dict[str, str]]


@pytest.fixture
def admin_key(app: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """An admin's API key with every scope, projects `alpha` (open registration) and `doomed`."""
    from blueprints import auth

    # The fuzzer is one key sending thousands of requests a minute; the limit has its own tests.
    monkeypatch.setattr(auth, "API_LIMIT", throttle.Limit("api", limit=10**9, window_s=60))
    make_user(app, ADMIN, "admin")
    make_project(app, SLUG, open_registration=True)
    make_project(app, "doomed")
    return make_key(app, ADMIN, list(SCOPES))


@pytest.fixture
def fuzz_world(app: Any, client: Any, backend: Any, admin_key: str) -> FuzzWorld:
    return build_world(app, client, backend.redis_url, admin_key)


def _ok(response: Any, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_json())
    return dict(response.get_json())


def build_world(app: Any, client: Any, redis_url: str, admin_key: str) -> FuzzWorld:
    """Nodes (one online), compiled bundles, running rollouts, a drift event, groups, a freeze
    window, notification endpoints, a GitOps configuration, a spare user and key."""
    from sentinel_cp import drift
    from sentinel_cp.nodes import Node

    make_user(app, "spare@example.com", "operator")
    spare_key = make_key(app, ADMIN, ["nodes:read"])
    auth = bearer(admin_key)
    base = f"/api/v1/projects/{SLUG}"

    node_id, node_key = register_node(client, "edge-1", SLUG)
    doomed_node, _ = register_node(client, "edge-doomed", SLUG)
    drifter, _ = register_node(client, "edge-drift", SLUG)
    _ok(
        client.post(
            f"/api/v1/nodes/{node_id}/heartbeat",
            json={"health": {"status": "healthy"}},
            headers={NODE_KEY_HEADER: node_key},
        ),
        200,
    )

    bundle_id = _ok(submit(client, admin_key, CONFIG, "v1", SLUG))["id"]
    spare_bundle = _ok(submit(client, admin_key, route_config(2), "v2", SLUG))["id"]
    run_jobs(app, redis_url)

    with app.app_context():
        db.session.execute(
            update(Node)
            .where(Node.id == uuid.UUID(drifter))
            .values(expected_bundle_id="e" * 64, active_bundle_id="f" * 64)
        )
        db.session.commit()
        now = utcnow()
        drift.detect_drift(now)
        drift.detect_drift(now + GRACE)
        db.session.commit()
    events = _ok(client.get(f"{base}/drift", headers=auth), 200)["items"]
    assert events, "the drifted node opened no drift event"

    rollout_id, doomed_rollout = (
        _ok(
            client.post(
                f"{base}/rollouts",
                json={"bundle_id": bundle_id, "target_selector": {"node_ids": [target]}},
                headers=auth,
            )
        )["id"]
        for target in (node_id, drifter)
    )
    _ok(
        client.put(
            f"{base}/gitops",
            json={"repository": "acme/edge", "secret": "s" * 40},
            headers=auth,
        )
    )
    _ok(
        client.post(
            f"{base}/groups",
            json={"name": "blue", "selector": {"labels": {"tier": "edge"}}},
            headers=auth,
        )
    )
    _ok(
        client.post(
            f"{base}/groups",
            json={"name": "doomed", "selector": {"labels": {"tier": "x"}}},
            headers=auth,
        )
    )
    window_id = _ok(
        client.post(
            f"{base}/freeze-windows",
            json={
                "kind": "weekly",
                "name": "weekend",
                "days": ["sat"],
                "start_time": "00:00",
                "duration_minutes": 60,
                "time_zone": "UTC",
            },
            headers=auth,
        )
    )["id"]
    endpoint_id = _ok(
        client.post(
            f"{base}/notification-endpoints",
            json={"name": "hook", "url": "https://hooks.example.com/x"},
            headers=auth,
        )
    )["id"]
    doomed_endpoint = _ok(
        client.post(
            f"{base}/notification-endpoints",
            json={"name": "doomed", "url": "https://hooks.example.com/y"},
            headers=auth,
        )
    )["id"]
    kid = _ok(client.get(f"{base}/signing-keys"), 200)["keys"][0]["kid"]
    users = _ok(client.get("/api/v1/users", headers=auth), 200)["items"]
    admin_id = next(u["id"] for u in users if u["email"] == ADMIN)
    spare_user = next(u["id"] for u in users if u["email"] == "spare@example.com")
    keys = _ok(client.get("/api/v1/api-keys", headers=auth), 200)["items"]
    admin_key_id = next(k["id"] for k in keys if admin_key.startswith(k["prefix"]))
    spare_key_id = next(k["id"] for k in keys if spare_key.startswith(k["prefix"]))

    path_parameters = {
        "slug": SLUG,
        "node_id": node_id,
        "bundle_id": bundle_id,
        "state": "downloaded",
        "path": "sentinel.kdl",
        "event_id": events[0]["id"],
        "window_id": window_id,
        "name": "blue",
        "endpoint_id": endpoint_id,
        "rollout_id": rollout_id,
        "kid": kid,
        "key_id": admin_key_id,
        "user_id": admin_id,
    }
    sacrificial: dict[tuple[str, str], dict[str, str]] = {
        ("DELETE", "/api/v1/projects/{slug}"): {"slug": "doomed"},
        ("POST", "/api/v1/api-keys/{key_id}/revoke"): {"key_id": spare_key_id},
        ("PATCH", "/api/v1/users/{user_id}"): {"user_id": spare_user},
        ("DELETE", "/api/v1/projects/{slug}/nodes/{node_id}"): {"node_id": doomed_node},
        ("POST", "/api/v1/projects/{slug}/nodes/{node_id}/revoke-key"): {"node_id": doomed_node},
        ("POST", "/api/v1/projects/{slug}/bundles/{bundle_id}/revoke"): {"bundle_id": spare_bundle},
        ("DELETE", "/api/v1/projects/{slug}/groups/{name}"): {"name": "doomed"},
        ("DELETE", "/api/v1/projects/{slug}/notification-endpoints/{endpoint_id}"): {
            "endpoint_id": doomed_endpoint
        },
        ("POST", "/api/v1/projects/{slug}/rollouts/{rollout_id}/cancel"): {
            "rollout_id": doomed_rollout
        },
        ("POST", "/api/v1/projects/{slug}/rollouts/{rollout_id}/rollback"): {
            "rollout_id": doomed_rollout
        },
    }
    return FuzzWorld(admin_key, node_key, path_parameters, sacrificial)


def fuzz_config(world: FuzzWorld, document: dict[str, Any]) -> SchemathesisConfig:
    """Every phase but the stateful one, positive and negative data, fixed seed, the four
    checks; real ids for the path parameters."""
    operations = []
    for (method, path), values in world.sacrificial.items():
        operation_id = document["paths"][path][method.lower()]["operationId"]
        operations.append({"include-operation-id": operation_id, "parameters": _in_path(values)})
    return SchemathesisConfig.from_dict(
        {
            "seed": FUZZ_SEED,
            "generation": {
                "mode": "all",
                "max-examples": FUZZ_EXAMPLES,
                "deterministic": True,
                "database": "none",  # nothing written to .hypothesis/
                "with-security-parameters": False,
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "parameters": _in_path(world.path_parameters),
            "operations": operations,
        }
    )


def _in_path(values: dict[str, str]) -> dict[str, str]:
    """`path.name`: a query parameter of the same name (`state`, `name`) stays fuzzed."""
    return {f"path.{name}": value for name, value in values.items()}


def add_credentials(schema: Any, world: FuzzWorld) -> None:
    """The operator key for operator routes, the node key for node routes, nothing for public
    ones. (Not per-operation `headers` in the config: schemathesis 4.32 builds one session per
    worker from the first operation's headers and sends them to every later operation.)"""

    def credentials(case: Any) -> dict[str, str]:
        schemes = {name for entry in case.operation.definition.raw["security"] for name in entry}
        if "bearerAuth" in schemes:
            return {"Authorization": f"Bearer {world.admin_key}"}
        if "nodeKey" in schemes:
            return {NODE_KEY_HEADER: world.node_key}
        return {}

    @schema.auth(refresh_interval=None)
    class Credentials:
        def get(self, case: Any, ctx: Any) -> dict[str, str]:
            return credentials(case)

        def set(self, case: Any, data: dict[str, str], ctx: Any) -> None:
            case.headers = {**(case.headers or {}), **data}


def run_schemathesis(app: Any, world: FuzzWorld) -> FuzzReport:
    """What `schemathesis run` does, in-process: its engine against the WSGI app."""
    document = app.test_client().get("/api/openapi.json").get_json()
    schema = schemathesis.openapi.from_wsgi(
        "/api/openapi.json", app, config=fuzz_config(world, document)
    )
    add_credentials(schema, world)
    report = FuzzReport()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            report.add(event.recorder)
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            report.stop_reason = str(event.stop_reason)
    return report


@dataclass
class FuzzReport:
    """What the run did (operations, cases, statuses) and what it found, each with its input."""

    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: dict[str, Counter[int]] = field(default_factory=dict)
    failures: dict[tuple[str, str, str], str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop_reason: str = ""

    def add(self, recorder: Any) -> None:
        for interaction in recorder.interactions.values():
            self.cases += 1
            if interaction.response is not None:
                status = interaction.response.status_code
                self.statuses[status] += 1
                self.by_operation.setdefault(recorder.label, Counter())[status] += 1
        for case_id, nodes in recorder.checks.items():
            for node in nodes:
                if node.failure_info is not None:
                    self._add_failure(recorder, case_id, node)

    def _add_failure(self, recorder: Any, case_id: str, node: Any) -> None:
        failure = node.failure_info.failure
        key = (recorder.label, node.name, failure.title)
        if key in self.failures:
            return  # one input per kind of failure is enough to reproduce it
        case = recorder.cases[case_id].value
        interaction = recorder.interactions.get(case_id)
        answer = "no response"
        if interaction is not None and interaction.response is not None:
            answer = f"{interaction.response.status_code} {interaction.response.content[:300]!r}"
        body = "" if case.media_type is None else f" {case.media_type} body={case.body!r:.1000}"
        self.failures[key] = (
            f"{recorder.label} [{node.name}] {failure.title}: {failure.message}\n"
            f"    input: path={case.path_parameters} query={case.query}{body}\n"
            f"    answer: {answer}"
        )

    def summary(self) -> str:
        server_errors = sum(n for status, n in self.statuses.items() if status >= 500)
        return (
            f"schemathesis {schemathesis.SCHEMATHESIS_VERSION}: {len(self.by_operation)} "
            f"operations, {self.cases} cases, {server_errors} 5xx, "
            f"{len(self.failures)} failures, statuses {dict(sorted(self.statuses.items()))}, "
            f"stopped: {self.stop_reason}"
        )


def test_every_operation_answers_below_500_as_documented(
    app: Any,
    client: Any,
    backend: Any,
    fuzz_world: FuzzWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = run_schemathesis(app, fuzz_world)
    with capsys.disabled():  # the numbers belong in every run's output, passing or not
        print(f"\n[{backend.name}] {report.summary()}")
        if FUZZ_VERBOSE:
            for label, counts in sorted(report.by_operation.items()):
                print(f"  {label}: {dict(sorted(counts.items()))}")
    problems = [*report.failures.values(), *report.errors]
    assert not problems, "\n".join(problems)
    assert not [status for status in report.statuses if status >= 500], report.summary()
    assert report.stop_reason == "completed"
    document = client.get("/api/openapi.json").get_json()
    every = {f"{m.upper()} {p}" for p, ops in document["paths"].items() for m in ops}
    assert set(report.by_operation) == every - NOT_FUZZED


# --- what the fuzzer found: each input, replayed -------------------------------------------


@pytest.fixture
def compiled_bundle(app: Any, client: Any, backend: Any, admin_key: str) -> str:
    bundle_id = _ok(submit(client, admin_key, CONFIG, "v1", SLUG))["id"]
    run_jobs(app, backend.redis_url)
    return str(bundle_id)


@pytest.fixture
def edge_node(client: Any, admin_key: str) -> tuple[str, str]:
    """A registered node that has sent one heartbeat: (id, key)."""
    node_id, node_key = register_node(client, "edge-1", SLUG)
    beat = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat",
        json={"health": {"status": "healthy"}},
        headers={NODE_KEY_HEADER: node_key},
    )
    assert beat.status_code == 200
    return node_id, node_key


def assert_documented(client: Any, method: str, template: str, response: Any) -> None:
    """The status and content type are declared for the operation, and the body fits."""
    document = client.get("/api/openapi.json").get_json()
    declared = document["paths"][template][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in declared, f"{method} {template} answered {status}, declared {list(declared)}"
    content = declared[status].get("content", {})
    assert response.mimetype in content, f"{response.mimetype} not in {list(content)}"
    schema = schemathesis.openapi.from_dict(document)
    schema[template][method].validate_response(response)


def test_every_action_a_rollout_refuses_in_its_state_is_a_documented_409(
    client: Any, admin_key: str, compiled_bundle: str, edge_node: tuple[str, str]
) -> None:
    template = "/api/v1/projects/{slug}/rollouts/{rollout_id}"
    auth = bearer(admin_key)
    created = client.post(
        f"/api/v1/projects/{SLUG}/rollouts",
        json={"bundle_id": compiled_bundle, "target_selector": {"node_ids": [edge_node[0]]}},
        headers=auth,
    )
    url = f"/api/v1/projects/{SLUG}/rollouts/{_ok(created)['id']}"
    running = client.post(f"{url}/approve", json={"comment": "0" * 1000}, headers=auth)
    assert running.status_code == 409
    assert running.get_json()["code"] == "rollout_running"
    assert_documented(client, "POST", f"{template}/approve", running)
    assert client.post(f"{url}/cancel", json={}, headers=auth).status_code == 200
    for action, body in [
        ("pause", {"reason": "0"}),
        ("resume", {"reason": None, "skip_unavailable": True}),
        ("cancel", {"reason": "0"}),
        ("approve", {"comment": "0"}),
        ("reject", {"comment": "0"}),
        ("promote", {"reason": "0"}),
        ("rollback", {"reason": "0"}),
    ]:
        response = client.post(f"{url}/{action}", json=body, headers=auth)
        assert response.status_code == 409, action
        assert response.get_json()["code"] == "rollout_cancelled"
        assert_documented(client, "POST", f"{template}/{action}", response)


def test_revoking_a_revoked_bundle_is_a_documented_409(
    client: Any, admin_key: str, compiled_bundle: str
) -> None:
    url = f"/api/v1/projects/{SLUG}/bundles/{compiled_bundle}/revoke"
    auth = bearer(admin_key)
    assert client.post(url, json={"reason": "0" * 500}, headers=auth).status_code == 200
    response = client.post(url, json={"reason": "0" * 500}, headers=auth)
    assert response.status_code == 409
    assert response.get_json()["code"] == "bundle_revoked"
    assert_documented(
        client, "POST", "/api/v1/projects/{slug}/bundles/{bundle_id}/revoke", response
    )


def test_planning_a_rollout_of_a_revoked_bundle_is_a_documented_409(
    client: Any, admin_key: str, compiled_bundle: str
) -> None:
    auth = bearer(admin_key)
    base = f"/api/v1/projects/{SLUG}"
    revoked = client.post(f"{base}/bundles/{compiled_bundle}/revoke", json={}, headers=auth)
    assert revoked.status_code == 200
    response = client.post(
        f"{base}/rollouts/plan", json={"bundle_id": compiled_bundle, "start": True}, headers=auth
    )
    assert response.status_code == 409
    assert response.get_json()["code"] == "bundle_revoked"
    assert_documented(client, "POST", "/api/v1/projects/{slug}/rollouts/plan", response)


def test_a_second_template_of_the_same_name_is_a_documented_409(
    client: Any, admin_key: str
) -> None:
    url = f"/api/v1/projects/{SLUG}/rollout-templates"
    body = {"name": "0", "target_selector": {"node_ids": [""]}}
    assert client.post(url, json=body, headers=bearer(admin_key)).status_code == 201
    response = client.post(url, json=body, headers=bearer(admin_key))
    assert response.status_code == 409
    assert response.get_json()["code"] == "template_exists"
    assert_documented(client, "POST", "/api/v1/projects/{slug}/rollout-templates", response)


def test_submitting_content_that_exists_is_a_documented_200(client: Any, admin_key: str) -> None:
    url = f"/api/v1/projects/{SLUG}/bundles"
    auth = bearer(admin_key)
    first = client.post(url, json={"config_source": "", "version": "0" * 64}, headers=auth)
    assert first.status_code == 201
    response = client.post(url, json={"config_source": "", "version": "1"}, headers=auth)
    assert response.status_code == 200
    assert response.get_json()["id"] == first.get_json()["id"]
    assert_documented(client, "POST", "/api/v1/projects/{slug}/bundles", response)


def test_an_audit_export_in_its_default_json_lines_format_is_documented(
    client: Any, admin_key: str
) -> None:
    for template in ("/api/v1/audit/export", "/api/v1/projects/{slug}/audit/export"):
        response = client.get(
            template.replace("{slug}", SLUG),
            query_string={"actor": "0" * 255, "action": "_"},
            headers=bearer(admin_key),
        )
        assert response.status_code == 200
        assert response.mimetype == "application/x-ndjson"
        assert_documented(client, "GET", template, response)


def test_a_drift_export_as_json_is_documented(client: Any, admin_key: str) -> None:
    response = client.get(
        f"/api/v1/projects/{SLUG}/drift/export",
        query_string={
            "status": "active",
            "severity": "low",
            "kind": "bundle",
            "node": "e3e70682-c209-1cac-a29f-6fbed82c07cd",
            "format": "json",
        },
        headers=bearer(admin_key),
    )
    assert response.status_code == 200
    assert response.get_json() == []
    assert_documented(client, "GET", "/api/v1/projects/{slug}/drift/export", response)


def test_configuring_gitops_the_first_time_is_a_documented_201(client: Any, admin_key: str) -> None:
    response = client.put(
        f"/api/v1/projects/{SLUG}/gitops",
        json={"repository": "acme/edge", "secret": "s" * 16},
        headers=bearer(admin_key),
    )
    assert response.status_code == 201
    assert_documented(client, "PUT", "/api/v1/projects/{slug}/gitops", response)


def test_no_query_parameter_is_documented_as_nullable(client: Any) -> None:
    """A query string cannot carry JSON null: `?state=null` is refused, optional means absent."""
    document = client.get("/api/openapi.json").get_json()
    nullable = [
        f"{method.upper()} {path} ?{parameter['name']}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for parameter in operation["parameters"]
        if parameter["in"] == "query" and "null" in json.dumps(parameter["schema"])
    ]
    assert not nullable, nullable


def test_state_null_in_the_query_is_refused_naming_the_parameter(
    client: Any, admin_key: str
) -> None:
    response = client.get(
        f"/api/v1/projects/{SLUG}/rollouts",
        query_string={"state": "null"},
        headers=bearer(admin_key),
    )
    assert response.status_code == 422
    assert "query.state" in response.get_json()["fields"]


def test_a_signed_github_ping_answers_a_documented_200(client: Any, admin_key: str) -> None:
    secret = "s" * 16
    configured = client.put(
        f"/api/v1/projects/{SLUG}/gitops",
        json={"repository": "acme/edge", "secret": secret},
        headers=bearer(admin_key),
    )
    assert configured.status_code == 201
    body = json.dumps({"zen": "0", "repository": {"full_name": "acme/edge"}}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    response = client.post(
        "/api/v1/webhooks/github",
        data=body,
        content_type="application/json",
        headers={"X-GitHub-Event": "ping", "X-Hub-Signature-256": signature},
    )
    assert response.status_code == 200
    assert response.get_json()["status"] == "pong"
    assert_documented(client, "POST", "/api/v1/webhooks/github", response)


def test_a_poll_with_the_current_etag_is_a_documented_304(
    client: Any, edge_node: tuple[str, str]
) -> None:
    url = f"/api/v1/nodes/{edge_node[0]}/bundles/latest"
    headers = {NODE_KEY_HEADER: edge_node[1]}
    first = client.get(url, headers=headers)
    assert first.status_code == 200
    response = client.get(url, headers={**headers, "If-None-Match": first.headers["ETag"]})
    assert response.status_code == 304
    document = client.get("/api/openapi.json").get_json()
    declared = document["paths"]["/api/v1/nodes/{node_id}/bundles/latest"]["get"]["responses"]
    assert "304" in declared
    assert "content" not in declared["304"]


def test_a_redirect_to_object_storage_is_documented_without_a_body(client: Any) -> None:
    document = client.get("/api/openapi.json").get_json()
    template = "/api/v1/nodes/{node_id}/bundles/{bundle_id}/download"
    declared = document["paths"][template]["get"]["responses"]
    assert "302" in declared
    assert "content" not in declared["302"]
