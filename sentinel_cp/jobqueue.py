"""The domain's one door to background work: enqueue a named job with a deterministic id.

The domain says *what* should run (`compile_bundle`, `tick_rollout`) and under which id; the
`jobs/` package implements the door with RQ at start-up (`configure`). Jobs are pushed only
after the transaction that asked for them commits — a worker never looks for a row that is not
there yet — and a deterministic id makes a repeated request collapse into one job. A process
without a queue (`sentinel-cp setup`) drops the request; every job here has a cron sweep that
finds its work again from the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session

from sentinel_cp.db import queue_for_commit, take_committed

Enqueue = Callable[[str, tuple[Any, ...], str, str], None]
_PENDING = "sentinel_pending_jobs"
_backend: Enqueue | None = None
log = logging.getLogger(__name__)


def configure(backend: Enqueue | None) -> None:
    """Install the function that really enqueues `(name, args, job_id, queue)`."""
    global _backend
    _backend = backend


def enqueue_after_commit(
    name: str,
    *args: Any,
    job_id: str,
    queue: str = "default",
    when: Callable[[Connection], bool] | None = None,
) -> None:
    """Ask for job `name(*args)` once the current transaction commits; with `when`, only if
    `when(connection)` holds then (read after the commit, so it sees every transaction that
    committed before it: of two concurrent askers, the later one sees both). A `when` that
    fails counts as true."""
    queue_for_commit(_PENDING, (name, args, job_id, queue, when))


def enqueue_now(name: str, *args: Any, job_id: str, queue: str = "default") -> None:
    """Enqueue outside a transaction (sweeps that found committed work)."""
    _push((name, args, job_id, queue))


def tick_rollout(rollout_id: object, when: Callable[[Connection], bool] | None = None) -> None:
    """Ask for a tick of `rollout_id` once the current transaction commits (`enqueue_after_
    commit`; one job id per rollout, so requests collapse)."""
    enqueue_after_commit("tick_rollout", str(rollout_id), job_id=f"tick-{rollout_id}", when=when)


def tick_rollout_now(rollout_id: object) -> None:
    """Ask for a tick of `rollout_id` now: what prompted it is committed already."""
    enqueue_now("tick_rollout", str(rollout_id), job_id=f"tick-{rollout_id}")


def _push(request: tuple[str, tuple[Any, ...], str, str]) -> None:
    if _backend is None:
        log.info("no job queue in this process; %s left to its sweep", request[2])
        return
    try:
        _backend(*request)
    except Exception as exc:  # Redis down: the sweep finds the work again
        log.warning("job %s not enqueued: %s", request[2], exc.__class__.__name__)


@event.listens_for(Session, "after_commit")
def _push_pending(session: Session) -> None:
    for name, args, job_id, queue, when in take_committed(session, _PENDING):
        if when is None or _holds(when, session):
            _push((name, args, job_id, queue))


def _holds(when: Callable[[Connection], bool], session: Session) -> bool:
    try:
        bind = session.get_bind()
        if isinstance(bind, Connection):
            return when(bind)
        with bind.connect() as connection:
            return when(connection)
    except Exception as exc:  # the job is cheaper than a missed one
        log.warning("job condition failed (%s); enqueueing anyway", exc.__class__.__name__)
        return True
