"""Activation drivers: the file driver against a fake proxy process, and the simulated driver.

The fake proxy is a small Python script run as a real process: it writes its pid file, reads
`<config dir>/sentinel.kdl` at start and again on every SIGHUP, and serves on 127.0.0.1
`/health` (200, or 500 when the loaded config contains "broken") and `/state` (what it loaded and
how many times). Every wait is a condition polled against a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for

from agent.drivers import ActivationFailed, FileDriver, SimulatedDriver

FAKE_PROXY = r"""
import http.server, json, os, pathlib, signal, sys

config_dir, pid_file, port_file = (pathlib.Path(a) for a in sys.argv[1:4])
state = {"reloads": 0, "config": None}

def load(*_):
    try:
        state["config"] = (config_dir / "sentinel.kdl").read_text()
    except OSError:
        state["config"] = None
    state["reloads"] += 1

load()
signal.signal(signal.SIGHUP, load)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            healthy = state["config"] is not None and "broken" not in state["config"]
            code, body = (200, b"ok") if healthy else (500, b"bad config")
        elif self.path == "/state":
            code, body = 200, json.dumps(state).encode()
        else:
            code, body = 404, b""
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

def publish(path, text):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)

# One thread: a SIGHUP is handled before the next request is served.
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
publish(port_file, str(server.server_address[1]))
publish(pid_file, str(os.getpid()))
server.serve_forever()
"""


def wait_until(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str) -> Any:
    return wait_for(predicate, timeout=timeout, what=what, interval=0.01, tolerate_errors=False)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


@dataclass
class FakeProxy:
    config_dir: Path
    pid_file: Path
    url: str
    process: subprocess.Popen[bytes]

    async def state(self) -> dict[str, Any]:
        async with httpx.AsyncClient(trust_env=False) as http:
            return dict((await http.get(f"{self.url}/state")).json())

    async def has_loaded(self, config: str, reloads: int) -> bool:
        state = await self.state()
        return bool(state["config"] == config and state["reloads"] == reloads)


def write_config(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sentinel.kdl").write_text(text)
    (directory / "manifest.json").write_text(json.dumps({"config": text}))
    return directory


@pytest.fixture
def fake_proxy(tmp_path: Path) -> Iterator[FakeProxy]:
    config_dir = write_config(tmp_path / "etc" / "sentinel", "v1\n")
    script = tmp_path / "fake_proxy.py"
    script.write_text(FAKE_PROXY)
    pid_file, port_file = tmp_path / "proxy.pid", tmp_path / "proxy.port"
    process = subprocess.Popen(
        [sys.executable, str(script), str(config_dir), str(pid_file), str(port_file)]
    )
    try:
        wait_until(pid_file.exists, what="the fake proxy's pid file")
        port = int(port_file.read_text())
        yield FakeProxy(config_dir, pid_file, f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def file_driver(proxy: FakeProxy, **options: Any) -> FileDriver:
    return FileDriver(
        proxy.config_dir,
        pid_file=proxy.pid_file,
        health_url=f"{proxy.url}/health",
        health_timeout_s=options.pop("health_timeout_s", 1.0),
        **options,
    )


# --- the file driver, end to end ------------------------------------------------------------


async def test_activation_swaps_the_config_and_reloads_the_proxy_by_sighup(
    fake_proxy: FakeProxy, tmp_path: Path
) -> None:
    driver = file_driver(fake_proxy)
    await driver.activate(write_config(tmp_path / "staged-v2", "v2\n"))
    await driver.verify()

    assert fake_proxy.config_dir.is_symlink()
    assert (fake_proxy.config_dir / "sentinel.kdl").read_text() == "v2\n"
    await eventually(lambda: fake_proxy.has_loaded("v2\n", reloads=2))
    assert fake_proxy.process.poll() is None


async def test_a_failing_health_check_restores_the_last_good_config_and_reloads_again(
    fake_proxy: FakeProxy, tmp_path: Path
) -> None:
    driver = file_driver(fake_proxy)
    await driver.activate(write_config(tmp_path / "staged-v2", "v2\n"))
    await driver.verify()
    good = driver.current_release()

    await driver.activate(write_config(tmp_path / "staged-v3", "v3 broken\n"))
    with pytest.raises(ActivationFailed) as caught:
        await driver.verify()

    assert caught.value.reason == (
        f"health check failed: HTTP 500 from {fake_proxy.url}/health; restored previous config"
    )
    assert driver.current_release() == good
    assert (fake_proxy.config_dir / "sentinel.kdl").read_text() == "v2\n"
    # start, v2, v3 (broken), v2 again: the proxy was reloaded onto the restored config
    await eventually(lambda: fake_proxy.has_loaded("v2\n", reloads=4))
    await driver.rollback()  # nothing pending any more: no fifth reload
    assert (await fake_proxy.state())["reloads"] == 4


async def test_a_failing_config_test_leaves_the_live_config_and_the_proxy_alone(
    fake_proxy: FakeProxy, tmp_path: Path
) -> None:
    check = "import sys; t = open(sys.argv[1]).read(); print('invalid: ' + t.strip()); sys.exit(3)"
    driver = file_driver(fake_proxy, test_command=f"{sys.executable} -c {check!r} {{config}}")
    with pytest.raises(ActivationFailed) as caught:
        await driver.activate(write_config(tmp_path / "staged", "v2 bad\n"))
    assert caught.value.reason == "config test failed (exit 3)"
    assert caught.value.logs == "invalid: v2 bad\n"
    assert not fake_proxy.config_dir.is_symlink()
    assert (fake_proxy.config_dir / "sentinel.kdl").read_text() == "v1\n"
    assert await fake_proxy.has_loaded("v1\n", reloads=1)


async def test_a_dead_proxy_fails_the_reload_and_the_previous_config_is_restored(
    fake_proxy: FakeProxy, tmp_path: Path
) -> None:
    fake_proxy.process.terminate()
    fake_proxy.process.wait(timeout=10)
    driver = file_driver(fake_proxy)
    with pytest.raises(ActivationFailed, match=r"^reload failed: no process \d+; restored"):
        await driver.activate(write_config(tmp_path / "staged", "v2\n"))
    assert (fake_proxy.config_dir / "sentinel.kdl").read_text() == "v1\n"


# --- the file driver, on disk ---------------------------------------------------------------


async def test_the_first_activation_adopts_a_plain_directory_and_rollback_returns_to_it(
    tmp_path: Path,
) -> None:
    config_dir = write_config(tmp_path / "etc" / "sentinel", "original\n")
    driver = FileDriver(config_dir)
    await driver.activate(write_config(tmp_path / "staged", "new\n"))
    assert config_dir.is_symlink()
    assert (config_dir / "sentinel.kdl").read_text() == "new\n"

    await driver.rollback()
    assert config_dir.is_symlink()
    assert (config_dir / "sentinel.kdl").read_text() == "original\n"
    assert sorted(p.name.split("-")[0] for p in driver.releases_dir.iterdir()) == ["initial"]


async def test_a_verified_activation_keeps_only_the_live_and_the_last_good_release(
    tmp_path: Path,
) -> None:
    config_dir = write_config(tmp_path / "etc" / "sentinel", "v1\n")
    driver = FileDriver(config_dir)
    for version in ("v2", "v3", "v4"):
        await driver.activate(write_config(tmp_path / f"staged-{version}", f"{version}\n"))
        await driver.verify()
    contents = sorted((r / "sentinel.kdl").read_text() for r in driver.releases_dir.iterdir())
    assert contents == ["v3\n", "v4\n"]


async def test_a_reload_command_is_run_after_the_swap(tmp_path: Path) -> None:
    config_dir = write_config(tmp_path / "etc" / "sentinel", "v1\n")
    seen = tmp_path / "seen"
    copy = f"import shutil; shutil.copy('{config_dir}/sentinel.kdl', '{seen}')"
    driver = FileDriver(config_dir, reload_command=f"{sys.executable} -c {copy!r}")
    await driver.activate(write_config(tmp_path / "staged", "v2\n"))
    assert seen.read_text() == "v2\n"


def test_the_live_config_is_never_missing_or_mixed_while_it_is_swapped(tmp_path: Path) -> None:
    """A reader resolving the link at any moment finds one complete release.

    The directory is adopted first: before that, `config_dir` is the proxy's plain directory,
    whose "resolved" path is itself and changes meaning at the adoption's exchange (CI once
    caught a reader mixing the plain v0 with v1 that way), so there is no release to hold.
    """
    config_dir = write_config(tmp_path / "etc" / "sentinel", "v0\n")
    driver = FileDriver(config_dir)
    asyncio.run(driver.activate(write_config(tmp_path / "staged-adopt", "v0\n")))
    asyncio.run(driver.verify())
    assert config_dir.is_symlink()
    done = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            release = Path(os.path.realpath(config_dir))
            try:
                text = (release / "sentinel.kdl").read_text()
                manifest = json.loads((release / "manifest.json").read_text())
            except (OSError, ValueError) as exc:
                if Path(os.path.realpath(config_dir)) != release:
                    continue  # swapped and pruned after we resolved it: a stale read, retry
                problems.append(repr(exc))
                continue
            if manifest["config"] != text:
                problems.append(f"mixed release: {text!r} vs {manifest!r}")
            reads += 1

    async def swaps() -> None:
        for n in range(1, 30):
            await driver.activate(write_config(tmp_path / f"staged-{n}", f"v{n}\n"))
            await driver.verify()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        asyncio.run(swaps())
    finally:
        done.set()
        thread.join(timeout=10)
    assert problems == []
    assert reads > 0


async def test_the_health_check_polls_until_the_proxy_answers_2xx() -> None:
    answers = iter([503, 503, 200])
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(next(answers))))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    driver = FileDriver(
        Path("/nonexistent"), health_url="http://proxy/health", http=http, sleep=sleep
    )
    assert await driver.wait_healthy() == (True, "HTTP 200")
    assert slept == [0.05, 0.1]


async def test_the_health_check_gives_up_at_its_deadline() -> None:
    now = [0.0]

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    driver = FileDriver(
        Path("/nonexistent"),
        health_url="http://proxy/health",
        health_timeout_s=2.0,
        http=httpx.AsyncClient(transport=httpx.MockTransport(refuse)),
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert await driver.wait_healthy() == (False, "http://proxy/health unreachable (ConnectError)")
    assert now[0] == pytest.approx(2.0)


# --- the simulated driver -------------------------------------------------------------------


async def test_the_simulated_driver_takes_its_apply_time() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    driver = SimulatedDriver(apply_time_s=2.5, sleep=sleep)
    await driver.activate(Path("staged"))
    await driver.verify()
    assert slept == [2.5]


async def test_the_simulated_driver_fails_health_at_its_failure_rate() -> None:
    driver = SimulatedDriver(failure_rate=0.3, random=random.Random(4))
    failures = 0
    for _ in range(1000):
        await driver.activate(Path("staged"))
        try:
            await driver.verify()
        except ActivationFailed as exc:
            assert exc.reason == "simulated health check failure"
            failures += 1
            await driver.rollback()
    assert 250 < failures < 350
    assert driver.rollbacks == failures
