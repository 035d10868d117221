"""The real `web` process: `python app.py` as `make run` starts it, and in production mode.

These start actual server processes on loopback ports and talk HTTP to them; the browser test
drives Debian's Chromium through chromedriver and leaves a screenshot in `test-artifacts/`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, ROOT, free_port, require_service, wait_for

ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.slow


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def start_server(env_extra: dict[str, str], tmp: Path) -> Server:
    port = free_port()
    data_dir = tmp / "data"
    log_path = tmp / "server.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY_BASE", "SENTINEL_ENV")
    }
    env.update(
        {
            "PORT": str(port),
            "SENTINEL_DATA_DIR": str(data_dir),
            "SENTINEL_ADMIN_PASSWORD": PASSWORD,
            **env_extra,
        }
    )
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(process, f"http://127.0.0.1:{port}", data_dir, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited early:\n{server.log()}")
        return httpx.get(f"{server.url}/ready", timeout=2).status_code == 200

    wait_for(ready, timeout=60, what="/ready")
    return server


@pytest.fixture(scope="module")
def embedded_server() -> Iterator[Server]:
    """Exactly what `make run` starts: no environment beyond a port and a data directory."""
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-embedded-"))
    server = start_server({}, tmp)
    yield server
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def test_embedded_server_serves_health_and_ready(embedded_server: Server) -> None:
    assert httpx.get(f"{embedded_server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{embedded_server.url}/ready").json()
    assert ready["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"}


def test_embedded_server_uses_sqlite_and_local_storage(embedded_server: Server) -> None:
    assert (embedded_server.data_dir / "sentinel.db").exists()
    assert (embedded_server.data_dir / "bundles").is_dir()


def test_embedded_cron_and_worker_run_periodic_jobs(embedded_server: Server) -> None:
    beat = wait_for(
        lambda: httpx.get(f"{embedded_server.url}/ready").json()["jobs_last_run_at"],
        timeout=45,
        what="a periodic job run by rq cron + rq worker",
    )
    assert beat.startswith("20")


def test_embedded_server_creates_admin_and_default_project(embedded_server: Server) -> None:
    with httpx.Client(base_url=embedded_server.url) as client:
        login = client.post(
            "/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD}
        )
        assert login.status_code == 200
        assert login.json()["role"] == "admin"
        slugs = [p["slug"] for p in client.get("/api/v1/projects").json()["items"]]
        assert slugs == ["default"]


def test_api_responses_carry_no_console_cookie(embedded_server: Server) -> None:
    response = httpx.get(f"{embedded_server.url}/api/openapi.json")
    assert response.status_code == 200
    assert "sentinel_console" not in response.headers.get("set-cookie", "")


def test_console_requires_login(embedded_server: Server) -> None:
    response = httpx.get(f"{embedded_server.url}/", follow_redirects=False)
    assert response.status_code in (302, 307)
    assert response.headers["location"].startswith("/login")


def test_console_pages_carry_security_headers(embedded_server: Server) -> None:
    response = httpx.get(f"{embedded_server.url}/login")
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_server_stops_its_worker_and_cron_children(tmp_path: Path) -> None:
    server = start_server({}, tmp_path)
    pids = [int(p) for p in re.findall(r"started (?:worker|cron) \(pid (\d+)\)", server.log())]
    assert len(pids) == 2
    assert server.stop() == 0

    def gone() -> bool:
        return not any(
            Path(f"/proc/{pid}").exists()
            and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
            for pid in pids
        )

    wait_for(gone, timeout=20, what="worker and cron to exit")


def test_production_mode_runs_on_postgres_and_real_redis(
    tmp_path: Path, postgres_url: str, real_redis_url: str
) -> None:
    server = start_server(
        {
            "SENTINEL_ENV": "production",
            "SECRET_KEY_BASE": "p" * 48,
            "DATABASE_URL": postgres_url,
            "REDIS_URL": real_redis_url,
            "HOST": "127.0.0.1",
        },
        tmp_path,
    )
    try:
        ready = httpx.get(f"{server.url}/ready").json()
        assert ready["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"}
        assert "started worker" not in server.log()  # Procfile processes run jobs in production
        assert not (server.data_dir / "sentinel.db").exists()
    finally:
        assert server.stop() == 0


# --- the console in a real browser ----------------------------------------------------------


@pytest.fixture
def chromium() -> Iterator[Any]:
    chromium_path = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    require_service(
        bool(chromium_path and driver_path),
        "Debian's chromium and chromium-driver are not installed",
    )
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path  # type: ignore[assignment]
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1280,800",
    ):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for_websocket(driver: Any) -> None:
    """NiceGUI handles clicks over its socket: wait for the handshake before clicking."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return window.did_handshake === true")
    )


