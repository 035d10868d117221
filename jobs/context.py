"""What a job needs from its process: the same Redis the worker was started against."""

from __future__ import annotations

import os

from rq import get_current_job

from sentinel_cp import broker


def configure_broker() -> None:
    """Point the domain's Redis at the worker's own connection (REDIS_URL in every Procfile
    process and in the embedded children)."""
    url = os.environ.get("REDIS_URL")
    if url is None:
        job = get_current_job()
        kwargs = job.connection.connection_pool.connection_kwargs if job else {}
        url = (
            f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/"
            f"{kwargs.get('db', 0)}"
        )
    broker.configure(url)
