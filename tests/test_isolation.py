"""Tenant isolation: every API route, called across projects and across nodes.

The matrix is generated from the app's own route table (`app.url_map` plus the `route()`
declarations in `blueprints.api.REGISTRY`), so a new endpoint is in it the day it is added;
`test_every_api_route_is_in_the_isolation_matrix` fails when one cannot be placed (a path
variable, a body or a public route this file does not know yet).

Two projects, alpha (A) and bravo (B), each with real objects: nodes (with keys, JWTs,
heartbeats, events), compiled bundles, a running rollout, a group, a drift event, a
notification endpoint with a delivery, a rollout template, a freeze window, a bound API key,
a GitOps configuration and a signing key. Then, on both backends:

- operator routes: A's slug with B's ids (an admin's session), and a key bound to B against
  A's URLs and against A's ids under B's slug: 404 (403 where a route refuses bound keys
  outright), and the answer names nothing of the other tenant;
- node routes: node X's key and JWT with node Y's id in the path (Y in the same project and
  in the other one): 403 `node_mismatch`; a node of B cannot fetch, report or be offered A's
  bundles;
- public routes: B's registration token and GitOps secret do not open A;
- every call of the matrix fails, so the whole database must be unchanged afterwards;
- a node of B that claims to run A's bundle cannot make B's rollback send nodes to it (found
  here: the rollback followed the node's report across the project boundary).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from bundle_helpers import CONFIG, route_config, run_jobs
from conftest import PASSWORD, bearer, build_app, login, make_key, make_project, make_user
from sqlalchemy import select, update

from blueprints.api import REGISTRY, RouteSpec
from sentinel_cp import drift
from sentinel_cp.accounts import SCOPES
from sentinel_cp.db import db, utcnow
from sentinel_cp.nodes import Node

ADMIN = "admin@example.com"
PATH_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([a-z_]+)>")
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# --- the two tenants ----------------------------------------------------------------------------


@dataclass
class NodeCreds:
    id: str
    name: str
    key: str
    jwt: str

    def key_headers(self) -> dict[str, str]:
        return {"X-Sentinel-Node-Key": self.key}

    def jwt_headers(self) -> dict[str, str]:
        return bearer(self.jwt)


@dataclass
class Tenant:
    """One project and the ids, names and secrets of everything built in it."""

    slug: str
    project_id: str = ""
    registration_token: str = ""
    nodes: list[NodeCreds] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    rollout_id: str = ""
    group: str = ""
    drift_event_id: str = ""
    endpoint_id: str = ""
    endpoint_secret: str = ""
    template: str = ""
    window_id: str = ""
    key: str = ""  # an API key bound to this project holding every scope
    key_id: str = ""
    kid: str = ""
    gitops_repository: str = ""
    gitops_secret: str = ""
    markers: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.slug.title()

    def leaked(self, text: str, request: str) -> list[str]:
        """The markers of this tenant in `text` that the request did not itself carry."""
        return sorted(m for m in self.markers if m in text and m not in request)


@dataclass
class World:
    a: Tenant
    b: Tenant
    root: str  # an unbound admin key
    admin_id: str


def text_of(response: Any) -> str:
    """The body as text (an archive download is binary: undecodable bytes are replaced)."""
    return str(response.get_data().decode("utf-8", errors="replace"))


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, text_of(response))
    return response.get_json()


def _build_tenant(client: Any, app: Any, root: str, slug: str) -> Tenant:
    t = Tenant(slug)
    auth = bearer(root)
    base = f"/api/v1/projects/{slug}"
    t.project_id = make_project(app, slug)
    t.registration_token = _ok(client.post(f"{base}/registration-token", headers=auth), 201)[
        "token"
    ]
    for index in (1, 2):
        name = f"{slug}-edge-{index}"
        body = _ok(
            client.post(
                f"{base}/nodes/register",
                json={"name": name, "labels": {"tier": f"{slug}-tier"}, "hostname": f"{name}.lan"},
                headers={"X-Sentinel-Registration-Token": t.registration_token},
            ),
            201,
        )
        node = NodeCreds(body["node_id"], name, body["node_key"], "")
        node.jwt = _ok(client.post(f"/api/v1/nodes/{node.id}/token", headers=node.key_headers()))[
            "token"
        ]
        _ok(
            client.post(
                f"/api/v1/nodes/{node.id}/heartbeat",
                json={"health": {"status": "healthy"}, "metrics": {"error_rate": 0.1}},
                headers=node.jwt_headers(),
            )
        )
        _ok(
            client.post(
                f"/api/v1/nodes/{node.id}/events",
                json={"event_type": "reload", "message": f"{slug}-event-message"},
                headers=node.key_headers(),
            ),
            201,
        )
        t.nodes.append(node)
    for version, config in ((f"{slug}-v1", CONFIG), (f"{slug}-v2", route_config(2, tag=slug))):
        bundle = _ok(
            client.post(
                f"{base}/bundles", json={"version": version, "config_source": config}, headers=auth
            ),
            201,
        )
        t.bundles.append(bundle["id"])
        t.versions.append(version)
    t.group = f"{slug}-group"
    _ok(
        client.post(
            f"{base}/groups",
            json={"name": t.group, "selector": {"labels": {"tier": f"{slug}-tier"}}},
            headers=auth,
        ),
        201,
    )
    t.template = f"{slug}-template"
    _ok(
        client.post(
            f"{base}/rollout-templates",
            json={"name": t.template, "strategy": "all_at_once"},
            headers=auth,
        ),
        201,
    )
    t.endpoint_secret = f"{slug}-hook-secret-" + "s" * 24
    endpoint = _ok(
        client.post(
            f"{base}/notification-endpoints",
            json={
                "name": f"{slug}-hook",
                "url": f"http://127.0.0.1:9/{slug}-hook",
                "secret": t.endpoint_secret,
            },
            headers=auth,
        ),
        201,
    )
    t.endpoint_id = endpoint["id"]
    _ok(
        client.post(f"{base}/notification-endpoints/{t.endpoint_id}/test", headers=auth),
        202,
    )
    t.gitops_repository = f"owner/{slug}-repo"
    t.gitops_secret = f"{slug}-gitops-secret-" + "g" * 24
    _ok(
        client.put(
            f"{base}/gitops",
            json={"repository": t.gitops_repository, "secret": t.gitops_secret},
            headers=auth,
        ),
        201,
    )
    t.key = make_key(app, ADMIN, list(SCOPES), project=slug)
    t.key_id = _ok(client.get("/api/v1/me", headers=bearer(t.key)))["api_key"]["id"]
    return t


def _start_rollout(client: Any, root: str, t: Tenant) -> None:
    """After compiling: roll v1 out to the tenant's nodes (assigned by the next job run)."""
    t.rollout_id = _ok(
        client.post(
            f"/api/v1/projects/{t.slug}/rollouts",
            json={"bundle_id": t.bundles[0], "strategy": "all_at_once"},
            headers=bearer(root),
        ),
        201,
    )["id"]


