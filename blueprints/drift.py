"""Drift events for operators: list, stats, show, resolve (one or all), export."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, Response, stream_with_context
from pydantic import Field

from blueprints.api import page_body, route
from blueprints.ids import parse_uuid
from blueprints.projects import visible_project
from blueprints.schemas import Body, ListOut, Out, PageQuery, Query
from sentinel_cp import drift
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db

bp = Blueprint("drift", __name__, url_prefix="/api/v1/projects/<slug>")
READ, WRITE = drift.READ_SCOPE, drift.RESOLVE_SCOPE

Status = Literal[drift.STATUSES]  # type: ignore[valid-type]
Severity = Literal[drift.SEVERITIES]  # type: ignore[valid-type]
Kind = Literal[drift.KINDS]  # type: ignore[valid-type]


class DriftFilters(Query):
    status: Status | None = None
    severity: Severity | None = None
    kind: Kind | None = None
    node: uuid.UUID | None = None


class DriftQuery(DriftFilters, PageQuery):
    pass


class DriftExportQuery(DriftFilters):
    format: Literal["csv", "json"] = "csv"


class DriftResolveIn(Body):
    comment: str = Field(min_length=1, max_length=drift.MAX_COMMENT)


class DriftEventOut(Out):
    id: str
    node_id: str
    node_name: str
    kind: Kind
    reason: str
    severity: Severity
    status: Status
    expected_bundle_id: str | None
    actual_bundle_id: str | None
    expected_config_hash: str | None
    actual_config_hash: str | None
    first_seen_at: datetime
    opened_at: datetime
    remediated_at: datetime | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: Literal[drift.RESOLUTIONS] | None  # type: ignore[valid-type]
    comment: str | None


class DriftStatsOut(Out):
    active: int
    resolved: int
    drifted_nodes: int
    by_severity: dict[str, int]
    by_kind: dict[str, int]
    oldest_active_opened_at: datetime | None


class DriftResolveAllOut(Out):
    resolved: int
    ids: list[str]


def _filters(query: DriftFilters | DriftQuery) -> drift.DriftFilter:
    return drift.DriftFilter(
        status=query.status, severity=query.severity, kind=query.kind, node_id=query.node
    )


def _event(principal: Principal, slug: str, event_id: str) -> drift.DriftEvent:
    project = visible_project(principal, slug)
    return drift.get_event(project.id, parse_uuid(event_id, "event_id"))


@route(
    bp,
    "/drift",
    summary="List drift events, newest first (filters: status, severity, kind, node)",
    scope=READ,
    query=DriftQuery,
    response=ListOut[DriftEventOut],
)
def list_drift(principal: Principal, slug: str, query: DriftQuery) -> dict[str, Any]:
    project = visible_project(principal, slug)
    page = drift.list_events(project.id, _filters(query), limit=query.limit, cursor=query.cursor)
    db.session.commit()
    return page_body(page, lambda event: event.to_dict())


@route(
    bp,
    "/drift/stats",
    summary="Drift counts: by status; active events by severity and kind; drifted nodes",
    scope=READ,
    response=DriftStatsOut,
)
def drift_stats(principal: Principal, slug: str) -> dict[str, Any]:
    result = drift.drift_stats(visible_project(principal, slug).id)
    db.session.commit()
    return result


@route(
    bp,
    "/drift/export",
    summary="Export drift events, oldest first (CSV with a header row, or a JSON array)",
    scope=READ,
    query=DriftExportQuery,
    produces={
        "text/csv": {"type": "string"},
        "application/json": {"type": "array", "items": {"type": "object"}},
    },
)
def export_drift(principal: Principal, slug: str, query: DriftExportQuery) -> Response:
    project = visible_project(principal, slug)
    mimetype = "text/csv" if query.format == "csv" else "application/json"
    body = stream_with_context(drift.export_events(project.id, _filters(query), query.format))
    return Response(
        body,
        mimetype=mimetype,
        headers={
            "Content-Disposition": f'attachment; filename="drift-{project.slug}.{query.format}"'
        },
    )


@route(
    bp,
    "/drift/resolve-all",
    "POST",
    summary="Resolve every active drift event of the project (a comment is required)",
    scope=WRITE,
    body=DriftResolveIn,
    response=DriftResolveAllOut,
)
def resolve_all(principal: Principal, slug: str, body: DriftResolveIn) -> dict[str, Any]:
    project = visible_project(principal, slug)
    ids = drift.resolve_all(principal.actor, project.id, comment=body.comment)
    db.session.commit()
    return {"resolved": len(ids), "ids": [str(ident) for ident in ids]}


@route(bp, "/drift/<event_id>", summary="Show a drift event", scope=READ, response=DriftEventOut)
def show_drift(principal: Principal, slug: str, event_id: str) -> dict[str, Any]:
    event = _event(principal, slug, event_id)
    db.session.commit()
    return event.to_dict()


@route(
    bp,
    "/drift/<event_id>/resolve",
    "POST",
    summary="Resolve an active drift event (a comment is required; 409 if it is resolved)",
    scope=WRITE,
    body=DriftResolveIn,
    response=DriftEventOut,
    responses={409: "drift_event_resolved"},
)
def resolve_drift(
    principal: Principal, slug: str, event_id: str, body: DriftResolveIn
) -> dict[str, Any]:
    event = drift.resolve(principal.actor, _event(principal, slug, event_id), comment=body.comment)
    db.session.commit()
    return event.to_dict()
