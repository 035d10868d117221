"""Bundle jobs: compile (enqueued at submission), the stuck-compile sweep and artifact GC."""

from __future__ import annotations

from typing import Any

from flask import current_app

from jobs.context import app_context
from sentinel_cp import metrics
from sentinel_cp.bundles import compiler, gc


def compile_bundle(bundle_id: str) -> str | None:
    """Validate, sign, store and persist one bundle; a repeat does nothing new."""
    with app_context():
        binary = current_app.config["SENTINEL_SETTINGS"].sentinel_binary
        with metrics.COMPILE_SECONDS.time():
            outcome = compiler.compile_bundle(bundle_id, binary=binary)
        metrics.BUNDLE_COMPILES.labels(outcome or "skipped").inc()
        return outcome


def recover_stuck_compiles() -> list[str]:
    """Re-enqueue compiles that never started or whose worker died."""
    with app_context():
        return compiler.recover_stuck_compiles()


def collect_garbage() -> dict[str, Any]:
    with app_context():
        return gc.collect(dry_run=False)
