"""The audit log: per-project chains under the project, the global chain at `/api/v1/audit`."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, stream_with_context

from blueprints.api import page_body, route
from blueprints.projects import visible_project
from blueprints.schemas import AuditEntryOut, AuditExportQuery, AuditQuery, AuditVerifyOut, ListOut
from sentinel_cp import audit
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db
from sentinel_cp.errors import NotFound

bp = Blueprint("audit", __name__, url_prefix="/api/v1")
SCOPE = audit.READ_SCOPE


def _filters(query: AuditQuery | AuditExportQuery) -> audit.AuditFilter:
    return audit.AuditFilter(
        actor=query.actor,
        action=query.action,
        resource=query.resource,
        since=query.since,
        until=query.until,
    )


def _global_chain(principal: Principal) -> None:
    if principal.project_id is not None:
        raise NotFound("Not found")


def _list(project_id: uuid.UUID | None, query: AuditQuery) -> dict[str, object]:
    page = audit.list_entries(project_id, _filters(query), limit=query.limit, cursor=query.cursor)
    db.session.commit()
    return page_body(page, lambda item: item.to_dict())


# `format=json` (the default): one JSON object per line; `format=csv`: CSV with a header row.
EXPORT_MEDIA_TYPES = {"application/x-ndjson": {"type": "string"}, "text/csv": {"type": "string"}}


def _export(project_id: uuid.UUID | None, query: AuditExportQuery, name: str) -> Response:
    mimetype = "text/csv" if query.format == "csv" else "application/x-ndjson"
    extension = "csv" if query.format == "csv" else "jsonl"
    body = stream_with_context(audit.export_entries(project_id, _filters(query), query.format))
    return Response(
        body,
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="audit-{name}.{extension}"'},
    )


@route(
    bp,
    "/projects/<slug>/audit",
    summary="List a project's audit entries, newest first",
    scope=SCOPE,
    query=AuditQuery,
    response=ListOut[AuditEntryOut],
)
def project_audit(principal: Principal, slug: str, query: AuditQuery) -> dict[str, object]:
    return _list(visible_project(principal, slug).id, query)


@route(
    bp,
    "/projects/<slug>/audit/export",
    summary="Export a project's audit chain",
    scope=SCOPE,
    query=AuditExportQuery,
    produces=EXPORT_MEDIA_TYPES,
)
def project_audit_export(principal: Principal, slug: str, query: AuditExportQuery) -> Response:
    project = visible_project(principal, slug)
    return _export(project.id, query, project.slug)


@route(
    bp,
    "/projects/<slug>/audit/verify",
    summary="Verify a project's audit hash chain",
    scope=SCOPE,
    response=AuditVerifyOut,
)
def project_audit_verify(principal: Principal, slug: str) -> dict[str, object]:
    verdict = audit.verify_chain(visible_project(principal, slug).id)
    db.session.commit()
    return verdict.to_dict()


@route(
    bp,
    "/audit",
    summary="List global audit entries (users, keys, sessions, projects)",
    scope=SCOPE,
    query=AuditQuery,
    response=ListOut[AuditEntryOut],
)
def global_audit(principal: Principal, query: AuditQuery) -> dict[str, object]:
    _global_chain(principal)
    return _list(None, query)


@route(
    bp,
    "/audit/export",
    summary="Export the global audit chain",
    scope=SCOPE,
    query=AuditExportQuery,
    produces=EXPORT_MEDIA_TYPES,
)
def global_audit_export(principal: Principal, query: AuditExportQuery) -> Response:
    _global_chain(principal)
    return _export(None, query, "global")


@route(
    bp,
    "/audit/verify",
    summary="Verify the global audit hash chain",
    scope=SCOPE,
    response=AuditVerifyOut,
)
def global_audit_verify(principal: Principal) -> dict[str, object]:
    _global_chain(principal)
    verdict = audit.verify_chain(None)
    db.session.commit()
    return verdict.to_dict()
