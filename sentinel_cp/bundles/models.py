"""Bundle rows and per-node delivery state.

A bundle's id is the sha256 of its deterministic archive, so the row exists (status
`pending`) from the moment of submission; the compile job moves it to `compiled` or `failed`.
The source files live in the row too: the compile job rebuilds the identical archive from them,
and the files and diff endpoints read them without touching object storage.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sentinel_cp.db import JSONType, UTCDateTime, db, utcnow

STATUSES = ("pending", "compiling", "compiled", "failed", "revoked")
NODE_STATES = ("assigned", "downloaded", "staged", "activated", "verified", "failed", "rolled_back")
AutoId = BigInteger().with_variant(Integer, "sqlite")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class Bundle(db.Model):  # type: ignore[name-defined]
    __tablename__ = "bundles"
    __table_args__ = (
        UniqueConstraint("project_id", "version", name="uq_bundles_project_version"),
        Index("ix_bundles_project_created", "project_id", "created_at"),
        Index("ix_bundles_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    size_bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    storage_key: Mapped[str] = mapped_column(String(255), nullable=False)
    files: Mapped[dict[str, str]] = mapped_column(JSONType, nullable=False)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    config_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)
    output: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    signature: Mapped[str | None] = mapped_column(Text)
    signing_key_id: Mapped[str | None] = mapped_column(String(64))
    risk_level: Mapped[str | None] = mapped_column(String(8))
    risk_reasons: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    diff_summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    parent_bundle_id: Mapped[str | None] = mapped_column(String(64))
    source_type: Mapped[str] = mapped_column(String(16), nullable=False, default="api")
    source_ref: Mapped[str | None] = mapped_column(String(255))
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    compile_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    compile_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    compiled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoke_reason: Mapped[str | None] = mapped_column(String(500))
    artifact_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def distributable(self) -> bool:
        return self.status == "compiled" and self.artifact_deleted_at is None

    def to_dict(self, *, existing: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "status": self.status,
            "checksum": self.id,
            "size_bytes": self.size_bytes,
            "config_sha256": self.config_sha256,
            "risk_level": self.risk_level,
            "risk_reasons": self.risk_reasons,
            "errors": self.errors,
            "warnings": self.warnings,
            "signed": self.signature is not None,
            "signing_key_id": self.signing_key_id,
            "parent_bundle_id": self.parent_bundle_id,
            "diff_summary": self.diff_summary,
            "source_type": self.source_type,
            "source_ref": self.source_ref,
            "created_by": self.created_by,
            "created_at": _iso(self.created_at),
            "compiled_at": _iso(self.compiled_at),
            "revoked_at": _iso(self.revoked_at),
            "revoke_reason": self.revoke_reason,
            "artifact_deleted_at": _iso(self.artifact_deleted_at),
            "files": [entry["path"] for entry in self.manifest.get("files", [])],
            "existing": existing,
        }


class NodeBundleStatus(db.Model):  # type: ignore[name-defined]
    """One assignment of a bundle to a node and how far the node got with it.

    A new row per assignment (a later rollout of the same bundle starts afresh); status
    reports move the newest row for (node, bundle) forward only.
    """

    __tablename__ = "node_bundle_statuses"
    __table_args__ = (
        Index("ix_node_bundle_statuses_node_bundle", "node_id", "bundle_id"),
        Index("ix_node_bundle_statuses_rollout", "rollout_id"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    node_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False
    )
    bundle_id: Mapped[str] = mapped_column(
        ForeignKey("bundles.id", ondelete="CASCADE"), nullable=False
    )
    rollout_id: Mapped[uuid.UUID | None] = mapped_column()
    step_index: Mapped[int | None] = mapped_column(Integer)
    previous_bundle_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="assigned")
    reason: Mapped[str | None] = mapped_column(String(1000))
    logs: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": str(self.node_id),
            "bundle_id": self.bundle_id,
            "rollout_id": str(self.rollout_id) if self.rollout_id else None,
            "previous_bundle_id": self.previous_bundle_id,
            "state": self.state,
            "reason": self.reason,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "activated_at": _iso(self.activated_at),
            "verified_at": _iso(self.verified_at),
        }
