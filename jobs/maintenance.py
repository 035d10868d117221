"""Housekeeping jobs: thin wrappers that call the domain."""

from __future__ import annotations

from jobs.context import configure_broker
from sentinel_cp import scheduling


def record_beat() -> str:
    """Record that cron → queue → worker is alive; `/ready` and the console show it."""
    configure_broker()
    return scheduling.record_beat()
