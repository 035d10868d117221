"""Getting compiled bundles to nodes: assignment (the rollout engine's only way to move a node),
polls, downloads, per-node status reports, and revocation.

Direct assignment by an operator is deliberately not offered: every change of what a node runs
goes through a rollout, so it is planned, gated and audited in one place.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, String, Text, Uuid, bindparam, func, or_, select, update

from sentinel_cp import audit, events, jobqueue, signing
from sentinel_cp.audit import Actor
from sentinel_cp.bundles.compiler import signature_message
from sentinel_cp.bundles.models import Bundle, NodeBundleStatus
from sentinel_cp.db import db, utcnow
from sentinel_cp.errors import Conflict, NotFound

# Forward order; `failed` and `rolled_back` may follow any state that is not final.
PROGRESS = ("assigned", "downloaded", "staged", "activated", "verified")
# `skipped` is the engine's: the rollout went on without the node, so its late reports are
# refused like any report after a final state.
FINAL = ("verified", "failed", "rolled_back", "skipped")
# The reports that can change a node's outcome in a rollout (`rollouts.decide.node_outcome`):
# `downloaded`, `staged` and `activated` leave it in progress (an activation counts only with
# a heartbeat after it), so ticking on them only made a 1,000-node rollout tick back to back.
ADVANCING = ("verified", "failed", "rolled_back")
REPORTABLE = ("downloaded", "staged", "activated", "verified", "failed", "rolled_back")


def require_distributable(bundle: Bundle) -> None:
    """409 naming the state unless the bundle may be rolled out."""
    if bundle.status != "compiled":
        raise Conflict(
            f"Bundle {bundle.version} is {bundle.status}; only compiled bundles can be rolled out",
            code=f"bundle_{bundle.status}",
        )
    if bundle.artifact_deleted_at is not None:
        raise Conflict(
            f"Bundle {bundle.version}'s artifact was garbage-collected", code="bundle_collected"
        )


def assign(
    bundle: Bundle,
    node_ids: Iterable[uuid.UUID],
    *,
    rollout_id: uuid.UUID | None = None,
    step_index: int | None = None,
    now: datetime | None = None,
) -> int:
    """Point nodes at `bundle` (set-based: one UPDATE, one INSERT … SELECT-shaped batch).

    Each node gets a fresh status row remembering what it ran before (`previous_bundle_id`,
    what a rollback returns it to). The caller's transaction commits; callers audit the
    assignment as part of their own action (a rollout step starting).
    """
    from sentinel_cp.nodes import Node

    require_distributable(bundle)
    now = now or utcnow()
    ids = list(node_ids)
    if not ids:
        return 0
    rows = db.session.execute(
        select(Node.id, Node.active_bundle_id).where(
            Node.project_id == bundle.project_id, Node.id.in_(ids)
        )
    ).all()
    db.session.execute(
        update(Node)
        .where(Node.project_id == bundle.project_id, Node.id.in_([r.id for r in rows]))
        .values(assigned_bundle_id=bundle.id, assigned_rollout_id=rollout_id)
        .execution_options(synchronize_session=False)
    )
    db.session.execute(
        NodeBundleStatus.__table__.insert(),
        [
            {
                "project_id": bundle.project_id,
                "node_id": row.id,
                "bundle_id": bundle.id,
                "rollout_id": rollout_id,
                "step_index": step_index,
                "previous_bundle_id": row.active_bundle_id,
                "state": "assigned",
                "created_at": now,
                "updated_at": now,
            }
            for row in rows
        ],
    )
    for row in rows:
        events.publish_after_commit(bundle.project_id, "node", row.id, "assigned")
    return len(rows)


def publish_taken_back(project_id: uuid.UUID, node_ids: Iterable[uuid.UUID]) -> None:
    """Publish, with the commit, that these nodes' assignments were taken back (skipped,
    cancelled, nothing to roll back to): a `node` event each, as `assign` publishes, so every
    process forgets what it answered them (a rollout's own events reach only the nodes still
    waiting for its bundle)."""
    for node_id in node_ids:
        events.publish_after_commit(project_id, "node", node_id, "unassigned")


def poll_etag(assigned: str | None, active: str | None, offered: bool, poll_after_s: int) -> str:
    """An (unquoted) ETag naming the node's assignment state: what it would be told."""
    text = f"{assigned or '-'}|{active or '-'}|{int(offered)}|{poll_after_s}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def poll_answer(
    *,
    node_id: uuid.UUID,
    project_id: uuid.UUID,
    active_bundle_id: str | None,
    assigned: dict[str, Any] | None,
    rollout_id: uuid.UUID | None,
    poll_after_s: int,
    download_url: str,
) -> tuple[dict[str, Any], str]:
    """The poll body and its ETag, from what the credential lookup already read (no query).

    `assigned` is the assigned bundle's row (id, version, status, size, signature, kid,
    artifact state) or None.
    """
    offer = (
        assigned is not None
        and assigned["status"] == "compiled"
        and assigned["artifact_deleted_at"] is None
        and assigned["signature"] is not None
        and assigned["id"] != active_bundle_id
    )
    etag = poll_etag(assigned["id"] if assigned else None, active_bundle_id, offer, poll_after_s)
    if not offer:
        return {"no_update": True, "poll_after_s": poll_after_s}, etag
    assert assigned is not None
    return {
        "bundle_id": assigned["id"],
        "version": assigned["version"],
        "checksum": assigned["id"],
        "size_bytes": assigned["size_bytes"],
        "download_url": download_url,
        "signature": assigned["signature"],
        "signing_key_id": assigned["signing_key_id"],
        "project_id": str(project_id),
        "rollout_id": str(rollout_id) if rollout_id else None,
        "poll_after_s": poll_after_s,
    }, etag


