"""The RQ implementation of `sentinel_cp.jobqueue`: named jobs, deterministic ids."""

from __future__ import annotations

from typing import Any

from rq import Queue

from sentinel_cp import broker

# Job names the domain may ask for → the adapter that runs them (import paths, so the web
# process never imports job code).
JOBS = {
    "compile_bundle": "jobs.bundles.compile_bundle",
    "tick_rollout": "jobs.rollouts.tick_rollout",
    "deliver_notification": "jobs.notifications.deliver_notification",
}
TIMEOUTS = {"compile_bundle": 600, "deliver_notification": 60}


WAITING = ("queued", "scheduled", "deferred")


def enqueue(name: str, args: tuple[Any, ...], job_id: str, queue: str) -> None:
    """Push `name(*args)` as job `job_id`; an id already waiting in the queue is not added twice.

    While `job_id` runs, a request for it becomes `job_id-again` (also collapsing), so a change
    that arrives during a run always gets a run that sees it — and the running job's record is
    never overwritten.
    """
    connection = broker.connection()
    target = Queue(queue, connection=connection)
    existing = target.fetch_job(job_id)
    if existing is not None:
        status = existing.get_status(refresh=True)
        if status in WAITING:
            return
        if status == "started":
            job_id = f"{job_id}-again"  # RQ ids: letters, digits, '_' and '-' only
            follow_up = target.fetch_job(job_id)
            if follow_up is not None and follow_up.get_status(refresh=True) in WAITING:
                return
    target.enqueue(
        JOBS[name],
        *args,
        job_id=job_id,
        job_timeout=TIMEOUTS.get(name, 180),
        result_ttl=3600,
        failure_ttl=86400,
    )
