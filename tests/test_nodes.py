"""Nodes: the node protocol (register, heartbeat, token, events, config, signing keys), the
operator API for nodes and groups, staleness — on both backends."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis
from conftest import bearer, make_key, make_user
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import Engine

from sentinel_cp import db as db_module
from sentinel_cp import events, nodes, signing
from sentinel_cp.audit import Actor, AuditLog
from sentinel_cp.db import db, utcnow

BUNDLE_A = "a" * 64
BUNDLE_B = "b" * 64
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def admin_key(app: Any) -> str:
    make_user(app, "admin@example.com", "admin")
    return make_key(
        app, "admin@example.com", ["nodes:read", "nodes:write", "audit:read", "projects:admin"]
    )


@pytest.fixture
def token(client: Any, admin_key: str) -> str:
    response = client.post(
        "/api/v1/projects/default/registration-token", json={}, headers=bearer(admin_key)
    )
    assert response.status_code == 201
    return str(response.get_json()["token"])


@pytest.fixture(autouse=True)
def default_project(app: Any) -> None:
    from conftest import make_project

    make_project(app, "default")


def register(client: Any, token: str | None, name: str = "edge-1", **fields: Any) -> Any:
    headers = {"X-Sentinel-Registration-Token": token} if token else {}
    return client.post(
        "/api/v1/projects/default/nodes/register", json={"name": name, **fields}, headers=headers
    )


def node_headers(key: str) -> dict[str, str]:
    return {"X-Sentinel-Node-Key": key}


def make_node(client: Any, token: str, name: str = "edge-1", **fields: Any) -> tuple[str, str]:
    response = register(client, token, name, **fields)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    return body["node_id"], body["node_key"]


def rewind(app: Any, node_id: str, seconds: float = 5) -> None:
    """Move the node's last heartbeat into the past, so the next one is not 'too fast'."""
    past = utcnow() - timedelta(seconds=seconds)
    with app.app_context():
        db.session.execute(
            update(nodes.Node)
            .where(nodes.Node.id == uuid.UUID(node_id))
            .values(last_seen_at=past, last_heartbeat_at=past)
        )
        db.session.commit()


def heartbeat(client: Any, app: Any, node_id: str, key: str, body: dict[str, Any]) -> Any:
    rewind(app, node_id)
    return client.post(f"/api/v1/nodes/{node_id}/heartbeat", json=body, headers=node_headers(key))


def node_row(app: Any, node_id: str) -> nodes.Node:
    with app.app_context():
        node = db.session.get(nodes.Node, uuid.UUID(node_id))
        assert node is not None
        db.session.expunge(node)
        return node


# --- registration -------------------------------------------------------------------------


def test_register_returns_the_key_once_and_the_signing_keys(
    client: Any, token: str, app: Any
) -> None:
    response = register(
        client, token, labels={"zone": "a"}, version="0.6.20", capabilities=["reload"]
    )
    assert response.status_code == 201
    body = response.get_json()
    assert body["node_key"].startswith("nk_") and len(body["node_key"]) == 46
    assert body["poll_interval_s"] == 30 and body["heartbeat_interval_s"] == 30
    assert body["signing_keys"][0]["alg"] == "Ed25519"
    assert set(body["signing_keys"][0]) >= {"kid", "public_key"}
    row = node_row(app, body["node_id"])
    assert row.key_hash == hashlib.sha256(body["node_key"].encode()).hexdigest()
    assert (row.status, row.labels, row.ip) == ("online", {"zone": "a"}, "127.0.0.1")


def test_register_without_or_with_a_wrong_token_is_401(client: Any, token: str) -> None:
    for presented in (None, "rt_wrong"):
        response = register(client, presented)
        assert response.status_code == 401
        assert response.get_json()["code"] == "invalid_registration_token"


def test_open_registration_needs_no_token(client: Any, admin_key: str) -> None:
    client.patch(
        "/api/v1/projects/default",
        json={"settings": {"open_registration": True}},
        headers=bearer(admin_key),
    )
    assert register(client, None).status_code == 201


def test_register_in_an_unknown_project_is_404(client: Any, token: str) -> None:
    response = client.post(
        "/api/v1/projects/nope/nodes/register",
        json={"name": "x"},
        headers={"X-Sentinel-Registration-Token": token},
    )
    assert response.status_code == 404


