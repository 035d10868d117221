"""gunicorn reads this file from the working directory (the Procfile's `api`, the benches).

A worker runs 8 request threads under one GIL. A thread whose database round trip has
returned waits for the GIL up to the switch interval (5 ms by default) — while it may hold a
row lock others queue on, such as a project's audit chain head at commit. 1 ms shortens those
holds at a small cost in switching (measured in docs/scaling.md).

Once a worker has loaded the application, everything it allocated (~160,000 objects: modules,
mappers, schemas, compiled statements) is moved out of the cyclic collector's sight
(`gc.freeze`). Before, every full collection walked them all, 80-200 ms during which no
request thread ran: the heartbeat p99 was ~110 ms at ~3,000/s, and ~25 ms after.
"""

import gc
import sys

SWITCH_INTERVAL_S = 0.001


def post_fork(_server: object, _worker: object) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def post_worker_init(_worker: object) -> None:
    gc.collect()
    gc.freeze()
