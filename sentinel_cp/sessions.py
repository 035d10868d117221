"""Server-side logout for cookie sessions.

Flask's session cookie is signed, not stored, so "log out" on its own only asks the browser to
forget it. Each login gets a random session id; logging out records that id as revoked in
Redis until the cookie would have expired anyway, and both the API and the console refuse a
revoked id. (Disabling a user or changing a password ends all their sessions through
`User.session_epoch` instead.)

Revocations live only in Redis, so a Redis that comes back empty (restarted without
persistence, flushed, replaced) would bring every logged-out session back. Each session id
therefore starts with the Redis generation it was issued under — a random value kept in Redis
next to the revocations — and a session of another generation is refused: losing Redis's
data ends every session (everyone logs in again) instead of undoing logouts.
"""

from __future__ import annotations

import secrets

import redis

from sentinel_cp import broker
from sentinel_cp.errors import Unavailable

GENERATION_KEY = "sentinel:session:generation"


def _unavailable() -> Unavailable:
    return Unavailable("Redis is unreachable; try again shortly")


def new_session_id() -> str:
    """`<generation>.<random>`; starts a generation when Redis has none."""
    try:
        connection = broker.connection()
        connection.set(GENERATION_KEY, secrets.token_urlsafe(9), nx=True)
        generation = connection.get(GENERATION_KEY)
    except redis.RedisError:
        raise _unavailable() from None
    if generation is None:  # deleted between the two calls: this login's session is refused
        generation = b"-"
    return f"{_text(generation)}.{secrets.token_urlsafe(18)}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(session_id: str) -> str:
    return f"sentinel:session:revoked:{session_id}"


def revoke(session_id: str, *, ttl_s: int) -> None:
    try:
        broker.connection().set(_key(session_id), "1", ex=max(ttl_s, 1))
    except redis.RedisError:
        raise _unavailable() from None


def is_revoked(session_id: str | None) -> bool:
    """A session without an id, with a revoked one, or of another Redis generation (Redis lost
    its data since the login) is not valid. One round trip."""
    if not session_id:
        return True
    generation, dot, _ = session_id.partition(".")
    if not dot:
        return True
    try:
        pipe = broker.connection().pipeline(transaction=False)
        pipe.exists(_key(session_id))
        pipe.get(GENERATION_KEY)
        revoked, current = pipe.execute()
    except redis.RedisError:
        raise _unavailable() from None
    return bool(revoked) or current is None or _text(current) != generation
