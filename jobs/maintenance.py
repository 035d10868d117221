"""Housekeeping jobs: thin wrappers that call the domain."""

from __future__ import annotations

from jobs.context import app_context, configure_broker
from sentinel_cp import audit, scheduling
from sentinel_cp.db import db


def record_beat() -> str:
    """Record that cron → queue → worker is alive; `/ready` and the console show it."""
    configure_broker()
    return scheduling.record_beat()


def link_audit_chains() -> int:
    """Link audit rows a dead process committed but never linked (PostgreSQL; see `audit`)."""
    with app_context():
        return audit.link_all(db.engine)
