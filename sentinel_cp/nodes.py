"""Nodes: registration, credentials, heartbeats, events, staleness, labels and groups.

The heartbeat is the hot path of the whole product: through the database it costs one read
(the node, its project's settings and — for a JWT — its signing key, in one statement) and one
UPDATE; a steady one is usually answered from the process's memory and written in a batch
(`steady_heartbeat`, `write_heartbeats`, `sentinel_cp/heartbeat_buffer.py`). History is sampled
at most once a minute per node, and an event is published only when something an operator would
see changed (status or active bundle).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    column,
    delete,
    func,
    or_,
    select,
    table,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from sentinel_cp import audit, events, jobqueue, projects, signing, throttle
from sentinel_cp.audit import Actor
from sentinel_cp.bundles.models import Bundle, NodeBundleStatus
from sentinel_cp.db import JSONType, UTCDateTime, db, new_id, utcnow
from sentinel_cp.errors import Conflict, Forbidden, Invalid, NotFound, RateLimited, Unauthorized
from sentinel_cp.pagination import MAX_LIMIT, Page, decode_cursor, encode_cursor
from sentinel_cp.projects import Project, ProjectSettings, registration_token_matches

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
LABEL_KEY_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?")
BUNDLE_ID_PATTERN = re.compile(r"[0-9a-f]{64}")
NODE_KEY_PREFIX = "nk_"
STATUSES = ("unknown", "online", "offline")
HEALTH_STATES = ("healthy", "degraded", "unhealthy")
MIN_HEARTBEAT_GAP = timedelta(seconds=1)
SAMPLE_EVERY = timedelta(seconds=60)
HEARTBEAT_RETENTION = timedelta(days=7)
EVENT_RETENTION = timedelta(days=30)

AutoId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER


class Node(db.Model):  # type: ignore[name-defined]
    __tablename__ = "nodes"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_nodes_project_id_name"),
        # No index may cover a column a heartbeat writes (last_seen_at, health, metrics…): a
        # steady-state heartbeat is then a HOT update on PostgreSQL, touching no index. The
        # staleness sweep reads (project_id, status) and filters last_seen_at in the table.
        Index("ix_nodes_project_status", "project_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Part of every JWT; bumping it (revoke, re-register) invalidates every token at once.
    key_version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    labels: Mapped[dict[str, str]] = mapped_column(JSONType, nullable=False, default=dict)
    capabilities: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    version: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(45))
    hostname: Mapped[str | None] = mapped_column(String(255))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="unknown")
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Registration counts as "seen" but not as a heartbeat: the 1/s limit reads this one.
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_sampled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    active_bundle_id: Mapped[str | None] = mapped_column(String(64))
    staged_bundle_id: Mapped[str | None] = mapped_column(String(64))
    assigned_bundle_id: Mapped[str | None] = mapped_column(String(64))
    assigned_rollout_id: Mapped[uuid.UUID | None] = mapped_column()
    expected_bundle_id: Mapped[str | None] = mapped_column(String(64))
    health: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    token_issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def drifted(self) -> bool:
        return self.expected_bundle_id is not None and self.active_bundle_id != (
            self.expected_bundle_id
        )

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.id),
            "name": self.name,
            "status": self.status,
            "labels": self.labels,
            "capabilities": self.capabilities,
            "version": self.version,
            "ip": self.ip,
            "hostname": self.hostname,
            "metadata": self.meta,
            "last_seen_at": iso(self.last_seen_at),
            "registered_at": iso(self.registered_at),
            "active_bundle_id": self.active_bundle_id,
            "staged_bundle_id": self.staged_bundle_id,
            "assigned_bundle_id": self.assigned_bundle_id,
            "expected_bundle_id": self.expected_bundle_id,
            "health": self.health,
            "metrics": self.metrics,
            "drifted": self.drifted,
            "credentials_revoked": self.key_hash is None,
        }


class NodeHeartbeat(db.Model):  # type: ignore[name-defined]
    __tablename__ = "node_heartbeats"
    __table_args__ = (Index("ix_node_heartbeats_node_created", "node_id", "created_at"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    node_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    status: Mapped[str | None] = mapped_column(String(16))
    health: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    active_bundle_id: Mapped[str | None] = mapped_column(String(64))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "status": self.status,
            "health": self.health,
            "metrics": self.metrics,
            "active_bundle_id": self.active_bundle_id,
        }


class NodeEvent(db.Model):  # type: ignore[name-defined]
    __tablename__ = "node_events"
    __table_args__ = (Index("ix_node_events_node_created", "node_id", "created_at"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    node_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, nullable=False, default=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "event_type": self.event_type,
            "severity": self.severity,
            "message": self.message,
            "metadata": self.meta,
        }


class NodeRuntimeConfig(db.Model):  # type: ignore[name-defined]
    __tablename__ = "node_runtime_configs"

    node_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    config_kdl: Mapped[str] = mapped_column(Text, nullable=False)
    config_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class NodeGroup(db.Model):  # type: ignore[name-defined]
    __tablename__ = "node_groups"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_node_groups_project_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    selector: Mapped[dict[str, str]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    def to_dict(self, node_count: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "selector": {"labels": self.selector},
            "created_at": self.created_at.isoformat(),
        }
        if node_count is not None:
            result["node_count"] = node_count
        return result


# --- credentials ----------------------------------------------------------------------------


def _hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _new_key() -> str:
    return NODE_KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class NodeIdentity:
    """What a node endpoint needs of the authenticated node, read in the credential lookup.

    A plain snapshot (not an ORM object): the hot paths write with set-based statements
    guarded in SQL, so they never need the unit of work.
    """

    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    status: str
    key_version: int
    active_bundle_id: str | None
    assigned_bundle_id: str | None
    last_heartbeat_at: datetime | None
    last_sampled_at: datetime | None
    health: dict[str, Any]
    metrics: dict[str, Any]
    assigned_rollout_id: uuid.UUID | None = None
    # The assigned bundle's row (id, version, status, size_bytes, signature, signing_key_id,
    # artifact_deleted_at), read in the same statement so a poll costs one indexed read.
    assigned: dict[str, Any] | None = None
    # The state of the rollout that assigned it (same statement): while it runs and the node
    # is not yet running the bundle, the node is told to come back sooner, so a step converges
    # in seconds rather than poll intervals.
    assigned_rollout_state: str | None = None

    def poll_after_s(self, settings: ProjectSettings) -> int:
        """The `poll_after_s` to answer this node with (heartbeat and poll). A node already
        running its assigned bundle is back on the project's interval: its next heartbeat is
        the fresh one the gates need, and a big fleet's finished nodes no longer multiply the
        heartbeat load (`docs/decisions.md`)."""
        if (
            self.assigned_rollout_state in ACTIVE_ROLLOUT_STATES
            and self.active_bundle_id != self.assigned_bundle_id
        ):
            return min(ROLLOUT_POLL_AFTER_S, settings.poll_interval_s)
        return settings.poll_interval_s

    @property
    def waits_on(self) -> str | None:
        """The rollout whose state this node's answers depend on: the one that assigned it a
        bundle it does not run yet (`poll_after_s`); its events make them be read again."""
        if self.assigned_rollout_id is None or self.active_bundle_id == self.assigned_bundle_id:
            return None
        return str(self.assigned_rollout_id)

    @property
    def offered_bundle_id(self) -> str | None:
        """The assigned bundle when a node may fetch it now (compiled, signed, not collected)."""
        bundle = self.assigned
        if bundle is None or bundle["status"] != "compiled" or bundle["signature"] is None:
            return None
        return None if bundle["artifact_deleted_at"] is not None else str(bundle["id"])


_IDENTITY_COLUMNS = tuple(
    Node.__table__.c[name]
    for name in (
        "id",
        "project_id",
        "name",
        "status",
        "key_version",
        "active_bundle_id",
        "assigned_bundle_id",
        "last_heartbeat_at",
        "last_sampled_at",
        "health",
        "metrics",
        "assigned_rollout_id",
    )
)
_BUNDLES = Bundle.__table__
_ASSIGNED_COLUMNS = tuple(
    _BUNDLES.c[name].label(f"assigned_{name}")
    for name in (
        "id",
        "version",
        "status",
        "size_bytes",
        "signature",
        "signing_key_id",
        "artifact_deleted_at",
    )
)
# Only the state is read, and `rollouts` imports this module: a lightweight table clause.
_ROLLOUTS = table("rollouts", column("id"), column("state"))
ACTIVE_ROLLOUT_STATES = frozenset({"running", "rolling_back"})
ROLLOUT_POLL_AFTER_S = 5
# Built once: the credential lookup runs on every node request, and constructing a statement
# costs more than the compiled-cache lookup that executing a prebuilt one needs.
_NODES = Node.__table__
_PROJECTS = Project.__table__
_ROLLOUT_STATE = _ROLLOUTS.c.state.label("assigned_rollout_state")
_KEY_LOOKUP = (
    select(
        *_IDENTITY_COLUMNS,
        *_ASSIGNED_COLUMNS,
        _ROLLOUT_STATE,
        _NODES.c.key_hash,
        _PROJECTS.c.settings,
    )
    .join(_PROJECTS, _PROJECTS.c.id == _NODES.c.project_id)
    .outerjoin(_BUNDLES, _BUNDLES.c.id == _NODES.c.assigned_bundle_id)
    .outerjoin(_ROLLOUTS, _ROLLOUTS.c.id == _NODES.c.assigned_rollout_id)
    .where(_NODES.c.key_hash == bindparam("digest"))
)

_SIGNING_KEYS = signing.SigningKey.__table__
# Built once: building a statement costs more than running it (see `_heartbeat_update`).
_TOKEN_LOOKUP = (
    select(
        *_IDENTITY_COLUMNS,
        *_ASSIGNED_COLUMNS,
        _ROLLOUT_STATE,
        _NODES.c.key_hash,
        _PROJECTS.c.settings,
        _SIGNING_KEYS.c.public_key,
        _SIGNING_KEYS.c.state,
    )
    .join(_PROJECTS, _PROJECTS.c.id == _NODES.c.project_id)
    .join(
        _SIGNING_KEYS,
        and_(
            _SIGNING_KEYS.c.project_id == _NODES.c.project_id,
            _SIGNING_KEYS.c.kid == bindparam("kid"),
        ),
    )
    .outerjoin(_BUNDLES, _BUNDLES.c.id == _NODES.c.assigned_bundle_id)
    .outerjoin(_ROLLOUTS, _ROLLOUTS.c.id == _NODES.c.assigned_rollout_id)
    .where(_NODES.c.id == bindparam("node_id"))
)


@dataclass(frozen=True)
class NodeContext:
    """An authenticated node with the project settings every node endpoint needs.

    `connection` is the hot-path connection the credential was read on (see
    `db.hot_connection`), when the endpoint asked for one. `expires_at` is when the credential
    stops being good (a token's `exp`, Unix seconds); None for a node key.
    """

    node: NodeIdentity
    settings: ProjectSettings
    connection: Connection | None = None
    expires_at: int | None = None

    @property
    def who(self) -> NodeWho:
        return NodeWho(self.node.id, self.node.project_id, self.node.name)

    def good_for_s(self, limit: float) -> float:
        """How long what this credential's read says may be remembered: `limit`, and never
        past a token's `exp`."""
        if self.expires_at is None:
            return limit
        return min(limit, self.expires_at - time.time())


@dataclass(frozen=True, slots=True)
class NodeWho:
    """Who an authenticated node is, and nothing that changes while it works through a
    bundle: all a status report needs, which `node_auth.require_node_who` may therefore
    answer from the process's memory of the credential."""

    id: uuid.UUID
    project_id: uuid.UUID
    name: str


def _identity(row: Any) -> NodeIdentity:
    values = row._mapping
    assigned = None
    if values["assigned_id"] is not None:
        assigned = {c.name[len("assigned_") :]: values[c.name] for c in _ASSIGNED_COLUMNS}
    return NodeIdentity(
        **{c.name: values[c.name] for c in _IDENTITY_COLUMNS},
        assigned=assigned,
        assigned_rollout_state=values["assigned_rollout_state"],
    )


def authenticate_key(raw: str, connection: Connection | None = None) -> NodeContext:
    """Resolve `X-Sentinel-Node-Key` in one statement; 401 when unknown or revoked."""
    if not raw.startswith(NODE_KEY_PREFIX) or len(raw) > 128:
        raise Unauthorized("Invalid node key", code="invalid_node_key")
    digest = _hash_key(raw)
    conn = connection or db.session.connection()
    row = conn.execute(_KEY_LOOKUP, {"digest": digest}).first()
    if row is None or not hmac.compare_digest(row.key_hash or "", digest):
        raise Unauthorized("Invalid node key", code="invalid_node_key")
    return NodeContext(_identity(row), ProjectSettings.model_validate(row.settings), connection)


def authenticate_token(
    token: str, *, now: datetime | None = None, connection: Connection | None = None
) -> NodeContext:
    """Resolve a node JWT: node, project settings and signing key in one statement."""
    kid, subject, signing_input, signature, claims = signing.read_token(token)
    try:
        node_id = uuid.UUID(subject)
    except ValueError:
        raise Unauthorized("Token subject is not a node", code="invalid_token") from None
    row = (
        (connection or db.session.connection())
        .execute(_TOKEN_LOOKUP, {"node_id": node_id, "kid": kid})
        .first()
    )
    if row is None:
        raise Unauthorized("Unknown node or signing key", code="invalid_token")
    signing.check_token(row.public_key, row.state, signing_input, signature, claims, now=now)
    identity = _identity(row)
    if row.key_hash is None or claims.get("ver") != identity.key_version:
        raise Unauthorized("Token was revoked", code="token_revoked")
    return NodeContext(
        identity, ProjectSettings.model_validate(row.settings), connection, claims["exp"]
    )


def require_same_node(ctx: NodeContext, path_node_id: uuid.UUID) -> None:
    if ctx.node.id != path_node_id:
        raise Forbidden("Credential belongs to another node", code="node_mismatch")


def issue_token(ctx: NodeContext, *, now: datetime | None = None) -> tuple[str, datetime]:
    """A fresh 12-hour JWT, signed by the project's current key (created on demand)."""
    now = now or utcnow()
    key = signing.current_key(ctx.node.project_id, now=now)
    token, expires = signing.issue_token(
        key, node_id=ctx.node.id, key_version=ctx.node.key_version, now=now
    )
    db.session.execute(
        update(Node)
        .where(Node.id == ctx.node.id)
        .values(token_issued_at=now, token_expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    return token, expires


# --- registration ---------------------------------------------------------------------------


def validate_labels(labels: dict[str, str], field: str = "labels") -> dict[str, str]:
    problems = [
        f"label key {key!r} must be 1–63 letters, digits, '_', '.', '/' or '-'"
        for key in labels
        if not LABEL_KEY_PATTERN.fullmatch(key)
    ]
    if problems:
        raise Invalid("Invalid labels", fields={field: problems})
    return dict(labels)


def _check_ip(value: str | None, field: str = "ip") -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Invalid("Invalid IP address", fields={field: ["not an IP address"]}) from None


# Failed registrations (wrong token, unknown project) per client address; past the limit every
# registration from that address is 429 until the window ends. Successes are not counted, so a
# fleet registering from behind one NAT address is never slowed down.
REGISTRATION_FAILURES = throttle.Limit("register:addr", limit=20, window_s=300)


def register_from(
    address: str, slug: str, **fields: Any
) -> tuple[Project, Node, str, list[dict[str, Any]]]:
    """`register_node` for a request from `address` to project `slug`: refused with 429 while
    that address is over its failure budget; an unknown project or a wrong token (guessing
    tokens, probing slugs) counts against it."""
    throttle.check(REGISTRATION_FAILURES, address)
    try:
        project = projects.get_project(slug)
        node, key, signing_keys = register_node(project, **fields)
    except (NotFound, Unauthorized):
        throttle.hit(REGISTRATION_FAILURES, address)
        raise
    return project, node, key, signing_keys


def register_node(
    project: Project,
    *,
    presented_token: str | None,
    name: str,
    labels: dict[str, str],
    capabilities: list[str],
    version: str | None,
    ip: str | None,
    hostname: str | None,
    metadata: dict[str, Any],
    now: datetime | None = None,
) -> tuple[Node, str, list[dict[str, Any]]]:
    """Register a node (or re-register one whose key an operator revoked).

    Returns the node, its raw key (shown once) and the project's public signing keys.
    """
    now = now or utcnow()
    settings = project.config
    if not settings.open_registration and not registration_token_matches(project, presented_token):
        raise Unauthorized("Missing or wrong registration token", code="invalid_registration_token")
    if not NAME_PATTERN.fullmatch(name):
        raise Invalid(
            "Invalid node name",
            fields={
                "name": [
                    "1–100 characters: letters, digits, '_', '.', '-', "
                    "starting with a letter or digit"
                ]
            },
        )
    labels = validate_labels(labels)
    ip = _check_ip(ip)
    raw_key = _new_key()
    node = db.session.scalar(select(Node).where(Node.project_id == project.id, Node.name == name))
    action = "node.registered"
    if node is not None:
        if node.key_hash is not None:
            raise Conflict(f"A node named {name!r} is already registered", code="name_taken")
        action = "node.re_registered"
        node.key_version += 1
    else:
        node = Node(project_id=project.id, name=name, registered_at=now)
        db.session.add(node)
    node.key_hash = _hash_key(raw_key)
    node.labels = labels
    node.capabilities = capabilities
    node.version = version
    node.ip = ip
    node.hostname = hostname
    node.meta = metadata
    node.status = "online"
    node.last_seen_at = now
    db.session.flush()
    key = signing.current_key(project.id, now=now)
    audit.record(
        Actor("node", str(node.id), name),
        action,
        resource_type="node",
        resource_id=node.id,
        project_id=project.id,
        changes={"labels": labels, "version": version, "ip": ip},
        now=now,
    )
    events.publish_after_commit(project.id, "node", node.id, node.status)
    return (
        node,
        raw_key,
        [k.public_dict() for k in signing.list_keys(project.id) if k.state == "active"]
        or [key.public_dict()],
    )


# --- heartbeats -----------------------------------------------------------------------------


def record_heartbeat(
    ctx: NodeContext, report: dict[str, Any], *, now: datetime | None = None
) -> dict[str, Any]:
    """Apply one heartbeat. `report` holds only the fields the node sent; absent fields keep
    their stored values. Returns the response body.

    Every write is guarded in SQL (same status as read, no heartbeat in the last second), so
    the 1/s limit and the online transition hold against a concurrent heartbeat or staleness
    sweep: a lost race answers 429 and the node's retry reads fresh state. An online node on
    the hot connection writes in autocommit (one statement; with the history sample, one
    short explicit transaction); a node coming back online goes through the session's
    transaction with its audit row. (`steady_heartbeat` is the part a process may answer from
    memory and write later.)
    """
    now = now or utcnow()
    node = ctx.node
    _check_gap(node, now)
    values = heartbeat_values(node, report, now)
    sample = "last_sampled_at" in values
    active = values.get("active_bundle_id", node.active_bundle_id)
    changed = node.status != "online" or active != node.active_bundle_id
    if ctx.connection is not None and node.status == "online":
        conn = ctx.connection
        if sample:
            with _explicit_transaction(conn):
                _write_heartbeat(conn, node, values, now)
        else:
            _write_heartbeat(conn, node, values, now)
        if changed:
            # Written in autocommit: it is committed already.
            events.publish_now(events.event_payload(node.project_id, "node", node.id, "online"))
            if node.assigned_rollout_id is not None:
                # running the assigned bundle counts as verified: let the rollout see it now
                jobqueue.tick_rollout_now(node.assigned_rollout_id)
    else:
        _write_heartbeat(db.session.connection(), node, values, now)
        if node.status != "online":
            audit.record(
                Actor("node", str(node.id), node.name),
                "node.online",
                resource_type="node",
                resource_id=node.id,
                project_id=node.project_id,
                changes={"status": [node.status, "online"]},
                now=now,
            )
        if changed:
            events.publish_after_commit(node.project_id, "node", node.id, "online")
            if node.assigned_rollout_id is not None:
                jobqueue.tick_rollout(node.assigned_rollout_id)
    return heartbeat_answer(ctx, now)


def heartbeat_answer(ctx: NodeContext, now: datetime) -> dict[str, Any]:
    node = ctx.node
    return {
        "status": "ok",
        "node_id": str(node.id),
        "last_seen_at": now.isoformat(),
        "poll_after_s": node.poll_after_s(ctx.settings),
        "assigned_bundle_id": node.offered_bundle_id,
    }


def heartbeat_values(node: NodeIdentity, report: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The columns a heartbeat writes: liveness, what the node reported (absent fields are
    left out), and `last_sampled_at` when a history sample is due."""
    values: dict[str, Any] = {"last_seen_at": now, "last_heartbeat_at": now, "status": "online"}
    health, metrics = _merged_snapshot(node, report)
    if health is not None:
        values["health"] = health
    if metrics is not None:
        values["metrics"] = metrics
    for field in ("active_bundle_id", "staged_bundle_id", "version", "hostname"):
        if field in report:
            values[field] = report[field]
    if "metadata" in report:
        values["metadata"] = report["metadata"] or {}  # the column is always an object
    if "ip" in report:
        values["ip"] = _check_ip(report["ip"])
    if node.last_sampled_at is None or now - node.last_sampled_at >= SAMPLE_EVERY:
        values["last_sampled_at"] = now
    return values


def steady_heartbeat(
    node: NodeIdentity, report: dict[str, Any], now: datetime
) -> dict[str, Any] | None:
    """The write of a heartbeat that changes nothing but soft state — an online node, the
    same running bundle, no history sample due, nothing merged from stored metrics — which a
    process may answer from memory and write later with others (`write_heartbeats`); None
    when it must go through `record_heartbeat` now. 429 when it comes too soon after the
    last one this snapshot knows of."""
    health = report.get("health") or {}
    legacy = "cpu_percent" in health or "memory_percent" in health
    if node.status != "online" or (legacy and report.get("metrics") is None):
        return None
    _check_gap(node, now)
    values = heartbeat_values(node, report, now)
    if "last_sampled_at" in values:
        return None
    if values.get("active_bundle_id", node.active_bundle_id) != node.active_bundle_id:
        return None
    return values


_SNAPSHOT_FIELDS = frozenset(field.name for field in dataclasses.fields(NodeIdentity))


def after_heartbeat(node: NodeIdentity, values: dict[str, Any]) -> NodeIdentity:
    """The snapshot as it stands once a heartbeat's `values` are written."""
    return dataclasses.replace(node, **{k: v for k, v in values.items() if k in _SNAPSHOT_FIELDS})


def write_heartbeats(conn: Connection, batch: dict[uuid.UUID, dict[str, Any]]) -> None:
    """Write deferred steady heartbeats (node -> its latest `steady_heartbeat` values) on an
    autocommit connection: on PostgreSQL one statement over a JSON array, elsewhere one
    transaction with an executemany per set of columns.

    The guard of `record_heartbeat` holds for each row: a node no longer online (the staleness
    sweep was first) or with a later heartbeat already written (by another process) keeps
    what it has, and a heartbeat less than a second after one another process wrote is
    dropped rather than refused."""
    if conn.dialect.name == "postgresql":
        # One statement over one JSON document: per row, the work is PostgreSQL's (an
        # executemany spends ~40 µs of Python per row binding parameters, under the GIL the
        # requests need).
        rows = [{**values, "node_id": str(node_id)} for node_id, values in batch.items()]
        conn.execute(_BATCH_UPDATE, {"rows": json.dumps(rows, default=datetime.isoformat)})
        return
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for node_id, values in batch.items():
        cutoff = values["last_heartbeat_at"] - MIN_HEARTBEAT_GAP
        row = {**values, "node_id": node_id, "read_status": "online", "cutoff": cutoff}
        groups.setdefault(tuple(sorted(values)), []).append(row)
    with _explicit_transaction(conn):
        for columns, rows in groups.items():
            conn.execute(_heartbeat_update(columns), rows)


def _batch_update() -> Any:
    """PostgreSQL: `write_heartbeats` in one statement. Each element of `:rows` holds the
    values of `steady_heartbeat` (JSON); a field it lacks keeps the stored value."""
    json_fields = ("health", "metrics", "metadata")
    text_fields = ("version", "hostname", "ip", "staged_bundle_id", "active_bundle_id")
    kept = ",\n    ".join(
        [
            f"{name} = CASE WHEN v.r ? '{name}' THEN v.r -> '{name}' ELSE n.{name} END"
            for name in json_fields
        ]
        + [
            f"{name} = CASE WHEN v.r ? '{name}' THEN v.r ->> '{name}' ELSE n.{name} END"
            for name in text_fields
        ]
    )
    gap_s = int(MIN_HEARTBEAT_GAP.total_seconds())
    return text(
        f"""UPDATE nodes AS n SET
    last_seen_at = v.at,
    last_heartbeat_at = v.at,
    {kept}
FROM (
    SELECT r, (r ->> 'node_id')::uuid AS node_id, (r ->> 'last_heartbeat_at')::timestamptz AS at
    FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r
) AS v
WHERE n.id = v.node_id AND n.status = 'online'
    AND (n.last_heartbeat_at IS NULL OR n.last_heartbeat_at <= v.at - interval '{gap_s} seconds')"""  # noqa: S608 (constants)
    )


_BATCH_UPDATE = _batch_update()


def _check_gap(node: NodeIdentity, now: datetime) -> None:
    if node.last_heartbeat_at is not None and now - node.last_heartbeat_at < MIN_HEARTBEAT_GAP:
        raise _too_fast()


def _too_fast() -> RateLimited:
    return RateLimited(
        "Heartbeats are limited to one per second per node",
        retry_after=1,
        code="heartbeat_too_fast",
    )


def _write_heartbeat(
    conn: Connection, node: NodeIdentity, values: dict[str, Any], now: datetime
) -> None:
    params = {**values, "node_id": node.id, "read_status": node.status}
    params["cutoff"] = now - MIN_HEARTBEAT_GAP
    if conn.execute(_heartbeat_update(tuple(values)), params).rowcount != 1:
        raise _too_fast()
    if "last_sampled_at" in values:
        conn.execute(
            _SAMPLE_INSERT,
            {
                "node_id": node.id,
                "created_at": now,
                "health": values.get("health", node.health),
                "metrics": values.get("metrics", node.metrics),
                "active_bundle_id": values.get("active_bundle_id", node.active_bundle_id),
            },
        )


@functools.cache
def _heartbeat_update(columns: tuple[str, ...]) -> Any:
    """The guarded UPDATE for one set of reported fields, built once per set (a handful
    exist in practice): building a statement costs more than running it."""
    return (
        _NODES.update()
        .where(
            _NODES.c.id == bindparam("node_id"),
            _NODES.c.status == bindparam("read_status"),
            or_(
                _NODES.c.last_heartbeat_at.is_(None),
                _NODES.c.last_heartbeat_at <= bindparam("cutoff", type_=UTCDateTime),
            ),
        )
        .values({_NODES.c[name]: bindparam(name, type_=_NODES.c[name].type) for name in columns})
    )


_SAMPLE_INSERT = NodeHeartbeat.__table__.insert().values(
    node_id=bindparam("node_id"),
    created_at=bindparam("created_at"),
    status="online",
    health=bindparam("health"),
    metrics=bindparam("metrics"),
    active_bundle_id=bindparam("active_bundle_id"),
)


@contextmanager
def _explicit_transaction(conn: Connection) -> Iterator[None]:
    """BEGIN/COMMIT by hand on an autocommit connection: the sample and the node row land
    together or not at all."""
    conn.exec_driver_sql("BEGIN")
    try:
        yield
    except BaseException:
        conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT")


def _merged_snapshot(
    node: NodeIdentity, report: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The health and metrics to store (None: keep what is stored).

    `cpu_percent`/`memory_percent` under `health` are accepted for compatibility and read as
    metrics.
    """
    health = report.get("health")
    metrics = report.get("metrics")
    legacy = {k: health[k] for k in ("cpu_percent", "memory_percent") if health and k in health}
    if metrics is not None:
        return health, {**legacy, **metrics}
    if legacy:
        return health, {**node.metrics, **legacy}
    return health, None


def record_events(
    ctx: NodeContext, items: list[dict[str, Any]], *, now: datetime | None = None
) -> int:
    """Store a batch of node events (all or nothing: the caller's transaction)."""
    now = now or utcnow()
    for item in items:
        db.session.add(
            NodeEvent(
                node_id=ctx.node.id,
                created_at=now,
                event_type=item["event_type"],
                severity=item["severity"],
                message=item["message"],
                meta=item.get("metadata") or {},
            )
        )
    return len(items)


def store_running_config(ctx: NodeContext, config_kdl: str, *, now: datetime | None = None) -> str:
    """Keep the config the node says it runs; its hash is what drift detection compares."""
    now = now or utcnow()
    digest = hashlib.sha256(config_kdl.encode()).hexdigest()
    row = db.session.get(NodeRuntimeConfig, ctx.node.id)
    if row is None:
        db.session.add(
            NodeRuntimeConfig(
                node_id=ctx.node.id, config_kdl=config_kdl, config_hash=digest, reported_at=now
            )
        )
    else:
        row.config_kdl, row.config_hash, row.reported_at = config_kdl, digest, now
    return digest


# --- staleness and retention ----------------------------------------------------------------


def mark_stale_nodes(*, now: datetime | None = None) -> int:
    """Mark nodes offline whose last heartbeat is older than their project's staleness timeout.

    Each project's nodes flip with one `UPDATE … RETURNING`, so two workers running this at
    once split the rows between them and a second run finds nothing to do.
    """
    now = now or utcnow()
    flipped = 0
    projects = db.session.execute(select(Project.id, Project.settings)).all()
    for project_id, settings in projects:
        timeout = ProjectSettings.model_validate(settings).staleness_timeout_s
        cutoff = now - timedelta(seconds=timeout)
        rows = db.session.execute(
            update(Node)
            .where(
                Node.project_id == project_id, Node.status == "online", Node.last_seen_at < cutoff
            )
            .values(status="offline")
            .returning(Node.id, Node.name, Node.last_seen_at)
            .execution_options(synchronize_session=False)
        ).all()
        for node_id, name, last_seen in rows:
            audit.record(
                Actor.system("staleness"),
                "node.offline",
                resource_type="node",
                resource_id=node_id,
                project_id=project_id,
                changes={"status": ["online", "offline"]},
                metadata={
                    "name": name,
                    "last_seen_at": last_seen.isoformat() if last_seen else None,
                    "staleness_timeout_s": timeout,
                },
                now=now,
            )
            events.publish_after_commit(project_id, "node", node_id, "offline")
        flipped += len(rows)
    return flipped


def prune_history(*, now: datetime | None = None) -> dict[str, int]:
    """Delete heartbeat samples older than 7 days and node events older than 30 days."""
    now = now or utcnow()
    heartbeats: Any = db.session.execute(
        delete(NodeHeartbeat).where(NodeHeartbeat.created_at < now - HEARTBEAT_RETENTION)
    )
    node_events: Any = db.session.execute(
        delete(NodeEvent).where(NodeEvent.created_at < now - EVENT_RETENTION)
    )
    return {"heartbeats": int(heartbeats.rowcount or 0), "events": int(node_events.rowcount or 0)}


# --- operator side --------------------------------------------------------------------------


def labels_contain(selector: dict[str, str]) -> Any:
    """A WHERE clause: the node's labels include every pair of `selector`.

    JSONB containment on PostgreSQL, `json_extract` per key on SQLite; keys are validated
    label keys, so they are safe inside a JSON path.
    """
    if not selector:
        return True
    if db.session.get_bind().dialect.name == "postgresql":
        return type_coerce(Node.labels, JSONB).contains(selector)
    return and_(
        *(func.json_extract(Node.labels, f'$."{key}"') == value for key, value in selector.items())
    )


@dataclass(frozen=True)
class NodeFilter:
    status: str | None = None
    labels: dict[str, str] | None = None
    version: str | None = None
    bundle: str | None = None
    drifted: bool | None = None
    q: str | None = None
    group: str | None = None


def _filtered_nodes(project_id: uuid.UUID, filters: NodeFilter) -> Any:
    if filters.labels:  # keys go into a SQLite JSON path: only validated label keys may
        validate_labels(filters.labels, "query.label")
    query = select(Node).where(Node.project_id == project_id)
    if filters.status:
        query = query.where(Node.status == filters.status)
    if filters.labels:
        query = query.where(labels_contain(filters.labels))
    if filters.group:
        query = query.where(labels_contain(get_group(project_id, filters.group).selector))
    if filters.version:
        query = query.where(Node.version == filters.version)
    if filters.bundle:
        query = query.where(Node.active_bundle_id == filters.bundle)
    if filters.drifted is True:
        query = query.where(
            Node.expected_bundle_id.is_not(None),
            or_(Node.active_bundle_id.is_(None), Node.active_bundle_id != Node.expected_bundle_id),
        )
    elif filters.drifted is False:
        query = query.where(
            or_(Node.expected_bundle_id.is_(None), Node.active_bundle_id == Node.expected_bundle_id)
        )
    if filters.q:
        pattern = f"%{filters.q.lower()}%"
        query = query.where(
            or_(
                func.lower(Node.name).like(pattern),
                func.lower(Node.hostname).like(pattern),
                Node.ip.like(pattern),
            )
        )
    return query


def list_nodes(
    project_id: uuid.UUID, filters: NodeFilter, *, limit: int, cursor: str | None
) -> Page[Node]:
    """Nodes by name (keyset pagination on the unique name)."""
    query = _filtered_nodes(project_id, filters)
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if cursor is not None:
        (after,) = decode_cursor(cursor, (str,))
        query = query.where(Node.name > after)
    rows = list(db.session.scalars(query.order_by(Node.name).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].name) if len(rows) > limit else None
    return Page(rows[:limit], next_cursor, total)


NODE_SORTS = ("name", "status", "last_seen")


def count_nodes(project_id: uuid.UUID, filters: NodeFilter) -> int:
    """How many of the project's nodes match `filters`."""
    query = _filtered_nodes(project_id, filters)
    return db.session.scalar(select(func.count()).select_from(query.subquery())) or 0


def list_nodes_page(
    project_id: uuid.UUID,
    filters: NodeFilter,
    *,
    sort: str = "name",
    descending: bool = False,
    offset: int = 0,
    limit: int = 50,
) -> Page[Node]:
    """One page of nodes in a chosen order, addressed by offset (`next_cursor` is None).

    For a table that sorts by any column and jumps to any page (the console); the API keeps
    the keyset-paged `list_nodes`. Ties are broken by name, so pages do not overlap, and
    nodes never seen sort last in either direction.
    """
    if sort not in NODE_SORTS:
        raise Invalid("Invalid sort", fields={"sort": [f"one of {', '.join(NODE_SORTS)}"]})
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise Invalid("Invalid page", fields={"page": [f"offset ≥ 0, 1 ≤ limit ≤ {MAX_LIMIT}"]})
    column = {"name": Node.name, "status": Node.status, "last_seen": Node.last_seen_at}[sort]
    order = (column.desc() if descending else column.asc()).nulls_last()
    query = _filtered_nodes(project_id, filters)
    rows = db.session.scalars(query.order_by(order, Node.name).offset(offset).limit(limit))
    return Page(list(rows), None, count_nodes(project_id, filters))


def node_versions(project_id: uuid.UUID) -> list[str]:
    """The proxy versions the project's nodes report, sorted (for a version filter)."""
    return list(
        db.session.scalars(
            select(Node.version)
            .where(Node.project_id == project_id, Node.version.is_not(None))
            .distinct()
            .order_by(Node.version)
        )
    )


def bundle_versions(project_id: uuid.UUID, bundle_ids: list[str]) -> dict[str, str]:
    """The version labels of some of the project's bundles, by id (to label what nodes run)."""
    if not bundle_ids:
        return {}
    rows = db.session.execute(
        select(Bundle.id, Bundle.version).where(
            Bundle.project_id == project_id, Bundle.id.in_(bundle_ids)
        )
    )
    return {bundle_id: version for bundle_id, version in rows}


def node_stats(project_id: uuid.UUID) -> dict[str, Any]:
    by_status = dict.fromkeys(STATUSES, 0)
    for status, count in db.session.execute(
        select(Node.status, func.count()).where(Node.project_id == project_id).group_by(Node.status)
    ):
        by_status[status] = count
    by_bundle = {
        (bundle or "none"): count
        for bundle, count in db.session.execute(
            select(Node.active_bundle_id, func.count())
            .where(Node.project_id == project_id)
            .group_by(Node.active_bundle_id)
        )
    }
    return {"total": sum(by_status.values()), "by_status": by_status, "by_active_bundle": by_bundle}


def count_by_status() -> dict[str, int]:
    """Nodes of every project by status (for `/metrics`)."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, count in db.session.execute(
        select(Node.status, func.count()).group_by(Node.status)
    ):
        counts[status] = count
    return counts


def get_node(project_id: uuid.UUID, node_id: uuid.UUID) -> Node:
    node = db.session.scalar(select(Node).where(Node.project_id == project_id, Node.id == node_id))
    if node is None:
        raise NotFound("Node not found")
    return node


def set_labels(actor: Actor, node: Node, labels: dict[str, str]) -> Node:
    """Replace a node's labels (audited with before and after)."""
    labels = validate_labels(labels)
    if labels != node.labels:
        audit.record(
            actor,
            "node.labels_updated",
            resource_type="node",
            resource_id=node.id,
            project_id=node.project_id,
            changes={"labels": [node.labels, labels]},
        )
        node.labels = labels
        events.publish_after_commit(node.project_id, "node", node.id, node.status)
    return node


def delete_node(actor: Actor, node: Node) -> None:
    """Delete a node: its key and tokens stop working at once; history goes with it."""
    audit.record(
        actor,
        "node.deleted",
        resource_type="node",
        resource_id=node.id,
        project_id=node.project_id,
        changes={"name": node.name},
    )
    events.publish_after_commit(node.project_id, "node", node.id, "deleted")
    db.session.delete(node)


def revoke_credentials(actor: Actor, node: Node) -> Node:
    """Invalidate the node's key and every token; it must re-register with the project's
    registration token to come back (keeping its name, labels and history)."""
    if node.key_hash is not None:
        node.key_hash = None
        node.key_version += 1
        audit.record(
            actor,
            "node.key_revoked",
            resource_type="node",
            resource_id=node.id,
            project_id=node.project_id,
        )
        events.publish_after_commit(node.project_id, "node", node.id, "key_revoked")
    return node


def list_heartbeats(node: Node, *, limit: int, cursor: str | None) -> Page[NodeHeartbeat]:
    return _history(NodeHeartbeat, node, limit=limit, cursor=cursor)


def list_events(node: Node, *, limit: int, cursor: str | None) -> Page[NodeEvent]:
    return _history(NodeEvent, node, limit=limit, cursor=cursor)


def _history(model: Any, node: Node, *, limit: int, cursor: str | None) -> Page[Any]:
    """Newest first; the cursor is the row id (ids only grow)."""
    query = select(model).where(model.node_id == node.id)
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if cursor is not None:
        (before,) = decode_cursor(cursor, (int,))
        query = query.where(model.id < before)
    rows = list(db.session.scalars(query.order_by(model.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return Page(rows[:limit], next_cursor, total)


def bundle_history(node: Node, *, limit: int) -> list[tuple[NodeBundleStatus, str | None]]:
    """The node's bundle assignments (`node_bundle_statuses`), newest first, each with its
    bundle's version label."""
    rows = db.session.execute(
        select(NodeBundleStatus, Bundle.version)
        .outerjoin(Bundle, Bundle.id == NodeBundleStatus.bundle_id)
        .where(NodeBundleStatus.node_id == node.id)
        .order_by(NodeBundleStatus.id.desc())
        .limit(limit)
    )
    return [(status, version) for status, version in rows]


# --- groups ---------------------------------------------------------------------------------


def list_groups(project_id: uuid.UUID) -> list[tuple[NodeGroup, int]]:
    groups = list(
        db.session.scalars(
            select(NodeGroup).where(NodeGroup.project_id == project_id).order_by(NodeGroup.name)
        )
    )
    return [(group, count_matching(project_id, group.selector)) for group in groups]


def count_matching(project_id: uuid.UUID, selector: dict[str, str]) -> int:
    return (
        db.session.scalar(
            select(func.count())
            .select_from(Node)
            .where(Node.project_id == project_id, labels_contain(selector))
        )
        or 0
    )


def get_group(project_id: uuid.UUID, name: str) -> NodeGroup:
    group = db.session.scalar(
        select(NodeGroup).where(NodeGroup.project_id == project_id, NodeGroup.name == name)
    )
    if group is None:
        raise NotFound(f"Group {name!r} not found")
    return group


def create_group(
    actor: Actor, project_id: uuid.UUID, *, name: str, description: str, labels: dict[str, str]
) -> NodeGroup:
    if not NAME_PATTERN.fullmatch(name):
        raise Invalid(
            "Invalid group name",
            fields={"name": ["1–100 characters: letters, digits, '_', '.', '-'"]},
        )
    selector = validate_labels(labels, "selector.labels")
    if (
        db.session.scalar(
            select(NodeGroup.id).where(NodeGroup.project_id == project_id, NodeGroup.name == name)
        )
        is not None
    ):
        raise Conflict(f"A group named {name!r} already exists", code="name_taken")
    group = NodeGroup(project_id=project_id, name=name, description=description, selector=selector)
    db.session.add(group)
    db.session.flush()
    audit.record(
        actor,
        "group.created",
        resource_type="group",
        resource_id=group.id,
        project_id=project_id,
        changes={"name": name, "selector": selector},
    )
    return group


def update_group(
    actor: Actor, group: NodeGroup, *, description: str | None, labels: dict[str, str] | None
) -> NodeGroup:
    changes: dict[str, Any] = {}
    if description is not None and description != group.description:
        changes["description"] = [group.description, description]
        group.description = description
    if labels is not None:
        selector = validate_labels(labels, "selector.labels")
        if selector != group.selector:
            changes["selector"] = [group.selector, selector]
            group.selector = selector
    if changes:
        audit.record(
            actor,
            "group.updated",
            resource_type="group",
            resource_id=group.id,
            project_id=group.project_id,
            changes=changes,
        )
    return group


def delete_group(actor: Actor, group: NodeGroup) -> None:
    audit.record(
        actor,
        "group.deleted",
        resource_type="group",
        resource_id=group.id,
        project_id=group.project_id,
        changes={"name": group.name},
    )
    db.session.delete(group)
