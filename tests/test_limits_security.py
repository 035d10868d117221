"""Input limits, throttles, shared rate limits, security headers and secrets kept out of logs.

- Limits are swept from the app's own declarations: every route's body limit (413 one byte
  past it, not at it) and every bounded field of every body and query schema (strings, list
  items, label counts, numbers: 422 naming the field one step past the bound; at the bound
  the schema accepts it and the server answers without a 5xx — on PostgreSQL too, where a
  column narrower than its schema would fail). Then the KDL nesting depth and the archive size
  of a `.tar.gz` upload at their edges.
- Registration with wrong tokens is throttled per client address (login throttling is in
  `test_auth.py`); both, and the API rate limit, are shown shared by two real server processes
  on one PostgreSQL database and one Redis.
- Console pages and API responses carry CSP, frame, nosniff and referrer headers; HSTS in
  production only.
- A real server (the embedded system, with its worker) is driven through login, keys, users,
  node registration, node keys, JWTs, notification and GitOps secrets, a compile; no secret
  value appears anywhere in its log output.
"""

from __future__ import annotations

import copy
import io
import json
import re
import secrets
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from bundle_helpers import CONFIG
from conftest import (
    PASSWORD,
    POSTGRES_ADMIN_URL,
    REDIS_TEST_URL,
    bearer,
    free_port,
    make_key,
    make_project,
    make_user,
    postgres_available,
    redis_available,
    require_service,
    wait_for,
)
from test_isolation import BODIES, QUERIES, Route, World, api_routes, build_world, text_of
from test_server import Server, start_server

from app import API_CSP, CONSOLE_CSP, MAX_BODY_BYTES
from sentinel_cp import nodes, projects
from sentinel_cp.accounts import SCOPES
from sentinel_cp.audit import Actor
from sentinel_cp.bundles.kdl.source import MAX_DEPTH
from sentinel_cp.bundles.sources import DEFAULT_LIMITS
from sentinel_cp.db import db

UNSAFE = ("POST", "PUT", "PATCH")


# --- what each call needs -----------------------------------------------------------------------


@pytest.fixture
def world(client: Any, app: Any, backend: Any) -> World:
    """Two projects with one of everything (test_isolation's): real ids for every path."""
    return build_world(client, app, backend)


def url_of(route: Route, world: World) -> str:
    return route.url(world.a, world.a, world)


def headers_of(route: Route, world: World) -> dict[str, str]:
    """Credentials that pass the route's authentication (limits are checked after it)."""
    if route.spec.auth == "operator":
        return bearer(world.root)
    if route.spec.auth == "node":
        return world.a.nodes[0].key_headers()
    if route.endpoint == "node_api.register":
        return {"X-Sentinel-Registration-Token": world.a.registration_token}
    return {}


def sample_of(route: Route, world: World) -> dict[str, Any]:
    return BODIES[route.endpoint](world.a) if route.endpoint in BODIES else {}


# --- body size ----------------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    envelope = b'{"pad": ""}'
    return envelope[:-2] + b"x" * (size - len(envelope)) + envelope[-2:]


def _body_sizes(app: Any, world: World) -> None:
    """Each route's own limit (64 KiB for node reports, 4 MiB for submissions, 16 KiB for
    notification endpoints, …) or the app-wide 1 MiB: one byte more is 413 `body_too_large`
    naming that limit; exactly the limit is not refused for its size. A multipart upload past
    the submission limit too."""
    caller = app.test_client()
    problems = []
    checked = 0
    for route in api_routes(app):
        if route.method not in UNSAFE:
            continue
        limit = route.spec.max_body or MAX_BODY_BYTES
        url = url_of(route, world)
        headers = {**headers_of(route, world), "Content-Type": "application/json"}
        over = caller.open(url, method=route.method, data=padded(limit + 1), headers=headers)
        body = over.get_json(silent=True) or {}
        if over.status_code != 413 or body.get("code") != "body_too_large":
            problems.append(f"{route.method} {url}: {over.status_code} {text_of(over)[:120]}")
        elif str(limit) not in body.get("error", ""):
            problems.append(f"{route.method} {url}: 413 names another limit: {body['error']}")
        at = caller.open(url, method=route.method, data=padded(limit), headers=headers)
        if at.status_code == 413 or at.status_code >= 500:
            problems.append(f"{route.method} {url} at its limit: {at.status_code}")
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 40
    _multipart_over_the_submission_limit(app, world)


