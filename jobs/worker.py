"""`rq worker` with the application built once in the parent process.

RQ forks a work horse per job; a job that builds the Flask app itself pays the imports and
`create_app()` (about a second of CPU here) every time. Built before the fork, every horse
starts warm. The parent never opens a database connection, so no pooled connection is shared
across the fork. Usage is exactly `rq`'s: `python -m jobs.worker worker --url … QUEUES…`.
"""

from __future__ import annotations

import sys

from rq.cli import main
from rq.worker.base import BaseWorker

from jobs import context

# An idle worker that lost Redis retries with backoff; RQ lets the wait grow to 60 s, so work
# queued after an outage could wait a minute for a worker that is already able to take it.
RECONNECT_WAIT_MAX_S = 5.0

if __name__ == "__main__":
    BaseWorker.max_connection_wait_time = RECONNECT_WAIT_MAX_S
    context.preload()
    sys.exit(main())