def _finish_tenant(client: Any, app: Any, root: str, t: Tenant) -> None:
    """After the rollout assigned: a report, a drifted node, a freeze window, the signing key."""
    auth = bearer(root)
    base = f"/api/v1/projects/{t.slug}"
    first = t.nodes[0]
    _ok(
        client.post(
            f"/api/v1/nodes/{first.id}/bundles/{t.bundles[0]}/downloaded",
            json={},
            headers=first.key_headers(),
        )
    )
    # A third node, outside the rollout, that runs something else than it is expected to.
    name = f"{t.slug}-edge-3"
    body = _ok(
        client.post(
            f"{base}/nodes/register",
            json={"name": name},
            headers={"X-Sentinel-Registration-Token": t.registration_token},
        ),
        201,
    )
    drifted = NodeCreds(body["node_id"], name, body["node_key"], "")
    drifted.jwt = _ok(
        client.post(f"/api/v1/nodes/{drifted.id}/token", headers=drifted.key_headers())
    )["token"]
    t.nodes.append(drifted)
    with app.app_context():
        db.session.execute(
            update(Node)
            .where(Node.id == uuid.UUID(drifted.id))
            .values(expected_bundle_id=t.bundles[0], active_bundle_id="f" * 64)
        )
        db.session.commit()
    start = utcnow()
    starts = (start + timedelta(days=30)).isoformat()
    ends = (start + timedelta(days=31)).isoformat()
    t.window_id = _ok(
        client.post(
            f"{base}/freeze-windows",
            json={
                "kind": "one_off",
                "name": f"{t.slug}-freeze",
                "starts_at": starts,
                "ends_at": ends,
            },
            headers=auth,
        ),
        201,
    )["id"]
    t.kid = _ok(client.get(f"{base}/signing-keys"))["keys"][0]["kid"]


def _open_drift(app: Any, world: World) -> None:
    now = utcnow()
    with app.app_context():
        drift.detect_drift(now)
        drift.detect_drift(now + timedelta(seconds=61))
        db.session.commit()
        for t in (world.a, world.b):
            event = db.session.scalar(
                select(drift.DriftEvent).where(drift.DriftEvent.node_id == uuid.UUID(t.nodes[2].id))
            )
            assert event is not None, f"no drift event opened in {t.slug}"
            t.drift_event_id = str(event.id)


