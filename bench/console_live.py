"""Live update latency of the console: a node's status change → the DOM change in Chromium,
with a simulated fleet heartbeating, next to the same latency with no fleet (same server, same
run).

Two layouts (`BENCH_CONSOLE_LAYOUT`; the full run's default `production`, QUICK's `web`):
- `production`, the Procfile's: the fleet and the probes talk to `api` (gunicorn, PostgreSQL,
  Redis, two RQ workers and cron, as `bench/propagation.py` starts them), the browser to a `web`
  process of its own (`python app.py` on the same PostgreSQL and Redis).
- `web`: `python app.py` alone, the embedded system (SQLite, the in-process Redis stand-in, its
  worker and cron children) — one process serving the console and taking every heartbeat.
The browser is Debian's headless Chromium, logged in through the console's form, on `/nodes`
filtered (search box) to the bench's probe nodes.

The change is the one an operator watches for: a node coming back, `offline` → `online`.
Probe nodes register with the agent's client and then stay silent until the staleness job
marks them offline (the project's staleness timeout is set to the shortest, 15 s, until then,
and back to the default, 120 s, afterwards, so a busy fleet does not flap offline). One
sample: a MutationObserver (installed with `execute_script`) records `Date.now()` when the
probe's row shows `online`; the bench takes the wall clock and sends the probe's heartbeat.
The latency is the observer's time minus that clock (same machine, same clock), so it covers
the whole live path: heartbeat → domain (status change, audited) → event on Redis pub/sub
after commit → the console's one subscription → the page's coalesced refresh
(`console.live`) → websocket → DOM. Each probe is used once.

Phases: `baseline` with no fleet; then `sentinel-cp simulate` in a process of its own
(`BENCH_CONSOLE_NODES` nodes: 10,000 heartbeating every 60 s, QUICK 300 every 5 s — the
shortest interval a project may set; registrations spread at 60/s, QUICK 80/s; `--duration`
bounds it should the bench die), and once 99.5 % of the fleet is online (the registration
burst is over; or after 260 s, QUICK 20 s, with the count reported), `fleet` samples. The full
run offers 167 heartbeats/s — a large fleet on a long interval, which is what the figure is
about: the console with 10,000 nodes behind it. (Session 8: one embedded `web` process
registers 55-60 nodes/s here; during and after a 10,000-node burst at that rate it fell behind
the fleet's heartbeats, and nodes flapped offline and back for minutes.)

First page: the `/nodes` page loaded fresh (unfiltered, its first 50 rows of every node) until its
table shows rows, in Chromium, from just before the navigation (median of three loads, polled
every 50 ms): before the fleet (baseline: the probes only) and with the fleet heartbeating,
after the samples (`console_nodes_first_page_ms_web`, target ≤ 1,500 ms).

The heartbeat rate actually achieved is the server's own counter
(`sentinel_node_heartbeats_total`) over the fleet samples (`production`: the fleet nodes whose
stored heartbeat falls in the window, since gunicorn's workers count separately); events
published over the same span are counted on the server's Redis channel. At the end: the
console's `web` process's resident memory (`VmRSS`, and its peak `VmHWM`, from /proc).

Samples are paced one coalescing interval apart (`console.live.LIVE_INTERVAL_S` + 0.1 s), so
each measures a change arriving at a page that has been quiet for a second; changes arriving
faster are folded into one refresh a second by design (up to that interval more).

`value` is the fleet's p95 in ms, `baseline` the no-fleet p95; the issue's target (p95 ≤ 1 s
with 1,000 nodes heartbeating) is reported, not asserted. SAMPLES per phase (20, QUICK 6);
each phase also stops at its time budget, so the whole run stays under 7 minutes (most of it
the registration burst; QUICK: about one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.client import NodeClient  # noqa: E402
from agent.simulator import percentile  # noqa: E402
from bench.chromium import BrowserMissing, chromium, log_in, open_page, wait_until  # noqa: E402
from bench.heartbeat import (  # noqa: E402
    PASSWORD,
    _base_env,
    _free_port,
    _registration_token,
    _wait_ready,
)
from bench.propagation import (  # noqa: E402
    CpuMeter,
    Database,
    Group,
    Server,
    _login,
    _spawn,
    api_layout,
    web_layout,
)

NODES = int(os.environ.get("BENCH_CONSOLE_NODES", "0")) or None
# `production`: the fleet on `api` (gunicorn, PostgreSQL, Redis, RQ workers and cron), the
# console on its own `web` process against the same database and Redis — the Procfile's
# layout; `web`: everything in one `python app.py` (SQLite, the in-process Redis stand-in).
LAYOUT = os.environ.get("BENCH_CONSOLE_LAYOUT")
SHORTEST_INTERVAL_S = 5  # the shortest heartbeat interval a project may set
STALENESS_S = 15  # the shortest staleness timeout; the cron sweep runs every 15 s
DEFAULT_STALENESS_S = 120
# Registrations are spread at `registrations_per_s`: the figure is the steady fleet's, not its
# arrival.
FULL = {
    "layout": "production",
    "nodes": 10_000,
    "interval_s": 60,
    # Session 8: one embedded `web` process registered 55 to 60 nodes a second here; at 100/s
    # its samples began with ~1,000 nodes still registering and the fleet flapping offline.
    "registrations_per_s": 60,
    "samples": 20,
    "phase_budget_s": 30.0,
    "online_timeout_s": 260.0,
}
QUICK = {
    "layout": "web",
    "nodes": 300,
    "interval_s": SHORTEST_INTERVAL_S,
    "registrations_per_s": 80,
    "samples": 6,
    "phase_budget_s": 12.0,
    "online_timeout_s": 20.0,
}
TARGET_P95_MS = 1000.0
TARGET_FIRST_PAGE_MS = 1500.0
FIRST_PAGE_LOADS = 3
ONLINE_SHARE = 0.995  # the fleet is "up" when this share is online
DOM_TIMEOUT_S = 15.0
PROJECT = "default"
SEARCH = "//label[.//*[contains(@class, 'q-field__label') and text()='Search name, host or IP']]"

# The state shown in the table row of the node named arguments[0] (null: no such row).
ROW_STATE = """
for (const row of document.querySelectorAll('tbody tr')) {
  const link = row.querySelector('a');
  if (link && link.textContent.trim() === arguments[0]) {
    const badge = row.querySelector('.q-badge');
    return badge ? badge.textContent.trim() : null;
  }
}
return null;
"""
# Records Date.now() when that row first shows `online`.
OBSERVE = (
    "const rowState = (name) => {" + ROW_STATE.replace("arguments[0]", "name") + "};"
    """
