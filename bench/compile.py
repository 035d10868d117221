"""What a bundle costs to compile, and how many polls/s the `api` server answers for a fleet.

Compile (`compile_{n}_routes_s`, n = 10, 100, 1,000 routes). In-process, on an app built like
tests/conftest.py's `build_app`: SQLite and filesystem storage in a temporary data directory,
the embedded Redis stand-in for the job queue, no SENTINEL_BINARY (the built-in validator
only). The config is bench/validate.py's `generate_config` (routes over routes/10 upstreams),
so the validate stage here reads next to that bench's figures. Each stage is timed on its own,
median of several runs (a fast stage is repeated within a run to last at least MIN_RUN_S):

- `validate`: `validate_bundle(files)`.
- `assemble`: `build_archive` (tar + manifest + zstd level 19).
- `sign`: `signing.sign` over `signature_message`, as the compiler calls it: decrypting the
  stored private key, then Ed25519.
- `compare`: `risk.assess` and `diff.semantic_summary` against the previous version's config,
  the comparison the compiler makes when it records a compiled bundle.
- `compile` (the figure's value): `compiler.compile_bundle(bundle_id)` in a fresh app context,
  the body of the RQ job (`jobs.bundles.compile_bundle`) without its metrics timer: claim,
  validate, assemble, sign, store, re-read the parent's config, compare, persist, audit.
- `submit`: `compiler.submit` + commit, the synchronous part of `POST …/bundles` (it assembles
  the archive once to know the id, and enqueues the compile job after the commit).

Every run compiles a new version that differs from the last by a trailing comment, after one
warm-up version per size, so each compile has a parent of the same size: the steady state of a
project shipping edits. The baseline is `json.dumps` + sha256 of the same files, the least any
content-addressed store must do; the ratio says how far above that the pipeline is.

Polls (`bundle_polls_{304,200}_per_s_api`). The `api` server of bench/heartbeat.py (gunicorn,
2 workers, PostgreSQL). N nodes register there; one bundle is submitted, compiled and assigned
to all of them through the domain on the bench's own database (setup, not measured); each node
polls once for its ETag. wrk then sends polls round robin over the nodes, with the node's
`If-None-Match` (every answer 304: the steady state of a fleet with nothing new), and again
without it (every answer the 200 offer), next to `GET /health` on the same server in the same
run. A Lua `response` hook counts answers with another status; they are not counted as polls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.heartbeat import (  # noqa: E402
    CONCURRENCY,
    QUICK_SECONDS,
    REDIS_URL,
    _register,
    _wrk,
    api_server,
    bench_database,
    workers_note,
)
from bench.validate import generate_config  # noqa: E402

ENTRY = "sentinel.kdl"
ROUTE_COUNTS = (10, 100, 1000)
MIN_RUN_S = 0.01
POLL_TARGET_RATIO = 0.8

WRK_POLL = """
local nodes = {%s}
local i = 0
local threads = {}
unexpected = 0

setup = function(thread)
  table.insert(threads, thread)
end

request = function()
  i = i %% #nodes + 1
  local n = nodes[i]
  local headers = {["X-Sentinel-Node-Key"] = n[2]}
  if n[3] ~= "" then
    headers["If-None-Match"] = n[3]
  end
  return wrk.format("GET", "/api/v1/nodes/" .. n[1] .. "/bundles/latest", headers)
end

response = function(status, headers, body)
  if status ~= %d then
    unexpected = unexpected + 1
  end
end