def _collect_markers(t: Tenant) -> None:
    """Everything that identifies the tenant or is one of its secrets."""
    t.markers = {
        t.name,
        t.project_id,
        t.registration_token,
        t.rollout_id,
        t.group,
        t.drift_event_id,
        t.endpoint_id,
        t.endpoint_secret,
        f"{t.slug}-hook",
        t.template,
        t.window_id,
        f"{t.slug}-freeze",
        t.key,
        t.key_id,
        t.key[:12],
        t.kid,
        t.gitops_repository,
        t.gitops_secret,
        f"{t.slug}-tier",
        f"{t.slug}-event-message",
        *t.bundles,
        *t.versions,
    }
    for node in t.nodes:
        t.markers |= {node.id, node.name, node.key, node.jwt}


def build_world(client: Any, app: Any, backend: Any) -> World:
    """Both tenants, built through the API (and the domain where no API exists)."""
    admin_id = make_user(app, ADMIN, "admin")
    root = make_key(app, ADMIN, list(SCOPES))
    a = _build_tenant(client, app, root, "alpha")
    b = _build_tenant(client, app, root, "bravo")
    run_jobs(app, backend.redis_url)  # compile every bundle (and try the test deliveries)
    for t in (a, b):
        statuses = {
            _ok(client.get(f"/api/v1/projects/{t.slug}/bundles/{i}", headers=bearer(root)))[
                "status"
            ]
            for i in t.bundles
        }
        assert statuses == {"compiled"}, statuses
        _start_rollout(client, root, t)
    run_jobs(app, backend.redis_url)  # the rollouts' first ticks assign v1
    for t in (a, b):
        _finish_tenant(client, app, root, t)
    result = World(a, b, root, admin_id)
    _open_drift(app, result)
    for t in (a, b):
        _collect_markers(t)
    return result


@pytest.fixture
def world(client: Any, app: Any, backend: Any) -> World:
    return build_world(client, app, backend)


# --- the database, before and after ------------------------------------------------------------

# Written on every authenticated use of a key (at most once a minute), by design.
VOLATILE_COLUMNS = {("api_keys", "last_used_at")}


