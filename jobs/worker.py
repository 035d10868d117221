"""`rq worker` with the application built once in the parent process.

RQ forks a work horse per job; a job that builds the Flask app itself pays the imports and
`create_app()` (about a second of CPU here) every time. Built before the fork, every horse
starts warm. The parent never opens a database connection, so no pooled connection is shared
across the fork. Usage is exactly `rq`'s: `python -m jobs.worker worker --url … QUEUES…`.
"""

from __future__ import annotations

import sys

from rq.cli import main

from jobs import context

if __name__ == "__main__":
    context.preload()
    sys.exit(main())
