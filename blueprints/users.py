"""Users (admin only): list, create, change role, disable, reset password."""

from __future__ import annotations

import uuid

from flask import Blueprint

from blueprints.api import page_body, route
from blueprints.ids import parse_uuid
from blueprints.schemas import ListOut, PageQuery, UserCreateIn, UserOut, UserPatchIn
from sentinel_cp import accounts
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db

bp = Blueprint("users", __name__, url_prefix="/api/v1")
SCOPE = accounts.ACCESS_ADMIN_SCOPE


@route(bp, "/users", summary="List users", scope=SCOPE, query=PageQuery, response=ListOut[UserOut])
def list_users(principal: Principal, query: PageQuery) -> dict[str, object]:
    accounts.require_user_admin(principal)
    page = accounts.list_users(limit=query.limit, cursor=query.cursor)
    db.session.commit()
    return page_body(page, lambda item: item.to_dict())


@route(
    bp,
    "/users",
    "POST",
    summary="Create a user",
    scope=SCOPE,
    body=UserCreateIn,
    response=UserOut,
    status=201,
    responses={409: "email_taken"},
)
def create_user(principal: Principal, body: UserCreateIn) -> tuple[dict[str, object], int]:
    accounts.require_user_admin(principal)
    user = accounts.create_user(
        principal.actor, email=body.email, password=body.password, role=body.role
    )
    db.session.commit()
    return user.to_dict(), 201


@route(bp, "/users/<user_id>", summary="Show a user", scope=SCOPE, response=UserOut)
def show_user(principal: Principal, user_id: str) -> dict[str, object]:
    accounts.require_user_admin(principal)
    return accounts.get_user(parse_uuid(user_id, "user_id")).to_dict()


@route(
    bp,
    "/users/<user_id>",
    "PATCH",
    summary="Change role, disable, or set a new password",
    scope=SCOPE,
    body=UserPatchIn,
    response=UserOut,
    responses={409: "last_admin"},
)
def update_user(principal: Principal, user_id: str, body: UserPatchIn) -> dict[str, object]:
    accounts.require_user_admin(principal)
    target: uuid.UUID = parse_uuid(user_id, "user_id")
    user = accounts.update_user(
        principal.actor, target, role=body.role, disabled=body.disabled, password=body.password
    )
    db.session.commit()
    return user.to_dict()