def snapshot(app: Any) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table, as sorted tuples of text."""
    with app.app_context():
        tables: dict[str, list[tuple[str, ...]]] = {}
        for table in db.metadata.sorted_tables:
            columns = [c for c in table.columns if (table.name, c.name) not in VOLATILE_COLUMNS]
            rows = db.session.execute(select(*columns)).all()
            tables[table.name] = sorted(tuple(repr(v) for v in row) for row in rows)
        db.session.rollback()
        return tables


def assert_unchanged(app: Any, before: dict[str, list[tuple[str, ...]]]) -> None:
    after = snapshot(app)
    changed = [name for name in before if before[name] != after[name]]
    assert not changed, f"the refused calls changed these tables: {changed}"


# --- how to call each route ---------------------------------------------------------------------


def _future(days: int) -> str:
    return (utcnow() + timedelta(days=days)).isoformat()


# Path variable → its value in the tenant whose ids the call uses.
PATH_VALUES: dict[str, Callable[[Tenant], str]] = {
    "slug": lambda t: t.slug,
    "node_id": lambda t: t.nodes[0].id,
    "bundle_id": lambda t: t.bundles[0],
    "path": lambda t: "sentinel.kdl",
    "rollout_id": lambda t: t.rollout_id,
    "event_id": lambda t: t.drift_event_id,
    "endpoint_id": lambda t: t.endpoint_id,
    "window_id": lambda t: t.window_id,
    "name": lambda t: t.group,
    "kid": lambda t: t.kid,
    "key_id": lambda t: t.key_id,
    "state": lambda t: "downloaded",
}
# `user_id`: users are not project objects; a bound key is refused on /users (403).
GLOBAL_PATH_VALUES: dict[str, Callable[[World], str]] = {"user_id": lambda w: w.admin_id}

# A valid body for every route that takes one; ids in it come from the tenant under test,
# so a body can point across the boundary too (a rollout of another project's bundle).
BODIES: dict[str, Callable[[Tenant], dict[str, Any]]] = {
    "projects.create_project": lambda t: {"slug": "zulu", "name": "Zulu"},
    "projects.update_project": lambda t: {"name": "Renamed"},
    "api_keys.create_key": lambda t: {"name": "k", "scopes": ["nodes:read"], "project": t.slug},
    "users.create_user": lambda t: {"email": "new@example.com", "password": "p" * 16},
    "users.update_user": lambda t: {"role": "reader"},
    "session.login": lambda t: {"email": ADMIN, "password": PASSWORD},
    "bundles.submit": lambda t: {"version": "new", "config_source": CONFIG},
    "bundles.validate": lambda t: {"config_source": CONFIG},
    "bundles.revoke": lambda t: {"reason": "isolation"},
    "drift.resolve_drift": lambda t: {"comment": "isolation"},
    "drift.resolve_all": lambda t: {"comment": "isolation"},
    "nodes.update_node": lambda t: {"labels": {"moved": "yes"}},
    "nodes.create_group": lambda t: {"name": "other-group", "selector": {"labels": {"a": "b"}}},
    "nodes.update_group": lambda t: {"description": "changed"},
    "notifications.create_endpoint": lambda t: {"name": "n", "url": "http://127.0.0.1:9/n"},
    "notifications.update_endpoint": lambda t: {"name": "renamed"},
    "rollouts.add_freeze_window": lambda t: {
        "kind": "one_off",
        "name": "f",
        "starts_at": _future(40),
        "ends_at": _future(41),
    },
    "rollouts.add_template": lambda t: {"name": "other-template", "strategy": "rolling"},
    "rollouts.create": lambda t: {"bundle_id": t.bundles[1], "strategy": "all_at_once"},
    "rollouts.plan": lambda t: {"bundle_id": t.bundles[1]},
    "rollouts.pause": lambda t: {"reason": "isolation"},
    "rollouts.resume": lambda t: {"reason": "isolation"},
    "rollouts.cancel": lambda t: {"reason": "isolation"},
    "rollouts.approve": lambda t: {"comment": "isolation"},
    "rollouts.reject": lambda t: {"comment": "isolation"},
    "rollouts.promote": lambda t: {"reason": "isolation"},
    "rollouts.rollback": lambda t: {"reason": "isolation"},
    "gitops.put_config": lambda t: {"repository": "owner/other", "secret": "x" * 32},
    "node_api.register": lambda t: {"name": "intruder"},
    "node_api.heartbeat": lambda t: {"health": {"status": "healthy"}},
    "node_api.node_events": lambda t: {"event_type": "reload", "message": "intruder"},
    "node_api.running_config": lambda t: {"config_kdl": "system {}"},
    "node_bundles.report": lambda t: {"reason": "intruder"},
}
# Required query parameters (the ids in them come from the tenant under test too).
QUERIES: dict[str, Callable[[Tenant], dict[str, str]]] = {
    "bundles.diff": lambda t: {"against": t.bundles[1]},
}

# Routes outside any project, called with a key bound to the other project: what it gets.
# 404: the object is invisible; 403: the route refuses bound keys; 200: answered, and the
# answer must hold nothing of the other project.
GLOBAL_ROUTES: dict[str, int] = {
    "session.me": 200,
    "projects.list_projects": 200,
    "projects.create_project": 403,
    "api_keys.list_keys": 200,
    "api_keys.create_key": 404,
    "api_keys.show_key": 404,
    "api_keys.revoke_key": 404,
    "users.list_users": 403,
    "users.create_user": 403,
    "users.show_user": 403,
    "users.update_user": 403,
    "audit.global_audit": 404,
    "audit.global_audit_export": 404,
    "audit.global_audit_verify": 404,
}
# Public routes: each is checked by a test below, or holds no tenant data at all.
PUBLIC_ROUTES: dict[str, str] = {
    "node_api.register": "another project's registration token is refused (401)",
    "node_api.signing_keys": "only the named project's public keys",
    "gitops.github_webhook": "another project's secret does not sign for this repository",
    "health.prometheus": "no tenant names or ids in the metrics",
    "openapi.openapi_document": "no tenant data",
    "openapi.api_docs": "no tenant data",
    "health.health": "no tenant data",
    "health.ready": "no tenant data",
    "session.login": "global accounts; throttling in test_limits_security",
    "session.logout": "ends the caller's own session only",
}


@dataclass(frozen=True)
class Route:
    endpoint: str
    rule: str
    method: str
    spec: RouteSpec

    @property
    def variables(self) -> list[str]:
        return PATH_VARIABLE.findall(self.rule)

    @property
    def project_scoped(self) -> bool:
        return "slug" in self.variables

    @property
    def has_ids(self) -> bool:
        """Names an object below the project (beyond the slug) in its path or body."""
        return any(v != "slug" for v in self.variables) or self.endpoint in (
            "rollouts.create",
            "rollouts.plan",
        )

    def url(self, slug_tenant: Tenant, ids_tenant: Tenant, world: World) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "slug":
                return slug_tenant.slug
            if name in GLOBAL_PATH_VALUES:
                return GLOBAL_PATH_VALUES[name](world)
            return PATH_VALUES[name](ids_tenant)

        return PATH_VARIABLE.sub(value, self.rule)

    def body(self, tenant: Tenant) -> dict[str, Any] | None:
        if self.endpoint in BODIES:
            return BODIES[self.endpoint](tenant)
        return {} if self.method in UNSAFE else None

    def query(self, tenant: Tenant) -> dict[str, str]:
        return QUERIES[self.endpoint](tenant) if self.endpoint in QUERIES else {}


def api_routes(app: Any) -> list[Route]:
    """Every rule of the app's URL map except Flask's static files, with its declaration."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            spec = REGISTRY.get(rule.endpoint)
            assert spec is not None, f"{rule.endpoint} is not declared with route()"
            routes.append(Route(rule.endpoint, rule.rule, method, spec))
    return sorted(routes, key=lambda r: (r.rule, r.method))