def test_duplicate_name_is_409(client: Any, token: str) -> None:
    make_node(client, token)
    response = register(client, token)
    assert response.status_code == 409
    assert response.get_json()["code"] == "name_taken"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "-bad"}, "name"),
        ({"name": "a" * 101}, "name"),
        ({"name": "ok", "labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
        ({"name": "ok", "labels": {"zone": "x" * 256}}, "labels.zone"),
        ({"name": "ok", "labels": {"bad key!": "v"}}, "labels"),
        ({"name": "ok", "ip": "999.1.1.1"}, "ip"),
        ({"name": "ok", "metadata": {"blob": "x" * 17000}}, "metadata"),
        ({"name": "ok", "capabilities": "reload"}, "capabilities"),
        ({"name": 5}, "name"),
    ],
)
def test_register_names_the_invalid_field(
    client: Any, token: str, body: dict[str, Any], field: str
) -> None:
    response = client.post(
        "/api/v1/projects/default/nodes/register",
        json=body,
        headers={"X-Sentinel-Registration-Token": token},
    )
    assert response.status_code == 422, response.get_json()
    assert any(name.startswith(field) for name in response.get_json()["fields"])


def test_register_body_over_64_kib_is_413(client: Any, token: str) -> None:
    response = client.post(
        "/api/v1/projects/default/nodes/register",
        data=json.dumps({"name": "x", "hostname": "h" * 70000}),
        headers={"X-Sentinel-Registration-Token": token, **JSON},
    )
    assert response.status_code == 413
    assert response.get_json()["code"] == "body_too_large"


def test_registration_is_audited_as_the_node(client: Any, token: str, admin_key: str) -> None:
    node_id, _ = make_node(client, token)
    entries = client.get(
        "/api/v1/projects/default/audit?action=node.registered", headers=bearer(admin_key)
    ).get_json()["items"]
    assert entries[0]["actor"] == {"type": "node", "id": node_id, "label": "edge-1"}


# --- heartbeats ---------------------------------------------------------------------------


def test_heartbeat_updates_the_node_and_answers_per_spec(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    response = heartbeat(
        client,
        app,
        node_id,
        key,
        {
            "health": {"status": "healthy"},
            "metrics": {
                "error_rate": 0.4,
                "latency_p99_ms": 38,
                "cpu_percent": 21.5,
                "memory_percent": 44.0,
                "requests_per_second": 1510,
            },
            "active_bundle_id": BUNDLE_A,
            "version": "0.6.21",
            "hostname": "edge-1.local",
        },
    )
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"status", "node_id", "last_seen_at", "poll_after_s", "assigned_bundle_id"}
    assert (body["status"], body["node_id"], body["poll_after_s"]) == ("ok", node_id, 30)
    row = node_row(app, node_id)
    assert row.active_bundle_id == BUNDLE_A  # the peer's central bug: it never did this
    assert row.metrics["latency_p99_ms"] == 38
    assert (row.version, row.hostname, row.health) == (
        "0.6.21",
        "edge-1.local",
        {"status": "healthy"},
    )


def test_an_empty_heartbeat_is_accepted_and_leaves_stored_values_alone(
    client: Any, app: Any, token: str
) -> None:
    node_id, key = make_node(client, token, metadata={"rack": "r1"}, version="1.0")
    heartbeat(
        client, app, node_id, key, {"active_bundle_id": BUNDLE_A, "health": {"status": "healthy"}}
    )
    response = heartbeat(client, app, node_id, key, {})
    assert response.status_code == 200
    row = node_row(app, node_id)
    assert (row.meta, row.version, row.active_bundle_id) == ({"rack": "r1"}, "1.0", BUNDLE_A)
    assert row.health == {"status": "healthy"}


