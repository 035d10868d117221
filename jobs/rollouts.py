"""Rollout jobs: one tick (enqueued per rollout with a deterministic id) and the cron sweep."""

from __future__ import annotations

import uuid

from jobs.context import app_context
from sentinel_cp.rollouts import engine


def tick_rollout(rollout_id: str) -> int:
    """Advance one rollout as far as it can go now; returns how many actions were applied."""
    with app_context():
        return len(engine.tick(uuid.UUID(rollout_id)))


def sweep() -> dict[str, int]:
    """Start due scheduled rollouts and tick every running one (the safety net)."""
    with app_context():
        return engine.sweep()