class Download(NamedTuple):
    """What serving a bundle's archive needs (not the bundle's JSON columns)."""

    id: str
    storage_key: str


@functools.cache
def _downloadable() -> Any:
    from sentinel_cp.nodes import Node  # (nodes imports this module)

    bundle_id = bindparam("bundle_id", type_=String())
    return select(
        Bundle.id,
        Bundle.project_id,
        Bundle.status,
        Bundle.storage_key,
        Bundle.artifact_deleted_at,
    ).where(
        Bundle.id == bundle_id,
        select(Node.id)
        .where(
            Node.id == bindparam("node_id", type_=Uuid()),
            or_(Node.active_bundle_id == bundle_id, Node.assigned_bundle_id == bundle_id),
        )
        .exists(),
    )


def downloadable(project_id: uuid.UUID, node_id: uuid.UUID, bundle_id: str) -> Download:
    """The bundle a node may download: its assigned or currently active one, else 404.

    One statement reads the node's two bundles and five columns of the bundle — not the ORM
    row, whose manifest, file list and compiler output took ~10 % of an `api` worker's time
    while a fleet downloaded a bundle — so the caller needs no more of the node than who it is.
    """
    bundle = db.session.execute(
        _downloadable(), {"bundle_id": bundle_id, "node_id": node_id}
    ).first()
    if bundle is None or bundle.project_id != project_id or bundle.status != "compiled":
        # Revoked bundles are not served: a node must not start running one.
        raise NotFound("Bundle not found", code="bundle_not_found")
    if bundle.artifact_deleted_at is not None:
        raise NotFound("Bundle artifact is gone", code="bundle_collected")
    return Download(bundle.id, bundle.storage_key)


class Delivery(NamedTuple):
    """The delivery row a status report moved (or found already in that state)."""

    id: int
    state: str
    rollout_id: uuid.UUID | None
    step_index: int | None


