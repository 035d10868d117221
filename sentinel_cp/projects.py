"""Projects: the tenant boundary. Every row below a project carries its id.

Settings are a validated document merged over defaults, so reading a setting never needs a
fallback at the call site and a PATCH changes only what it names.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import String, delete, func, select
from sqlalchemy.orm import Mapped, mapped_column

from sentinel_cp import audit
from sentinel_cp.audit import Actor
from sentinel_cp.db import JSONType, UTCDateTime, db, new_id, utcnow
from sentinel_cp.errors import Conflict, Invalid, NotFound
from sentinel_cp.pagination import Page, decode_cursor, encode_cursor

SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,48}[a-z0-9]")
REGISTRATION_TOKEN_PREFIX = "rt_"
# Who may create, rename, re-configure or delete projects and rotate registration tokens.
ADMIN_SCOPE = "projects:admin"


class ProjectSettings(BaseModel):
    """The settings named in spec/operator-api.md, with their defaults and sane bounds."""

    model_config = ConfigDict(extra="forbid")

    heartbeat_interval_s: int = Field(30, ge=5, le=3600)
    poll_interval_s: int = Field(30, ge=5, le=3600)
    staleness_timeout_s: int = Field(120, ge=15, le=86400)
    approvals_required: int = Field(0, ge=0, le=10)
    approvals_required_high_risk: int = Field(0, ge=0, le=10)
    open_registration: bool = False
    drift_grace_s: int = Field(60, ge=0, le=86400)
    drift_auto_remediate: bool = False
    standby_slot: Literal["green", "blue"] = "green"

    @model_validator(mode="after")
    def _staleness_outlasts_heartbeats(self) -> ProjectSettings:
        if self.staleness_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(
                "staleness_timeout_s must be longer than heartbeat_interval_s, or every node "
                "would flap offline between heartbeats"
            )
        return self


def validate_settings(values: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge `values` over `base` (or the defaults) and validate; Invalid names each field."""
    merged = {**(base or {}), **values}
    try:
        return ProjectSettings.model_validate(merged).model_dump()
    except ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for error in exc.errors():
            loc = ".".join(str(p) for p in error["loc"]) or "settings"
            fields.setdefault(f"settings.{loc}" if error["loc"] else "settings", []).append(
                error["msg"]
            )
        raise Invalid("Invalid project settings", fields=fields) from None


class Project(db.Model):  # type: ignore[name-defined]
    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(50), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    registration_token_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    @property
    def config(self) -> ProjectSettings:
        return ProjectSettings.model_validate(self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "slug": self.slug,
            "name": self.name,
            "settings": validate_settings({}, self.settings),
            "has_registration_token": self.registration_token_hash is not None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _check_slug(slug: str) -> None:
    if not SLUG_PATTERN.fullmatch(slug):
        raise Invalid(
            "Invalid slug",
            fields={
                "slug": [
                    "2–50 lowercase letters, digits or dashes, not starting or ending with a dash"
                ]
            },
        )


def create_project(
    actor: Actor,
    *,
    slug: str,
    name: str,
    settings: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Project:
    """Create a project (audited on its own new chain)."""
    _check_slug(slug)
    resolved = validate_settings(settings or {})
    if db.session.scalar(select(Project.id).where(Project.slug == slug)) is not None:
        raise Conflict(f"A project with slug {slug!r} already exists", code="slug_taken")
    now = now or utcnow()
    project = Project(slug=slug, name=name, settings=resolved, created_at=now, updated_at=now)
    db.session.add(project)
    db.session.flush()
    audit.record(
        actor,
        "project.created",
        resource_type="project",
        resource_id=project.id,
        project_id=project.id,
        changes={"slug": slug, "name": name, "settings": resolved},
        now=now,
    )
    return project


def get_project(slug: str, *, visible_to: uuid.UUID | None = None) -> Project:
    """Look a project up by slug; a caller bound to another project gets NotFound."""
    project = db.session.scalar(select(Project).where(Project.slug == slug))
    if project is None or (visible_to is not None and project.id != visible_to):
        raise NotFound(f"Project {slug!r} not found")
    return project


def list_projects(*, visible_to: uuid.UUID | None, limit: int, cursor: str | None) -> Page[Project]:
    query = select(Project)
    if visible_to is not None:
        query = query.where(Project.id == visible_to)
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if cursor is not None:
        (after,) = decode_cursor(cursor, (str,))
        query = query.where(Project.slug > after)
    rows = list(db.session.execute(query.order_by(Project.slug).limit(limit + 1)).scalars())
    next_cursor = encode_cursor(rows[limit - 1].slug) if len(rows) > limit else None
    return Page(rows[:limit], next_cursor, total)


def update_project(
    actor: Actor,
    project: Project,
    *,
    name: str | None = None,
    settings: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Project:
    """Rename and/or merge settings; only real changes are audited."""
    now = now or utcnow()
    changes: dict[str, Any] = {}
    if name is not None and name != project.name:
        changes["name"] = [project.name, name]
        project.name = name
    if settings:
        merged = validate_settings(settings, project.settings)
        before = validate_settings({}, project.settings)
        diff = {k: [before.get(k), v] for k, v in merged.items() if before.get(k) != v}
        if diff:
            changes["settings"] = diff
            project.settings = merged
    if changes:
        project.updated_at = now
        audit.record(
            actor,
            "project.updated",
            resource_type="project",
            resource_id=project.id,
            project_id=project.id,
            changes=changes,
            now=now,
        )
    return project


def delete_project(actor: Actor, project: Project, *, now: datetime | None = None) -> None:
    """Delete a project and the API keys bound to it; its audit chain stays, and the
    deletion (with the keys it removed) is recorded on the global chain."""
    from sentinel_cp.accounts import ApiKey

    bound = list(db.session.scalars(select(ApiKey.prefix).where(ApiKey.project_id == project.id)))
    audit.record(
        actor,
        "project.deleted",
        resource_type="project",
        resource_id=project.id,
        changes={"slug": project.slug, "name": project.name, "api_keys_removed": sorted(bound)},
        now=now,
    )
    db.session.execute(delete(ApiKey).where(ApiKey.project_id == project.id))
    db.session.delete(project)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def rotate_registration_token(
    actor: Actor, project: Project, *, now: datetime | None = None
) -> str:
    """Issue a new registration token (the old one stops working); returned once."""
    now = now or utcnow()
    token = REGISTRATION_TOKEN_PREFIX + secrets.token_urlsafe(32)
    rotated = project.registration_token_hash is not None
    project.registration_token_hash = _hash_token(token)
    project.updated_at = now
    audit.record(
        actor,
        "project.registration_token_rotated",
        resource_type="project",
        resource_id=project.id,
        project_id=project.id,
        metadata={"replaced_previous": rotated},
        now=now,
    )
    return token


def registration_token_matches(project: Project, token: str | None) -> bool:
    """Constant-time check of a presented registration token."""
    if not token or project.registration_token_hash is None:
        return False
    return hmac.compare_digest(project.registration_token_hash, _hash_token(token))
