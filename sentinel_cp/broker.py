"""The Redis connection used for jobs, pub/sub, throttles and rate limits.

Configured once per process from `REDIS_URL` (or the embedded stand-in's address). Every
process talks to the same Redis, so nothing here is process-local state.
"""

from __future__ import annotations

import redis

from sentinel_cp.errors import Unavailable

_connections: dict[str, redis.Redis] = {}
_current_url: str | None = None


def configure(url: str) -> None:
    global _current_url
    _current_url = url


def is_configured() -> bool:
    return _current_url is not None


def current_url() -> str:
    if _current_url is None:
        raise RuntimeError("broker.configure() was not called")
    return _current_url


def connection() -> redis.Redis:
    """A pooled client for the configured URL (one pool per URL per process)."""
    url = current_url()
    client = _connections.get(url)
    if client is None:
        client = redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )
        _connections[url] = client
    return client


def ping() -> None:
    """Raise Unavailable when Redis does not answer."""
    try:
        connection().ping()
    except redis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable: {exc.__class__.__name__}") from None
