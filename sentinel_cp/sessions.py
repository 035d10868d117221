"""Server-side logout for cookie sessions.

Flask's session cookie is signed, not stored, so "log out" on its own only asks the browser to
forget it. Each login gets a random session id; logging out records that id as revoked in
Redis until the cookie would have expired anyway, and both the API and the console refuse a
revoked id. (Disabling a user or changing a password ends all their sessions through
`User.session_epoch` instead.)
"""

from __future__ import annotations

import secrets

import redis

from sentinel_cp import broker
from sentinel_cp.errors import Unavailable


def new_session_id() -> str:
    return secrets.token_urlsafe(18)


def _key(session_id: str) -> str:
    return f"sentinel:session:revoked:{session_id}"


def revoke(session_id: str, *, ttl_s: int) -> None:
    try:
        broker.connection().set(_key(session_id), "1", ex=max(ttl_s, 1))
    except redis.RedisError:
        raise Unavailable("Redis is unreachable; try again shortly") from None


def is_revoked(session_id: str | None) -> bool:
    """A session without an id (or with a revoked one) is not valid."""
    if not session_id:
        return True
    try:
        return bool(broker.connection().exists(_key(session_id)))
    except redis.RedisError:
        raise Unavailable("Redis is unreachable; try again shortly") from None