def call(
    client: Any,
    route: Route,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    query: dict[str, str] | None = None,
) -> tuple[Any, str]:
    """Make the call; returns the response and the text of the request (url, body, query)."""
    response = client.open(
        url, method=route.method, json=body, headers=headers or {}, query_string=query or {}
    )
    return response, f"{url} {json.dumps(body)} {json.dumps(query)}"


def check(
    problems: list[str],
    label: str,
    response: Any,
    request: str,
    victim: Tenant,
    expected: int,
    code: str | None = None,
) -> None:
    """Record a problem when the status (or error code) differs or the answer leaks."""
    text = text_of(response)
    if response.status_code != expected:
        problems.append(f"{label}: {response.status_code} instead of {expected}: {text[:200]}")
    elif code is not None and (response.get_json() or {}).get("code") != code:
        problems.append(f"{label}: code {(response.get_json() or {}).get('code')} not {code}")
    leaked = victim.leaked(text, request)
    if leaked:
        problems.append(f"{label}: the answer carries {victim.slug}'s {leaked}")


# --- coverage -----------------------------------------------------------------------------------


def _placeholder_tenant() -> Tenant:
    bundle = "a" * 64
    node = NodeCreds(str(uuid.uuid4()), "n", "nk_x", "jwt")
    return Tenant(
        "p",
        nodes=[node, node, node],
        bundles=[bundle, "b" * 64],
        rollout_id=str(uuid.uuid4()),
        group="g",
        drift_event_id=str(uuid.uuid4()),
        endpoint_id=str(uuid.uuid4()),
        window_id=str(uuid.uuid4()),
        kid="k",
        key_id=str(uuid.uuid4()),
    )


def test_every_api_route_is_in_the_isolation_matrix(tmp_path: Any) -> None:
    """Fails for a route the matrix cannot call: an unknown path variable, a body without a
    sample (samples must validate), a global or public route without its expectation — and
    when the OpenAPI document and the URL map disagree."""
    # Only the route table and the OpenAPI document are read: no database, no Redis needed.
    app = build_app(tmp_path, f"sqlite:///{tmp_path / 'coverage.db'}", "redis://127.0.0.1:1/0")
    routes = api_routes(app)
    placeholder = _placeholder_tenant()
    problems = []
    for route in routes:
        label = f"{route.method} {route.rule} ({route.endpoint})"
        unknown = [
            v for v in route.variables if v not in PATH_VALUES and v not in GLOBAL_PATH_VALUES
        ]
        if unknown:
            problems.append(f"{label}: no value for path variables {unknown}")
        if route.spec.body is not None:
            if route.endpoint not in BODIES:
                problems.append(f"{label}: no sample body")
            else:
                try:
                    route.spec.body.model_validate_json(
                        json.dumps(BODIES[route.endpoint](placeholder))
                    )
                except Exception as exc:
                    problems.append(f"{label}: the sample body does not validate: {exc}")
        if route.spec.query is not None and route.endpoint in QUERIES:
            route.spec.query.model_validate(QUERIES[route.endpoint](placeholder))
        if route.spec.auth == "operator" and not route.project_scoped:
            if route.endpoint not in GLOBAL_ROUTES:
                problems.append(f"{label}: global operator route without an expectation")
        elif route.spec.auth == "public" and route.endpoint not in PUBLIC_ROUTES:
            problems.append(f"{label}: public route the matrix does not check")
        elif route.spec.auth == "node" and "node_id" not in route.variables:
            problems.append(f"{label}: node route without a node id in its path")
        elif route.spec.auth not in ("operator", "public", "node"):
            problems.append(f"{label}: unknown auth mode {route.spec.auth}")
    stale = (set(BODIES) | set(GLOBAL_ROUTES) | set(PUBLIC_ROUTES)) - {r.endpoint for r in routes}
    assert not stale, f"the matrix names routes that no longer exist: {sorted(stale)}"
    assert not problems, "\n".join(problems)

    document = app.test_client().get("/api/openapi.json").get_json()
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    served = {(r.method, PATH_VARIABLE.sub(r"{\1}", r.rule)) for r in routes}
    assert documented == served