done = function(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("unexpected")
  end
  io.write(string.format("Unexpected statuses: %%d\\n", total))
end
"""


def _config(routes: int, label: object) -> str:
    """The `routes` config, made a distinct bundle by a trailing comment naming `label`."""
    return f"{generate_config(routes)}// bench version {label}\n"


def _median_s(action: Callable[[], object], runs: int) -> float:
    """Median seconds per call of `action` over `runs` runs (a fast action loops in a run)."""
    started = time.perf_counter()
    action()
    once = time.perf_counter() - started
    loops = max(1, math.ceil(MIN_RUN_S / max(once, 1e-7)))
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(loops):
            action()
        samples.append((time.perf_counter() - started) / loops)
    return statistics.median(samples)


def _baseline(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def _compile_figure(app: Any, project: Any, routes: int, runs: int) -> dict[str, Any]:
    from sentinel_cp import signing
    from sentinel_cp.audit import Actor
    from sentinel_cp.bundles import compiler
    from sentinel_cp.bundles.archive import build_archive
    from sentinel_cp.bundles.diff import semantic_summary
    from sentinel_cp.bundles.kdl import validate_bundle
    from sentinel_cp.bundles.risk import assess
    from sentinel_cp.db import db

    actor = Actor.system("bench")

    def new_version(label: object) -> tuple[str, float]:
        started = time.perf_counter()
        bundle, existing = compiler.submit(
            actor, project, {ENTRY: _config(routes, label)}, version=f"r{routes}-{label}"
        )
        db.session.commit()
        elapsed = time.perf_counter() - started
        assert not existing, bundle.id
        return bundle.id, elapsed

    def compile_once(bundle_id: str) -> float:
        started = time.perf_counter()
        with app.app_context():
            outcome = compiler.compile_bundle(bundle_id)
        elapsed = time.perf_counter() - started
        assert outcome == "compiled", outcome
        return elapsed

    files = {ENTRY: _config(routes, "measured")}
    result = validate_bundle(files)
    assert result.valid and result.config is not None, result.report
    parent = validate_bundle({ENTRY: _config(routes, "parent")}).config
    archive = build_archive(str(project.id), files)
    key = signing.current_key(project.id)
    db.session.commit()
    message = compiler.signature_message(project.id, archive.bundle_id)
    config = result.config

    stages = {
        "validate": _median_s(lambda: validate_bundle(files), runs),
        "assemble": _median_s(lambda: build_archive(str(project.id), files), runs),
        "sign": _median_s(lambda: signing.sign(key, message), runs),
        "compare": _median_s(
            lambda: (assess(parent, config), semantic_summary(parent, config)), runs
        ),
    }
    compile_once(new_version("warm-up")[0])
    submits, compiles = [], []
    for run in range(runs):
        bundle_id, submit_s = new_version(run)
        submits.append(submit_s)
        compiles.append(compile_once(bundle_id))
    stages["submit"] = statistics.median(submits)
    value = statistics.median(compiles)
    baseline = _median_s(lambda: _baseline(files), runs)
    source_bytes = len(files[ENTRY].encode())
    return {
        "value": round(value, 4),
        "unit": "s",
        "baseline": round(baseline, 6),
        "baseline_name": "json.dumps + sha256 of the same files, same run",
        "ratio": round(value / baseline, 1) if baseline else None,
        "what": "compiler.compile_bundle (the compile job's body), SQLite + filesystem storage",
        "routes": routes,
        "runs": runs,
        "stages_s": {name: round(seconds, 6) for name, seconds in stages.items()},
        "source_bytes": source_bytes,
        "archive_bytes": archive.size_bytes,
        "compression_ratio": round(source_bytes / archive.size_bytes, 1),
        "compile_samples_s": [round(s, 4) for s in compiles],
    }


def compile_figures(*, quick: bool) -> dict[str, Any]:
    """`compile_{n}_routes_s` for every size in ROUTE_COUNTS."""
    from flask_migrate import upgrade

    from app import create_app
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.config import load_settings
    from sentinel_cp.db import db
    from sentinel_cp.server import EmbeddedRedis

    runs = 3 if quick else 7
    figures: dict[str, Any] = {}
    redis_server = EmbeddedRedis()
    redis_server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="sentinel-bench-compile-") as tmp:
            settings = load_settings({"SENTINEL_DATA_DIR": tmp, "SENTINEL_ENV": "test"})
            app = create_app({"REDIS_URL": redis_server.url}, settings=settings)
            with app.app_context():
                upgrade()
                project = projects.create_project(Actor.system("bench"), slug="bench", name="Bench")
                db.session.commit()
                for routes in ROUTE_COUNTS:
                    figures[f"compile_{routes}_routes_s"] = _compile_figure(
                        app, project, routes, runs
                    )
                db.session.remove()
                db.engine.dispose()
    finally:
        redis_server.stop()
    smallest = figures[f"compile_{ROUTE_COUNTS[0]}_routes_s"]["value"]
    for figure in figures.values():
        figure["vs_smallest"] = round(figure["value"] / smallest, 1) if smallest else None
    return figures


def _assign_new_bundle(data_dir: Path, database_url: str, node_ids: list[str]) -> str:
    """Submit, compile and assign one 100-route bundle to `node_ids` through the domain, on the
    server's database and data directory (so its signing key and storage are the server's)."""
    from app import create_app
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.bundles import compiler, distribution
    from sentinel_cp.bundles.models import Bundle
    from sentinel_cp.config import load_settings
    from sentinel_cp.db import db

    settings = load_settings(
        {"SENTINEL_DATA_DIR": str(data_dir), "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL}
    )
    app = create_app(settings=settings)
    with app.app_context():
        project = projects.get_project(settings.default_project)
        bundle, _ = compiler.submit(
            Actor.system("bench"), project, {ENTRY: _config(100, "poll")}, version="bench-poll"
        )
        db.session.commit()
        bundle_id = bundle.id
    with app.app_context():
        assert compiler.compile_bundle(bundle_id) == "compiled"
    with app.app_context():
        bundle = db.session.get(Bundle, bundle_id)
        assigned = distribution.assign(bundle, [uuid.UUID(n) for n in node_ids])
        db.session.commit()
        assert assigned == len(node_ids), assigned
        db.engine.dispose()
    return bundle_id


async def _first_polls(url: str, credentials: list[tuple[str, str]], bundle_id: str) -> list[str]:
    """Each node's ETag, from one poll each (which must offer `bundle_id`)."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    limiter = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:

        async def poll(node_id: str, key: str) -> str:
            async with limiter:
                response = await http.get(
                    f"/api/v1/nodes/{node_id}/bundles/latest",
                    headers={"X-Sentinel-Node-Key": key},
                )
            response.raise_for_status()
            assert response.json()["bundle_id"] == bundle_id, response.text
            return response.headers["ETag"]

        return await asyncio.gather(*(poll(n, k) for n, k in credentials))


