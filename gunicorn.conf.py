"""gunicorn reads this file from the working directory (the Procfile's `api`, the benches).

A worker runs 8 request threads under one GIL. A thread whose database round trip has
returned waits for the GIL up to the switch interval (5 ms by default) — while it may hold a
row lock others queue on, such as a project's audit chain head at commit. 1 ms shortens those
holds at a small cost in switching (measured in docs/scaling.md).
"""

import sys

SWITCH_INTERVAL_S = 0.001


def post_fork(_server: object, _worker: object) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