@pytest.mark.browser
def test_admin_logs_in_to_the_console_in_chromium(embedded_server: Server, chromium: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(exist_ok=True)
    wait = WebDriverWait(chromium, 20)
    chromium.get(f"{embedded_server.url}/")
    email = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "input[autocomplete=username]"))
    )
    wait_for_websocket(chromium)
    chromium.save_screenshot(str(ARTIFACTS / "console-login.png"))

    email.send_keys("admin@localhost")
    chromium.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys("wrong password!!")
    chromium.find_element(By.XPATH, "//button[contains(., 'Log in')]").click()
    wait.until(
        ec.text_to_be_present_in_element(
            (By.XPATH, "//*[contains(@class, 'text-negative')]"), "Invalid email or password"
        )
    )

    chromium.refresh()  # a fresh form: webdriver's clear() bypasses Vue's input events
    wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "input[autocomplete=username]"))
    ).send_keys("admin@localhost")
    wait_for_websocket(chromium)
    chromium.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(PASSWORD)
    chromium.find_element(By.XPATH, "//button[contains(., 'Log in')]").click()
    wait.until(ec.presence_of_element_located((By.XPATH, "//*[text()='Next steps']")))
    wait_for_websocket(chromium)
    page = chromium.find_element(By.TAG_NAME, "body").text
    assert "admin@localhost" in page
    assert "admin" in page.split("admin@localhost", 1)[1]  # the role badge beside the email
    assert "project.created" in page  # the live audit trail of the default project
    cookies = {c["name"] for c in chromium.get_cookies()}
    assert {"sentinel_session", "sentinel_console"} <= cookies

    # A change made through the API reaches the open page over Redis pub/sub + websocket.
    with httpx.Client(base_url=embedded_server.url) as api:
        api.post("/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD})
        rotated = api.post("/api/v1/projects/default/registration-token", json={})
        assert rotated.status_code == 201
    wait.until(
        ec.text_to_be_present_in_element(
            (By.TAG_NAME, "body"), "project.registration_token_rotated"
        )
    )
    assert "Nodes online\n0" in chromium.find_element(By.TAG_NAME, "body").text
    registered = httpx.post(
        f"{embedded_server.url}/api/v1/projects/default/nodes/register",
        json={"name": "browser-node"},
        headers={"X-Sentinel-Registration-Token": rotated.json()["token"]},
    )
    assert registered.status_code == 201
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Nodes online\n1"))
    wait.until(ec.invisibility_of_element_located((By.XPATH, "//*[text()='Next steps']")))
    chromium.save_screenshot(str(ARTIFACTS / "console-dashboard.png"))

    chromium.find_element(By.XPATH, "//button[contains(., 'Log out')]").click()
    wait.until(ec.url_contains("/login"))
    chromium.get(f"{embedded_server.url}/")
    wait.until(ec.url_contains("/login"))


def test_gunicorn_workers_switch_threads_every_millisecond() -> None:
    """`gunicorn.conf.py` (read from the working directory by the Procfile's `api`) lowers the
    GIL switch interval in each worker it forks."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("gunicorn_conf", ROOT / "gunicorn.conf.py")
    assert spec is not None and spec.loader is not None
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    before = sys.getswitchinterval()
    try:
        config.post_fork(None, None)
        assert sys.getswitchinterval() == config.SWITCH_INTERVAL_S == 0.001
    finally:
        sys.setswitchinterval(before)