const name = arguments[0];
window.__probeSeen = null;
const observer = new MutationObserver(() => {
  if (window.__probeSeen === null && rowState(name) === 'online') {
    window.__probeSeen = Date.now();
    observer.disconnect();
  }
});
observer.observe(document.body,
  {subtree: true, childList: true, characterData: true, attributes: true});
return rowState(name);
"""
)

WAIT_SEEN = f"""
const done = arguments[arguments.length - 1];
const deadline = Date.now() + {DOM_TIMEOUT_S * 1000};
const check = () => window.__probeSeen !== null ? done(window.__probeSeen)
  : Date.now() > deadline ? done(null) : setTimeout(check, 20);
check();
"""


def _log(message: str) -> None:
    print(f"[console_live {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _summary(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def ms(q: float) -> float | None:
        value = percentile(ordered, q)
        return round(value, 1) if value is not None else None

    return {
        "p50": ms(0.5),
        "p95": ms(0.95),
        "max": round(ordered[-1], 1) if ordered else None,
        "min": round(ordered[0], 1) if ordered else None,
    }


class Probes:
    """Nodes the bench registers and heartbeats itself, with the agent's client."""

    def __init__(self, url: str, token: str, count: int) -> None:
        self.runner = asyncio.Runner()
        self.http = httpx.AsyncClient(timeout=30)
        self.prefix = f"probe-{uuid.uuid4().hex[:6]}"
        self.names = [f"{self.prefix}-{i:03d}" for i in range(count)]
        self.clients = [
            NodeClient(url, http=self.http, use_token=False, max_attempts=1) for _ in self.names
        ]
        for name, client in zip(self.names, self.clients, strict=True):
            self.runner.run(client.register(PROJECT, name=name, registration_token=token))
        self.used = 0

    def close(self) -> None:
        self.runner.run(self.http.aclose())
        self.runner.close()

    def take(self) -> tuple[str, NodeClient]:
        """The next probe, never used before (offline since it registered)."""
        self.used += 1
        return self.names[self.used - 1], self.clients[self.used - 1]

    def heartbeat(self, client: NodeClient) -> None:
        self.runner.run(client.heartbeat(health={"status": "healthy"}))


