"""`sentinel-agent`: runs beside a real proxy. The protocol client arrives with the Nodes issue."""

from __future__ import annotations

import sys


def main() -> None:
    print(
        "sentinel-agent: not available yet (node registration and heartbeats are not built)",
        file=sys.stderr,
    )
    raise SystemExit(2)
