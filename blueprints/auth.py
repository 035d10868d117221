"""Who is calling: an API key (`Authorization: Bearer sk_…`) or the operator's session cookie.

A Bearer header, when present, is the only credential checked. A cookie-authenticated unsafe
request must be JSON and, when it names an `Origin`, come from our own origin (CSRF defence).
Every authenticated call also counts against a Redis-backed rate limit per key or per address.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, g, request, session
from flask_login import current_user

from sentinel_cp import accounts, sessions, throttle
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db
from sentinel_cp.errors import Forbidden, RateLimited, Unauthorized

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_LIMIT = throttle.Limit("api", limit=1200, window_s=60)


def client_address() -> str:
    return request.remote_addr or "unknown"


def check_same_origin() -> None:
    """Refuse a cookie-carrying unsafe request that is not JSON or comes from another origin."""
    if request.method not in UNSAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin:
        netloc = urlsplit(origin).netloc
        allowed = {request.host, current_app.config["PUBLIC_HOST"]}
        if netloc not in allowed:
            raise Forbidden("Cross-origin request refused", code="csrf_origin")
    # Browsers send cross-site forms as form/text/multipart, never JSON without a preflight.
    if request.mimetype != "application/json":
        raise Forbidden(
            "Cookie-authenticated requests must be JSON (Content-Type: application/json)",
            code="csrf_content_type",
        )


def require_principal() -> Principal:
    """Authenticate the request once (cached on `g`) or raise Unauthorized."""
    cached = g.get("principal")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "Authorization header must be 'Bearer <api key>'", code="invalid_authorization"
            )
        principal = accounts.authenticate_api_key(token.strip())
        if db.session.dirty:
            db.session.commit()  # `last_used_at`, kept even if the request later fails
        subject = f"key:{principal.api_key.id}" if principal.api_key else client_address()
    elif current_user.is_authenticated and not sessions.is_revoked(session.get("sid")):
        check_same_origin()
        principal = accounts.principal_for_user(current_user._get_current_object())
        subject = f"user:{principal.user.id}"
    else:
        raise Unauthorized("Authentication required", code="unauthenticated")
    try:
        remaining, reset = throttle.consume(API_LIMIT, subject)
    except RateLimited as exc:
        g.rate_limit = (API_LIMIT.limit, 0, exc.retry_after)  # the 429 carries them too
        raise
    g.rate_limit = (API_LIMIT.limit, remaining, reset)
    g.principal = principal
    return principal
