"""Housekeeping jobs."""

from __future__ import annotations

from datetime import UTC, datetime

from rq import get_current_job

BEAT_KEY = "sentinel:jobs:beat"


def record_beat() -> str:
    """Record that cron → queue → worker is alive; the console and /ready read it.

    Idempotent: running it twice only moves the timestamp.
    """
    now = datetime.now(UTC).isoformat()
    job = get_current_job()
    if job is not None:
        job.connection.set(BEAT_KEY, now, ex=3600)
    return now
