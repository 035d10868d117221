"""Liveness of the background pipeline (cron → queue → worker), as seen from Redis."""

from __future__ import annotations

from datetime import datetime

import redis

from sentinel_cp import broker
from sentinel_cp.db import utcnow

BEAT_KEY = "sentinel:jobs:beat"


def record_beat(now: datetime | None = None) -> str:
    """Store the time a periodic job last ran (idempotent: a repeat only moves the time)."""
    stamp = (now or utcnow()).isoformat()
    broker.connection().set(BEAT_KEY, stamp, ex=3600)
    return stamp


def last_beat() -> str | None:
    """When the workers last ran a periodic job, or None (never, or Redis is unreachable)."""
    try:
        value = broker.connection().get(BEAT_KEY)
    except redis.RedisError:
        return None
    return value.decode() if isinstance(value, bytes) else None
