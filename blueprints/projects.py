"""Projects: list, create, show, update settings, delete, rotate the registration token."""

from __future__ import annotations

from flask import Blueprint

from blueprints.api import page_body, route
from blueprints.schemas import (
    ListOut,
    PageQuery,
    ProjectCreateIn,
    ProjectOut,
    ProjectPatchIn,
    StatusOut,
    TokenOut,
)
from sentinel_cp import projects
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db

bp = Blueprint("projects", __name__, url_prefix="/api/v1")
ADMIN = projects.ADMIN_SCOPE


def visible_project(principal: Principal, slug: str) -> projects.Project:
    """The project named in the path, as this caller may see it (a bound key: only its own)."""
    return projects.get_project(slug, visible_to=principal.project_id)


@route(
    bp,
    "/projects",
    summary="List projects visible to the caller",
    query=PageQuery,
    response=ListOut[ProjectOut],
)
def list_projects(principal: Principal, query: PageQuery) -> dict[str, object]:
    page = projects.list_projects(
        visible_to=principal.project_id, limit=query.limit, cursor=query.cursor
    )
    db.session.commit()
    return page_body(page, lambda item: item.to_dict())


@route(
    bp,
    "/projects",
    "POST",
    summary="Create a project",
    scope=ADMIN,
    body=ProjectCreateIn,
    response=ProjectOut,
    status=201,
    responses={409: "slug_taken"},
)
def create_project(principal: Principal, body: ProjectCreateIn) -> tuple[dict[str, object], int]:
    principal.require_unbound("create projects")
    project = projects.create_project(
        principal.actor,
        slug=body.slug,
        name=body.name,
        settings=body.settings.given() if body.settings else None,
    )
    db.session.commit()
    return project.to_dict(), 201


@route(bp, "/projects/<slug>", summary="Show a project", response=ProjectOut)
def show_project(principal: Principal, slug: str) -> dict[str, object]:
    project = visible_project(principal, slug)
    db.session.commit()
    return project.to_dict()


@route(
    bp,
    "/projects/<slug>",
    "PATCH",
    summary="Rename a project or merge settings",
    scope=ADMIN,
    body=ProjectPatchIn,
    response=ProjectOut,
)
def update_project(principal: Principal, slug: str, body: ProjectPatchIn) -> dict[str, object]:
    project = visible_project(principal, slug)
    projects.update_project(
        principal.actor,
        project,
        name=body.name,
        settings=body.settings.given() if body.settings else None,
    )
    db.session.commit()
    return project.to_dict()


@route(
    bp, "/projects/<slug>", "DELETE", summary="Delete a project", scope=ADMIN, response=StatusOut
)
def delete_project(principal: Principal, slug: str) -> dict[str, str]:
    project = visible_project(principal, slug)
    projects.delete_project(principal.actor, project)
    db.session.commit()
    return {"status": "deleted"}


@route(
    bp,
    "/projects/<slug>/registration-token",
    "POST",
    summary="Rotate the node registration token; the token is in this response only",
    scope=ADMIN,
    response=TokenOut,
    status=201,
)
def rotate_registration_token(principal: Principal, slug: str) -> tuple[dict[str, str], int]:
    project = visible_project(principal, slug)
    token = projects.rotate_registration_token(principal.actor, project)
    db.session.commit()
    return {"token": token}, 201
