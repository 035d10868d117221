"""Console authentication: the operator behind the Flask-Login session cookie.

The cookie is verified with Flask's own signing serializer and lifetime, then the user is
loaded with the same rule as the API (`accounts.load_session_user`: unknown, disabled or
logged-out-everywhere users are rejected). Pages check on load; the frame re-checks on a
timer because NiceGUI's websocket is not re-authenticated on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature
from starlette.requests import Request

from console.context import call, flask_app
from sentinel_cp import accounts, sessions
from sentinel_cp.errors import Unauthorized


@dataclass(frozen=True)
class Operator:
    id: str
    email: str
    role: str
    scopes: frozenset[str]

    def can(self, scope: str) -> bool:
        return scope in self.scopes


def _session_ids(cookie: str | None) -> tuple[str, str] | None:
    """The Flask-Login user id and our session id from a valid, unexpired cookie."""
    if not cookie:
        return None
    app = flask_app()
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    if serializer is None:
        return None
    max_age = int(app.permanent_session_lifetime.total_seconds())
    try:
        data = serializer.loads(cookie, max_age=max_age)
    except BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    user_id, sid = data.get("_user_id"), data.get("sid")
    if not isinstance(user_id, str) or not isinstance(sid, str):
        return None
    return user_id, sid


def _load(ids: tuple[str, str]) -> Operator | None:
    user_id, sid = ids
    if sessions.is_revoked(sid):
        return None
    user = accounts.load_session_user(user_id)
    if user is None:
        return None
    return Operator(str(user.id), user.email, user.role, accounts.ROLE_SCOPES[user.role])


async def operator_from_cookie(cookie: str | None) -> Operator | None:
    ids = _session_ids(cookie)
    if ids is None:
        return None
    return await call(_load, ids)


async def current_operator(request: Request) -> Operator | None:
    cookie_name = flask_app().config["SESSION_COOKIE_NAME"]
    return await operator_from_cookie(request.cookies.get(cookie_name))


def session_cookie(request: Request) -> str | None:
    """The Flask-Login session cookie the page was opened with."""
    return request.cookies.get(flask_app().config["SESSION_COOKIE_NAME"])


def acting_principal(cookie: str | None) -> accounts.Principal:
    """The principal a console mutation acts as, checked again at the moment it acts.

    Call it inside `call(...)`, in the same transaction as the domain function: a user demoted,
    disabled or logged out since the page loaded is refused here, whatever the page shows.
    Check scopes with `principal.require(...)`, exactly as the API does.
    """
    ids = _session_ids(cookie)
    user = None
    if ids is not None and not sessions.is_revoked(ids[1]):
        user = accounts.load_session_user(ids[0])
    if user is None:
        raise Unauthorized("Your session has ended; please log in again", code="unauthenticated")
    return accounts.principal_for_user(user)
