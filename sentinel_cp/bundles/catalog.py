"""Reading bundles for operators: list, show, files, artifact, diff."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, func, or_, select

from sentinel_cp import storage
from sentinel_cp.bundles import compiler
from sentinel_cp.bundles.diff import semantic_summary, unified_diff
from sentinel_cp.bundles.models import Bundle
from sentinel_cp.bundles.risk import assess
from sentinel_cp.db import db
from sentinel_cp.errors import NotFound
from sentinel_cp.pagination import Page, decode_position, encode_cursor


def get_bundle(project_id: uuid.UUID, bundle_id: str) -> Bundle:
    """A bundle of this project (404 for unknown ids and for other projects' bundles)."""
    bundle = db.session.get(Bundle, bundle_id) if len(bundle_id) == 64 else None
    if bundle is None or bundle.project_id != project_id:
        raise NotFound("Bundle not found", code="bundle_not_found")
    return bundle


def list_bundles(
    project_id: uuid.UUID, *, status: str | None, limit: int, cursor: str | None
) -> Page[Bundle]:
    """Newest first; the cursor is (created_at, id), stable under inserts."""
    where = [Bundle.project_id == project_id]
    if status is not None:
        where.append(Bundle.status == status)
    total = db.session.scalar(select(func.count()).select_from(Bundle).where(*where)) or 0
    query = select(Bundle).where(*where)
    if cursor is not None:
        at, after = decode_position(cursor, uuid_id=False)
        query = query.where(
            or_(Bundle.created_at < at, and_(Bundle.created_at == at, Bundle.id < after))
        )
    rows = db.session.scalars(
        query.order_by(Bundle.created_at.desc(), Bundle.id.desc()).limit(limit + 1)
    ).all()
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last.created_at.isoformat(), last.id)
    return Page(list(rows[:limit]), next_cursor, total)


def file_text(bundle: Bundle, path: str) -> str:
    if path not in bundle.files:
        raise NotFound(f"No file {path} in this bundle", code="file_not_found")
    return bundle.files[path]


def read_artifact(bundle: Bundle) -> bytes | None:
    """The stored archive, or None when it never existed or was collected."""
    if bundle.status not in ("compiled", "revoked") or bundle.artifact_deleted_at is not None:
        return None
    try:
        return storage.current().get(bundle.storage_key)
    except NotFound:
        return None


def diff(bundle: Bundle, against: Bundle) -> dict[str, Any]:
    """Unified diff of every file, the semantic summary and the risk of going from `against`
    to `bundle`."""
    new_config = compiler.config_of(bundle)
    old_config = compiler.config_of(against)
    risk = assess(old_config, new_config) if new_config is not None else None
    return {
        "bundle_id": bundle.id,
        "against": against.id,
        "files": unified_diff(against.files, bundle.files),
        "summary": semantic_summary(old_config, new_config),
        "risk_level": risk.level if risk else "high",
        "risk_reasons": list(risk.reasons) if risk else ["the bundle does not validate"],
    }