# Built once: every status report runs these (Core: the report path needs no unit of work).
_DELIVERIES = NodeBundleStatus.__table__
_NEWEST_DELIVERY = (
    select(
        _DELIVERIES.c.id,
        _DELIVERIES.c.state,
        _DELIVERIES.c.rollout_id,
        _DELIVERIES.c.step_index,
        _DELIVERIES.c.activated_at,
    )
    .where(
        # (typed here: the foreign-key columns learn their type only when mapped)
        _DELIVERIES.c.node_id == bindparam("node_id", type_=Uuid()),
        _DELIVERIES.c.bundle_id == bindparam("bundle_id", type_=String()),
    )
    .order_by(_DELIVERIES.c.id.desc())
    .limit(1)
    .with_for_update()
)
_MOVE_DELIVERY = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("row_id"))
    .values(
        state=bindparam("new_state"),
        updated_at=bindparam("now", type_=_DELIVERIES.c.updated_at.type),
        reason=func.coalesce(bindparam("new_reason", type_=String), _DELIVERIES.c.reason),
        logs=func.coalesce(bindparam("new_logs", type_=Text), _DELIVERIES.c.logs),
        activated_at=bindparam("new_activated_at", type_=_DELIVERIES.c.activated_at.type),
        verified_at=func.coalesce(
            bindparam("new_verified_at", type_=_DELIVERIES.c.verified_at.type),
            _DELIVERIES.c.verified_at,
        ),
    )
)


@functools.cache
def _set_active_bundle() -> Any:
    from sentinel_cp.nodes import Node  # (nodes imports this module)

    nodes = Node.__table__
    return (
        update(nodes)
        .where(nodes.c.id == bindparam("node_id"))
        .values(active_bundle_id=bindparam("active"))
    )


def report_status(
    *,
    node_id: uuid.UUID,
    node_name: str,
    project_id: uuid.UUID,
    bundle_id: str,
    state: str,
    reason: str | None,
    logs: str | None,
    now: datetime | None = None,
) -> tuple[Delivery, bool]:
    """Move the node's newest status row for this bundle forward; returns (row, changed).

    Repeating the current state is a no-op (retries are safe); moving backwards, or out of a
    final state, is 409 `invalid_transition`. The row is read under a row lock, so two reports
    of one node cannot both move it from the same state.
    """
    now = now or utcnow()
    connection = db.session.connection()
    row = connection.execute(_NEWEST_DELIVERY, {"node_id": node_id, "bundle_id": bundle_id}).first()
    if row is None:
        raise NotFound("This bundle was never assigned to this node", code="not_assigned")
    delivery = Delivery(row.id, row.state, row.rollout_id, row.step_index)
    if row.state == state:
        return delivery, False
    if not _may_move(row.state, state):
        raise Conflict(
            f"Cannot report {state} after {row.state}",
            code="invalid_transition",
        )
    activated_at = row.activated_at
    if state == "activated" or (state == "verified" and activated_at is None):
        activated_at = now
    connection.execute(
        _MOVE_DELIVERY,
        {
            "row_id": row.id,
            "new_state": state,
            "now": now,
            "new_reason": reason,
            "new_logs": logs,
            "new_activated_at": activated_at,
            "new_verified_at": now if state == "verified" else None,
        },
    )
    if state in ("activated", "verified"):
        connection.execute(_set_active_bundle(), {"node_id": node_id, "active": bundle_id})
    audit.record(
        Actor("node", str(node_id), node_name),
        f"node.bundle_{state}",
        resource_type="node",
        resource_id=node_id,
        project_id=project_id,
        changes={"state": [row.state, state]},
        metadata={
            "bundle_id": bundle_id,
            "rollout_id": str(row.rollout_id) if row.rollout_id else None,
            **({"reason": reason} if reason else {}),
        },
        now=now,
    )
    events.publish_after_commit(project_id, "node", node_id, f"bundle_{state}")
    if row.rollout_id is not None and state in ADVANCING:
        # this report can advance the step: tick now rather than at the next sweep. A
        # `verified` report can only finish a step that has no delivery left on its way.
        step_done = None
        if state == "verified":
            step_done = functools.partial(_step_settled, row.rollout_id, row.step_index)
        jobqueue.tick_rollout(row.rollout_id, when=step_done)
    return delivery._replace(state=state), True


