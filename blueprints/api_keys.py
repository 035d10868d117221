"""API keys: create (raw key shown once), list, show, revoke."""

from __future__ import annotations

from flask import Blueprint

from blueprints.api import page_body, route
from blueprints.ids import parse_uuid
from blueprints.schemas import ApiKeyCreatedOut, ApiKeyCreateIn, ApiKeyOut, ListOut, PageQuery
from sentinel_cp import accounts, projects
from sentinel_cp.accounts import ApiKey, Principal
from sentinel_cp.db import db

bp = Blueprint("api_keys", __name__, url_prefix="/api/v1")
SCOPE = accounts.ACCESS_ADMIN_SCOPE


def _slugs(keys: list[ApiKey]) -> dict[object, str]:
    ids = {k.project_id for k in keys if k.project_id}
    if not ids:
        return {}
    rows = db.session.execute(
        db.select(projects.Project.id, projects.Project.slug).where(projects.Project.id.in_(ids))
    )
    return {row.id: row.slug for row in rows}


def _out(key: ApiKey, slugs: dict[object, str] | None = None) -> dict[str, object]:
    slugs = _slugs([key]) if slugs is None else slugs
    return key.to_dict(slugs.get(key.project_id) if key.project_id else None)


@route(
    bp,
    "/api-keys",
    summary="List API keys",
    scope=SCOPE,
    query=PageQuery,
    response=ListOut[ApiKeyOut],
)
def list_keys(principal: Principal, query: PageQuery) -> dict[str, object]:
    page = accounts.list_api_keys(principal, limit=query.limit, cursor=query.cursor)
    slugs = _slugs(page.items)
    db.session.commit()
    return page_body(page, lambda key: _out(key, slugs))


@route(
    bp,
    "/api-keys",
    "POST",
    summary="Create an API key; the raw key is in this response only",
    scope=SCOPE,
    body=ApiKeyCreateIn,
    response=ApiKeyCreatedOut,
    status=201,
)
def create_key(principal: Principal, body: ApiKeyCreateIn) -> tuple[dict[str, object], int]:
    project_id = None
    if body.project is not None:
        project_id = projects.get_project(body.project, visible_to=principal.project_id).id
    key, raw = accounts.create_api_key(
        principal,
        name=body.name,
        scopes=body.scopes,
        project_id=project_id,
        expires_at=body.expires_at,
    )
    result = {**_out(key), "key": raw}
    db.session.commit()
    return result, 201


@route(bp, "/api-keys/<key_id>", summary="Show an API key", scope=SCOPE, response=ApiKeyOut)
def show_key(principal: Principal, key_id: str) -> dict[str, object]:
    key = accounts.get_api_key(principal, parse_uuid(key_id, "key_id"))
    result = _out(key)
    db.session.commit()
    return result


@route(
    bp,
    "/api-keys/<key_id>/revoke",
    "POST",
    summary="Revoke an API key (idempotent)",
    scope=SCOPE,
    response=ApiKeyOut,
)
def revoke_key(principal: Principal, key_id: str) -> dict[str, object]:
    key = accounts.revoke_api_key(principal, parse_uuid(key_id, "key_id"))
    result = _out(key)
    db.session.commit()
    return result