def _multipart_over_the_submission_limit(app: Any, world: World) -> None:
    from blueprints.bundles import MAX_SUBMISSION

    caller = app.test_client()
    response = caller.post(
        f"/api/v1/projects/{world.a.slug}/bundles",
        data={"version": "big", "files": (io.BytesIO(b"x" * MAX_SUBMISSION), "sentinel.kdl")},
        content_type="multipart/form-data",
        headers=bearer(world.root),
    )
    assert response.status_code == 413
    assert response.get_json()["code"] == "body_too_large"
    assert str(MAX_SUBMISSION) in response.get_json()["error"]


# --- bounded fields -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """One bounded value in a schema: where it is, and a value at and one step past it."""

    path: tuple[str, ...]
    at: Any
    over: Any
    names: str  # the field the 422 must name (a prefix of the reported location)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _branches(node: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    node = _resolve(node, defs)
    if "anyOf" in node:
        out = []
        for branch in node["anyOf"]:
            out.extend(_branches(branch, defs))
        return [b for b in out if b.get("type") != "null"]
    return [node]


def filler(length: int, node: dict[str, Any]) -> str | None:
    """A string of `length` characters that fits the node's pattern (None: none found)."""
    pattern = node.get("pattern")
    candidates = ("a" * length, "a" * max(length - 12, 1) + "@example.com", "k:" + "a" * length)
    for candidate in (c[:length] if c.startswith("k:") else c for c in candidates):
        if len(candidate) != length:
            continue
        if pattern is None or re.search(pattern, candidate):
            return candidate
    return None


def _item(node: dict[str, Any], defs: dict[str, Any]) -> Any:
    """One valid item of an array or dict value, or None when it is not a simple scalar."""
    node = _branches(node, defs)[0] if node else {}
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    kind = node.get("type")
    if kind == "string":
        return filler(min(node.get("maxLength", 8), 8), node)
    if kind in ("number", "integer"):
        return node.get("minimum", 1)
    return None


def bounds(node: dict[str, Any], defs: dict[str, Any], path: tuple[str, ...]) -> Iterator[Bound]:
    """Every bounded value under `node` (objects are walked; arrays and maps by one item)."""
    name = ".".join(path)
    for branch in _branches(node, defs):
        kind = branch.get("type")
        for prop, child in branch.get("properties", {}).items():
            yield from bounds(child, defs, (*path, prop))
        if kind == "string" and "maxLength" in branch:
            limit = branch["maxLength"]
            at, over = filler(limit, branch), filler(limit + 1, branch)
            if at is not None and over is not None and limit >= branch.get("minLength", 0):
                yield Bound(path, at, over, name)
        if kind in ("integer", "number") and "maximum" in branch:
            yield Bound(path, branch["maximum"], branch["maximum"] + 1, name)
        if kind in ("integer", "number") and "minimum" in branch:
            yield Bound(path, branch["minimum"], branch["minimum"] - 1, name)
        if kind == "array":
            item = _item(branch.get("items", {}), defs)
            if item is not None and "maxItems" in branch:
                limit = branch["maxItems"]
                yield Bound(path, [item] * limit, [item] * (limit + 1), name)
            items = _branches(branch.get("items", {}), defs)
            if items and items[0].get("type") == "string" and "maxLength" in items[0]:
                limit = items[0]["maxLength"]
                at, over = filler(limit, items[0]), filler(limit + 1, items[0])
                if at is not None and over is not None:
                    yield Bound(path, [at], [over], f"{name}.0")
        if kind == "object" and "additionalProperties" in branch:
            values = branch["additionalProperties"]
            value = _item(values, defs) if isinstance(values, dict) else None
            if value is not None and "maxProperties" in branch:
                limit = branch["maxProperties"]
                yield Bound(
                    path,
                    {f"k{i}": value for i in range(limit)},
                    {f"k{i}": value for i in range(limit + 1)},
                    name,
                )
            keys = branch.get("propertyNames", {})
            if value is not None and "maxLength" in keys:
                at, over = filler(keys["maxLength"], keys), filler(keys["maxLength"] + 1, keys)
                if at is not None and over is not None:
                    yield Bound(path, {at: value}, {over: value}, name)
            if (
                isinstance(values, dict)
                and values.get("type") == "string"
                and "maxLength" in values
            ):
                limit = values["maxLength"]
                at, over = filler(limit, values), filler(limit + 1, values)
                if at is not None and over is not None:
                    yield Bound(path, {"k": at}, {"k": over}, f"{name}.k")


