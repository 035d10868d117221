"""A project's stored rollout settings: freeze windows and rollout templates (audited CRUD).

Also the access rules every adapter shares (the REST API and the console): which scope acting
on rollouts needs, who may override a freeze window, and which operator actions a rollout's
current state allows, so a page offers exactly what the engine would accept.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from sentinel_cp import audit
from sentinel_cp.audit import Actor
from sentinel_cp.db import db, utcnow
from sentinel_cp.errors import Conflict, Forbidden, NotFound
from sentinel_cp.rollouts import freeze
from sentinel_cp.rollouts.models import FreezeWindowRow, Rollout, RolloutTemplate
from sentinel_cp.rollouts.types import RolloutConfig


def freeze_window_dict(row: FreezeWindowRow, now: datetime | None = None) -> dict[str, Any]:
    window = freeze.FreezeWindow.from_dict(row.definition)
    active = freeze.active_windows([window], now or utcnow())
    return {
        "id": str(row.id),
        **window.to_dict(),
        "active": bool(active),
        "active_until": active[0].ends_at.isoformat() if active else None,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
    }


def list_freeze_windows(project_id: uuid.UUID) -> list[FreezeWindowRow]:
    return list(
        db.session.scalars(
            select(FreezeWindowRow)
            .where(FreezeWindowRow.project_id == project_id)
            .order_by(FreezeWindowRow.created_at)
        )
    )


def add_freeze_window(
    actor: Actor, project_id: uuid.UUID, definition: dict[str, Any], *, now: datetime | None = None
) -> FreezeWindowRow:
    """Validate (DST-aware, see `freeze`) and store one window."""
    now = now or utcnow()
    window = freeze.FreezeWindow.from_dict(definition)
    row = FreezeWindowRow(
        id=uuid.uuid4(),
        project_id=project_id,
        name=window.name,
        definition=window.to_dict(),
        created_by=actor.label,
        created_at=now,
    )
    db.session.add(row)
    audit.record(
        actor,
        "freeze_window.created",
        resource_type="freeze_window",
        resource_id=row.id,
        project_id=project_id,
        metadata=window.to_dict(),
        now=now,
    )
    return row


def delete_freeze_window(
    actor: Actor, project_id: uuid.UUID, window_id: uuid.UUID, *, now: datetime | None = None
) -> None:
    row = db.session.get(FreezeWindowRow, window_id)
    if row is None or row.project_id != project_id:
        raise NotFound("Freeze window not found", code="freeze_window_not_found")
    audit.record(
        actor,
        "freeze_window.deleted",
        resource_type="freeze_window",
        resource_id=row.id,
        project_id=project_id,
        metadata=row.definition,
        now=now,
    )
    db.session.delete(row)


def template_dict(row: RolloutTemplate) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "name": row.name,
        "target_selector": row.target_selector,
        "config": row.config,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
    }


def list_templates(project_id: uuid.UUID) -> list[RolloutTemplate]:
    return list(
        db.session.scalars(
            select(RolloutTemplate)
            .where(RolloutTemplate.project_id == project_id)
            .order_by(RolloutTemplate.name)
        )
    )


def get_template(project_id: uuid.UUID, name: str) -> RolloutTemplate:
    row = db.session.scalar(
        select(RolloutTemplate).where(
            RolloutTemplate.project_id == project_id, RolloutTemplate.name == name
        )
    )
    if row is None:
        raise NotFound(f"Rollout template {name!r} not found", code="template_not_found")
    return row


def add_template(
    actor: Actor,
    project_id: uuid.UUID,
    *,
    name: str,
    target_selector: dict[str, Any],
    config: dict[str, Any],
    now: datetime | None = None,
) -> RolloutTemplate:
    """Store rollout settings by name; the settings are validated as a rollout's would be."""
    now = now or utcnow()
    checked = RolloutConfig.from_dict(config).to_dict()
    row = RolloutTemplate(
        id=uuid.uuid4(),
        project_id=project_id,
        name=name,
        target_selector=target_selector,
        config=checked,
        created_by=actor.label,
        created_at=now,
    )
    try:
        with db.session.begin_nested():
            db.session.add(row)
    except IntegrityError:
        raise Conflict(f"A template named {name!r} exists", code="template_exists") from None
    audit.record(
        actor,
        "rollout_template.created",
        resource_type="rollout_template",
        resource_id=row.id,
        project_id=project_id,
        metadata={"name": name, "config": checked, "target_selector": target_selector},
        now=now,
    )
    return row


# --- who may act on a rollout, and when ------------------------------------------------------

READ_SCOPE = "rollouts:read"  # list, show and plan (a dry run)
WRITE_SCOPE = "rollouts:write"  # create, templates, and every operator action
FREEZE_OVERRIDE_SCOPE = "projects:admin"  # only admins may roll out through a freeze window
FREEZE_WINDOWS_SCOPE = "projects:admin"  # only admins add or remove freeze windows
OPERATOR_ACTIONS = ("approve", "reject", "resume", "promote", "pause", "cancel", "rollback")


def require_freeze_override(scopes: Collection[str]) -> None:
    """Refuse a freeze-window override to a caller without the admin scope (403)."""
    if FREEZE_OVERRIDE_SCOPE not in scopes:
        raise Forbidden(
            f"Insufficient scope: {FREEZE_OVERRIDE_SCOPE} is required",
            code="insufficient_scope",
            required=FREEZE_OVERRIDE_SCOPE,
        )


def legal_actions(rollout: Rollout) -> tuple[str, ...]:
    """The operator actions the engine accepts on `rollout` in its current state.

    Mirrors the states each engine action checks (`engine.pause`, `resume`, …), which stay the
    authority: acting on a stale page still gets the engine's 409 naming the current state.
    """
    state, approval = rollout.state, rollout.approval_state
    awaiting_promotion = state == "paused" and rollout.reason == "awaiting_promotion"
    legal: list[str] = []
    if state == "pending" and approval == "pending_approval":
        legal += ["approve", "reject"]
    startable = state == "pending" and approval in ("not_required", "approved")
    if startable or (state == "paused" and not awaiting_promotion):
        legal.append("resume")
    if awaiting_promotion:
        legal.append("promote")
    if state == "running":
        legal.append("pause")
    if state in ("pending", "running", "paused"):
        legal.append("cancel")
    if state in ("running", "paused", "failed", "completed") and rollout.rollback_of is None:
        legal.append("rollback")
    return tuple(legal)


def offered_actions(
    rollout: Rollout, scopes: Collection[str], user_id: uuid.UUID | None
) -> tuple[str, ...]:
    """The legal actions this user may take: none without the write scope, and never
    approving a rollout they created."""
    if WRITE_SCOPE not in scopes:
        return ()
    return tuple(
        action
        for action in legal_actions(rollout)
        if not (
            action == "approve" and user_id is not None and rollout.created_by_user_id == user_id
        )
    )
