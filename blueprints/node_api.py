"""The node protocol (spec/node-protocol.md): register, heartbeat, token, events, running config,
signing keys. Bundle polling, download and status reports arrive with bundles."""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, current_app, g, request

from blueprints import auth, node_auth
from blueprints.api import parse_json_body, route
from blueprints.schemas import (
    CountOut,
    HeartbeatIn,
    HeartbeatOut,
    NodeEventBatchIn,
    NodeEventsIn,
    NodeTokenOut,
    RegisterIn,
    RegisterOut,
    RunningConfigIn,
    RunningConfigOut,
    SigningKeysOut,
)
from sentinel_cp import heartbeat_buffer, metrics, nodes, projects, signing
from sentinel_cp.db import db, utcnow

bp = Blueprint("node_api", __name__, url_prefix="/api/v1")
bp.teardown_request(node_auth.close_hot_connection)
SMALL_BODY = 64 * 1024
CONFIG_BODY = 1024 * 1024 + 4096
REGISTRATION_HEADER = "X-Sentinel-Registration-Token"


@route(
    bp,
    "/projects/<slug>/nodes/register",
    "POST",
    auth_mode="public",
    summary="Register a node (registration token, or open registration)",
    body=RegisterIn,
    response=RegisterOut,
    status=201,
    max_body=SMALL_BODY,
    responses={
        401: "invalid_registration_token",
        404: "project",
        409: "name_taken",
        429: "too many failed registrations from this address",
    },
)
def register(slug: str, body: RegisterIn) -> tuple[dict[str, Any], int]:
    token = request.headers.get(REGISTRATION_HEADER) or request.headers.get(
        "X-Zentinel-Registration-Token"
    )
    project, node, key, signing_keys = nodes.register_from(
        auth.client_address(),
        slug,
        presented_token=token,
        name=body.name,
        labels=body.labels,
        capabilities=body.capabilities,
        version=body.version,
        ip=body.ip or request.remote_addr,
        hostname=body.hostname,
        metadata=body.metadata,
    )
    settings = project.config
    result = {
        "node_id": str(node.id),
        "node_key": key,
        "poll_interval_s": settings.poll_interval_s,
        "heartbeat_interval_s": settings.heartbeat_interval_s,
        "signing_keys": signing_keys,
    }
    db.session.commit()
    return result, 201


@route(
    bp,
    "/nodes/<node_id>/heartbeat",
    "POST",
    auth_mode="node",
    summary="Report liveness, health, metrics and the running bundle",
    body=HeartbeatIn,
    response=HeartbeatOut,
    max_body=SMALL_BODY,
    responses={429: "heartbeat_too_fast"},
    hot=True,
    shortcut=lambda node_id: buffered_heartbeat(node_id),
)
def heartbeat(node: nodes.NodeContext, body: HeartbeatIn) -> dict[str, Any]:
    report = heartbeat_report(body)
    now = utcnow()
    remembered = g.pop("heartbeat_buffer", None)
    if remembered is not None:  # a steady one is batched like those answered from memory
        buffer, key, version = remembered
        answer = buffer.read_heartbeat(key, node, report, now, version)
        if answer is not None:
            metrics.NODE_HEARTBEATS.inc()
            return answer
    result = nodes.record_heartbeat(node, report, now=now)
    db.session.commit()
    metrics.NODE_HEARTBEATS.inc()
    if remembered is not None:
        buffer.written(key, node, report, now, version)
    return result


def buffered_heartbeat(node_id: str) -> dict[str, Any] | None:
    """The answer to a steady heartbeat of a node this process remembers, its write batched
    (see `heartbeat_buffer`); None sends the heartbeat down the database path."""
    buffer = heartbeat_buffer.for_app(current_app)
    if buffer is None:
        return None
    key = node_auth.credential_key(node_id)
    if key is None:
        return None
    g.heartbeat_buffer = (buffer, key, buffer.cache.version)  # before the credential read
    if not buffer.knows(key):  # (checked before the body is read, as authentication is)
        return None
    return steady_answer(buffer, key, cast(HeartbeatIn, parse_json_body(HeartbeatIn)))


def steady_answer(
    buffer: heartbeat_buffer.HeartbeatBuffer, key: tuple[str, str], body: HeartbeatIn
) -> dict[str, Any] | None:
    """The buffer's answer to a heartbeat of a credential it knows (None: the database path
    answers); also what `steady_heartbeats` answers before Flask."""
    answer = buffer.heartbeat(key, heartbeat_report(body), utcnow())
    if answer is not None:
        metrics.NODE_HEARTBEATS.inc()
    return answer


def heartbeat_report(body: HeartbeatIn) -> dict[str, Any]:
    """The fields the node sent (absent ones keep their stored values)."""
    report = {name: getattr(body, name) for name in body.model_fields_set}
    for name in ("health", "metrics"):
        if report.get(name) is not None:
            report[name] = getattr(body, name).model_dump(exclude_none=True)
    return report


@route(
    bp,
    "/nodes/<node_id>/token",
    "POST",
    auth_mode="node",
    summary="Exchange the node key (or a valid token) for a 12-hour EdDSA JWT",
    response=NodeTokenOut,
    max_body=SMALL_BODY,
)
def token(node: nodes.NodeContext) -> dict[str, Any]:
    now = utcnow()
    value, expires = nodes.issue_token(node, now=now)
    db.session.commit()
    return {
        "token": value,
        "token_type": "Bearer",
        "expires_at": expires.isoformat(),
        "expires_in": int((expires - now).total_seconds()),
    }


@route(
    bp,
    "/nodes/<node_id>/events",
    "POST",
    auth_mode="node",
    summary="Report one event or a batch of up to 100 (all or nothing)",
    body=NodeEventsIn,
    response=CountOut,
    status=201,
    max_body=SMALL_BODY,
)
def node_events(node: nodes.NodeContext, body: NodeEventsIn) -> tuple[dict[str, Any], int]:
    parsed = body.root
    batch = parsed.events if isinstance(parsed, NodeEventBatchIn) else [parsed]
    count = nodes.record_events(node, [event.model_dump() for event in batch])
    db.session.commit()
    return {"status": "ok", "count": count}, 201


@route(
    bp,
    "/nodes/<node_id>/config",
    "POST",
    auth_mode="node",
    summary="Report the configuration the node is running (for drift detection)",
    body=RunningConfigIn,
    response=RunningConfigOut,
    max_body=CONFIG_BODY,
)
def running_config(node: nodes.NodeContext, body: RunningConfigIn) -> dict[str, Any]:
    digest = nodes.store_running_config(node, body.config_kdl)
    db.session.commit()
    return {"status": "ok", "config_hash": digest}


@route(
    bp,
    "/projects/<slug>/signing-keys",
    auth_mode="public",
    summary="Public keys for bundle and token verification (no secrets)",
    response=SigningKeysOut,
)
def signing_keys(slug: str) -> dict[str, Any]:
    project = projects.get_project(slug)
    signing.current_key(project.id)
    keys = [key.public_dict() for key in signing.list_keys(project.id)]
    db.session.commit()
    return {"keys": keys}