def _branch_for(schema: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """For a union body, the branch the sample is written for."""
    defs = schema.get("$defs", {})
    options = _branches(schema, defs)
    for option in options:
        if set(option.get("required", [])) <= set(sample) <= set(option.get("properties", {})):
            return option
    return options[0]


def with_value(sample: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(sample)
    node = body
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return body


def body_bounds(route: Route, sample: dict[str, Any]) -> list[Bound]:
    assert route.spec.body is not None
    schema = route.spec.body.model_json_schema()
    return list(bounds(_branch_for(schema, sample), schema.get("$defs", {}), ()))


def test_every_body_size_and_bounded_field_is_refused_one_step_past_its_limit(
    app: Any, world: World
) -> None:
    """Every route's body limit: one byte past it is 413 naming the limit (`_body_sizes`).
    Every bounded body field of every schema: strings one character too long, lists one item
    too many (scopes, capabilities, node ids, canary steps), maps one pair too many (labels:
    64) or with a key or value too long, numbers one past their range: 422 naming the field.
    At the bound the schema accepts the value and the server answers below 500 (real ids in
    every path, so values at the bound reach the database). Then the same for every query
    parameter, and the node limits no schema can state (16 KiB of metadata, 100 events per
    batch)."""
    _body_sizes(app, world)
    caller = app.test_client()
    problems: list[str] = []
    checked = 0
    for route in api_routes(app):
        if route.spec.body is None:
            continue
        sample = sample_of(route, world)
        url = url_of(route, world)
        headers = headers_of(route, world)
        for bound in body_bounds(route, sample):
            label = f"{route.method} {url} {'.'.join(bound.path)}"
            at = with_value(sample, bound.path, bound.at)
            try:
                route.spec.body.model_validate_json(json.dumps(at))
            except Exception as exc:
                problems.append(f"{label}: the schema refuses the bound itself: {exc}")
            over = caller.open(
                url,
                method=route.method,
                json=with_value(sample, bound.path, bound.over),
                headers=headers,
            )
            fields = (over.get_json(silent=True) or {}).get("fields", {})
            named = any(f == bound.names or f.startswith(bound.names + ".") for f in fields)
            if over.status_code != 422 or not named:
                problems.append(f"{label} past the bound: {over.status_code} {text_of(over)[:160]}")
            answer = caller.open(url, method=route.method, json=at, headers=headers)
            if answer.status_code >= 500:
                problems.append(f"{label} at the bound: {answer.status_code} {text_of(answer)}")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 60, checked
    _bounded_query_parameters(app, world)
    _node_reports_beyond_their_limits(app, world)


def _bounded_query_parameters(app: Any, world: World) -> None:
    caller = app.test_client()
    problems: list[str] = []
    checked = 0
    for route in api_routes(app):
        if route.spec.query is None:
            continue
        schema = route.spec.query.model_json_schema()
        base = QUERIES[route.endpoint](world.a) if route.endpoint in QUERIES else {}
        url = url_of(route, world)
        for bound in bounds(schema, schema.get("$defs", {}), ()):
            label = f"GET {url}?{bound.names}"
            name = bound.path[0]
            over = caller.get(
                url, query_string={**base, name: bound.over}, headers=headers_of(route, world)
            )
            fields = (over.get_json(silent=True) or {}).get("fields", {})
            if over.status_code != 422 or not any(f.startswith(f"query.{name}") for f in fields):
                problems.append(f"{label} past the bound: {over.status_code} {text_of(over)[:160]}")
            at = caller.get(
                url, query_string={**base, name: bound.at}, headers=headers_of(route, world)
            )
            if at.status_code >= 500:
                problems.append(f"{label} at the bound: {at.status_code}")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 40, checked


def _node_reports_beyond_their_limits(app: Any, world: World) -> None:
    """What the schemas cannot express: 16 KiB of metadata, 100 events per batch."""
    caller = app.test_client()
    node = world.a.nodes[0]
    headers = node.key_headers()
    big = {"blob": "m" * (16 * 1024)}
    register = caller.post(
        f"/api/v1/projects/{world.a.slug}/nodes/register",
        json={"name": "big-metadata", "metadata": big},
        headers={"X-Sentinel-Registration-Token": world.a.registration_token},
    )
    assert register.status_code == 422 and "metadata" in register.get_json()["fields"]
    beat = caller.post(
        f"/api/v1/nodes/{node.id}/heartbeat", json={"metadata": big}, headers=headers
    )
    assert beat.status_code == 422 and "metadata" in beat.get_json()["fields"]
    event = {"event_type": "reload", "message": "m"}
    too_many = caller.post(
        f"/api/v1/nodes/{node.id}/events", json={"events": [event] * 101}, headers=headers
    )
    assert too_many.status_code == 422 and "events" in too_many.get_json()["fields"]
    batch = caller.post(
        f"/api/v1/nodes/{node.id}/events", json={"events": [event] * 100}, headers=headers
    )
    assert batch.status_code == 201 and batch.get_json()["count"] == 100


# --- KDL nesting and archive size ---------------------------------------------------------------


@pytest.fixture
def admin_key(app: Any) -> str:
    make_project(app, "alpha")
    make_user(app, "admin@example.com", "admin")
    return make_key(app, "admin@example.com", list(SCOPES))


def nested(depth: int) -> str:
    """A document whose deepest node sits at `depth` levels."""
    return "n {\n" * (depth - 1) + "leaf\n" + "}\n" * (depth - 1)


def test_kdl_nesting_is_refused_one_level_past_the_limit(client: Any, admin_key: str) -> None:
    def codes(depth: int) -> list[str]:
        response = client.post(
            "/api/v1/projects/alpha/bundles/validate",
            json={"config_source": nested(depth)},
            headers=bearer(admin_key),
        )
        assert response.status_code == 200, response.get_json()
        return [e["code"] for e in response.get_json()["errors"]]

    assert "input-too-deep" not in codes(MAX_DEPTH)
    assert "input-too-deep" in codes(MAX_DEPTH + 1)


def targz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_targz_upload_at_the_source_limit_is_accepted_and_one_byte_more_refused(
    client: Any, admin_key: str
) -> None:
    limit = DEFAULT_LIMITS.max_total_bytes
    head = CONFIG.encode()

    def upload(version: str, size: int) -> Any:
        padding = b"// " + b"p" * (size - len(head) - 4) + b"\n"
        archive = targz({"sentinel.kdl": head, "pad.kdl": padding})
        assert len(head) + len(padding) == size
        return client.post(
            "/api/v1/projects/alpha/bundles",
            data={"version": version, "files": (io.BytesIO(archive), "config.tar.gz")},
            content_type="multipart/form-data",
            headers=bearer(admin_key),
        )

    accepted = upload("at-limit", limit)
    assert accepted.status_code == 201, accepted.get_json()
    refused = upload("over-limit", limit + 1)
    assert refused.status_code == 422
    assert "pad.kdl" in refused.get_json()["fields"]


def test_a_targz_bomb_is_refused_without_expanding_it(client: Any, admin_key: str) -> None:
    bomb = targz({"sentinel.kdl": b"\n" * (64 * 1024 * 1024)})  # 64 MiB of newlines: ~64 KiB
    response = client.post(
        "/api/v1/projects/alpha/bundles",
        data={"version": "bomb", "files": (io.BytesIO(bomb), "config.tar.gz")},
        content_type="multipart/form-data",
        headers=bearer(admin_key),
    )
    assert response.status_code == 422
    assert set(response.get_json()["fields"]) & {"archive", "sentinel.kdl"}


# --- registration throttling --------------------------------------------------------------------


@pytest.fixture
def token(app: Any) -> str:
    make_project(app, "alpha")
    with app.app_context():
        raw = projects.rotate_registration_token(
            Actor.system("test"), projects.get_project("alpha")
        )
        db.session.commit()
        return raw


def register(client: Any, address: str, token: str, name: str, slug: str = "alpha") -> Any:
    return client.post(
        f"/api/v1/projects/{slug}/nodes/register",
        json={"name": name},
        headers={"X-Sentinel-Registration-Token": token},
        environ_base={"REMOTE_ADDR": address},
    )


def test_failed_registrations_from_one_address_are_throttled_then_429_with_retry_after(
    client: Any, token: str
) -> None:
    limit = nodes.REGISTRATION_FAILURES.limit
    for i in range(limit):
        wrong = register(client, "10.9.0.1", f"rt_wrong_{i}", f"n{i}")
        assert wrong.status_code == 401, i
    throttled = register(client, "10.9.0.1", token, "late")
    assert throttled.status_code == 429
    assert throttled.get_json()["code"] == "rate_limited"
    assert 0 < int(throttled.headers["Retry-After"]) <= nodes.REGISTRATION_FAILURES.window_s
    assert register(client, "10.9.0.2", token, "elsewhere").status_code == 201


def test_probing_unknown_projects_counts_as_failed_registrations(client: Any, token: str) -> None:
    for i in range(nodes.REGISTRATION_FAILURES.limit):
        assert register(client, "10.9.1.1", token, f"n{i}", slug=f"guess-{i}").status_code == 404
    assert register(client, "10.9.1.1", token, "late").status_code == 429


def test_successful_registrations_are_never_throttled(client: Any, token: str) -> None:
    for i in range(nodes.REGISTRATION_FAILURES.limit + 5):
        assert register(client, "10.9.2.1", token, f"fleet-{i}").status_code == 201, i


# --- two real server processes ------------------------------------------------------------------


@dataclass
class Pair:
    servers: list[Server]
    database_url: str
    redis_url: str


PRODUCTION_SECRET = "p" * 24 + secrets.token_hex(12)


@pytest.fixture(scope="module")
def two_servers() -> Iterator[Pair]:
    """Two `python app.py` processes in production mode on one fresh PostgreSQL database and
    one Redis: what two `web` replicas behind a load balancer share."""
    require_service(postgres_available(), f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    require_service(redis_available(), f"Redis not reachable at {REDIS_TEST_URL}")
    name = f"sentinel_limits_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    env = {
        "SENTINEL_ENV": "production",
        "SECRET_KEY_BASE": PRODUCTION_SECRET,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_TEST_URL,
        "HOST": "127.0.0.1",
    }
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-limits-"))
    servers: list[Server] = []
    try:
        for index in (1, 2):  # one after the other: the first one migrates
            (tmp / str(index)).mkdir()
            servers.append(start_server(env, tmp / str(index)))
        yield Pair(servers, database_url, REDIS_TEST_URL)
    finally:
        for server in servers:
            server.stop()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def from_address(address: str) -> dict[str, str]:
    """Both servers trust X-Forwarded-For from loopback (a local reverse proxy): each test
    comes from addresses of its own, so their throttles stay apart."""
    return {"X-Forwarded-For": address}


def fresh_network() -> str:
    """`10.x.y` unused by any earlier run: address throttles outlive a test run in Redis."""
    return "10.{}.{}".format(*uuid.uuid4().bytes[:2])


@contextmanager
def admin_session(server: Server, address: str) -> Iterator[httpx.Client]:
    """The bootstrap admin, logged in (session cookie) from `address`. Production cookies are
    `Secure`, which httpx keeps off plain HTTP: the cookie is sent by hand, as TLS would."""
    with httpx.Client(base_url=server.url, timeout=10, headers=from_address(address)) as client:
        login = client.post(
            "/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        client.headers["Cookie"] = f"sentinel_session={login.cookies['sentinel_session']}"
        yield client


def assert_not_logged(servers: list[Server], *values: str) -> None:
    for server in servers:
        log = server.log()
        found = [v[:12] + "…" for v in values if v and v in log]
        assert not found, f"secrets in the log of {server.url}: {found}"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_the_api_rate_limit_is_counted_across_two_server_processes(two_servers: Pair) -> None:
    one, two = two_servers.servers
    net = fresh_network()
    with admin_session(one, f"{net}.1") as admin:
        created = admin.post(
            "/api/v1/api-keys", json={"name": "shared", "scopes": ["nodes:read"]}
        ).json()
        cookie = admin.headers["Cookie"].split("=", 1)[1]
    key, key_id = created["key"], created["id"]
    headers = bearer(key)
    remaining = []
    for server in (one, two, one, two):
        response = httpx.get(f"{server.url}/api/v1/me", headers=headers)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "1200"
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [remaining[0] - i for i in range(4)], remaining

    # Bring the shared counter to two short of the limit, then alternate: the third call,
    # whichever process answers it, is refused — the count lives in Redis, not in a process.
    counter = f"sentinel:throttle:api:key:{key_id}"
    redis.Redis.from_url(two_servers.redis_url).set(counter, 1198, keepttl=True)
    answers = [httpx.get(f"{s.url}/api/v1/me", headers=headers) for s in (one, two, one, two)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["1", "0", "0", "0"]
    for refused in answers[2:]:
        assert refused.json()["code"] == "rate_limit_exceeded"
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["X-RateLimit-Limit"] == "1200"
        assert int(refused.headers["X-RateLimit-Reset"]) > 0
    assert_not_logged(two_servers.servers, key, cookie, PASSWORD, PRODUCTION_SECRET)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_login_throttling_is_shared_by_two_server_processes(two_servers: Pair) -> None:
    one, two = two_servers.servers
    email = f"target-{uuid.uuid4().hex[:8]}@example.com"
    net = fresh_network()
    with admin_session(one, f"{net}.1") as admin:
        password = "user-" + secrets.token_hex(12)
        made = admin.post("/api/v1/users", json={"email": email, "password": password})
        assert made.status_code == 201, made.text
    wrong = "wrong-" + secrets.token_hex(12)
    statuses = []
    for i, server in enumerate((one, two) * 3):
        response = httpx.post(
            f"{server.url}/api/v1/session",
            json={"email": email, "password": wrong},
            headers=from_address(f"{net}.{10 + i}"),
        )
        statuses.append(response.status_code)
    assert statuses == [401] * 5 + [429], statuses
    locked = httpx.post(
        f"{one.url}/api/v1/session",
        json={"email": email, "password": password},
        headers=from_address(f"{net}.2"),
    )
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert_not_logged(two_servers.servers, password, wrong, PASSWORD)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_registration_throttling_is_shared_by_two_server_processes(two_servers: Pair) -> None:
    one, two = two_servers.servers
    net = fresh_network()
    with admin_session(one, f"{net}.1") as admin:
        token = admin.post("/api/v1/projects/default/registration-token", json={}).json()["token"]
    address = from_address(f"{net}.2")
    limit = nodes.REGISTRATION_FAILURES.limit
    for i in range(limit):
        server = (one, two)[i % 2]
        wrong = httpx.post(
            f"{server.url}/api/v1/projects/default/nodes/register",
            json={"name": f"n{i}"},
            headers={**address, "X-Sentinel-Registration-Token": f"rt_wrong_{i}"},
        )
        assert wrong.status_code == 401, (i, wrong.text)
    for server in (one, two):
        late = httpx.post(
            f"{server.url}/api/v1/projects/default/nodes/register",
            json={"name": "late"},
            headers={**address, "X-Sentinel-Registration-Token": token},
        )
        assert late.status_code == 429 and int(late.headers["Retry-After"]) > 0
    elsewhere = httpx.post(
        f"{two.url}/api/v1/projects/default/nodes/register",
        json={"name": "elsewhere"},
        headers={**from_address(f"{net}.3"), "X-Sentinel-Registration-Token": token},
    )
    assert elsewhere.status_code == 201
    assert_not_logged(two_servers.servers, token, elsewhere.json()["node_key"], PASSWORD)


# --- security headers ---------------------------------------------------------------------------

FRAME_AND_SNIFF = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def assert_security_headers(response: httpx.Response, csp: str, *, hsts: bool) -> None:
    for name, value in FRAME_AND_SNIFF.items():
        assert response.headers.get(name) == value, (response.url, name)
    policy = response.headers.get("content-security-policy", "")
    assert policy == csp, (response.url, policy)
    assert "frame-ancestors 'none'" in policy
    if hsts:
        assert response.headers["strict-transport-security"].startswith("max-age=31536000")
    else:
        assert "strict-transport-security" not in response.headers


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_production_responses_carry_security_headers_and_hsts(two_servers: Pair) -> None:
    server = two_servers.servers[0]
    for path in ("/login", "/", "/nodes"):
        assert_security_headers(httpx.get(f"{server.url}{path}"), CONSOLE_CSP, hsts=True)
    for path in ("/api/v1/me", "/api/openapi.json", "/api/docs", "/health", "/api/v1/nope"):
        assert_security_headers(httpx.get(f"{server.url}{path}"), API_CSP, hsts=True)
    login = httpx.post(
        f"{server.url}/api/v1/session",
        json={"email": "admin@localhost", "password": PASSWORD},
        headers=from_address(f"{fresh_network()}.1"),
    )
    cookie = login.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie


# --- secrets stay out of the logs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_server() -> Iterator[Server]:
    """The whole embedded system (`make run`): web process, worker and cron, one log."""
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-secrets-"))
    server = start_server({}, tmp)
    yield server
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_development_responses_carry_security_headers_without_hsts(
    embedded_server: Server,
) -> None:
    assert_security_headers(httpx.get(f"{embedded_server.url}/login"), CONSOLE_CSP, hsts=False)
    assert_security_headers(
        httpx.get(f"{embedded_server.url}/api/openapi.json"), API_CSP, hsts=False
    )


@pytest.mark.slow
def test_no_secret_reaches_the_log_of_a_running_system(embedded_server: Server) -> None:
    """Every kind of secret the system handles, used for real (and wrongly), then the whole
    log output of the web process, its worker and its cron is searched for each value."""
    url = embedded_server.url
    secret_values: dict[str, str] = {"admin password": PASSWORD}
    with httpx.Client(base_url=url, timeout=15) as api:
        wrong_password = "wrong-" + secrets.token_hex(12)
        secret_values["wrong password"] = wrong_password
        failed = api.post(
            "/api/v1/session", json={"email": "admin@localhost", "password": wrong_password}
        )
        assert failed.status_code == 401
        assert (
            api.post(
                "/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD}
            ).status_code
            == 200
        )
        secret_values["session cookie"] = api.cookies["sentinel_session"]
        secret_values["console cookie"] = httpx.get(f"{url}/login").cookies["sentinel_console"]

        key = api.post("/api/v1/api-keys", json={"name": "ci", "scopes": list(SCOPES)}).json()
        secret_values["api key"] = key["key"]
        assert httpx.get(f"{url}/api/v1/me", headers=bearer(key["key"])).status_code == 200
        bogus_key = "sk_" + secrets.token_urlsafe(32)
        secret_values["unknown api key"] = bogus_key
        assert httpx.get(f"{url}/api/v1/me", headers=bearer(bogus_key)).status_code == 401

        user_password = "user-" + secrets.token_hex(12)
        new_password = "reset-" + secrets.token_hex(12)
        secret_values |= {"user password": user_password, "reset password": new_password}
        user = api.post(
            "/api/v1/users", json={"email": "second@example.com", "password": user_password}
        ).json()
        assert api.patch(f"/api/v1/users/{user['id']}", json={"password": new_password}).is_success

        token = api.post("/api/v1/projects/default/registration-token", json={}).json()["token"]
        secret_values["registration token"] = token
        wrong_token = "rt_" + secrets.token_urlsafe(32)
        secret_values["wrong registration token"] = wrong_token
        refused = api.post(
            "/api/v1/projects/default/nodes/register",
            json={"name": "intruder"},
            headers={"X-Sentinel-Registration-Token": wrong_token},
        )
        assert refused.status_code == 401
        node = api.post(
            "/api/v1/projects/default/nodes/register",
            json={"name": "edge-1"},
            headers={"X-Sentinel-Registration-Token": token},
        ).json()
        node_headers = {"X-Sentinel-Node-Key": node["node_key"]}
        secret_values["node key"] = node["node_key"]
        beat = httpx.post(
            f"{url}/api/v1/nodes/{node['node_id']}/heartbeat", json={}, headers=node_headers
        )
        assert beat.status_code == 200
        jwt = httpx.post(f"{url}/api/v1/nodes/{node['node_id']}/token", headers=node_headers)
        secret_values["node jwt"] = jwt.json()["token"]
        poll = httpx.get(
            f"{url}/api/v1/nodes/{node['node_id']}/bundles/latest",
            headers=bearer(jwt.json()["token"]),
        )
        assert poll.status_code == 200

        hook_secret = "hook-" + secrets.token_hex(16)
        secret_values["notification secret"] = hook_secret
        endpoint = api.post(
            "/api/v1/projects/default/notification-endpoints",
            json={
                "name": "ops",
                "url": f"http://127.0.0.1:{free_port()}/hook",
                "secret": hook_secret,
            },
        ).json()
        generated = api.post(
            "/api/v1/projects/default/notification-endpoints",
            json={"name": "generated", "url": f"http://127.0.0.1:{free_port()}/other"},
        ).json()
        secret_values["generated notification secret"] = generated["secret"]
        assert (
            api.post(
                f"/api/v1/projects/default/notification-endpoints/{endpoint['id']}/test", json={}
            ).status_code
            == 202
        )

        gitops_secret = "gitops-" + secrets.token_hex(16)
        access_token = "ghp_" + secrets.token_hex(16)
        secret_values |= {"gitops secret": gitops_secret, "github token": access_token}
        configured = api.put(
            "/api/v1/projects/default/gitops",
            json={
                "repository": "owner/repo",
                "secret": gitops_secret,
                "access_token": access_token,
            },
        )
        assert configured.status_code == 201, configured.text
        webhook = httpx.post(
            f"{url}/api/v1/webhooks/github",
            content=b'{"repository": {"full_name": "owner/repo"}}',
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": "sha256=" + "0" * 64,
            },
        )
        assert webhook.status_code == 401

        bundle = api.post(
            "/api/v1/projects/default/bundles", json={"version": "v1", "config_source": CONFIG}
        ).json()

        def compiled() -> bool:
            status = api.get(f"/api/v1/projects/default/bundles/{bundle['id']}").json()["status"]
            return status == "compiled"

        def attempted() -> bool:
            page = api.get(
                f"/api/v1/projects/default/notification-endpoints/{endpoint['id']}/deliveries"
            ).json()
            return bool(page["items"]) and page["items"][0]["attempts"] >= 1

        wait_for(compiled, timeout=60, what="the worker to compile and sign the bundle")
        wait_for(attempted, timeout=60, what="the worker to attempt the test delivery")
        assert api.request("DELETE", "/api/v1/session", json={}).status_code == 200
    secret_values["secret key base"] = (embedded_server.data_dir / "secret_key").read_text().strip()

    log = embedded_server.log()
    # The log did record this activity, failures included.
    for line in ("POST /api/v1/api-keys 201", "POST /api/v1/session 401", "GET /api/v1/me 401"):
        assert line in log, line
    assert "started worker" in log
    leaked = sorted(name for name, value in secret_values.items() if value in log)
    assert not leaked, f"secrets found in the server log: {leaked}"