def _sample(driver: Any, probes: Probes) -> dict[str, float]:
    """One status change (offline → online) and how long the open table took to show it."""
    name, client = probes.take()
    state = driver.execute_script(OBSERVE, name)
    if state != "offline":
        raise RuntimeError(f"probe {name} shows {state!r} before its heartbeat, not offline")
    changed_ms = time.time() * 1000
    probes.heartbeat(client)
    acked_ms = time.time() * 1000
    # Waits in the browser (no WebDriver round trip per poll: less load on the machine).
    seen_ms = driver.execute_async_script(WAIT_SEEN)
    if seen_ms is None:
        raise TimeoutError(f"the table did not show {name} online within {DOM_TIMEOUT_S:.0f} s")
    return {
        "latency_ms": float(seen_ms) - changed_ms,
        "heartbeat_request_ms": acked_ms - changed_ms,
    }


def _phase(
    name: str, driver: Any, probes: Probes, samples: int, budget_s: float
) -> list[dict[str, float]]:
    results: list[dict[str, float]] = []
    started = time.monotonic()
    pace_s = _live_interval_s() + 0.1
    while len(results) < samples and time.monotonic() - started < budget_s:
        if results:
            # Pacing, not synchronisation: each change comes after a quiet coalescing interval,
            # as an operator's single change does (back-to-back changes wait up to that
            # interval by design: they are folded into one refresh a second).
            time.sleep(pace_s)
        results.append(_sample(driver, probes))
    shown = [round(r["latency_ms"]) for r in results]
    _log(f"{name}: {len(results)} samples in {time.monotonic() - started:.0f} s, ms {shown}")
    return results


def _count(api: httpx.Client, status: str, q: str) -> int:
    response = api.get(
        f"/api/v1/projects/{PROJECT}/nodes", params={"status": status, "q": q, "limit": 1}
    )
    response.raise_for_status()
    return int(response.json()["total"])


def _wait_online(api: httpx.Client, prefix: str, count: int, timeout: float) -> tuple[int, float]:
    """(nodes online, seconds) once `count` nodes named `prefix…` are online, or at `timeout`:
    a machine too busy for the whole fleet still gets measured, and says so."""
    started = time.monotonic()
    while (online := _count(api, "online", prefix)) < count:
        if time.monotonic() - started > timeout:
            _log(f"only {online}/{count} fleet nodes online after {timeout:.0f} s: measuring")
            break
        time.sleep(0.5)
    return online, time.monotonic() - started


def _watch_probes(driver: Any, url: str, probes: Probes) -> None:
    """`/nodes`, searched for the probes, every probe's row shown `offline`."""
    from selenium.webdriver.common.by import By

    open_page(driver, f"{url}/nodes", "matching nodes")
    search = wait_until(
        driver, lambda d: d.find_elements(By.XPATH, f"{SEARCH}//input"), 10, "the search box"
    )[0]
    search.send_keys(probes.prefix)
    count_offline = (
        "const rowState = (name) => {" + ROW_STATE.replace("arguments[0]", "name") + "};"
        "return arguments[0].filter(name => rowState(name) === 'offline').length;"
    )
    total = len(probes.names)
    wait_until(
        driver,
        lambda d: d.execute_script(count_offline, probes.names) == total,
        2 * STALENESS_S + 30,
        f"the table to show the {total} probes offline",
    )


def _first_page_ms(driver: Any, url: str) -> float:
    """Median ms from just before loading `/nodes` until its table shows rows."""
    timings = []
    for _ in range(FIRST_PAGE_LOADS):
        started = time.monotonic()
        driver.get(f"{url}/nodes")
        wait_until(
            driver,
            lambda d: d.execute_script("return document.querySelectorAll('tbody tr').length > 0"),
            30,
            "the /nodes table's first rows",
        )
        timings.append((time.monotonic() - started) * 1000)
    return statistics.median(timings)


def _settings(api: httpx.Client, **settings: int) -> None:
    api.patch(f"/api/v1/projects/{PROJECT}", json={"settings": settings}).raise_for_status()