def test_a_null_active_bundle_is_stored_as_none(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    heartbeat(client, app, node_id, key, {"active_bundle_id": BUNDLE_A})
    heartbeat(client, app, node_id, key, {"active_bundle_id": None})
    assert node_row(app, node_id).active_bundle_id is None


def test_cpu_and_memory_under_health_are_read_as_metrics(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    heartbeat(
        client,
        app,
        node_id,
        key,
        {"health": {"status": "degraded", "cpu_percent": 91, "memory_percent": 50}},
    )
    assert node_row(app, node_id).metrics == {"cpu_percent": 91, "memory_percent": 50}


def test_zentinel_key_header_is_accepted(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    rewind(app, node_id)
    response = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers={"X-Zentinel-Node-Key": key}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers,code",
    [
        ({}, "missing_credentials"),
        ({"X-Sentinel-Node-Key": "nk_" + "x" * 43}, "invalid_node_key"),
        ({"X-Sentinel-Node-Key": "sk_not-a-node-key"}, "invalid_node_key"),
        ({"Authorization": "Bearer not.a.jwt"}, "invalid_token"),
        ({"Authorization": "Basic abc"}, "invalid_authorization"),
    ],
)
def test_heartbeat_with_bad_credentials_is_401(
    client: Any, token: str, headers: dict[str, str], code: str
) -> None:
    node_id, _ = make_node(client, token)
    response = client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == code


def test_another_nodes_key_on_the_path_is_403(client: Any, app: Any, token: str) -> None:
    first, _ = make_node(client, token, "edge-1")
    _, second_key = make_node(client, token, "edge-2")
    response = client.post(
        f"/api/v1/nodes/{first}/heartbeat", json={}, headers=node_headers(second_key)
    )
    assert response.status_code == 403
    assert response.get_json()["code"] == "node_mismatch"


def test_malformed_node_id_is_400(client: Any, token: str) -> None:
    _, key = make_node(client, token)
    response = client.post("/api/v1/nodes/not-a-uuid/heartbeat", json={}, headers=node_headers(key))
    assert response.status_code == 400


def test_heartbeats_faster_than_one_per_second_are_429(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    with app.app_context():  # the last heartbeat is "in the future": the next is too fast
        db.session.execute(
            update(nodes.Node)
            .where(nodes.Node.id == uuid.UUID(node_id))
            .values(last_heartbeat_at=utcnow() + timedelta(seconds=30))
        )
        db.session.commit()
    response = client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=node_headers(key))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


def test_heartbeat_one_second_apart_is_accepted_by_the_domain(
    client: Any, app: Any, token: str
) -> None:
    _, key = make_node(client, token)
    with app.app_context():
        start = utcnow() + timedelta(seconds=10)
        nodes.record_heartbeat(nodes.authenticate_key(key), {}, now=start)
        with pytest.raises(Exception, match="one per second"):
            nodes.record_heartbeat(
                nodes.authenticate_key(key), {}, now=start + timedelta(milliseconds=900)
            )
        nodes.record_heartbeat(nodes.authenticate_key(key), {}, now=start + timedelta(seconds=1))


def test_a_heartbeat_racing_another_on_a_stale_read_is_refused(
    client: Any, app: Any, token: str
) -> None:
    # Two requests of one node read the same row; the guard in the UPDATE lets only one win.
    _, key = make_node(client, token)
    with app.app_context():
        start = utcnow() + timedelta(seconds=10)
        first, second = nodes.authenticate_key(key), nodes.authenticate_key(key)
        nodes.record_heartbeat(first, {}, now=start)
        with pytest.raises(Exception, match="one per second"):
            nodes.record_heartbeat(second, {}, now=start + timedelta(milliseconds=10))


@pytest.mark.parametrize(
    "body,field",
    [
        ({"health": {"status": "fine"}}, "health.status"),
        ({"metrics": {"error_rate": 101}}, "metrics.error_rate"),
        ({"metrics": {"error_rate": "0.4"}}, "metrics.error_rate"),
        ({"active_bundle_id": "not-a-sha"}, "active_bundle_id"),
        ({"unknown": 1}, "unknown"),
        ({"metadata": []}, "metadata"),
    ],
)
def test_heartbeat_names_the_invalid_field(
    client: Any, app: Any, token: str, body: dict[str, Any], field: str
) -> None:
    node_id, key = make_node(client, token)
    response = heartbeat(client, app, node_id, key, body)
    assert response.status_code == 422
    assert field in response.get_json()["fields"]


def test_heartbeat_body_over_64_kib_is_413(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    response = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat",
        data=json.dumps({"hostname": "h" * 70000}),
        headers={**node_headers(key), **JSON},
    )
    assert response.status_code == 413


def test_steady_state_heartbeat_costs_at_most_two_sql_statements(
    client: Any, app: Any, token: str
) -> None:
    node_id, key = make_node(client, token)
    heartbeat(client, app, node_id, key, {"health": {"status": "healthy"}})  # takes the sample
    rewind(app, node_id)
    statements: list[str] = []
    engine = Engine  # every engine: the heartbeat writes on the hot-path pool

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        response = client.post(
            f"/api/v1/nodes/{node_id}/heartbeat",
            json={"health": {"status": "healthy"}, "metrics": {"error_rate": 1.5}},
            headers=node_headers(key),
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert response.status_code == 200
    real = [s for s in statements if not s.lstrip().upper().startswith(("PRAGMA", "SELECT 1"))]
    assert len(real) <= 2, real
    assert real[0].lstrip().upper().startswith("SELECT")
    assert real[-1].lstrip().upper().startswith("UPDATE")


def test_history_is_sampled_at_most_once_a_minute(client: Any, app: Any, token: str) -> None:
    _, key = make_node(client, token)
    with app.app_context():
        start = utcnow() + timedelta(seconds=5)
        for offset in (0, 10, 30, 59, 61, 90, 125):
            ctx = nodes.authenticate_key(key)
            nodes.record_heartbeat(ctx, {}, now=start + timedelta(seconds=offset))
        db.session.commit()
        samples = db.session.scalars(
            select(nodes.NodeHeartbeat.created_at).order_by(nodes.NodeHeartbeat.created_at)
        ).all()
    assert [(s - start).total_seconds() for s in samples] == [0, 61, 125]


def test_no_event_is_published_unless_status_or_bundle_changes(
    client: Any, app: Any, backend: Any, token: str
) -> None:
    node_id, key = make_node(client, token)
    pubsub = redis.Redis.from_url(backend.redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events.CHANNEL)
    assert pubsub.get_message(timeout=2) is None

    def node_events() -> list[dict[str, Any]]:
        seen = []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            payload = json.loads(message["data"])
            if payload["id"] == node_id:
                seen.append(payload)
        return seen

    heartbeat(client, app, node_id, key, {"metrics": {"error_rate": 1}})
    heartbeat(client, app, node_id, key, {"metrics": {"error_rate": 2}})
    assert node_events() == []
    heartbeat(client, app, node_id, key, {"active_bundle_id": BUNDLE_B})
    assert [e["kind"] for e in node_events()] == ["node"]


# --- tokens -------------------------------------------------------------------------------


def get_token(client: Any, node_id: str, key: str) -> str:
    response = client.post(f"/api/v1/nodes/{node_id}/token", headers=node_headers(key))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 43200
    return str(body["token"])


def test_token_is_created_on_demand_and_works_as_bearer(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    jwt = get_token(client, node_id, key)
    rewind(app, node_id)
    response = client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(jwt))
    assert response.status_code == 200
    renewed = client.post(f"/api/v1/nodes/{node_id}/token", headers=bearer(jwt))
    assert renewed.status_code == 200


def test_a_bearer_header_is_checked_alone(client: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    response = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat",
        json={},
        headers={"Authorization": "Bearer x.y.z", **node_headers(key)},
    )
    assert response.status_code == 401


def test_an_expired_token_is_401(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    with app.app_context():
        ctx = nodes.authenticate_key(key)
        old, _ = nodes.issue_token(ctx, now=utcnow() - timedelta(hours=13))
        db.session.commit()
    response = client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(old))
    assert response.status_code == 401
    assert response.get_json()["code"] == "token_expired"


def test_a_good_signature_is_verified_once_but_expiry_and_tampering_every_time(
    client: Any, app: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_id, key = make_node(client, token)
    checked: list[bytes] = []
    real_verify = signing.verify

    def counting(public_key: str, message: bytes, signature: bytes) -> bool:
        checked.append(signature)
        return real_verify(public_key, message, signature)

    monkeypatch.setattr(signing, "verify", counting)
    with app.app_context():
        ctx = nodes.authenticate_key(key)
        jwt, expires = nodes.issue_token(ctx)
        db.session.commit()
        assert nodes.authenticate_token(jwt).node.id == uuid.UUID(node_id)
        assert nodes.authenticate_token(jwt).node.id == uuid.UUID(node_id)
        assert len(checked) == 1  # the second request reused the first one's verdict
        with pytest.raises(Exception) as expired:
            nodes.authenticate_token(jwt, now=expires + timedelta(seconds=1))
        assert getattr(expired.value, "code", None) == "token_expired"
        header, claims, signature = jwt.split(".")
        raw = bytearray(signing._unb64url(signature))
        raw[0] ^= 1
        forged = f"{header}.{claims}.{signing._b64url(bytes(raw))}"
        with pytest.raises(Exception) as refused:
            nodes.authenticate_token(forged)
        assert getattr(refused.value, "code", None) == "invalid_token"
        assert len(checked) == 2


def test_a_tampered_token_is_401(client: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    header, _claims, signature = get_token(client, node_id, key).split(".")
    forged_claims = signing._b64url(
        json.dumps({"sub": node_id, "exp": 9999999999, "ver": 1}).encode()
    )
    response = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat",
        json={},
        headers=bearer(f"{header}.{forged_claims}.{signature}"),
    )
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_token"


def test_a_retired_signing_key_stops_its_tokens(
    client: Any, app: Any, token: str, admin_key: str
) -> None:
    node_id, key = make_node(client, token)
    jwt = get_token(client, node_id, key)
    kid = json.loads(signing._unb64url(jwt.split(".")[0]))["kid"]
    rotated = client.post(
        "/api/v1/projects/default/signing-keys/rotate", json={}, headers=bearer(admin_key)
    )
    assert rotated.status_code == 201
    rewind(app, node_id)
    still = client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(jwt))
    assert still.status_code == 200  # rotation alone keeps older tokens working
    retired = client.post(
        f"/api/v1/projects/default/signing-keys/{kid}/retire", json={}, headers=bearer(admin_key)
    )
    assert retired.status_code == 200 and retired.get_json()["state"] == "retired"
    rewind(app, node_id)
    response = client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(jwt))
    assert response.status_code == 401
    assert response.get_json()["code"] == "signing_key_retired"
    assert (
        client.post(f"/api/v1/nodes/{node_id}/token", headers=node_headers(key)).status_code == 200
    )  # new key signs


def test_a_token_for_another_node_on_the_path_is_403(client: Any, token: str) -> None:
    first, _ = make_node(client, token, "edge-1")
    second, second_key = make_node(client, token, "edge-2")
    jwt = get_token(client, second, second_key)
    response = client.post(f"/api/v1/nodes/{first}/heartbeat", json={}, headers=bearer(jwt))
    assert response.status_code == 403


def test_revoking_a_key_kills_key_and_tokens_until_re_registration(
    client: Any, app: Any, token: str, admin_key: str
) -> None:
    node_id, key = make_node(client, token, labels={"zone": "a"})
    jwt = get_token(client, node_id, key)
    revoked = client.post(
        f"/api/v1/projects/default/nodes/{node_id}/revoke-key", json={}, headers=bearer(admin_key)
    )
    assert revoked.status_code == 200 and revoked.get_json()["credentials_revoked"] is True
    rewind(app, node_id)
    for headers in (node_headers(key), bearer(jwt)):
        assert (
            client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=headers).status_code
            == 401
        )
    again = register(client, token)
    assert again.status_code == 201
    assert again.get_json()["node_id"] == node_id  # same node, same history
    rewind(app, node_id)
    assert (
        client.post(
            f"/api/v1/nodes/{node_id}/heartbeat",
            json={},
            headers=node_headers(again.get_json()["node_key"]),
        ).status_code
        == 200
    )


def test_a_deleted_node_is_refused(client: Any, app: Any, token: str, admin_key: str) -> None:
    node_id, key = make_node(client, token)
    jwt = get_token(client, node_id, key)
    assert (
        client.delete(
            f"/api/v1/projects/default/nodes/{node_id}", headers=bearer(admin_key)
        ).status_code
        == 200
    )
    for headers in (node_headers(key), bearer(jwt)):
        assert (
            client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=headers).status_code
            == 401
        )


