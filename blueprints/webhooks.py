"""GitOps over HTTP: the GitHub webhook and each project's GitOps configuration.

`POST /api/v1/webhooks/github` is public: GitHub authenticates by signing the raw body with the
project's secret. It cannot go through `route()`, which parses JSON bodies itself, because the
signature covers the exact bytes received; it is declared in the same `REGISTRY`, so the
OpenAPI document still lists it.

The fetch client comes from `app.extensions["sentinel_gitops_fetcher"]`, a factory
`(api_base_url, access_token) -> TreeFetcher` set when this blueprint is registered; tests
replace it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState
from pydantic import Field

from blueprints.api import REGISTRY, PayloadTooLarge, RouteSpec, route
from blueprints.errors import error_response
from blueprints.projects import visible_project
from blueprints.schemas import Body, Out, StatusOut
from sentinel_cp import gitops
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db

bp = Blueprint("gitops", __name__, url_prefix="/api/v1")
ADMIN = "projects:admin"
FETCHER_EXTENSION = "sentinel_gitops_fetcher"


@bp.record_once
def _install_fetcher(state: BlueprintSetupState) -> None:
    state.app.extensions.setdefault(FETCHER_EXTENSION, gitops.github_fetcher)


# --- schemas ------------------------------------------------------------------------------------


class GitOpsConfigIn(Body):
    """PUT replaces the configuration. `secret` and `access_token` are write-only: omit them to
    keep the stored values (`secret` is required the first time); `access_token: null`
    removes the token."""

    repository: str = Field(min_length=3, max_length=140, description="owner/name")
    branch: str = Field(gitops.DEFAULT_BRANCH, min_length=1, max_length=255)
    path: str = Field(
        "", max_length=255, description="Directory holding sentinel.kdl; empty is the root"
    )
    secret: Annotated[str, Field(min_length=gitops.MIN_SECRET_LENGTH, max_length=255)] | None = None
    api_base_url: Annotated[str, Field(max_length=255)] | None = Field(
        None, description=f"Default {gitops.DEFAULT_API_BASE_URL}"
    )
    access_token: Annotated[str, Field(min_length=1, max_length=255)] | None = None


class GitOpsConfigOut(Out):
    project: str
    repository: str
    branch: str
    path: str
    api_base_url: str
    secret_set: bool
    access_token_set: bool
    webhook_path: str
    created_at: datetime
    updated_at: datetime


class WebhookBundleOut(Out):
    id: str
    version: str
    status: str
    existing: bool


class WebhookResultOut(Out):
    project: str
    status: Literal["accepted", "ignored", "pong"]
    reason: str | None
    bundle: WebhookBundleOut | None


class WebhookOut(Out):
    status: Literal["accepted", "ignored", "pong"]
    event: str
    delivery: str | None
    reason: str | None
    results: list[WebhookResultOut]


# --- configuration ------------------------------------------------------------------------------


@route(
    bp,
    "/projects/<slug>/gitops",
    summary="The project's GitOps configuration (secrets are never shown, only `secret_set`)",
    response=GitOpsConfigOut,
    responses={404: "gitops_not_configured"},
)
def show_config(principal: Principal, slug: str) -> dict[str, Any]:
    project = visible_project(principal, slug)
    config = gitops.get_config(project.id)
    db.session.commit()
    return config.to_dict(project.slug)


@route(
    bp,
    "/projects/<slug>/gitops",
    "PUT",
    summary="Create (201) or replace (200) the project's GitOps configuration",
    scope=ADMIN,
    body=GitOpsConfigIn,
    response=GitOpsConfigOut,
    responses={201: "Created: the project had no GitOps configuration"},
)
def put_config(principal: Principal, slug: str, body: GitOpsConfigIn) -> tuple[dict[str, Any], int]:
    project = visible_project(principal, slug)
    config, created = gitops.configure(
        principal.actor,
        project,
        repository=body.repository,
        branch=body.branch,
        path=body.path,
        secret=gitops.KEEP if body.secret is None else body.secret,
        api_base_url=body.api_base_url,
        access_token=(
            body.access_token if "access_token" in body.model_fields_set else gitops.KEEP
        ),
    )
    db.session.commit()
    return config.to_dict(project.slug), 201 if created else 200


@route(
    bp,
    "/projects/<slug>/gitops",
    "DELETE",
    summary="Stop following the repository",
    scope=ADMIN,
    response=StatusOut,
    responses={404: "gitops_not_configured"},
)
def delete_config(principal: Principal, slug: str) -> dict[str, str]:
    project = visible_project(principal, slug)
    gitops.remove_config(principal.actor, project)
    db.session.commit()
    return {"status": "deleted"}


# --- the webhook --------------------------------------------------------------------------------


def github_webhook() -> tuple[Response, int] | Response:
    """Verify, then answer a ping, ignore what does not concern a project, or build bundles."""
    if (request.content_length or 0) > gitops.MAX_WEBHOOK_BODY:
        raise PayloadTooLarge(gitops.MAX_WEBHOOK_BODY)
    request.max_content_length = gitops.MAX_WEBHOOK_BODY
    body = request.get_data(cache=True)
    if len(body) > gitops.MAX_WEBHOOK_BODY:
        raise PayloadTooLarge(gitops.MAX_WEBHOOK_BODY)
    signature = request.headers.get("X-Hub-Signature-256")
    if not signature:
        # Refused before the body is even parsed: nothing unsigned gets any further.
        return error_response(401, "X-Hub-Signature-256 header is missing", "invalid_signature")
    payload = gitops.decode_payload(body, request.mimetype or "")
    targets = gitops.signed_targets(gitops.repository_of(payload), body, signature)
    db.session.commit()  # no transaction stays open while GitHub is asked
    event = request.headers.get("X-GitHub-Event", "")
    delivery = gitops.delivery_id(request.headers.get("X-GitHub-Delivery"))
    if event == "ping":
        outcomes = [gitops.Outcome(t.project_slug, "pong") for t in targets]
        return _answer("pong", event, delivery, None, outcomes), 200
    if event != "push":
        reason = f"event {event[:64]!r} is not handled" if event else "no X-GitHub-Event header"
        outcomes = [gitops.Outcome(t.project_slug, "ignored", reason) for t in targets]
        return _answer("ignored", event, delivery, reason, outcomes), 200
    push = gitops.parse_push(payload)
    try:
        outcomes = gitops.handle_push(
            push,
            targets,
            fetcher_factory=current_app.extensions[FETCHER_EXTENSION],
            delivery=delivery,
        )
    except gitops.FetchFailed as exc:
        db.session.rollback()
        return error_response(502, exc.message, exc.code, **exc.details)
    db.session.commit()
    if any(outcome.status == "accepted" for outcome in outcomes):
        return _answer("accepted", event, delivery, None, outcomes), 202
    reasons = sorted({outcome.reason or "" for outcome in outcomes})
    reason = reasons[0] if len(reasons) == 1 else "; ".join(reasons)
    return _answer("ignored", event, delivery, reason, outcomes), 200


def _answer(
    status: str,
    event: str,
    delivery: str | None,
    reason: str | None,
    outcomes: list[gitops.Outcome],
) -> Response:
    return jsonify(
        {
            "status": status,
            "event": event[:64],
            "delivery": delivery,
            "reason": reason,
            "results": [outcome.to_dict() for outcome in outcomes],
        }
    )


bp.add_url_rule("/webhooks/github", "github_webhook", github_webhook, methods=["POST"])
REGISTRY[f"{bp.name}.github_webhook"] = RouteSpec(
    rule=gitops.WEBHOOK_PATH,
    method="POST",
    summary="GitHub webhook (HMAC-SHA256 `X-Hub-Signature-256` over the raw body): `ping` "
    "answers 200 pong; a push to the configured branch touching a `.kdl` file under the "
    "configured path compiles bundle `git-<sha8>` (202); anything else is 200 ignored",
    auth="public",
    scope=None,
    body=None,
    query=None,
    response=WebhookOut,
    status=202,
    responses={
        200: "`ping` answered (pong), or the event ignored (with the reason)",
        401: "Signature missing or matching no project (invalid_signature)",
        409: "version_taken",
        502: "Fetching the repository from GitHub failed (fetch_failed)",
    },
    tags=(bp.name,),
    max_body=gitops.MAX_WEBHOOK_BODY,
)
