"""Notification endpoints for operators: register, list, show, change, delete, send a test, and
read each endpoint's deliveries with every attempt. Admins manage; readers may look (the secret
is shown only in the creation response)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from flask import Blueprint
from pydantic import Field

from blueprints.api import page_body, route
from blueprints.ids import parse_uuid
from blueprints.projects import visible_project
from blueprints.schemas import Body, ListOut, Out, PageQuery, StatusOut
from sentinel_cp import notifications
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db

bp = Blueprint("notifications", __name__, url_prefix="/api/v1/projects/<slug>")
READ, ADMIN = "rollouts:read", "projects:admin"
MAX_BODY = 16 * 1024

EventName = Literal[notifications.EVENTS]  # type: ignore[valid-type]
DeliveryEvent = Literal[(*notifications.EVENTS, notifications.PING)]  # type: ignore[valid-type]
DeliveryState = Literal[notifications.STATES]  # type: ignore[valid-type]
Name = Annotated[str, Field(min_length=1, max_length=notifications.MAX_NAME)]
Url = Annotated[
    str,
    Field(min_length=1, max_length=notifications.MAX_URL, description="http:// or https://"),
]
Secret = Annotated[
    str,
    Field(min_length=notifications.MIN_SECRET_LENGTH, max_length=notifications.MAX_SECRET_LENGTH),
]
Events = Annotated[list[EventName], Field(min_length=1, max_length=len(notifications.EVENTS))]


class NotificationEndpointCreateIn(Body):
    name: Name
    url: Url
    secret: Secret | None = Field(
        None, description="Generated when omitted; returned only in this response"
    )
    events: Events | None = Field(None, description="Default: every event")
    enabled: bool = True


class NotificationEndpointPatchIn(Body):
    """Fields given replace the stored ones; `secret` is write-only."""

    name: Name | None = None
    url: Url | None = None
    secret: Secret | None = None
    events: Events | None = None
    enabled: bool | None = None


class NotificationEndpointOut(Out):
    id: str
    name: str
    url: str
    events: list[EventName]
    enabled: bool
    secret_set: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class NotificationEndpointCreatedOut(NotificationEndpointOut):
    secret: str = Field(description="The signing secret, shown only in this response")


class NotificationAttemptOut(Out):
    number: int
    at: datetime | None
    status_code: int | None
    error: str | None
    duration_ms: int | None


class NotificationDeliveryOut(Out):
    id: str
    endpoint_id: str
    event: DeliveryEvent
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    payload: dict[str, Any] | None = Field(
        description="null for drift events unless the caller may read drift (nodes:read)"
    )
    attempt_log: list[NotificationAttemptOut]


class NotificationDeliveryQuery(PageQuery):
    state: DeliveryState | None = None
    event: DeliveryEvent | None = None


def _endpoint(
    principal: Principal, slug: str, endpoint_id: str
) -> notifications.NotificationEndpoint:
    project = visible_project(principal, slug)
    return notifications.get_endpoint(project.id, parse_uuid(endpoint_id, "endpoint_id"))


@route(
    bp,
    "/notification-endpoints",
    summary="List the project's notification endpoints, by name",
    scope=READ,
    query=PageQuery,
    response=ListOut[NotificationEndpointOut],
)
def list_endpoints(principal: Principal, slug: str, query: PageQuery) -> dict[str, Any]:
    project = visible_project(principal, slug)
    page = notifications.list_endpoints(project.id, limit=query.limit, cursor=query.cursor)
    db.session.commit()
    return page_body(page, lambda endpoint: endpoint.to_dict())


@route(
    bp,
    "/notification-endpoints",
    "POST",
    summary="Register a webhook endpoint (the secret is returned once, in this response)",
    scope=ADMIN,
    body=NotificationEndpointCreateIn,
    response=NotificationEndpointCreatedOut,
    status=201,
    max_body=MAX_BODY,
    responses={409: "notification_endpoint_exists, too_many_notification_endpoints"},
)
def create_endpoint(
    principal: Principal, slug: str, body: NotificationEndpointCreateIn
) -> tuple[Any, int]:
    project = visible_project(principal, slug)
    endpoint, secret = notifications.create_endpoint(
        principal.actor,
        project,
        name=body.name,
        url=body.url,
        secret=body.secret,
        events=body.events,
        enabled=body.enabled,
    )
    db.session.commit()
    return {**endpoint.to_dict(), "secret": secret}, 201


@route(
    bp,
    "/notification-endpoints/<endpoint_id>",
    summary="Show a notification endpoint (never its secret)",
    scope=READ,
    response=NotificationEndpointOut,
)
def show_endpoint(principal: Principal, slug: str, endpoint_id: str) -> dict[str, Any]:
    endpoint = _endpoint(principal, slug, endpoint_id)
    db.session.commit()
    return endpoint.to_dict()


@route(
    bp,
    "/notification-endpoints/<endpoint_id>",
    "PATCH",
    summary="Change a notification endpoint's name, URL, secret, events or enabled flag",
    scope=ADMIN,
    body=NotificationEndpointPatchIn,
    response=NotificationEndpointOut,
    max_body=MAX_BODY,
    responses={409: "notification_endpoint_exists"},
)
def update_endpoint(
    principal: Principal, slug: str, endpoint_id: str, body: NotificationEndpointPatchIn
) -> dict[str, Any]:
    endpoint = notifications.update_endpoint(
        principal.actor,
        _endpoint(principal, slug, endpoint_id),
        name=body.name,
        url=body.url,
        secret=body.secret,
        events=body.events,
        enabled=body.enabled,
    )
    db.session.commit()
    return endpoint.to_dict()


@route(
    bp,
    "/notification-endpoints/<endpoint_id>",
    "DELETE",
    summary="Delete a notification endpoint and its deliveries",
    scope=ADMIN,
    response=StatusOut,
)
def delete_endpoint(principal: Principal, slug: str, endpoint_id: str) -> dict[str, str]:
    notifications.delete_endpoint(principal.actor, _endpoint(principal, slug, endpoint_id))
    db.session.commit()
    return {"status": "deleted"}


@route(
    bp,
    "/notification-endpoints/<endpoint_id>/deliveries",
    summary="An endpoint's deliveries, newest first, with their attempts (filters: state, event)",
    scope=READ,
    query=NotificationDeliveryQuery,
    response=ListOut[NotificationDeliveryOut],
)
def list_deliveries(
    principal: Principal, slug: str, endpoint_id: str, query: NotificationDeliveryQuery
) -> dict[str, Any]:
    page = notifications.list_deliveries(
        _endpoint(principal, slug, endpoint_id),
        state=query.state,
        event=query.event,
        limit=query.limit,
        cursor=query.cursor,
    )
    db.session.commit()
    return page_body(
        page,
        lambda delivery: delivery.to_dict(
            with_payload=delivery.payload_visible_to(principal.scopes)
        ),
    )


@route(
    bp,
    "/notification-endpoints/<endpoint_id>/test",
    "POST",
    summary="Queue a signed `ping` delivery to the endpoint (409 when it is disabled)",
    scope=ADMIN,
    response=NotificationDeliveryOut,
    status=202,
    responses={409: "notification_endpoint_disabled"},
)
def send_test(principal: Principal, slug: str, endpoint_id: str) -> tuple[Any, int]:
    delivery = notifications.send_test(principal.actor, _endpoint(principal, slug, endpoint_id))
    db.session.commit()
    return delivery.to_dict(), 202