def test_public_signing_keys_carry_no_secret(client: Any, token: str) -> None:
    response = client.get("/api/v1/projects/default/signing-keys")
    assert response.status_code == 200
    keys = response.get_json()["keys"]
    assert len(keys) == 1
    assert set(keys[0]) == {"kid", "alg", "public_key", "state", "created_at"}


# --- events and running config ------------------------------------------------------------


def test_single_and_batch_events_are_stored(
    client: Any, app: Any, token: str, admin_key: str
) -> None:
    node_id, key = make_node(client, token)
    one = client.post(
        f"/api/v1/nodes/{node_id}/events",
        headers=node_headers(key),
        json={"event_type": "reload", "severity": "warning", "message": "slow"},
    )
    assert one.status_code == 201 and one.get_json() == {"status": "ok", "count": 1}
    batch = client.post(
        f"/api/v1/nodes/{node_id}/events",
        headers=node_headers(key),
        json={"events": [{"event_type": "startup", "message": f"m{i}"} for i in range(3)]},
    )
    assert batch.get_json()["count"] == 3
    empty = client.post(
        f"/api/v1/nodes/{node_id}/events", headers=node_headers(key), json={"events": []}
    )
    assert empty.status_code == 201 and empty.get_json()["count"] == 0
    listed = client.get(
        f"/api/v1/projects/default/nodes/{node_id}/events", headers=bearer(admin_key)
    ).get_json()
    assert listed["total"] == 4
    assert listed["items"][-1]["severity"] == "warning"


