"""The periodic schedule, declared once as data, registered by `rq cron jobs/cron.py`.

`rq cron` fires interval jobs immediately at start and has no lock between cron processes,
so run exactly one `cron` process and keep every job here safe to run twice.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# `rq cron` loads this file by path; make the project importable from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rq import cron

from jobs import bundles, drift, fleet, maintenance, notifications, rollouts


@dataclass(frozen=True)
class PeriodicJob:
    func: Callable[..., Any]
    interval_s: int
    timeout_s: int
    queue: str = "maintenance"


PERIODIC_JOBS: tuple[PeriodicJob, ...] = (
    PeriodicJob(maintenance.record_beat, interval_s=10, timeout_s=30),
    PeriodicJob(maintenance.link_audit_chains, interval_s=10, timeout_s=120),
    PeriodicJob(fleet.mark_stale_nodes, interval_s=15, timeout_s=120),
    PeriodicJob(fleet.prune_node_history, interval_s=3600, timeout_s=600),
    PeriodicJob(drift.detect_drift, interval_s=30, timeout_s=120),
    PeriodicJob(rollouts.sweep, interval_s=2, timeout_s=60),
    PeriodicJob(bundles.recover_stuck_compiles, interval_s=30, timeout_s=60),
    PeriodicJob(bundles.collect_garbage, interval_s=3600, timeout_s=900),
    PeriodicJob(notifications.sweep_notifications, interval_s=10, timeout_s=60),
    PeriodicJob(notifications.prune_notifications, interval_s=3600, timeout_s=600),
)

for periodic in PERIODIC_JOBS:
    cron.register(
        periodic.func,
        queue_name=periodic.queue,
        interval=periodic.interval_s,
        job_timeout=periodic.timeout_s,
    )
