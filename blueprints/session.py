"""Login, logout (`/api/v1/session`) and `/api/v1/me`.

One Flask-Login session serves both the API and the console.
"""

from __future__ import annotations

from flask import Blueprint, current_app, session
from flask_login import current_user, login_user, logout_user

from blueprints import auth
from blueprints.api import route
from blueprints.schemas import LoginIn, MeOut, SessionOut, StatusOut
from sentinel_cp import accounts, sessions
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db
from sentinel_cp.errors import Unauthorized
from sentinel_cp.projects import Project

bp = Blueprint("session", __name__, url_prefix="/api/v1")


@route(
    bp,
    "/session",
    "POST",
    summary="Log in with email and password",
    auth_mode="public",
    body=LoginIn,
    response=SessionOut,
    responses={401: "invalid_credentials", 429: "throttled"},
)
def login(body: LoginIn) -> dict[str, str]:
    auth.check_same_origin()
    # Before the login is committed (and audited): it needs Redis, and a login that cannot get
    # a session id must not be recorded as one that succeeded.
    sid = sessions.new_session_id()
    try:
        user = accounts.authenticate(body.email, body.password, address=auth.client_address())
    except Unauthorized:
        db.session.commit()  # keep the `session.login_failed` audit row
        raise
    db.session.commit()
    session.clear()
    session.permanent = True
    session["sid"] = sid
    login_user(user)
    return {"id": str(user.id), "email": user.email, "role": user.role}


@route(
    bp,
    "/session",
    "DELETE",
    summary="Log out (ends this browser's session)",
    auth_mode="public",
    response=StatusOut,
)
def logout() -> dict[str, str]:
    if current_user.is_authenticated:
        auth.check_same_origin()
        sid = session.get("sid")
        if sid:  # end the session first: the audit row must not claim a logout that failed
            lifetime = current_app.permanent_session_lifetime.total_seconds()
            sessions.revoke(sid, ttl_s=int(lifetime))
        accounts.record_logout(current_user._get_current_object(), address=auth.client_address())
        db.session.commit()
    logout_user()
    session.clear()
    return {"status": "ok"}


@route(bp, "/me", summary="The authenticated caller, its role and effective scopes", response=MeOut)
def me(principal: Principal) -> dict[str, object]:
    key = principal.api_key
    key_info = None
    if key is not None:
        project = db.session.get(Project, key.project_id) if key.project_id else None
        key_info = {
            "id": str(key.id),
            "name": key.name,
            "prefix": key.prefix,
            "project": project.slug if project else None,
        }
    db.session.commit()
    return {
        "id": str(principal.user.id),
        "email": principal.user.email,
        "role": principal.user.role,
        "scopes": sorted(principal.scopes),
        "api_key": key_info,
    }