def _poll_figure(
    polls: dict[str, Any], trivial: dict[str, Any], expected: int, nodes: int, seconds: float
) -> dict[str, Any]:
    wrong = int(polls["output"].rsplit("Unexpected statuses:", 1)[1].split()[0])
    total = polls["requests"]
    rate = polls["rate"] * (1 - wrong / total) if total else 0.0
    return {
        "value": round(rate, 1),
        "unit": "polls/s",
        "baseline": round(trivial["rate"], 1),
        "baseline_name": "GET /health, same server, same run, same load generator (wrk)",
        "ratio": round(rate / trivial["rate"], 3) if trivial["rate"] else None,
        "status": expected,
        "nodes": nodes,
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        "polls": total,
        "polls_failed": polls["failed"],
        "polls_with_another_status": wrong,
        "latency_ms": {"p50": polls["p50"], "p99": polls["p99"]},
        "baseline_latency_ms": {"p50": trivial["p50"], "p99": trivial["p99"]},
        "workers": workers_note(polls, trivial),
    }


def poll_figures(*, quick: bool) -> dict[str, Any]:
    """`bundle_polls_304_per_s_api` and `bundle_polls_200_per_s_api`."""
    seconds = QUICK_SECONDS if quick else 60.0
    nodes = 500 if quick else 2000
    with (
        tempfile.TemporaryDirectory(prefix="sentinel-bench-poll-") as tmp_name,
        bench_database() as database_url,
        api_server(Path(tmp_name), database_url) as url,
    ):
        tmp = Path(tmp_name)
        credentials, setup_s = asyncio.run(_register(url, nodes))
        started = time.perf_counter()
        bundle_id = _assign_new_bundle(tmp / "data", database_url, [n for n, _ in credentials])
        etags = asyncio.run(_first_polls(url, credentials, bundle_id))
        setup_s += time.perf_counter() - started
        scripts = {}
        for status, tags in ((304, etags), (200, [""] * len(etags))):
            rows = ",".join(
                f"{{'{n}','{k}','{tag}'}}" for (n, k), tag in zip(credentials, tags, strict=True)
            )
            scripts[status] = tmp / f"poll-{status}.lua"
            scripts[status].write_text(WRK_POLL % (rows, status))
        _wrk(f"{url}/health", 1)  # warm the workers and their connections
        trivial = _wrk(f"{url}/health", seconds)
        measured = {status: _wrk(url, seconds, script) for status, script in scripts.items()}
    figures = {
        f"bundle_polls_{status}_per_s_api": _poll_figure(polls, trivial, status, nodes, seconds)
        for status, polls in measured.items()
    }
    figures["bundle_polls_304_per_s_api"]["target_ratio"] = POLL_TARGET_RATIO
    figures["bundle_polls_304_per_s_api"]["node_setup_s"] = round(setup_s, 1)
    return figures


def run(*, quick: bool) -> dict[str, Any]:
    return {**compile_figures(quick=quick), **poll_figures(quick=quick)}


if __name__ == "__main__":
    print(json.dumps(run(quick=os.environ.get("QUICK") not in (None, "", "0")), indent=2))