# --- operator routes ----------------------------------------------------------------------------


def _admin_with_foreign_ids(app: Any, session: Any, world: World, problems: list[str]) -> int:
    """A's slug with B's ids, as an admin (session): nothing of B is reachable through A."""
    checked = 0
    for route in api_routes(app):
        if route.spec.auth != "operator" or not route.project_scoped or not route.has_ids:
            continue
        url = route.url(world.a, world.b, world)
        response, request = call(
            session, route, url, body=route.body(world.b), query=route.query(world.b)
        )
        check(problems, f"admin session: {route.method} {url}", response, request, world.b, 404)
        checked += 1
    return checked


def _bound_key_elsewhere(app: Any, world: World, problems: list[str]) -> int:
    """B's key on A's URLs with A's ids, and under B's own slug with A's ids."""
    caller = app.test_client()
    checked = 0
    for route in api_routes(app):
        if route.spec.auth != "operator":
            continue
        if not route.project_scoped:
            shapes = [(world.a, world.a)]
        else:
            shapes = [(world.a, world.a)] + ([(world.b, world.a)] if route.has_ids else [])
        for slug_tenant, ids_tenant in shapes:
            url = route.url(slug_tenant, ids_tenant, world)
            response, request = call(
                caller,
                route,
                url,
                headers=bearer(world.b.key),
                body=route.body(ids_tenant),
                query=route.query(ids_tenant),
            )
            expected = 404 if route.project_scoped else GLOBAL_ROUTES[route.endpoint]
            code = "project_binding" if expected == 403 else None
            label = f"key bound to {world.b.slug}: {route.method} {url}"
            check(problems, label, response, request, world.a, expected, code)
            checked += 1
    return checked


def _filters_across(app: Any, world: World, problems: list[str]) -> None:
    """Filters and references naming B's objects, under A: they match or reach nothing."""
    caller = app.test_client()
    a, b = world.a, world.b
    base = f"/api/v1/projects/{a.slug}"
    auth = bearer(world.root)

    def expect(label: str, response: Any, request: str, statuses: tuple[int, ...]) -> Any:
        if response.status_code not in statuses:
            problems.append(f"{label}: {response.status_code}: {text_of(response)}")
        leaked = b.leaked(text_of(response), request)
        if leaked:
            problems.append(f"{label}: the answer carries {b.slug}'s {leaked}")
        return response.get_json() if response.status_code == 200 else None

    filters = [
        {"bundle": b.bundles[0]},
        {"q": b.nodes[0].name},
        {"label": f"tier:{b.slug}-tier"},
        {"group": b.group},
    ]
    for query in filters:
        response = caller.get(f"{base}/nodes", query_string=query, headers=auth)
        found = expect(f"nodes?{query}", response, json.dumps(query), (200, 404))
        if found is not None and found["total"] != 0:
            problems.append(f"nodes?{query} matched {found['total']} nodes of {a.slug}")
    query = {"node": b.nodes[2].id}
    found = expect(
        "drift?node",
        caller.get(f"{base}/drift", query_string=query, headers=auth),
        b.nodes[2].id,
        (200,),
    )
    if found is not None and found["items"]:
        problems.append("drift?node= listed events of another project's node")
    diff = caller.get(
        f"{base}/bundles/{a.bundles[0]}/diff", query_string={"against": b.bundles[0]}, headers=auth
    )
    expect("diff against another project's bundle", diff, b.bundles[0], (404,))
    for selector in ({"node_ids": [b.nodes[0].id]}, {"group": b.group}):
        plan = caller.post(
            f"{base}/rollouts/plan",
            json={"bundle_id": a.bundles[1], "target_selector": selector},
            headers=auth,
        )
        found = expect(f"plan {selector}", plan, json.dumps(selector), (200, 404, 422))
        if found is not None and found["total"] != 0:
            problems.append(f"a plan aimed at {selector} targets {found['total']} nodes")
    template = caller.post(
        f"{base}/rollouts/plan",
        json={"bundle_id": a.bundles[1], "template": b.template},
        headers=auth,
    )
    expect("plan with another project's template", template, b.template, (404,))
    for path in ("audit", "audit/export", "drift/export", "nodes/stats", "drift/stats"):
        expect(path, caller.get(f"{base}/{path}", headers=auth), "", (200,))


