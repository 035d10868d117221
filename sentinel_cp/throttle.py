"""Fixed-window counters in Redis, shared by every process: login throttling, rate limits.

A window key expires on its own, so an idle counter costs nothing. When Redis is down the
check raises `Unavailable` (503 + Retry-After) rather than letting unlimited guesses through.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from sentinel_cp import broker
from sentinel_cp.errors import RateLimited, Unavailable


@dataclass(frozen=True)
class Limit:
    name: str
    limit: int
    window_s: int

    def key(self, subject: str) -> str:
        return f"sentinel:throttle:{self.name}:{subject}"


def _redis_call(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except redis.RedisError:
        raise Unavailable("Redis is unreachable; try again shortly") from None


def check(limit: Limit, subject: str) -> None:
    """Raise RateLimited when `subject` already used up its window."""
    conn = broker.connection()
    key = limit.key(subject)
    count, ttl = _redis_call(lambda: conn.pipeline().get(key).ttl(key).execute())
    if count is not None and int(count) >= limit.limit:
        raise RateLimited(
            "Too many attempts; try again later", retry_after=max(int(ttl), 1)
        )


def hit(limit: Limit, subject: str) -> tuple[int, int]:
    """Count one event; returns (count in window, seconds until the window resets)."""
    conn = broker.connection()
    key = limit.key(subject)

    def run() -> list[int]:
        pipe = conn.pipeline()
        pipe.incr(key)
        pipe.expire(key, limit.window_s, nx=True)
        pipe.ttl(key)
        return pipe.execute()  # type: ignore[no-any-return]

    count, _, ttl = _redis_call(run)
    return int(count), max(int(ttl), 1)


def consume(limit: Limit, subject: str) -> tuple[int, int]:
    """Count one request and raise RateLimited past the limit; returns (remaining, reset_s)."""
    count, ttl = hit(limit, subject)
    if count > limit.limit:
        raise RateLimited("Rate limit exceeded", retry_after=ttl, code="rate_limit_exceeded")
    return limit.limit - count, ttl


def reset(limit: Limit, subject: str) -> None:
    conn = broker.connection()
    _redis_call(lambda: conn.delete(limit.key(subject)))
