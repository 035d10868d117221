"""Artifact garbage collection (spec/bundles.md): delete archives nobody can need any more.

An artifact goes only when its bundle is not active, assigned or expected on any node, is not
being delivered (a status row that has not reached a final state), is not among the newest
`KEEP_NEWEST` compiled bundles of its project, and is older than `RETENTION`. The row stays,
with `artifact_deleted_at`, for forensics. The row is marked (and audited) first and the object
deleted after the commit; a crash in between leaves an orphan object that the next run deletes
again (deleting a missing object is a no-op), never a row that points at nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, union, update

from sentinel_cp import audit, storage
from sentinel_cp.audit import Actor
from sentinel_cp.bundles.models import Bundle, NodeBundleStatus
from sentinel_cp.db import db, utcnow
from sentinel_cp.errors import Unavailable

KEEP_NEWEST = 20
RETENTION = timedelta(days=30)
RETRY_DELETES_FOR = timedelta(days=7)
FINAL_STATES = ("verified", "failed", "rolled_back")
log = logging.getLogger(__name__)


def _referenced() -> set[str]:
    from sentinel_cp.nodes import Node

    columns = (Node.active_bundle_id, Node.assigned_bundle_id, Node.expected_bundle_id)
    query: Any = union(
        *(select(column).where(column.is_not(None)) for column in columns),
        select(NodeBundleStatus.bundle_id).where(NodeBundleStatus.state.not_in(FINAL_STATES)),
    )
    return {row[0] for row in db.session.execute(query)}


def _newest(project_ids: set[Any]) -> set[str]:
    keep: set[str] = set()
    for project_id in project_ids:
        keep.update(
            db.session.scalars(
                select(Bundle.id)
                .where(Bundle.project_id == project_id, Bundle.status == "compiled")
                .order_by(Bundle.compiled_at.desc())
                .limit(KEEP_NEWEST)
            )
        )
    return keep


def candidates(*, now: datetime | None = None) -> list[Bundle]:
    """The bundles whose artifacts may be deleted now, oldest first."""
    now = now or utcnow()
    old = db.session.scalars(
        select(Bundle)
        .where(
            Bundle.status.in_(("compiled", "revoked")),
            Bundle.artifact_deleted_at.is_(None),
            Bundle.created_at < now - RETENTION,
        )
        .order_by(Bundle.created_at)
    ).all()
    if not old:
        return []
    protected = _referenced() | _newest({b.project_id for b in old})
    return [b for b in old if b.id not in protected]


def collect(*, dry_run: bool, now: datetime | None = None) -> dict[str, Any]:
    """Delete what `candidates` names (or only list it with `dry_run`)."""
    now = now or utcnow()
    doomed = candidates(now=now)
    listed = [
        {
            "id": b.id,
            "project_id": str(b.project_id),
            "version": b.version,
            "size_bytes": b.size_bytes,
        }
        for b in doomed
    ]
    if dry_run:
        return {"dry_run": True, "bundles": listed, "bytes": sum(b.size_bytes for b in doomed)}
    marked: list[Bundle] = []
    for bundle in doomed:
        changed = db.session.execute(
            update(Bundle)
            .where(Bundle.id == bundle.id, Bundle.artifact_deleted_at.is_(None))
            .values(artifact_deleted_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if changed != 1:
            continue  # another collector got it
        audit.record(
            Actor.system("gc"),
            "bundle.artifact_deleted",
            resource_type="bundle",
            resource_id=bundle.id,
            project_id=bundle.project_id,
            metadata={"version": bundle.version, "size_bytes": bundle.size_bytes},
            now=now,
        )
        marked.append(bundle)
    db.session.commit()
    retried = db.session.scalars(
        select(Bundle).where(Bundle.artifact_deleted_at >= now - RETRY_DELETES_FOR)
    ).all()
    deleted = 0
    backend = storage.current()
    for bundle in retried:
        try:
            backend.delete(bundle.storage_key)
            deleted += 1
        except Unavailable as exc:
            log.warning("artifact of bundle %s not deleted yet: %s", bundle.id, exc)
    return {
        "dry_run": False,
        "bundles": [item for item in listed if item["id"] in {b.id for b in marked}],
        "bytes": sum(b.size_bytes for b in marked),
        "objects_deleted": deleted,
    }