# --- node routes -------------------------------------------------------------------------------


def node_url(route: Route, owner: Tenant, node: NodeCreds) -> str:
    """The route's URL for `node` (bundle routes: its project's assigned bundle)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return node.id if name == "node_id" else PATH_VALUES[name](owner)

    return PATH_VARIABLE.sub(value, route.rule)


def _one_node(t: Tenant, node: NodeCreds) -> Tenant:
    """A tenant whose markers are one node's (a node of the same project is still another)."""
    other = Tenant(t.slug)
    other.markers = {node.key, node.jwt, node.name}
    return other


def _mismatched_nodes(app: Any, world: World, problems: list[str]) -> int:
    """Node X's key and JWT with node Y in the path, Y in X's project and in the other one."""
    caller = app.test_client()
    x = world.a.nodes[0]
    targets = [(world.a, world.a.nodes[1]), (world.b, world.b.nodes[0])]
    checked = 0
    for route in api_routes(app):
        if route.spec.auth != "node":
            continue
        for owner, y in targets:
            url = node_url(route, owner, y)
            victim = owner if owner is world.b else _one_node(owner, y)
            for credential, headers in (("key", x.key_headers()), ("jwt", x.jwt_headers())):
                response, request = call(
                    caller, route, url, headers=headers, body=route.body(owner)
                )
                label = f"{route.method} {url} with {x.name}'s {credential}"
                check(problems, label, response, request, victim, 403, "node_mismatch")
                checked += 1
    return checked


def _foreign_bundles(app: Any, world: World, problems: list[str]) -> None:
    """A node of B, with its own id: A's bundles cannot be fetched, reported or offered."""
    caller = app.test_client()
    a, b = world.a, world.b
    node = b.nodes[0]
    for credential, headers in (("key", node.key_headers()), ("jwt", node.jwt_headers())):
        calls = []
        for bundle in a.bundles:
            prefix = f"/api/v1/nodes/{node.id}/bundles/{bundle}"
            calls.append(("GET", f"{prefix}/download", None, bundle))
            calls.append(("POST", f"{prefix}/downloaded", {}, bundle))
        for method, url, body, bundle in calls:
            response = caller.open(url, method=method, json=body, headers=headers)
            label = f"{b.slug} node ({credential}): {method} {url}"
            if response.status_code != 404:
                problems.append(f"{label}: {response.status_code} instead of 404")
            if a.leaked(text_of(response), bundle):
                problems.append(f"{label}: leaks {a.leaked(text_of(response), bundle)}")
        poll = caller.get(f"/api/v1/nodes/{node.id}/bundles/latest", headers=headers)
        offer = poll.get_json() or {}
        if (offer.get("bundle_id"), offer.get("signing_key_id")) != (b.bundles[0], b.kid):
            problems.append(f"{b.slug} node ({credential}) was offered {offer}")
        if a.leaked(text_of(poll), ""):
            problems.append(f"{b.slug} node poll leaks {a.leaked(text_of(poll), '')}")


# --- public routes ------------------------------------------------------------------------------


def _public_routes(app: Any, world: World) -> None:
    """B's registration token does not register a node in A; B's GitOps secret does not sign
    for A's repository; A's signing keys are A's public keys only; the service routes name no
    tenant."""
    caller = app.test_client()
    a, b = world.a, world.b

    register = caller.post(
        f"/api/v1/projects/{a.slug}/nodes/register",
        json={"name": "intruder"},
        headers={"X-Sentinel-Registration-Token": b.registration_token},
    )
    assert register.status_code == 401
    assert register.get_json()["code"] == "invalid_registration_token"
    assert not a.leaked(text_of(register), "")

    payload = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": "1" * 40,
            "repository": {"full_name": a.gitops_repository},
        }
    ).encode()
    signature = hmac.new(b.gitops_secret.encode(), payload, hashlib.sha256).hexdigest()
    webhook = caller.post(
        "/api/v1/webhooks/github",
        data=payload,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": f"sha256={signature}",
        },
    )
    assert webhook.status_code == 401
    assert webhook.get_json()["code"] == "invalid_signature"
    assert not a.leaked(text_of(webhook), a.gitops_repository)
    assert not b.leaked(text_of(webhook), "")

    keys = _ok(caller.get(f"/api/v1/projects/{a.slug}/signing-keys"))["keys"]
    assert [k["kid"] for k in keys] == [a.kid]
    assert all(set(k) <= {"kid", "alg", "public_key", "state", "created_at"} for k in keys)
    assert not b.leaked(json.dumps(keys), "")

    for path in ("/metrics", "/api/openapi.json", "/api/docs", "/health", "/ready"):
        text = text_of(caller.get(path))
        for t in (a, b):
            assert not t.leaked(text, ""), (path, t.leaked(text, ""))