def _heartbeats_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(r"^sentinel_node_heartbeats_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _memory(pid: int) -> dict[str, float | None]:
    """VmRSS and VmHWM (peak) of `pid` in MiB."""
    values: dict[str, float | None] = {"rss_mib": None, "peak_rss_mib": None}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                kib = int(rest.split()[0])
                values["rss_mib" if key == "VmRSS" else "peak_rss_mib"] = round(kib / 1024, 1)
    return values


class EventCounter:
    """Counts the events published on the server's Redis channel while it runs, by state."""

    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url
        self.by_state: dict[str, int] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> EventCounter:
        if self.redis_url is None:
            return self
        import redis

        from sentinel_cp.events import CHANNEL

        pubsub = redis.Redis.from_url(self.redis_url).pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL)

        def listen() -> None:
            while not self.stopping.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message is not None:
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        event = json.loads(message["data"])
                        key = f"{event.get('kind')}:{event.get('state')}"
                        self.by_state[key] = self.by_state.get(key, 0) + 1
            pubsub.close()

        self.thread = threading.Thread(target=listen, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)


def _start_fleet(
    server: Server,
    token: str,
    plan: dict[str, Any],
    nodes: int,
    prefix: str,
    duration_s: float,
    tmp: Path,
) -> Group:
    command = [
        str(Path(sys.executable).parent / "sentinel-cp"),
        "simulate",
        "--url", server.url,
        "--project", PROJECT,
        "--registration-token", token,
        "--nodes", str(nodes),
        "--heartbeat-interval", str(plan["interval_s"]),
        "--duration", str(int(duration_s)),
        "--stagger", str(nodes / plan["registrations_per_s"]),
        "--name-prefix", prefix,
        "--seed", "7",
    ]  # fmt: skip
    return _spawn("simulator", command, {**os.environ, "PYTHONPATH": str(ROOT)}, tmp / "sim.log")


def _wait_fleet_online(
    api: httpx.Client, fleet: Group, prefix: str, nodes: int, timeout: float
) -> float:
    """Seconds until every fleet node is online (registered and heartbeated once)."""
    started = time.monotonic()
    while True:
        online = api.get(
            f"/api/v1/projects/{PROJECT}/nodes",
            params={"status": "online", "q": prefix, "limit": 1},
        ).json()["total"]
        if online >= nodes:
            return time.monotonic() - started
        if fleet.process.poll() is not None:
            raise RuntimeError(f"the simulator exited with {fleet.process.returncode}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"only {online}/{nodes} fleet nodes online after {timeout:.0f} s")
        time.sleep(0.5)


def _fleet_summary(fleet: Group, tmp: Path) -> dict[str, Any]:
    fleet.stop(timeout=30)
    text = (tmp / "sim.log").read_text()
    start = text.find("{\n")
    with contextlib.suppress(ValueError):
        summary = json.loads(text[start:]) if start >= 0 else {}
        keep = ("registered", "registration_failed", "heartbeats_ok", "heartbeats_failed")
        return {k: summary.get(k) for k in (*keep, "errors", "duration_s", "latency_ms")}
    return {}


@dataclass
class Layout:
    """Where the fleet sends its requests (`nodes`) and where the browser goes (`console`)."""

    name: str
    nodes: Server
    console: Server
    console_pid: int
    cpu_sessions: dict[str, int]


@contextlib.contextmanager
def _layout(name: str, tmp: Path) -> Iterator[Layout]:
    if name == "web":
        with web_layout(tmp) as server:
            pid = server.sessions["web"]
            yield Layout(name, server, server, pid, {"web": pid})
        return
    if name != "production":
        raise SystemExit(f"BENCH_CONSOLE_LAYOUT must be web or production, not {name!r}")
    with api_layout(tmp) as api:
        port = _free_port()
        env = _base_env(tmp / "web-data", port)
        env.update(DATABASE_URL=api.database_url, REDIS_URL=api.redis_url or "")
        web = _spawn("web", [sys.executable, "app.py"], env, tmp / "web.log")
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, web.process)
            console = Server(
                "web", url, api.database_url, api.redis_url, {"web": web.process.pid}, tmp
            )
            sessions = {"web": web.process.pid, **api.sessions}
            yield Layout(name, api, console, web.process.pid, sessions)
        finally:
            web.stop()


@contextlib.contextmanager
def _probes(url: str, token: str, count: int) -> Iterator[Probes]:
    probes = Probes(url, token, count)
    try:
        yield probes
    finally:
        probes.close()


