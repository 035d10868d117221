"""Cost of validating proxy configs with 10, 100, 1,000 and 10,000 routes.

The baseline is ckdl's parse alone of the same document, so the ratio shows what the
tree-sitter positions, the load walk and the semantic pass add on top of parsing.
"""

from __future__ import annotations

import time
from typing import Any


def generate_config(routes: int) -> str:
    """A valid config with `routes` routes spread over routes/10 upstreams."""
    upstreams = max(1, routes // 10)
    parts = [
        'schema-version "1.0"',
        "system { worker-threads 0 }",
        'listeners {\n    listener "http" {\n        address "0.0.0.0:8080"\n    }\n}',
        "upstreams {",
    ]
    for i in range(upstreams):
        parts.append(
            f'    upstream "backend-{i}" {{\n        target "10.0.{i // 250}.{i % 250}:8080" '
            'weight=1\n        load-balancing "round_robin"\n    }'
        )
    parts.append("}\nroutes {")
    for i in range(routes):
        parts.append(
            f'    route "route-{i}" {{\n        priority "high"\n        matches {{\n'
            f'            path-prefix "/api/{i}"\n            method "GET" "POST"\n        }}\n'
            f'        upstream "backend-{i % upstreams}"\n    }}'
        )
    parts.append("}\n")
    return "\n".join(parts)


def _best_of(repeats: int, action: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def run(*, quick: bool) -> dict[str, Any]:
    import ckdl

    from sentinel_cp.bundles.kdl import validate_bundle

    sizes = (10, 100, 1000) if quick else (10, 100, 1000, 10000)
    figures: dict[str, Any] = {}
    for size in sizes:
        text = generate_config(size)
        result = validate_bundle({"sentinel.kdl": text})
        assert result.valid, result.report
        repeats = 5 if size <= 1000 else 2
        value = _best_of(repeats, lambda text=text: validate_bundle({"sentinel.kdl": text}))
        baseline = _best_of(repeats, lambda text=text: ckdl.parse(text, version=2))
        figures[f"validate_{size}_routes_s"] = {
            "value": round(value, 4),
            "unit": "s",
            "baseline": round(baseline, 4),
            "baseline_name": "ckdl.parse(version=2) of the same document",
            "ratio": round(value / baseline, 2) if baseline else None,
            "bytes": len(text),
        }
    return figures