# --- the matrix ---------------------------------------------------------------------------------


def test_the_isolation_matrix_holds_for_every_route(app: Any, world: World) -> None:
    """The matrix, on every route of the URL map:

    - operator routes: A's slug with B's ids (an admin's session) → 404; a key bound to B on
      A's URLs, and under B's own slug with A's ids → 404 (global routes: 404, 403
      `project_binding`, or an answer holding nothing of A); filters, diffs, plans and
      selectors naming B's objects under A match nothing;
    - node routes: node X's key and JWT with node Y's id in the path (Y in X's project and in
      the other one) → 403 `node_mismatch`; a node of B gets 404 for A's bundles and is
      offered only B's bundle, signed by B's key;
    - public routes: B's registration token and GitOps secret open nothing of A, signing keys
      are per project, the service routes name no tenant.

    No answer carries the other tenant's ids, names or secrets (beyond what the request
    itself named), and the database is exactly as it was."""
    session = app.test_client()
    _ok(login(session, ADMIN))  # before the snapshot: a login is audited
    before = snapshot(app)
    problems: list[str] = []
    foreign = _admin_with_foreign_ids(app, session, world, problems)
    bound = _bound_key_elsewhere(app, world, problems)
    _filters_across(app, world, problems)
    mismatched = _mismatched_nodes(app, world, problems)
    _foreign_bundles(app, world, problems)
    assert not problems, "\n".join(problems)
    _public_routes(app, world)
    assert_unchanged(app, before)
    assert foreign >= 30 and bound >= 90 and mismatched >= 28, (foreign, bound, mismatched)


def test_a_node_reporting_another_projects_bundle_as_active_gets_nothing_of_it(
    client: Any, app: Any, backend: Any, world: World
) -> None:
    """A compromised node of B claims to run A's bundle: it still cannot download it, and
    rolling back B's rollout does not send B's nodes to A's bundle (a delivery remembers the
    node's reported bundle as the one to return to)."""
    a, b = world.a, world.b
    node = b.nodes[1]
    with app.app_context():
        db.session.execute(
            update(Node).where(Node.id == uuid.UUID(node.id)).values(last_heartbeat_at=None)
        )
        db.session.commit()
    _ok(
        client.post(
            f"/api/v1/nodes/{node.id}/heartbeat",
            json={"active_bundle_id": a.bundles[0]},
            headers=node.key_headers(),
        )
    )
    download = client.get(
        f"/api/v1/nodes/{node.id}/bundles/{a.bundles[0]}/download", headers=node.key_headers()
    )
    assert download.status_code == 404
    auth = bearer(world.root)
    base = f"/api/v1/projects/{b.slug}"
    _ok(client.post(f"{base}/rollouts/{b.rollout_id}/cancel", json={}, headers=auth))
    second = _ok(
        client.post(
            f"{base}/rollouts",
            json={"bundle_id": b.bundles[1], "strategy": "all_at_once"},
            headers=auth,
        ),
        201,
    )["id"]
    run_jobs(app, backend.redis_url)
    rolled = _ok(client.post(f"{base}/rollouts/{second}/rollback", json={}, headers=auth))
    run_jobs(app, backend.redis_url)
    texts = [json.dumps(rolled)]
    # B's other nodes have a bundle of B's to go back to: a rollback rollout exists
    back_id = rolled["details"]["rollback_rollout_id"]
    texts.append(text_of(client.get(f"{base}/rollouts/{back_id}", headers=auth)))
    texts.append(text_of(client.get(f"{base}/rollouts", headers=auth)))
    for text in texts:
        assert a.bundles[0] not in text and not a.leaked(text, ""), a.leaked(text, "")
    with app.app_context():
        row = db.session.get(Node, uuid.UUID(node.id))
        assert row is not None
        assert a.bundles[0] not in (row.assigned_bundle_id, row.expected_bundle_id)
