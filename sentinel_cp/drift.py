"""Drift: online nodes that do not run what their last completed rollout left them on.

A node is drifted when its reported `active_bundle_id` differs from its `expected_bundle_id`
(kind `bundle`), when the expected bundle was revoked (kind `bundle`, reason
`expected_bundle_revoked`), or when it runs the expected bundle but reports a running config
whose hash differs from that bundle's `config_sha256` (kind `config`) — in every case for at
least the project's `drift_grace_s`. A node a rollout is moving (its `assigned_bundle_id` is set
and differs from the expected one) is not drifted: the rollout, not drift, owns it.

`detect_drift(now)` is a reconcile loop: per project it reads one snapshot, `decide`s (pure)
what to observe, open, escalate, remediate and resolve, and applies that with guarded writes,
so running it twice, or on several workers at once, changes nothing the second time. The grace
clock lives in `drift_observations`: the first sighting of a mismatch is recorded there, and
opening an event claims (deletes) that row, which only one worker can do.

Severity (`severity_for`) is the highest of three ratings, and only rises while an event is
active:

- duration since the mismatch was first seen: under 15 min `low`, under 1 h `medium`,
  under 24 h `high`, from 24 h `critical`;
- spread, once at least 2 nodes of the project drift: the share of the project's online nodes
  that drift — from 10 % `medium`, from 25 % `high`, from 50 % `critical`;
- an expected bundle that was revoked is at least `high`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ForeignKey,
    Index,
    String,
    and_,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from sentinel_cp import audit, events, notifications
from sentinel_cp.audit import Actor
from sentinel_cp.bundles import distribution
from sentinel_cp.bundles.models import Bundle
from sentinel_cp.db import UTCDateTime, db, new_id, utcnow
from sentinel_cp.errors import Conflict, Invalid, NotFound
from sentinel_cp.nodes import Node, NodeRuntimeConfig
from sentinel_cp.pagination import Page, decode_position, encode_cursor
from sentinel_cp.projects import Project, ProjectSettings

KINDS = ("bundle", "config")
READ_SCOPE = "nodes:read"  # drift is part of the fleet: who may read and resolve it
RESOLVE_SCOPE = "nodes:write"
STATUSES = ("active", "resolved")
SEVERITIES = ("low", "medium", "high", "critical")
RESOLUTIONS = ("auto_resolved", "operator", "remediated")
REASONS = ("bundle_mismatch", "no_active_bundle", "expected_bundle_revoked", "config_mismatch")

DURATION_THRESHOLDS = (
    (timedelta(hours=24), "critical"),
    (timedelta(hours=1), "high"),
    (timedelta(minutes=15), "medium"),
)
SPREAD_THRESHOLDS = ((0.5, "critical"), (0.25, "high"), (0.10, "medium"))
SPREAD_MIN_NODES = 2
MAX_COMMENT = 1000
EXPORT_LIMIT = 100_000
SYSTEM = Actor.system("drift")
_ACTIVE = text("status = 'active'")


class DriftEvent(db.Model):  # type: ignore[name-defined]
    __tablename__ = "drift_events"
    __table_args__ = (
        Index("ix_drift_events_project_opened", "project_id", "opened_at"),
        Index("ix_drift_events_project_status", "project_id", "status"),
        Index("ix_drift_events_node_opened", "node_id", "opened_at"),
        # Never two active events for one node and kind, whatever the workers do.
        Index(
            "uq_drift_events_active_node_kind",
            "node_id",
            "kind",
            unique=True,
            sqlite_where=_ACTIVE,
            postgresql_where=_ACTIVE,
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    node_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False
    )
    # Kept on the row so lists and exports name the node without a join.
    node_name: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(String(32), nullable=False)
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    expected_bundle_id: Mapped[str | None] = mapped_column(String(64))
    actual_bundle_id: Mapped[str | None] = mapped_column(String(64))
    expected_config_hash: Mapped[str | None] = mapped_column(String(64))
    actual_config_hash: Mapped[str | None] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    remediated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(255))
    resolution: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(String(MAX_COMMENT))

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.id),
            "node_id": str(self.node_id),
            "node_name": self.node_name,
            "kind": self.kind,
            "reason": self.reason,
            "severity": self.severity,
            "status": self.status,
            "expected_bundle_id": self.expected_bundle_id,
            "actual_bundle_id": self.actual_bundle_id,
            "expected_config_hash": self.expected_config_hash,
            "actual_config_hash": self.actual_config_hash,
            "first_seen_at": iso(self.first_seen_at),
            "opened_at": iso(self.opened_at),
            "remediated_at": iso(self.remediated_at),
            "resolved_at": iso(self.resolved_at),
            "resolved_by": self.resolved_by,
            "resolution": self.resolution,
            "comment": self.comment,
        }


class DriftObservation(db.Model):  # type: ignore[name-defined]
    """A mismatch seen but not yet drift: the grace clock of one node and kind."""

    __tablename__ = "drift_observations"

    node_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# --- the pure half: snapshot -> plan --------------------------------------------------------

Key = tuple[uuid.UUID, str]


@dataclass(frozen=True)
class NodeView:
    """What drift needs to know of one node with an expected bundle."""

    id: uuid.UUID
    name: str
    status: str
    active_bundle_id: str | None
    assigned_bundle_id: str | None
    expected_bundle_id: str
    expected_status: str | None  # the expected bundle's status (None: no such row)
    expected_config_sha256: str | None
    expected_distributable: bool
    running_config_hash: str | None

    @property
    def being_moved(self) -> bool:
        """A rollout points the node elsewhere: until it completes, drift is not judged."""
        return self.assigned_bundle_id is not None and (
            self.assigned_bundle_id != self.expected_bundle_id
        )


@dataclass(frozen=True)
class Mismatch:
    kind: str
    reason: str
    expected_bundle_id: str | None
    actual_bundle_id: str | None
    expected_config_hash: str | None = None
    actual_config_hash: str | None = None


@dataclass(frozen=True)
class ActiveView:
    id: uuid.UUID
    node_id: uuid.UUID
    kind: str
    severity: str
    first_seen_at: datetime
    remediated_at: datetime | None


@dataclass(frozen=True)
class ProjectSnapshot:
    project_id: uuid.UUID
    grace: timedelta
    auto_remediate: bool
    online_nodes: int
    nodes: dict[uuid.UUID, NodeView]
    active: dict[Key, ActiveView]
    observed: dict[Key, datetime]


@dataclass(frozen=True)
class Opening:
    node: NodeView
    mismatch: Mismatch
    first_seen_at: datetime
    severity: str
    remediate: bool


@dataclass(frozen=True)
class Closing:
    event_id: uuid.UUID
    resolution: str
    why: str  # in_sync, rollout_moving, no_expected_bundle


@dataclass(frozen=True)
class Escalation:
    event_id: uuid.UUID
    before: str
    after: str


@dataclass
class DriftPlan:
    observe: list[Key] = field(default_factory=list)
    forget: list[Key] = field(default_factory=list)
    open: list[Opening] = field(default_factory=list)
    close: list[Closing] = field(default_factory=list)
    escalate: list[Escalation] = field(default_factory=list)
    remediate: list[ActiveView] = field(default_factory=list)


def find_mismatches(node: NodeView) -> list[Mismatch]:
    """What is wrong with an online node right now (empty: in sync, or a rollout moves it)."""
    if node.being_moved:
        return []
    found: list[Mismatch] = []
    if node.expected_status == "revoked":
        found.append(
            Mismatch(
                "bundle", "expected_bundle_revoked", node.expected_bundle_id, node.active_bundle_id
            )
        )
    elif node.active_bundle_id != node.expected_bundle_id:
        reason = "no_active_bundle" if node.active_bundle_id is None else "bundle_mismatch"
        found.append(Mismatch("bundle", reason, node.expected_bundle_id, node.active_bundle_id))
    if (
        node.active_bundle_id == node.expected_bundle_id
        and node.running_config_hash is not None
        and node.expected_config_sha256 is not None
        and node.running_config_hash != node.expected_config_sha256
    ):
        found.append(
            Mismatch(
                "config",
                "config_mismatch",
                node.expected_bundle_id,
                node.active_bundle_id,
                node.expected_config_sha256,
                node.running_config_hash,
            )
        )
    return found


def severity_for(
    *, drifting_for: timedelta, drifting_nodes: int, online_nodes: int, reason: str
) -> str:
    """The severity rule of the module docstring: the highest of duration, spread and cause."""
    ratings = ["low"]
    ratings += [name for limit, name in DURATION_THRESHOLDS if drifting_for >= limit][:1]
    if drifting_nodes >= SPREAD_MIN_NODES and online_nodes > 0:
        share = drifting_nodes / online_nodes
        ratings += [name for limit, name in SPREAD_THRESHOLDS if share >= limit][:1]
    if reason == "expected_bundle_revoked":
        ratings.append("high")
    return max(ratings, key=SEVERITIES.index)


def decide(snapshot: ProjectSnapshot, now: datetime) -> DriftPlan:
    """Everything one detector run should do for one project (no I/O)."""
    plan = DriftPlan()
    current: dict[Key, Mismatch] = {}
    for node in snapshot.nodes.values():
        if node.status == "online":
            for mismatch in find_mismatches(node):
                current[(node.id, mismatch.kind)] = mismatch

    openings: list[tuple[Key, datetime]] = []
    for key in current:
        if key in snapshot.active:
            continue
        seen = snapshot.observed.get(key)
        if seen is None:
            plan.observe.append(key)
            seen = now
        if now - seen >= snapshot.grace:
            openings.append((key, seen))
    plan.forget = [key for key in snapshot.observed if key not in current or key in snapshot.active]

    continuing = [event for key, event in snapshot.active.items() if key in current]
    drifting = len({event.node_id for event in continuing} | {key[0] for key, _ in openings})

    def rate(first_seen: datetime, reason: str) -> str:
        return severity_for(
            drifting_for=now - first_seen,
            drifting_nodes=drifting,
            online_nodes=snapshot.online_nodes,
            reason=reason,
        )

    for key, seen in openings:
        node, mismatch = snapshot.nodes[key[0]], current[key]
        plan.open.append(
            Opening(
                node,
                mismatch,
                seen,
                rate(seen, mismatch.reason),
                remediate=_may_remediate(snapshot, node, mismatch.kind),
            )
        )
    for event in continuing:
        node, mismatch = snapshot.nodes[event.node_id], current[(event.node_id, event.kind)]
        severity = rate(event.first_seen_at, mismatch.reason)
        if SEVERITIES.index(severity) > SEVERITIES.index(event.severity):
            plan.escalate.append(Escalation(event.id, event.severity, severity))
        if event.remediated_at is None and _may_remediate(snapshot, node, event.kind):
            plan.remediate.append(event)
    for key, event in snapshot.active.items():
        node_view = snapshot.nodes.get(event.node_id)
        if key in current or (node_view is not None and node_view.status != "online"):
            continue  # still drifted, or offline: nothing can be said until it is back
        if node_view is None:
            why = "no_expected_bundle"
        else:
            why = "rollout_moving" if node_view.being_moved else "in_sync"
        resolution = "remediated" if event.remediated_at is not None else "auto_resolved"
        plan.close.append(Closing(event.id, resolution, why))
    return plan


def _may_remediate(snapshot: ProjectSnapshot, node: NodeView, kind: str) -> bool:
    # Config drift is not remediated: the poll offers a bundle only when it differs from the
    # active one, so re-assigning the bundle a node already runs would change nothing.
    return snapshot.auto_remediate and kind == "bundle" and node.expected_distributable


# --- the effectful half ---------------------------------------------------------------------


@dataclass
class DriftRun:
    """What one `detect_drift` run changed."""

    observed: int = 0
    opened: int = 0
    escalated: int = 0
    remediated: int = 0
    resolved: int = 0
    skipped_projects: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def detect_drift(now: datetime | None = None) -> DriftRun:
    """Open, escalate, remediate and resolve drift events in every project (the caller commits).

    Safe to repeat and to run on several workers at once: on PostgreSQL a worker skips a
    project another one is evaluating (a transaction-scoped advisory lock), and every write is
    guarded in SQL (claiming the observation row, `status = 'active'`, the old severity), so a
    lost race writes, audits and publishes nothing.
    """
    now = now or utcnow()
    run = DriftRun()
    for project_id, settings in db.session.execute(select(Project.id, Project.settings)).all():
        if not _claim_project(project_id):
            run.skipped_projects += 1
            continue
        snapshot = load_snapshot(project_id, ProjectSettings.model_validate(settings), now)
        apply(snapshot, decide(snapshot, now), now, run)
    return run


def _claim_project(project_id: uuid.UUID) -> bool:
    """PostgreSQL: one evaluator per project at a time (SQLite has one writer anyway)."""
    if db.session.get_bind().dialect.name != "postgresql":
        return True
    digest = hashlib.sha256(b"sentinel-drift:" + project_id.bytes).digest()
    lock_key = int.from_bytes(digest[:8], "big", signed=True)
    return bool(db.session.scalar(select(func.pg_try_advisory_xact_lock(lock_key))))


def load_snapshot(
    project_id: uuid.UUID, settings: ProjectSettings, now: datetime
) -> ProjectSnapshot:
    """The project's nodes with an expected bundle, its active events and its observations."""
    rows = db.session.execute(
        select(
            Node.id,
            Node.name,
            Node.status,
            Node.active_bundle_id,
            Node.assigned_bundle_id,
            Node.expected_bundle_id,
            Bundle.status.label("expected_status"),
            Bundle.config_sha256,
            Bundle.artifact_deleted_at,
            NodeRuntimeConfig.config_hash,
        )
        .outerjoin(Bundle, Bundle.id == Node.expected_bundle_id)
        .outerjoin(NodeRuntimeConfig, NodeRuntimeConfig.node_id == Node.id)
        .where(Node.project_id == project_id, Node.expected_bundle_id.is_not(None))
    ).all()
    nodes = {
        row.id: NodeView(
            id=row.id,
            name=row.name,
            status=row.status,
            active_bundle_id=row.active_bundle_id,
            assigned_bundle_id=row.assigned_bundle_id,
            expected_bundle_id=str(row.expected_bundle_id),
            expected_status=row.expected_status,
            expected_config_sha256=row.config_sha256,
            expected_distributable=(
                row.expected_status == "compiled" and row.artifact_deleted_at is None
            ),
            running_config_hash=row.config_hash,
        )
        for row in rows
    }
    online = db.session.scalar(
        select(func.count())
        .select_from(Node)
        .where(Node.project_id == project_id, Node.status == "online")
    )
    active = {
        (row.node_id, row.kind): ActiveView(
            row.id, row.node_id, row.kind, row.severity, row.first_seen_at, row.remediated_at
        )
        for row in db.session.execute(
            select(
                DriftEvent.id,
                DriftEvent.node_id,
                DriftEvent.kind,
                DriftEvent.severity,
                DriftEvent.first_seen_at,
                DriftEvent.remediated_at,
            ).where(DriftEvent.project_id == project_id, DriftEvent.status == "active")
        )
    }
    observed = {
        (row.node_id, row.kind): row.first_seen_at
        for row in db.session.execute(
            select(
                DriftObservation.node_id, DriftObservation.kind, DriftObservation.first_seen_at
            ).where(DriftObservation.project_id == project_id)
        )
    }
    return ProjectSnapshot(
        project_id=project_id,
        grace=timedelta(seconds=settings.drift_grace_s),
        auto_remediate=settings.drift_auto_remediate,
        online_nodes=int(online or 0),
        nodes=nodes,
        active=active,
        observed=observed,
    )


