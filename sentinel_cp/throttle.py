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


# One round trip each (a script, not a pipeline): the counter and its expiry move together,
# and the embedded Redis stand-in answers pipelines far slower than single commands.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('TTL', KEYS[1])}
"""
_PEEK = """
local count = redis.call('GET', KEYS[1])
if not count then return {0, 0} end
return {tonumber(count), redis.call('TTL', KEYS[1])}
"""


def _script(source: str, key: str, *args: int) -> tuple[int, int]:
    conn = broker.connection()
    count, ttl = _redis_call(lambda: conn.eval(source, 1, key, *args))
    return int(count), int(ttl)


def check(limit: Limit, subject: str) -> None:
    """Raise RateLimited when `subject` already used up its window."""
    count, ttl = _script(_PEEK, limit.key(subject))
    if count >= limit.limit:
        raise RateLimited("Too many attempts; try again later", retry_after=max(ttl, 1))


def hit(limit: Limit, subject: str) -> tuple[int, int]:
    """Count one event; returns (count in window, seconds until the window resets)."""
    count, ttl = _script(_HIT, limit.key(subject), limit.window_s)
    return count, max(ttl, 1)


def consume(limit: Limit, subject: str) -> tuple[int, int]:
    """Count one request and raise RateLimited past the limit; returns (remaining, reset_s)."""
    count, ttl = hit(limit, subject)
    if count > limit.limit:
        raise RateLimited("Rate limit exceeded", retry_after=ttl, code="rate_limit_exceeded")
    return limit.limit - count, ttl


def reset(limit: Limit, subject: str) -> None:
    conn = broker.connection()
    _redis_call(lambda: conn.delete(limit.key(subject)))


def refund(limit: Limit, subject: str) -> None:
    """Give back one counted event (a login that turned out to be legitimate)."""
    conn = broker.connection()
    _redis_call(lambda: conn.eval(_REFUND, 1, limit.key(subject)))


_REFUND = """
if (tonumber(redis.call('GET', KEYS[1]) or '0')) > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""