def measure(*, quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    nodes = NODES or int(plan["nodes"])
    samples, budget = int(plan["samples"]), float(plan["phase_budget_s"])
    interval_s = int(plan["interval_s"])
    layout_name = LAYOUT or str(plan["layout"])
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="sentinel-bench-console-") as tmp_name,
        _layout(layout_name, Path(tmp_name)) as layout,
    ):
        tmp = Path(tmp_name)
        server, console = layout.nodes, layout.console
        api = _login(console.url)
        fleet: Group | None = None
        try:
            # The probes go offline after the shortest staleness timeout, which needs the
            # shortest heartbeat interval; the fleet keeps its own interval (the simulator's
            # argument, never shortened by a poll interval below it).
            _settings(
                api,
                heartbeat_interval_s=SHORTEST_INTERVAL_S,
                staleness_timeout_s=STALENESS_S,
                poll_interval_s=max(30, interval_s),
            )
            token = _registration_token(server.url)
            # Each probe is used once; one more warms the page up (not counted).
            with _probes(server.url, token, 2 * samples + 1) as probes, chromium() as driver:
                driver.set_script_timeout(DOM_TIMEOUT_S + 5)
                log_in(driver, console.url, "admin@localhost", PASSWORD)
                first_page_baseline = _first_page_ms(driver, console.url)
                _watch_probes(driver, console.url, probes)  # waits out the staleness timeout
                _settings(api, staleness_timeout_s=DEFAULT_STALENESS_S)
                _log(
                    f"{layout.name}: nodes {server.url}, console {console.url}: "
                    f"{len(probes.names)} probes offline, in the table"
                )
                _sample(driver, probes)
                baseline = _phase("baseline", driver, probes, samples, budget)
                prefix = f"fleet-{uuid.uuid4().hex[:6]}"
                spread_s = nodes / float(plan["registrations_per_s"])
                fleet = _start_fleet(
                    server, token, plan, nodes, prefix, spread_s + 3 * budget + 180, tmp
                )
                online, online_s = _wait_online(
                    api, prefix, int(nodes * ONLINE_SHARE), float(plan["online_timeout_s"])
                )
                _log(f"{online}/{nodes} fleet nodes online after {online_s:.1f} s")
                sessions = {**layout.cpu_sessions, "simulator": fleet.process.pid}
                window_started, window_began = time.monotonic(), datetime.now(UTC)
                beats_before = _heartbeats_total(server.url) if layout.name == "web" else 0
                with EventCounter(server.redis_url) as events, CpuMeter(sessions) as cpu:
                    loaded = _phase("fleet", driver, probes, samples, budget)
                window_s = time.monotonic() - window_started
                if layout.name == "web":
                    beats = _heartbeats_total(server.url) - beats_before - len(loaded)
                else:  # per-process counters under gunicorn: count the nodes heard instead
                    database = Database(server.database_url)
                    beats = database.heartbeats_since(prefix, window_began)
                    database.close()
                stale = _count(api, "offline", prefix)
                first_page = _first_page_ms(driver, console.url)
                registered = _count(api, "online", "") + _count(api, "offline", "")
            memory = _memory(layout.console_pid)
            summary = _fleet_summary(fleet, tmp)
            fleet = None
        finally:
            if fleet is not None:
                fleet.stop()
            api.close()
    return _figure(
        layout=layout_name,
        nodes=nodes,
        interval_s=interval_s,
        registration_spread_s=spread_s,
        first_page=(first_page, first_page_baseline, registered),
        baseline=baseline,
        loaded=loaded,
        beats_per_s=beats / window_s,
        events=events.by_state,
        window_s=window_s,
        fleet_offline=stale,
        online_s=online_s,
        online_at_start=online,
        cpu=cpu.result,
        memory=memory,
        fleet=summary,
        bench_s=time.monotonic() - began,
        quick=quick,
    )


def _live_interval_s() -> float | None:
    with contextlib.suppress(Exception):
        from console.live import LIVE_INTERVAL_S

        return LIVE_INTERVAL_S
    return None


LAYOUTS = {
    "web": "python app.py (web: SQLite, embedded Redis stand-in; one process)",
    "production": (
        "fleet → api (gunicorn -w 2 -k gthread --threads 8, PostgreSQL, Redis, 2 RQ workers, "
        "cron); console → web (python app.py on the same PostgreSQL and Redis)"
    ),
}


