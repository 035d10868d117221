"""Drift detection: open, escalate, remediate and resolve drift events. Safe to run twice."""

from __future__ import annotations

from jobs.context import app_context
from sentinel_cp import drift
from sentinel_cp.db import db


def detect_drift() -> dict[str, int]:
    """One reconcile pass over every project (audited as `system:drift`, published as events)."""
    with app_context():
        run = drift.detect_drift()
        db.session.commit()
        return run.to_dict()
