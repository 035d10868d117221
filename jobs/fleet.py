"""Fleet housekeeping: staleness and history retention. Each is safe to run twice."""

from __future__ import annotations

from jobs.context import app_context
from sentinel_cp import nodes
from sentinel_cp.db import db


def mark_stale_nodes() -> int:
    """Flip silent nodes offline (audited as `system:staleness`, published as events)."""
    with app_context():
        flipped = nodes.mark_stale_nodes()
        db.session.commit()
        return flipped


def prune_node_history() -> dict[str, int]:
    with app_context():
        removed = nodes.prune_history()
        db.session.commit()
        return removed