def _figure(
    *,
    layout: str,
    nodes: int,
    interval_s: int,
    registration_spread_s: float,
    first_page: tuple[float, float, int],
    baseline: list[dict[str, float]],
    loaded: list[dict[str, float]],
    beats_per_s: float,
    events: dict[str, int],
    window_s: float,
    fleet_offline: int,
    online_s: float,
    online_at_start: int,
    cpu: dict[str, Any],
    memory: dict[str, float | None],
    fleet: dict[str, Any],
    bench_s: float,
    quick: bool,
) -> dict[str, Any]:
    value = _summary([s["latency_ms"] for s in loaded])
    base = _summary([s["latency_ms"] for s in baseline])
    p95, base_p95 = value["p95"], base["p95"]
    return {
        "console_live_update_ms_web": {
            "value": p95,
            "unit": "ms (p95)",
            "baseline": base_p95,
            "baseline_name": (
                "the same measurement on the same server before the fleet started "
                "(no background heartbeats), same run"
            ),
            "ratio": round(p95 / base_p95, 2) if p95 and base_p95 else None,
            "target_p95_ms": TARGET_P95_MS,
            "target_met": p95 is not None and p95 <= TARGET_P95_MS,
            "what": (
                "an offline probe node's heartbeat (status offline → online) → its row of the "
                "/nodes table (searched for the probes) in headless Chromium shows `online` "
                "(MutationObserver; from just before the heartbeat request)"
            ),
            "latency_ms": value,
            "samples": len(loaded),
            "baseline_latency_ms": base,
            "baseline_samples": len(baseline),
            "heartbeat_request_ms": _summary([s["heartbeat_request_ms"] for s in loaded]),
            "baseline_heartbeat_request_ms": _summary(
                [s["heartbeat_request_ms"] for s in baseline]
            ),
            "console_coalescing_interval_s": _live_interval_s(),
            "sample_pace_s": _live_interval_s() + 0.1,
            "nodes": nodes,
            "heartbeat_interval_s": interval_s,
            "heartbeats_per_s": round(beats_per_s, 1),
            "heartbeats_counted": (
                "the server's counter" if layout == "web" else "fleet nodes heard in the window"
            ),
            "heartbeats_per_s_offered": round(nodes / interval_s, 1),
            "staleness_timeout_s": DEFAULT_STALENESS_S,
            "events_during_fleet_samples": {
                "by_kind_state": events,
                "note": (
                    f"{len(loaded)} `node:online` are the samples' own; the rest are the "
                    "fleet's own changes (a node going stale and coming back)"
                ),
            },
            "window_s": round(window_s, 1),
            "fleet_online_after_s": round(online_s, 1),
            "fleet_registration_spread_s": round(registration_spread_s, 1),
            "fleet_online_before_samples": online_at_start,
            "fleet_offline_after_samples": fleet_offline,
            "fleet": {
                **fleet,
                "note": "the simulator's own summary over its whole run, registration included",
            },
            "web_memory": memory,
            "cpu_during_fleet_samples": {
                k: cpu.get(k)
                for k in (
                    "wall_s",
                    "cpu_s",
                    "machine_busy_share",
                    "not_ours_cpu_s",
                    "not_ours_top",
                    "cpus",
                )
            },
            "layout": layout,
            "server": LAYOUTS[layout],
            "bench_s": round(bench_s, 1),
            "quick": quick,
        },
        "console_nodes_first_page_ms_web": {
            "value": round(first_page[0]),
            "unit": "ms (median of 3 loads)",
            "baseline": round(first_page[1]),
            "baseline_name": "the same page load before the fleet started (probes only), same run",
            "ratio": round(first_page[0] / first_page[1], 2) if first_page[1] else None,
            "target_ms": TARGET_FIRST_PAGE_MS,
            "target_met": first_page[0] <= TARGET_FIRST_PAGE_MS,
            "nodes_registered": first_page[2],
            "heartbeat_interval_s": interval_s,
            "what": (
                "`/nodes` loaded fresh in headless Chromium (unfiltered, first page of the whole "
                "fleet) until its table shows rows, while the fleet heartbeats"
            ),
            "quick": quick,
        },
    }


def run(*, quick: bool) -> dict[str, Any]:
    try:
        return measure(quick=quick)
    except BrowserMissing as exc:
        _log(f"skipped: {exc}")
        return {"console_live_update_ms_web": {"value": None, "skipped": str(exc)}}


if __name__ == "__main__":
    quick = os.environ.get("QUICK") not in (None, "", "0") or "--quick" in sys.argv[1:]
    print(json.dumps(run(quick=quick), indent=2))
