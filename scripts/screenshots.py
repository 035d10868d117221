"""`make screenshots`: the README's console images, taken from a live `sentinel-cp demo`.

It starts the demo (`sentinel-cp demo`: the embedded system, 50 simulated nodes heartbeating
every 5 s, bundles demo-v1 and demo-v2, a finished rollout of demo-v1) in a process of its own
on a free loopback port and a fresh data directory, starts a rolling rollout of demo-v2 through
the API (20 % batches, a bake between steps) and, in Debian's headless Chromium at 1400×1000,
logs in through the console's form and writes to `docs/screenshots/`:

- `rollout.png`: that rollout while it is under way (a step done, a step partway, steps to go);
- `dashboard.png`: the dashboard during it;
- `bundle-diff.png`: `/bundles/diff` from demo-v1 to demo-v2.

Every wait is a condition polled with a deadline (the page's text, the websocket handshake,
the node grid's states), never a fixed sleep. Any failure exits 1 with the step that failed and
keeps the demo's data directory (with its `web.log`) for a look.

It lives in `scripts/` rather than `bench/`: it makes documentation, not a measurement, so
`make bench` must not run it; it borrows `bench/chromium.py`, the browser set-up it shares with
`bench/console_live.py`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402

from bench.chromium import chromium, log_in, open_page, wait_until  # noqa: E402
from sentinel_cp.demo import ADMIN_EMAIL, Operator  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
DEMO_TIMEOUT_S = 240.0
PAGE_TIMEOUT_S = 30.0
# Rolling in 20 % batches with a bake between steps: long enough to catch it partway.
ROLLOUT = {"strategy": "rolling", "batch_percent": 20, "bake_s": 20}
PARTWAY_TIMEOUT_S = 150.0


class ScreenshotError(RuntimeError):
    """A step of the run failed (the message says which)."""


@dataclass
class Demo:
    url: str
    password: str
    bundles: list[str]  # demo-v1, demo-v2
    data_dir: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_demo(data_dir: Path) -> Iterator[Demo]:
    """`sentinel-cp demo` until it prints its summary; interrupted (Ctrl-C) on exit."""
    port = _free_port()
    err = (data_dir / "demo.err").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
        [sys.executable, "-m", "sentinel_cp.cli", "demo", "--port", str(port),
         "--data-dir", str(data_dir / "demo")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        summary: dict[str, Any] | None = None
        while summary is None:
            ready = [line for line in list(lines) if line.startswith("{")]
            if ready:
                summary = json.loads(ready[0])
                break
            if process.poll() is not None:
                raise ScreenshotError(
                    f"the demo exited with {process.returncode}: "
                    f"{(data_dir / 'demo.err').read_text().strip()[-500:]}"
                )
            if time.monotonic() > deadline:
                raise ScreenshotError(f"the demo was not ready after {DEMO_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        password = re.search(r"with password (\S+)", "".join(lines))
        if password is None:
            raise ScreenshotError("the demo printed no admin password")
        yield Demo(summary["url"], password[1], list(summary["bundles"]), data_dir)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        err.close()


def _grid_states(driver: Any) -> dict[str, int]:
    """How many cells of the rollout's node grid are in each delivery state."""
    states: dict[str, int] = driver.execute_script(
        "const counts = {};"
        "for (const cell of document.querySelectorAll('[data-state]'))"
        "  counts[cell.dataset.state] = (counts[cell.dataset.state] || 0) + 1;"
        "return counts;"
    )
    return states


def _partway(driver: Any) -> dict[str, int] | None:
    """The grid when the rollout is visibly under way: a step finished, nodes still pending,
    and the current step's nodes in more than one state (so the grid shows 3+ colours)."""
    text = driver.execute_script("return document.body.innerText")
    if "running" not in text or not re.search(r"Step \d+ · \w+ · completed", text):
        return None
    states = _grid_states(driver)
    if states.get("verified") and states.get("pending") and len(states) >= 3:
        return states
    return None


def take(driver: Any, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    if not driver.save_screenshot(str(path)):
        raise ScreenshotError(f"Chromium could not write {path}")
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return path


def screenshots(demo: Demo) -> None:
    old, new = demo.bundles
    operator = Operator(demo.url, demo.password)
    with chromium() as driver:
        log_in(driver, demo.url, ADMIN_EMAIL, demo.password, PAGE_TIMEOUT_S)
        rollout = operator.call("POST", "/rollouts", json={"bundle_id": new, **ROLLOUT})
        print(f"rollout {rollout['id']} of demo-v2 started", file=sys.stderr)
        open_page(driver, f"{demo.url}/rollouts/{rollout['id']}", "Nodes", PAGE_TIMEOUT_S)
        states = wait_until(
            driver, _partway, PARTWAY_TIMEOUT_S, "the rollout to be partway (grid in 3+ states)"
        )
        print(f"rollout partway: {states}", file=sys.stderr)
        take(driver, "rollout.png")

        # The rollout's row under Rollouts: the dashboard is rendered with the live data.
        open_page(driver, f"{demo.url}/", "demo-v2 · rolling", PAGE_TIMEOUT_S)
        take(driver, "dashboard.png")

        open_page(
            driver, f"{demo.url}/bundles/diff?a={old}&b={new}", "From demo-v1 to demo-v2",
            PAGE_TIMEOUT_S,
        )  # fmt: skip
        wait_until(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, ".sb-scroll table.sb-diff td.add"),
            PAGE_TIMEOUT_S,
            "the side-by-side diff",
        )
        take(driver, "bundle-diff.png")
    operator.api.close()


def main() -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="sentinel-screenshots-"))
    try:
        with running_demo(data_dir) as demo:
            print(f"demo ready on {demo.url}", file=sys.stderr)
            screenshots(demo)
    except Exception as exc:  # any failure: say which step, keep the logs
        print(f"screenshots: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        print(f"screenshots: the demo's logs are kept in {data_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
