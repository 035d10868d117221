"""Rollouts for operators: plan (dry run), create (and start), list, show, and the actions
pause, resume, cancel, approve, reject, promote, rollback."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from blueprints.api import route
from blueprints.ids import parse_uuid
from blueprints.projects import visible_project
from blueprints.schemas import (
    FreezeWindowIn,
    FreezeWindowOut,
    ItemsOut,
    ListOut,
    RolloutActionIn,
    RolloutApproveIn,
    RolloutCreateIn,
    RolloutOut,
    RolloutPlanOut,
    RolloutQuery,
    RolloutRejectIn,
    RolloutResumeIn,
    RolloutTemplateIn,
    RolloutTemplateOut,
    StatusOut,
)
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db
from sentinel_cp.rollouts import catalog, engine
from sentinel_cp.rollouts.types import CONFIG_FIELDS

bp = Blueprint("rollouts", __name__, url_prefix="/api/v1/projects/<slug>")
READ, WRITE = catalog.READ_SCOPE, catalog.WRITE_SCOPE


def _request(body: RolloutCreateIn, principal: Principal | None = None) -> dict[str, Any]:
    data = body.model_dump(exclude_none=True)
    selector = data.pop("target_selector", None)
    if body.override_freeze is not None and principal is not None:
        catalog.require_freeze_override(principal.scopes)
    return {
        "bundle_id": data.pop("bundle_id"),
        "target_selector": selector,
        "template": body.template,
        "override_freeze": body.override_freeze,
        "config": {k: v for k, v in data.items() if k in CONFIG_FIELDS},
        "scheduled_at": body.scheduled_at,
        "start": body.start,
        "skip_busy_nodes": body.skip_busy_nodes,
    }


@route(
    bp,
    "/rollouts/plan",
    "POST",
    summary="Dry run: the steps, nodes and conflicts a rollout would have",
    scope=READ,
    body=RolloutCreateIn,
    response=RolloutPlanOut,
    responses={409: "bundle_<status>: the bundle is not compiled"},
)
def plan(principal: Principal, slug: str, body: RolloutCreateIn) -> dict[str, Any]:
    project = visible_project(principal, slug)
    result = engine.plan(project, _request(body)).to_dict()
    db.session.rollback()
    return result


@route(
    bp,
    "/rollouts",
    "POST",
    summary="Create a rollout; it starts at once unless scheduled or created with start=false",
    scope=WRITE,
    body=RolloutCreateIn,
    response=RolloutOut,
    status=201,
    responses={409: "nodes_busy, bundle_revoked, …"},
)
def create(principal: Principal, slug: str, body: RolloutCreateIn) -> tuple[Any, int]:
    project = visible_project(principal, slug)
    rollout = engine.create(
        principal.actor, project, _request(body, principal), user_id=principal.user.id
    )
    db.session.commit()
    return engine.describe(rollout), 201


@route(
    bp,
    "/rollouts",
    summary="List rollouts, newest first (filter: state)",
    scope=READ,
    query=RolloutQuery,
    response=ListOut[RolloutOut],
)
def list_rollouts(principal: Principal, slug: str, query: RolloutQuery) -> dict[str, Any]:
    project = visible_project(principal, slug)
    page = engine.list_rollouts(
        project.id, state=query.state, limit=query.limit, cursor=query.cursor
    )
    result = {
        "items": [engine.describe(r) for r in page.items],
        "next_cursor": page.next_cursor,
        "total": page.total,
    }
    db.session.commit()
    return result


def _rollout(principal: Principal, slug: str, rollout_id: str) -> Any:
    project = visible_project(principal, slug)
    return engine.get_rollout(project.id, parse_uuid(rollout_id, "rollout_id"))


@route(
    bp,
    "/rollouts/<rollout_id>",
    summary="One rollout with its steps, per-node states, progress and gate verdicts",
    scope=READ,
    response=RolloutOut,
)
def show(principal: Principal, slug: str, rollout_id: str) -> dict[str, Any]:
    rollout = _rollout(principal, slug, rollout_id)
    result = engine.describe(rollout)
    db.session.commit()
    return result


@route(
    bp,
    "/rollouts/<rollout_id>/pause",
    "POST",
    summary="Pause a running rollout",
    scope=WRITE,
    body=RolloutActionIn,
    response=RolloutOut,
    responses={409: "rollout_<state>: only a running rollout can be paused"},
)
def pause(principal: Principal, slug: str, rollout_id: str, body: RolloutActionIn) -> Any:
    rollout = _rollout(principal, slug, rollout_id)
    engine.pause(principal.actor, rollout.id, reason=body.reason)
    db.session.commit()
    return engine.describe(rollout)


@route(
    bp,
    "/rollouts/<rollout_id>/resume",
    "POST",
    summary="Resume a paused rollout (skip_unavailable: go on without offline nodes)",
    scope=WRITE,
    body=RolloutResumeIn,
    response=RolloutOut,
    responses={409: "rollout_<state>, approval_<state>, awaiting_promotion"},
)
def resume(principal: Principal, slug: str, rollout_id: str, body: RolloutResumeIn) -> Any:
    rollout = _rollout(principal, slug, rollout_id)
    engine.resume(
        principal.actor, rollout.id, reason=body.reason, skip_unavailable=body.skip_unavailable
    )
    db.session.commit()
    return engine.describe(rollout)


@route(
    bp,
    "/rollouts/<rollout_id>/cancel",
    "POST",
    summary="Stop a rollout for good (nodes stay where they are)",
    scope=WRITE,
    body=RolloutActionIn,
    response=RolloutOut,
    responses={409: "rollout_<state>: the rollout already ended"},
)
def cancel(principal: Principal, slug: str, rollout_id: str, body: RolloutActionIn) -> Any:
    rollout = _rollout(principal, slug, rollout_id)
    engine.cancel(principal.actor, rollout.id, reason=body.reason)
    db.session.commit()
    return engine.describe(rollout)


@route(
    bp,
    "/rollouts/<rollout_id>/approve",
    "POST",
    summary="Approve a rollout waiting for approval (not its creator; once per person)",
    scope=WRITE,
    body=RolloutApproveIn,
    response=RolloutOut,
    responses={409: "rollout_<state>, approval_<state>, self_approval, already_approved"},
)
def approve(principal: Principal, slug: str, rollout_id: str, body: RolloutApproveIn) -> Any:
    rollout = _rollout(principal, slug, rollout_id)
    engine.approve(principal.actor, rollout.id, user_id=principal.user.id, comment=body.comment)
    db.session.commit()
    return engine.describe(rollout)


@route(
    bp,
    "/rollouts/<rollout_id>/reject",
    "POST",
    summary="Reject a rollout waiting for approval (a comment is required)",
    scope=WRITE,
    body=RolloutRejectIn,
    response=RolloutOut,
    responses={409: "rollout_<state>, approval_<state>"},
)
def reject(principal: Principal, slug: str, rollout_id: str, body: RolloutRejectIn) -> Any:
    rollout = _rollout(principal, slug, rollout_id)
    engine.reject(principal.actor, rollout.id, user_id=principal.user.id, comment=body.comment)
    db.session.commit()
    return engine.describe(rollout)


@route(
    bp,
    "/rollouts/<rollout_id>/promote",
    "POST",
    summary="Blue-green: promote after the standby set passed its gates",
    scope=WRITE,
    body=RolloutActionIn,
    response=RolloutOut,
    responses={409: "rollout_<state>, not_awaiting_promotion"},
)
def promote(principal: Principal, slug: str, rollout_id: str, body: RolloutActionIn) -> Any:
    rollout = _rollout(principal, slug, rollout_id)
    engine.promote(principal.actor, rollout.id, reason=body.reason)
    db.session.commit()
    return engine.describe(rollout)


@route(
    bp,
    "/rollouts/<rollout_id>/rollback",
    "POST",
    summary="Send every node this rollout moved back to its previous bundle, all at once",
    scope=WRITE,
    body=RolloutActionIn,
    response=RolloutOut,
    responses={409: "rollout_<state>, rollout_is_rollback, nodes_busy"},
)
def rollback(principal: Principal, slug: str, rollout_id: str, body: RolloutActionIn) -> Any:
    rollout = _rollout(principal, slug, rollout_id)
    engine.rollback(principal.actor, rollout.id, reason=body.reason)
    db.session.commit()
    return engine.describe(rollout)


# --- freeze windows and templates -----------------------------------------------------------


@route(
    bp,
    "/freeze-windows",
    summary="The project's freeze windows, each with whether it is active now",
    scope=READ,
    response=ItemsOut[FreezeWindowOut],
)
def list_freeze_windows(principal: Principal, slug: str) -> dict[str, Any]:
    project = visible_project(principal, slug)
    items = [catalog.freeze_window_dict(row) for row in catalog.list_freeze_windows(project.id)]
    db.session.commit()
    return {"items": items}


@route(
    bp,
    "/freeze-windows",
    "POST",
    summary="Add a freeze window (one-off, or weekly in a time zone, DST-correct)",
    scope=catalog.FREEZE_WINDOWS_SCOPE,
    body=FreezeWindowIn,
    response=FreezeWindowOut,
    status=201,
)
def add_freeze_window(principal: Principal, slug: str, body: FreezeWindowIn) -> tuple[Any, int]:
    project = visible_project(principal, slug)
    definition = body.model_dump(exclude_none=True, mode="json")
    row = catalog.add_freeze_window(principal.actor, project.id, definition)
    db.session.commit()
    return catalog.freeze_window_dict(row), 201


@route(
    bp,
    "/freeze-windows/<window_id>",
    "DELETE",
    summary="Remove a freeze window",
    scope=catalog.FREEZE_WINDOWS_SCOPE,
    response=StatusOut,
)
def delete_freeze_window(principal: Principal, slug: str, window_id: str) -> dict[str, str]:
    project = visible_project(principal, slug)
    catalog.delete_freeze_window(principal.actor, project.id, parse_uuid(window_id, "window_id"))
    db.session.commit()
    return {"status": "deleted"}


@route(
    bp,
    "/rollout-templates",
    summary="Stored rollout settings, by name",
    scope=READ,
    response=ItemsOut[RolloutTemplateOut],
)
def list_templates(principal: Principal, slug: str) -> dict[str, Any]:
    project = visible_project(principal, slug)
    items = [catalog.template_dict(row) for row in catalog.list_templates(project.id)]
    db.session.commit()
    return {"items": items}


@route(
    bp,
    "/rollout-templates",
    "POST",
    summary="Store rollout settings under a name (POST /rollouts with `template` uses them)",
    scope=WRITE,
    body=RolloutTemplateIn,
    response=RolloutTemplateOut,
    status=201,
    responses={409: "template_exists"},
)
def add_template(principal: Principal, slug: str, body: RolloutTemplateIn) -> tuple[Any, int]:
    project = visible_project(principal, slug)
    data = body.model_dump(exclude_none=True)
    selector = data.pop("target_selector", None)
    name = data.pop("name")
    row = catalog.add_template(
        principal.actor, project.id, name=name, target_selector=selector or {}, config=data
    )
    db.session.commit()
    return catalog.template_dict(row), 201
