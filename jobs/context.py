"""What a job needs from its process: the Flask app (database) and the worker's own Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rq import get_current_job

from sentinel_cp import broker

_app: Any = None


def configure_broker() -> None:
    """Point the domain's Redis at the worker's connection (REDIS_URL in every Procfile process
    and in the embedded children)."""
    url = os.environ.get("REDIS_URL")
    if url is None:
        job = get_current_job()
        kwargs = job.connection.connection_pool.connection_kwargs if job else {}
        url = (
            f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/"
            f"{kwargs.get('db', 0)}"
        )
    broker.configure(url)


def preload() -> None:
    """Build the application now (the worker parent, before it forks its work horses)."""
    global _app
    if _app is None:
        from app import create_app

        _app = create_app()


@contextmanager
def app_context() -> Iterator[Any]:
    """An application context built from the environment, once per process."""
    global _app
    if _app is None:
        from app import create_app

        _app = create_app()
    configure_broker()
    with _app.app_context():
        yield _app