def apply(snapshot: ProjectSnapshot, plan: DriftPlan, now: datetime, run: DriftRun) -> None:
    """Carry a plan out with guarded writes; only what this worker really changed is audited."""
    project_id = snapshot.project_id
    for kind, node_ids in _by_kind(plan.forget).items():
        db.session.execute(
            delete(DriftObservation)
            .where(
                DriftObservation.project_id == project_id,
                DriftObservation.kind == kind,
                DriftObservation.node_id.in_(node_ids),
            )
            .execution_options(synchronize_session=False)
        )
    if plan.observe:
        run.observed += _observe(project_id, plan.observe, now)
    for closing in plan.close:
        run.resolved += _close(closing, now)
    _open(snapshot, plan.open, now, run)
    for escalation in plan.escalate:
        run.escalated += _escalate(project_id, escalation, now)
    for event in plan.remediate:
        claimed = db.session.execute(
            update(DriftEvent)
            .where(
                DriftEvent.id == event.id,
                DriftEvent.status == "active",
                DriftEvent.remediated_at.is_(None),
            )
            .values(remediated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if claimed == 1 and _remediate(snapshot.nodes[event.node_id], event.id, project_id, now):
            run.remediated += 1


def _by_kind(keys: Iterable[Key]) -> dict[str, list[uuid.UUID]]:
    grouped: dict[str, list[uuid.UUID]] = {}
    for node_id, kind in keys:
        grouped.setdefault(kind, []).append(node_id)
    return grouped


def _observe(project_id: uuid.UUID, keys: list[Key], now: datetime) -> int:
    """Start the grace clock; a row another worker inserted first keeps its (earlier) time."""
    insert = pg_insert if db.session.get_bind().dialect.name == "postgresql" else sqlite_insert
    db.session.execute(
        insert(DriftObservation)
        .values(
            [
                {"node_id": node_id, "kind": kind, "project_id": project_id, "first_seen_at": now}
                for node_id, kind in keys
            ]
        )
        .on_conflict_do_nothing(index_elements=["node_id", "kind"])
    )
    return len(keys)


def _open(snapshot: ProjectSnapshot, openings: list[Opening], now: datetime, run: DriftRun) -> None:
    """Claim each observation past its grace (one worker wins it) and open its event."""
    by_key = {(o.node.id, o.mismatch.kind): o for o in openings}
    for kind, node_ids in _by_kind(by_key).items():
        claimed = db.session.execute(
            delete(DriftObservation)
            .where(
                DriftObservation.project_id == snapshot.project_id,
                DriftObservation.kind == kind,
                DriftObservation.node_id.in_(node_ids),
                DriftObservation.first_seen_at <= now - snapshot.grace,
            )
            .returning(DriftObservation.node_id)
            .execution_options(synchronize_session=False)
        ).scalars()
        for node_id in sorted(claimed, key=str):
            opening = by_key[(node_id, kind)]
            event = _insert_event(snapshot.project_id, opening, now)
            run.opened += 1
            if opening.remediate and _remediate(opening.node, event.id, snapshot.project_id, now):
                run.remediated += 1


def _insert_event(project_id: uuid.UUID, opening: Opening, now: datetime) -> DriftEvent:
    mismatch = opening.mismatch
    event = DriftEvent(
        id=new_id(),
        project_id=project_id,
        node_id=opening.node.id,
        node_name=opening.node.name,
        kind=mismatch.kind,
        reason=mismatch.reason,
        severity=opening.severity,
        status="active",
        expected_bundle_id=mismatch.expected_bundle_id,
        actual_bundle_id=mismatch.actual_bundle_id,
        expected_config_hash=mismatch.expected_config_hash,
        actual_config_hash=mismatch.actual_config_hash,
        first_seen_at=opening.first_seen_at,
        opened_at=now,
        remediated_at=now if opening.remediate else None,
    )
    db.session.add(event)
    db.session.flush()
    audit.record(
        SYSTEM,
        "drift.opened",
        resource_type="drift",
        resource_id=event.id,
        project_id=project_id,
        changes={"status": [None, "active"]},
        metadata={
            "node_id": str(event.node_id),
            "node": event.node_name,
            "kind": event.kind,
            "reason": event.reason,
            "severity": event.severity,
            "expected_bundle_id": event.expected_bundle_id,
            "actual_bundle_id": event.actual_bundle_id,
            "expected_config_hash": event.expected_config_hash,
            "actual_config_hash": event.actual_config_hash,
            "first_seen_at": event.first_seen_at.isoformat(),
        },
        now=now,
    )
    events.publish_after_commit(project_id, "drift", event.id, "opened")
    notifications.notify(project_id, "drift.opened", event.to_dict(), now)
    return event


def _remediate(node: NodeView, event_id: uuid.UUID, project_id: uuid.UUID, now: datetime) -> bool:
    """Re-assign the expected bundle (a fresh delivery row, so the node's reports count)."""
    bundle = db.session.get(Bundle, node.expected_bundle_id)
    if bundle is None or not bundle.distributable:
        return False
    distribution.assign(bundle, [node.id], now=now)
    audit.record(
        SYSTEM,
        "drift.remediated",
        resource_type="node",
        resource_id=node.id,
        project_id=project_id,
        changes={"assigned_bundle_id": [node.assigned_bundle_id, bundle.id]},
        metadata={
            "drift_event_id": str(event_id),
            "node": node.name,
            "bundle_version": bundle.version,
            "active_bundle_id": node.active_bundle_id,
        },
        now=now,
    )
    events.publish_after_commit(project_id, "drift", event_id, "remediated")
    return True


def _close(closing: Closing, now: datetime) -> int:
    row = db.session.execute(
        update(DriftEvent)
        .where(DriftEvent.id == closing.event_id, DriftEvent.status == "active")
        .values(
            status="resolved",
            resolved_at=now,
            resolution=closing.resolution,
            resolved_by=SYSTEM.label,
        )
        .returning(DriftEvent.project_id, DriftEvent.node_id, DriftEvent.node_name, DriftEvent.kind)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return 0
    _audit_resolved(
        SYSTEM,
        closing.event_id,
        row.project_id,
        {"node_id": str(row.node_id), "node": row.node_name, "kind": row.kind},
        resolution=closing.resolution,
        why=closing.why,
        comment=None,
        now=now,
    )
    return 1


def _escalate(project_id: uuid.UUID, escalation: Escalation, now: datetime) -> int:
    changed = db.session.execute(
        update(DriftEvent)
        .where(
            DriftEvent.id == escalation.event_id,
            DriftEvent.status == "active",
            DriftEvent.severity == escalation.before,
        )
        .values(severity=escalation.after)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if changed != 1:
        return 0
    audit.record(
        SYSTEM,
        "drift.escalated",
        resource_type="drift",
        resource_id=escalation.event_id,
        project_id=project_id,
        changes={"severity": [escalation.before, escalation.after]},
        now=now,
    )
    events.publish_after_commit(project_id, "drift", escalation.event_id, "escalated")
    return 1


def _audit_resolved(
    actor: Actor,
    event_id: uuid.UUID,
    project_id: uuid.UUID,
    about: dict[str, Any],
    *,
    resolution: str,
    why: str,
    comment: str | None,
    now: datetime,
) -> None:
    audit.record(
        actor,
        "drift.resolved",
        resource_type="drift",
        resource_id=event_id,
        project_id=project_id,
        changes={"status": ["active", "resolved"]},
        metadata={
            **about,
            "resolution": resolution,
            "why": why,
            **({"comment": comment} if comment is not None else {}),
        },
        now=now,
    )
    events.publish_after_commit(project_id, "drift", event_id, "resolved")
    notifications.notify(
        project_id,
        "drift.resolved",
        {
            "id": event_id,
            "node_id": about["node_id"],
            "node_name": about["node"],
            "kind": about["kind"],
            "status": "resolved",
            "resolution": resolution,
            "why": why,
            "comment": comment,
        },
        now,
    )


# --- operator side --------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftFilter:
    status: str | None = None
    severity: str | None = None
    kind: str | None = None
    node_id: uuid.UUID | None = None


def _filtered(project_id: uuid.UUID, filters: DriftFilter) -> Any:
    query = select(DriftEvent).where(DriftEvent.project_id == project_id)
    if filters.status is not None:
        query = query.where(DriftEvent.status == filters.status)
    if filters.severity is not None:
        query = query.where(DriftEvent.severity == filters.severity)
    if filters.kind is not None:
        query = query.where(DriftEvent.kind == filters.kind)
    if filters.node_id is not None:
        query = query.where(DriftEvent.node_id == filters.node_id)
    return query


def list_events(
    project_id: uuid.UUID, filters: DriftFilter, *, limit: int, cursor: str | None
) -> Page[DriftEvent]:
    """Newest first; the cursor is (opened_at, id), stable under inserts."""
    query = _filtered(project_id, filters)
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if cursor is not None:
        at, after = decode_position(cursor)
        query = query.where(
            or_(
                DriftEvent.opened_at < at,
                and_(DriftEvent.opened_at == at, DriftEvent.id < after),
            )
        )
    rows = list(
        db.session.scalars(
            query.order_by(DriftEvent.opened_at.desc(), DriftEvent.id.desc()).limit(limit + 1)
        )
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last.opened_at.isoformat(), str(last.id))
    return Page(rows[:limit], next_cursor, total)


def drift_stats(project_id: uuid.UUID) -> dict[str, Any]:
    """Counts by status; active events by severity and kind; nodes drifting now."""
    by_status = dict.fromkeys(STATUSES, 0)
    for status, count in db.session.execute(
        select(DriftEvent.status, func.count())
        .where(DriftEvent.project_id == project_id)
        .group_by(DriftEvent.status)
    ):
        by_status[status] = count
    active = (DriftEvent.project_id == project_id, DriftEvent.status == "active")
    by_severity = dict.fromkeys(SEVERITIES, 0)
    for severity, count in db.session.execute(
        select(DriftEvent.severity, func.count()).where(*active).group_by(DriftEvent.severity)
    ):
        by_severity[severity] = count
    by_kind = dict.fromkeys(KINDS, 0)
    for kind, count in db.session.execute(
        select(DriftEvent.kind, func.count()).where(*active).group_by(DriftEvent.kind)
    ):
        by_kind[kind] = count
    drifted_nodes, oldest = db.session.execute(
        select(func.count(DriftEvent.node_id.distinct()), func.min(DriftEvent.opened_at)).where(
            *active
        )
    ).one()
    return {
        "active": by_status["active"],
        "resolved": by_status["resolved"],
        "drifted_nodes": int(drifted_nodes or 0),
        "by_severity": by_severity,
        "by_kind": by_kind,
        "oldest_active_opened_at": oldest.isoformat() if oldest else None,
    }


def get_event(project_id: uuid.UUID, event_id: uuid.UUID) -> DriftEvent:
    event = db.session.scalar(
        select(DriftEvent).where(DriftEvent.project_id == project_id, DriftEvent.id == event_id)
    )
    if event is None:
        raise NotFound("Drift event not found", code="drift_event_not_found")
    return event


def _check_comment(comment: str) -> str:
    comment = comment.strip()
    if not comment:
        raise Invalid("A comment is required", fields={"comment": ["must not be blank"]})
    return comment


def resolve(
    actor: Actor, event: DriftEvent, *, comment: str, now: datetime | None = None
) -> DriftEvent:
    """`active → resolved` by an operator, with a comment; 409 naming the state otherwise.

    Resolving does not change the node: if it still drifts after another grace, a new event
    opens.
    """
    now = now or utcnow()
    comment = _check_comment(comment)
    changed = db.session.execute(
        update(DriftEvent)
        .where(DriftEvent.id == event.id, DriftEvent.status == "active")
        .values(
            status="resolved",
            resolved_at=now,
            resolution="operator",
            resolved_by=actor.label[:255],
            comment=comment,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    db.session.refresh(event)
    if changed != 1:
        raise Conflict(
            f"Drift event is {event.status}; only active events can be resolved",
            code=f"drift_event_{event.status}",
            state=event.status,
        )
    _audit_resolved(
        actor,
        event.id,
        event.project_id,
        {"node_id": str(event.node_id), "node": event.node_name, "kind": event.kind},
        resolution="operator",
        why="operator",
        comment=comment,
        now=now,
    )
    return event


def resolve_all(
    actor: Actor, project_id: uuid.UUID, *, comment: str, now: datetime | None = None
) -> list[uuid.UUID]:
    """Resolve every active event of the project (each audited); returns their ids."""
    now = now or utcnow()
    comment = _check_comment(comment)
    rows = db.session.execute(
        update(DriftEvent)
        .where(DriftEvent.project_id == project_id, DriftEvent.status == "active")
        .values(
            status="resolved",
            resolved_at=now,
            resolution="operator",
            resolved_by=actor.label[:255],
            comment=comment,
        )
        .returning(DriftEvent.id, DriftEvent.node_id, DriftEvent.node_name, DriftEvent.kind)
        .execution_options(synchronize_session=False)
    ).all()
    for row in sorted(rows, key=lambda r: str(r.id)):
        _audit_resolved(
            actor,
            row.id,
            project_id,
            {"node_id": str(row.node_id), "node": row.node_name, "kind": row.kind},
            resolution="operator",
            why="operator",
            comment=comment,
            now=now,
        )
    return sorted((row.id for row in rows), key=str)


CSV_COLUMNS = [
    "id",
    "node_id",
    "node_name",
    "kind",
    "reason",
    "severity",
    "status",
    "expected_bundle_id",
    "actual_bundle_id",
    "expected_config_hash",
    "actual_config_hash",
    "first_seen_at",
    "opened_at",
    "remediated_at",
    "resolved_at",
    "resolved_by",
    "resolution",
    "comment",
]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> str:
    """Text as a spreadsheet shows it, never as a formula (operator comments are free text)."""
    if value is None:
        return ""
    text_value = str(value)
    return "'" + text_value if text_value.startswith(_FORMULA_START) else text_value


def export_events(project_id: uuid.UUID, filters: DriftFilter, fmt: str) -> Iterator[str]:
    """Stream events oldest first: CSV with a header row, or one JSON array."""
    query = _filtered(project_id, filters).order_by(DriftEvent.opened_at, DriftEvent.id)
    rows = db.session.execute(query.limit(EXPORT_LIMIT).execution_options(yield_per=500)).scalars()
    if fmt == "json":
        yield "["
        for index, row in enumerate(rows):
            yield ("," if index else "") + json.dumps(row.to_dict(), ensure_ascii=False)
        yield "]\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        record = row.to_dict()
        writer.writerow([_csv_cell(record[column]) for column in CSV_COLUMNS])
        if buffer.tell() > 8192:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
