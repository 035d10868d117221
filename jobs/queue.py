"""The RQ implementation of `sentinel_cp.jobqueue`: named jobs, deterministic ids."""

from __future__ import annotations

from typing import Any

from rq import Queue

from sentinel_cp import broker

# Job names the domain may ask for → the adapter that runs them (import paths, so the web
# process never imports job code).
JOBS = {
    "compile_bundle": "jobs.bundles.compile_bundle",
}
TIMEOUTS = {"compile_bundle": 600}


def enqueue(name: str, args: tuple[Any, ...], job_id: str, queue: str) -> None:
    """Push `name(*args)` as job `job_id`; an id already waiting in the queue is not added twice."""
    connection = broker.connection()
    target = Queue(queue, connection=connection)
    existing = target.fetch_job(job_id)
    if existing is not None and existing.get_status(refresh=True) in ("queued", "scheduled"):
        return
    target.enqueue(
        JOBS[name],
        *args,
        job_id=job_id,
        job_timeout=TIMEOUTS.get(name, 180),
        result_ttl=3600,
        failure_ttl=86400,
    )
