"""Run every benchmark in bench/ and write bench/results.json.

Each figure is measured next to a baseline from the same run on the same machine, and reported
as value, unit, baseline and ratio, so results compare across machines. `QUICK=1` shortens it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    api_auth,
    console_live,
    heartbeat,
    propagation,
    scale_out,
    tick_cost,
    validate,
)
from bench import compile as bundle_compile

BENCHMARKS = (
    api_auth,
    validate,
    heartbeat,
    bundle_compile,
    propagation,
    tick_cost,
    scale_out,
    console_live,
)


def main() -> None:
    quick = os.environ.get("QUICK") not in (None, "", "0")
    results = {"quick": quick, "figures": {}}
    for module in BENCHMARKS:
        started = time.monotonic()
        results["figures"].update(module.run(quick=quick))
        print(f"{module.__name__}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