def test_a_bad_event_in_a_batch_stores_nothing(client: Any, token: str, admin_key: str) -> None:
    node_id, key = make_node(client, token)
    response = client.post(
        f"/api/v1/nodes/{node_id}/events",
        headers=node_headers(key),
        json={
            "events": [
                {"event_type": "ok", "message": "fine"},
                {"event_type": "bad", "severity": "loud", "message": "x"},
            ]
        },
    )
    assert response.status_code == 422
    assert "events.1.severity" in response.get_json()["fields"]
    too_many = client.post(
        f"/api/v1/nodes/{node_id}/events",
        headers=node_headers(key),
        json={"events": [{"event_type": "e", "message": "m"}] * 101},
    )
    assert too_many.status_code == 422
    listed = client.get(
        f"/api/v1/projects/default/nodes/{node_id}/events", headers=bearer(admin_key)
    ).get_json()
    assert listed["total"] == 0


def test_running_config_is_stored_with_its_hash(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    config = "system { worker-threads 2 }\n"
    response = client.post(
        f"/api/v1/nodes/{node_id}/config", headers=node_headers(key), json={"config_kdl": config}
    )
    assert response.get_json() == {
        "status": "ok",
        "config_hash": hashlib.sha256(config.encode()).hexdigest(),
    }
    with app.app_context():
        stored = db.session.get(nodes.NodeRuntimeConfig, uuid.UUID(node_id))
        assert stored is not None and stored.config_kdl == config


# --- staleness ----------------------------------------------------------------------------


def test_silent_nodes_go_offline_once_and_the_job_is_safe_to_repeat(
    client: Any, app: Any, token: str, admin_key: str
) -> None:
    quiet, _ = make_node(client, token, "quiet")
    chatty, chatty_key = make_node(client, token, "chatty")
    with app.app_context():
        later = utcnow() + timedelta(seconds=121)
        ctx = nodes.authenticate_key(chatty_key)
        nodes.record_heartbeat(ctx, {}, now=later - timedelta(seconds=5))
        db.session.commit()
        assert nodes.mark_stale_nodes(now=later) == 1
        db.session.commit()
        assert nodes.mark_stale_nodes(now=later) == 0
        db.session.commit()
    assert node_row(app, quiet).status == "offline"
    assert node_row(app, chatty).status == "online"
    entries = client.get(
        "/api/v1/projects/default/audit?action=node.offline", headers=bearer(admin_key)
    ).get_json()["items"]
    assert len(entries) == 1
    assert entries[0]["actor"]["type"] == "system" and entries[0]["resource"]["id"] == quiet


def test_staleness_run_by_several_workers_at_once_flips_each_node_once(
    client: Any, app: Any, token: str
) -> None:
    for i in range(12):
        make_node(client, token, f"edge-{i}")
    later = utcnow() + timedelta(seconds=500)
    results: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with app.app_context():
                flipped = nodes.mark_stale_nodes(now=later)
                db.session.commit()
                results.append(flipped)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(results) == 12
    with app.app_context():
        offline_rows = db.session.scalar(
            select(db.func.count()).select_from(AuditLog).where(AuditLog.action == "node.offline")
        )
    assert offline_rows == 12


def test_a_heartbeat_brings_an_offline_node_back_online(client: Any, app: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    with app.app_context():
        nodes.mark_stale_nodes(now=utcnow() + timedelta(seconds=200))
        db.session.commit()
    assert node_row(app, node_id).status == "offline"
    assert heartbeat(client, app, node_id, key, {}).status_code == 200
    assert node_row(app, node_id).status == "online"


# --- operator API -------------------------------------------------------------------------


@pytest.fixture
def fleet(client: Any, app: Any, token: str) -> dict[str, str]:
    ids = {}
    for name, zone, version in (
        ("alpha", "a", "1.0"),
        ("bravo", "a", "1.1"),
        ("charlie", "b", "1.1"),
        ("delta", "b", "1.0"),
    ):
        node_id, key = make_node(
            client,
            token,
            name,
            labels={"zone": zone, "tier": "edge"},
            version=version,
            hostname=f"{name}.example",
        )
        ids[name] = node_id
        if name == "alpha":
            heartbeat(client, app, node_id, key, {"active_bundle_id": BUNDLE_A})
    with app.app_context():
        db.session.execute(
            update(nodes.Node)
            .where(nodes.Node.name.in_(["alpha", "bravo"]))
            .values(expected_bundle_id=BUNDLE_A)
        )
        db.session.execute(
            update(nodes.Node).where(nodes.Node.name == "delta").values(status="offline")
        )
        db.session.commit()
    return ids


def names(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [item["name"] for item in response.get_json()["items"]]


@pytest.mark.parametrize(
    "query,expected",
    [
        ("", ["alpha", "bravo", "charlie", "delta"]),
        ("?status=offline", ["delta"]),
        ("?label=zone:b", ["charlie", "delta"]),
        ("?label=zone:a&label=tier:edge", ["alpha", "bravo"]),
        ("?label=zone:c", []),
        ("?version=1.1", ["bravo", "charlie"]),
        (f"?bundle={BUNDLE_A}", ["alpha"]),
        ("?drifted=true", ["bravo"]),
        ("?q=CHAR", ["charlie"]),
    ],
)
def test_list_nodes_filters(
    client: Any, fleet: dict[str, str], admin_key: str, query: str, expected: list[str]
) -> None:
    assert (
        names(client.get(f"/api/v1/projects/default/nodes{query}", headers=bearer(admin_key)))
        == expected
    )


@pytest.mark.parametrize(
    "query",
    ["?status=gone", "?label=nocolon", "?drifted=maybe", "?bundle=xyz", "?limit=0", "?color=red"],
)
def test_unknown_filter_values_are_422(
    client: Any, fleet: dict[str, str], admin_key: str, query: str
) -> None:
    response = client.get(f"/api/v1/projects/default/nodes{query}", headers=bearer(admin_key))
    assert response.status_code == 422


def test_node_list_pages_with_a_cursor(client: Any, fleet: dict[str, str], admin_key: str) -> None:
    seen: list[str] = []
    url = "/api/v1/projects/default/nodes?limit=3"
    while url:
        body = client.get(url, headers=bearer(admin_key)).get_json()
        assert body["total"] == 4
        seen += [item["name"] for item in body["items"]]
        cursor = body["next_cursor"]
        url = f"/api/v1/projects/default/nodes?limit=3&cursor={cursor}" if cursor else ""
    assert seen == ["alpha", "bravo", "charlie", "delta"]


def test_node_stats_count_by_status_and_bundle(
    client: Any, fleet: dict[str, str], admin_key: str
) -> None:
    stats = client.get("/api/v1/projects/default/nodes/stats", headers=bearer(admin_key)).get_json()
    assert stats == {
        "total": 4,
        "by_status": {"unknown": 0, "online": 3, "offline": 1},
        "by_active_bundle": {BUNDLE_A: 1, "none": 3},
    }


def test_show_node_has_the_spec_fields(client: Any, fleet: dict[str, str], admin_key: str) -> None:
    body = client.get(
        f"/api/v1/projects/default/nodes/{fleet['bravo']}", headers=bearer(admin_key)
    ).get_json()
    assert {
        "id",
        "name",
        "status",
        "labels",
        "capabilities",
        "version",
        "ip",
        "hostname",
        "last_seen_at",
        "registered_at",
        "active_bundle_id",
        "assigned_bundle_id",
        "expected_bundle_id",
        "health",
        "metrics",
        "drifted",
    } <= set(body)
    assert body["drifted"] is True


def test_nodes_of_another_project_are_404(
    client: Any, app: Any, fleet: dict[str, str], admin_key: str
) -> None:
    from conftest import make_project

    make_project(app, "other")
    for path in (
        f"/api/v1/projects/other/nodes/{fleet['alpha']}",
        f"/api/v1/projects/other/nodes/{fleet['alpha']}/events",
    ):
        assert client.get(path, headers=bearer(admin_key)).status_code == 404
    bound = make_key(app, "admin@example.com", ["nodes:read"], project="other")
    assert (
        client.get(
            f"/api/v1/projects/default/nodes/{fleet['alpha']}", headers=bearer(bound)
        ).status_code
        == 404
    )


def test_label_edit_is_audited_and_needs_write_scope(
    client: Any, app: Any, fleet: dict[str, str], admin_key: str
) -> None:
    reader = make_key(app, "admin@example.com", ["nodes:read"])
    path = f"/api/v1/projects/default/nodes/{fleet['alpha']}"
    denied = client.patch(path, json={"labels": {"zone": "c"}}, headers=bearer(reader))
    assert denied.status_code == 403 and denied.get_json()["required"] == "nodes:write"
    response = client.patch(path, json={"labels": {"zone": "c"}}, headers=bearer(admin_key))
    assert response.status_code == 200 and response.get_json()["labels"] == {"zone": "c"}
    entry = client.get(
        "/api/v1/projects/default/audit?action=node.labels_updated", headers=bearer(admin_key)
    ).get_json()["items"][0]
    assert entry["changes"]["labels"] == [{"zone": "a", "tier": "edge"}, {"zone": "c"}]
    bad = client.patch(path, json={"labels": {"": "x"}}, headers=bearer(admin_key))
    assert bad.status_code == 422


def test_heartbeat_history_lists_samples_newest_first(
    client: Any, app: Any, token: str, admin_key: str
) -> None:
    _, key = make_node(client, token)
    with app.app_context():
        start = utcnow() + timedelta(seconds=5)
        for minute in range(3):
            ctx = nodes.authenticate_key(key)
            nodes.record_heartbeat(
                ctx, {"metrics": {"error_rate": minute}}, now=start + timedelta(minutes=minute)
            )
        db.session.commit()
        node_id = str(ctx.node.id)
    body = client.get(
        f"/api/v1/projects/default/nodes/{node_id}/heartbeats?limit=2", headers=bearer(admin_key)
    ).get_json()
    assert body["total"] == 3
    assert [item["metrics"]["error_rate"] for item in body["items"]] == [2, 1]
    assert body["next_cursor"]


def test_groups_select_nodes_by_labels(client: Any, fleet: dict[str, str], admin_key: str) -> None:
    base = "/api/v1/projects/default/groups"
    created = client.post(
        base,
        json={
            "name": "zone-b",
            "description": "second zone",
            "selector": {"labels": {"zone": "b"}},
        },
        headers=bearer(admin_key),
    )
    assert created.status_code == 201 and created.get_json()["node_count"] == 2
    assert (
        client.post(
            base, json={"name": "zone-b", "selector": {"labels": {}}}, headers=bearer(admin_key)
        ).status_code
        == 409
    )
    assert names(
        client.get("/api/v1/projects/default/nodes?group=zone-b", headers=bearer(admin_key))
    ) == ["charlie", "delta"]
    patched = client.patch(
        f"{base}/zone-b", json={"selector": {"labels": {"zone": "a"}}}, headers=bearer(admin_key)
    )
    assert patched.get_json()["node_count"] == 2
    listed = client.get(base, headers=bearer(admin_key)).get_json()["items"]
    assert [g["name"] for g in listed] == ["zone-b"]
    assert client.delete(f"{base}/zone-b", headers=bearer(admin_key)).status_code == 200
    assert client.get(f"{base}/zone-b", headers=bearer(admin_key)).status_code == 404
    assert (
        client.get(
            "/api/v1/projects/default/nodes?group=zone-b", headers=bearer(admin_key)
        ).status_code
        == 404
    )


def test_delete_node_is_audited(client: Any, fleet: dict[str, str], admin_key: str) -> None:
    path = f"/api/v1/projects/default/nodes/{fleet['charlie']}"
    assert client.delete(path, headers=bearer(admin_key)).status_code == 200
    assert client.get(path, headers=bearer(admin_key)).status_code == 404
    actions = [
        e["action"]
        for e in client.get("/api/v1/projects/default/audit", headers=bearer(admin_key)).get_json()[
            "items"
        ]
    ]
    assert "node.deleted" in actions


def test_system_actor_helper_labels_the_component() -> None:
    assert Actor.system("staleness") == Actor("system", None, "staleness")


def test_the_first_heartbeat_right_after_registration_is_accepted(client: Any, token: str) -> None:
    node_id, key = make_node(client, token)
    response = client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=node_headers(key))
    assert response.status_code == 200


def test_hot_path_samples_history_once_a_minute_in_autocommit(
    client: Any, app: Any, token: str
) -> None:
    _, key = make_node(client, token)
    with app.app_context():
        start = utcnow() + timedelta(seconds=5)
        nodes.record_heartbeat(nodes.authenticate_key(key), {}, now=start)  # online, audited
        db.session.commit()
        with db_module.hot_connection() as conn:
            for offset in (10, 59, 61, 62, 125):
                ctx = nodes.authenticate_key(key, conn)
                nodes.record_heartbeat(
                    ctx, {"metrics": {"error_rate": offset}}, now=start + timedelta(seconds=offset)
                )
        db.session.rollback()  # nothing pending on the session: the hot path committed itself
        samples = db.session.execute(
            select(nodes.NodeHeartbeat.created_at, nodes.NodeHeartbeat.metrics).order_by(
                nodes.NodeHeartbeat.created_at
            )
        ).all()
        node = db.session.scalars(select(nodes.Node)).one()
    assert [(s - start).total_seconds() for s, _ in samples] == [0, 61, 125]
    assert [m.get("error_rate") for _, m in samples] == [None, 61, 125]
    assert node.metrics == {"error_rate": 125}


def test_a_refused_hot_heartbeat_writes_no_sample(client: Any, app: Any, token: str) -> None:
    _, key = make_node(client, token)
    with app.app_context():
        start = utcnow() + timedelta(seconds=5)
        nodes.record_heartbeat(nodes.authenticate_key(key), {}, now=start)
        db.session.commit()
        with db_module.hot_connection() as conn:
            stale = nodes.authenticate_key(key, conn)
            nodes.record_heartbeat(
                nodes.authenticate_key(key, conn), {}, now=start + timedelta(seconds=61)
            )
            with pytest.raises(Exception, match="one per second"):
                nodes.record_heartbeat(stale, {}, now=start + timedelta(seconds=61, milliseconds=5))
        count = db.session.scalar(select(func.count()).select_from(nodes.NodeHeartbeat))
    assert count == 2