def _step_settled(rollout_id: uuid.UUID, step_index: int | None, connection: Connection) -> bool:
    """No delivery of this rollout step is still on its way (each is verified, failed, rolled
    back or skipped). Deliveries the tick judges by other evidence (a heartbeat showing the
    bundle active, a node gone offline) are left to the sweep's tick every few seconds."""
    step = NodeBundleStatus.__table__.c.step_index == step_index
    return connection.execute(_on_its_way(rollout_id).where(step)).first() is None


def rollout_settled(rollout_id: uuid.UUID, connection: Connection) -> bool:
    """No delivery of this rollout is still on its way: a rollout assigns one step at a time,
    so this is its current step's `_step_settled` without knowing which step that is."""
    return connection.execute(_on_its_way(rollout_id)).first() is None


def _on_its_way(rollout_id: uuid.UUID) -> Any:
    rows = NodeBundleStatus.__table__
    return (
        select(rows.c.id)
        .where(rows.c.rollout_id == rollout_id, rows.c.state.not_in(FINAL))
        .limit(1)
    )


def _may_move(current: str, new: str) -> bool:
    if current in FINAL:
        return False
    if new in ("failed", "rolled_back"):
        return True
    return PROGRESS.index(new) > PROGRESS.index(current)


def revoke(
    actor: Actor, bundle: Bundle, *, reason: str | None, now: datetime | None = None
) -> Bundle:
    """`compiled → revoked`: no poll offers it from this commit on; the artifact is kept."""
    now = now or utcnow()
    if bundle.status != "compiled":
        raise Conflict(
            f"Bundle {bundle.version} is {bundle.status}; only compiled bundles can be revoked",
            code=f"bundle_{bundle.status}",
        )
    changed = db.session.execute(
        update(Bundle)
        .where(Bundle.id == bundle.id, Bundle.status == "compiled")
        .values(status="revoked", revoked_at=now, revoke_reason=reason)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if changed != 1:
        raise Conflict(f"Bundle {bundle.version} changed meanwhile", code="bundle_changed")
    bundle.status, bundle.revoked_at, bundle.revoke_reason = "revoked", now, reason
    audit.record(
        actor,
        "bundle.revoked",
        resource_type="bundle",
        resource_id=bundle.id,
        project_id=bundle.project_id,
        changes={"status": ["compiled", "revoked"]},
        metadata={"version": bundle.version, "reason": reason},
        now=now,
    )
    events.publish_after_commit(bundle.project_id, "bundle", bundle.id, "revoked")
    return bundle


def verify(bundle: Bundle, archive: bytes | None) -> dict[str, Any]:
    """Check the stored signature against the project's key, and the stored bytes' hash."""
    key = None
    if bundle.signing_key_id is not None:
        key = db.session.scalars(
            select(signing.SigningKey).where(
                signing.SigningKey.project_id == bundle.project_id,
                signing.SigningKey.kid == bundle.signing_key_id,
            )
        ).first()
    signed = bundle.signature is not None and key is not None
    signature_ok = False
    if signed:
        assert key is not None and bundle.signature is not None
        import base64

        try:
            raw = base64.b64decode(bundle.signature, validate=True)
        except ValueError:
            raw = b""
        signature_ok = signing.verify(
            key.public_key, signature_message(bundle.project_id, bundle.id), raw
        )
    hash_ok = archive is not None and hashlib.sha256(archive).hexdigest() == bundle.id
    return {
        "verified": bool(signature_ok and hash_ok),
        "signed": signed,
        "signature_valid": signature_ok,
        "key_id": bundle.signing_key_id,
        "key_state": key.state if key is not None else None,
        "checksum_valid": hash_ok,
        "artifact_present": archive is not None,
    }
