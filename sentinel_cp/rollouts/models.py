"""Rollout rows: the rollout, its planned steps, approvals, freeze windows and templates.

The plan is fixed at creation (each step's node ids, ordered by name) so that what an operator
previewed is what runs; per-node progress lives in `node_bundle_statuses` (one row per node per
rollout step, created when the step starts).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sentinel_cp.db import JSONType, UTCDateTime, db, new_id, utcnow

ACTIVE_STATES = ("pending", "running", "paused", "rolling_back")  # a node in one is busy


class Rollout(db.Model):  # type: ignore[name-defined]
    __tablename__ = "rollouts"
    __table_args__ = (
        Index("ix_rollouts_project_created", "project_id", "created_at"),
        Index("ix_rollouts_state", "state"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    approval_state: Mapped[str] = mapped_column(String(24), nullable=False, default="not_required")
    approvals_required: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    strategy: Mapped[str] = mapped_column(String(16), nullable=False)
    target_selector: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    reason: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    promoted: Mapped[bool] = mapped_column(nullable=False, default=False)
    rollback_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("rollouts.id"))
    freeze_override: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_by_user_id: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class RolloutStep(db.Model):  # type: ignore[name-defined]
    __tablename__ = "rollout_steps"
    __table_args__ = (UniqueConstraint("rollout_id", "index", name="uq_rollout_steps_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False
    )
    index: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="deploy")
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    node_ids: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    # Rollback rollouts only: each node's own target (its previous bundle), by node id.
    node_targets: Mapped[dict[str, str] | None] = mapped_column(JSONType)
    skipped_node_ids: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    baking_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gates_passing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gates_failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    skip_unavailable: Mapped[bool] = mapped_column(nullable=False, default=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(String(64))
    gate_verdict: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class RolloutApproval(db.Model):  # type: ignore[name-defined]
    __tablename__ = "rollout_approvals"
    __table_args__ = (UniqueConstraint("rollout_id", "user_id", name="uq_rollout_approvals_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    decision: Mapped[str] = mapped_column(String(8), nullable=False)
    comment: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class FreezeWindowRow(db.Model):  # type: ignore[name-defined]
    __tablename__ = "freeze_windows"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class RolloutTemplate(db.Model):  # type: ignore[name-defined]
    __tablename__ = "rollout_templates"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_rollout_templates_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    target_selector: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
