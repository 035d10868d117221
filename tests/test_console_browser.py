"""The console's operator journeys in Chromium, against one real `python app.py` (embedded
mode: its own worker compiles and ticks) and one `sentinel-cp simulate` fleet of six nodes
that poll, apply and report as real agents do.

Every journey logs in through the login form. What a page shows is read from the DOM: the
pages' `.mark(...)` markers exist only on the server (NiceGUI's element filter), so the tests
find elements by their text, their Quasar classes, or the attributes the pages render (the
rollout grid's `data-state`). Screenshots land in `test-artifacts/`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_server
from bundle_helpers import BROKEN, CONFIG, route_config
from conftest import PASSWORD, require_service, wait_for
from e2e_helpers import admin_api, registration_token, submit_and_compile
from rollout_e2e_helpers import simulated_fleet
from test_server import ARTIFACTS, Server, start_server, wait_for_websocket

pytestmark = [pytest.mark.slow, pytest.mark.browser]
chromium = test_server.chromium  # the Selenium fixture of the server tests, shared

FLEET_SIZE = 6
APPLY_TIME_S = 2.5  # long enough to see a node between assigned and verified
BAKE_S = 300  # step 1 bakes far longer than a test: the rollout stays running until paused
READER = "reader@example.com"
PAGE_WAIT_S = 20
REPORT_WAIT_S = 30  # a simulated node: poll (1 s heartbeat), download, apply, report
PAUSE_REASON = "checking the error budget by hand"
ACTION_LABELS = (
    "Approve",
    "Reject",
    "Start now",
    "Resume",
    "Promote",
    "Pause",
    "Cancel",
    "Roll back",
)
CHIPS = """
return Array.from(document.querySelectorAll('span[data-state]')).map(s => ({
    name: s.title.split(': ')[0], state: s.dataset.state, classes: s.className,
    colour: getComputedStyle(s).backgroundColor}))
"""
STATE_BADGE = "return document.querySelector('.q-page .q-card .q-badge').innerText.trim()"


@dataclass
class Console:
    """The shared server, the admin's API session, two compiled bundles and the fleet."""

    server: Server
    api: httpx.Client
    bundles: dict[str, str]  # version → id

    @property
    def url(self) -> str:
        return self.server.url

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        shown = self.api.get(f"/api/v1/projects/default/rollouts/{rollout_id}")
        assert shown.status_code == 200, shown.text
        body: dict[str, Any] = shown.json()
        return body

    def cancel(self, rollout_id: str) -> None:
        """Free the fleet for the next journey (a paused rollout holds its nodes)."""
        if self.rollout(rollout_id)["state"] in ("pending", "running", "paused"):
            cancelled = self.api.post(
                f"/api/v1/projects/default/rollouts/{rollout_id}/cancel",
                json={"reason": "test cleanup"},
            )
            assert cancelled.status_code == 200, cancelled.text


def online_nodes(api: httpx.Client) -> list[dict[str, Any]]:
    page = api.get("/api/v1/projects/default/nodes", params={"status": "online"})
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


@pytest.fixture(scope="module")
def console() -> Iterator[Console]:
    # Checked before the server starts (the `chromium` fixture checks too, but only later).
    require_service(
        bool(shutil.which("chromium") and shutil.which("chromedriver")),
        "Debian's chromium and chromium-driver are not installed",
    )
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-console-browser-"))
    server = start_server({}, tmp)
    try:
        with admin_api(server) as api:
            reader = api.post(
                "/api/v1/users", json={"email": READER, "password": PASSWORD, "role": "reader"}
            )
            assert reader.status_code == 201, reader.text
            token = registration_token(api)
            with simulated_fleet(
                server, "default", token, FLEET_SIZE, "edge", tmp, apply_time=APPLY_TIME_S
            ):
                bundles = {
                    version: submit_and_compile(api, config, version)["id"]
                    for version, config in (("2024.07.1", CONFIG), ("2024.07.2", route_config(2)))
                }
                wait_for(
                    lambda: len(online_nodes(api)) == FLEET_SIZE,
                    timeout=30,
                    what=f"{FLEET_SIZE} simulated nodes online",
                )
                yield Console(server, api, bundles)
    finally:
        stopped = server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        assert stopped == 0


# --- driving the pages --------------------------------------------------------------------


def waiting(driver: Any, timeout: float = PAGE_WAIT_S) -> Any:
    """A WebDriverWait that looks again when Vue replaced the element under it."""
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver,
        timeout,
        ignored_exceptions=(
            NoSuchElementException,
            StaleElementReferenceException,
            ElementClickInterceptedException,
        ),
    )


def click(driver: Any, xpath: str) -> None:
    from selenium.webdriver.common.by import By

    waiting(driver).until(lambda d: d.find_element(By.XPATH, xpath).click() or True)


def body_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def log_in(driver: Any, base: str, path: str, email: str) -> None:
    """Open `path`, get sent to the login form, log in there and land back on `path`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(f"{base}{path}")
    field = waiting(driver).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "input[autocomplete=username]"))
    )
    assert "/login" in driver.current_url
    wait_for_websocket(driver)
    field.send_keys(email)
    driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(PASSWORD)
    click(driver, "//button[contains(., 'Log in')]")
    waiting(driver).until(lambda d: d.current_url == f"{base}{path}")
    wait_for_websocket(driver)


def field_input(driver: Any, label: str) -> Any:
    """The <input> of the Quasar field labelled `label`."""
    from selenium.webdriver.common.by import By

    xpath = (
        f"//label[contains(@class, 'q-field')][.//div[contains(@class, 'q-field__label') and "
        f"normalize-space()='{label}']]//input"
    )
    return waiting(driver).until(lambda d: d.find_element(By.XPATH, xpath))


def choose(driver: Any, label: str, option: str) -> None:
    """Open the select labelled `label` and click the option whose text contains `option`."""
    click(
        driver,
        f"//label[contains(@class, 'q-field')][.//div[contains(@class, 'q-field__label') and "
        f"normalize-space()='{label}']]",
    )
    click(
        driver,
        f"//div[contains(@class, 'q-menu')]//div[contains(@class, 'q-item')]"
        f"[contains(., '{option}')]",
    )
    waiting(driver).until(
        lambda d: d.execute_script("return document.querySelector('.q-menu') === null")
    )


def chips(driver: Any) -> dict[str, dict[str, str]]:
    """The rollout grid's node chips, by node name: state, classes and painted colour."""
    return {chip["name"]: chip for chip in driver.execute_script(CHIPS)}


def still_same_page(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__same_page === true"))


def action_buttons(driver: Any) -> list[str]:
    """The rollout actions among the page content's buttons (the header's Log out is not
    content; an icon's ligature, e.g. `pause`, is lower case and not a label)."""
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll('.q-page button')).map(b => b.textContent)"
    )
    return [label for text in texts for label in ACTION_LABELS if label in text]


# --- 1. a broken config, validated in the browser -----------------------------------------


def test_validating_a_broken_config_shows_the_error_at_its_line(
    console: Console, chromium: Any
) -> None:
    from selenium.webdriver.common.by import By

    log_in(chromium, console.url, "/bundles/new", "admin@localhost")
    editor = waiting(chromium).until(lambda d: d.find_element(By.TAG_NAME, "textarea"))
    editor.send_keys(BROKEN)
    waiting(chromium).until(lambda _: editor.get_attribute("value") == BROKEN)
    click(chromium, "//button[contains(., 'Validate')]")
    waiting(chromium).until(lambda d: "Invalid: 1 error" in body_text(d))

    text = body_text(chromium)
    assert "sentinel.kdl:12:5" in text  # file:line:column of the route naming no upstream
    assert "Route 'api' references upstream 'nowhere' which doesn't exist." in text
    # The excerpt under the error highlights line 12 (its row carries the severity class).
    number, line = chromium.execute_script(
        "const row = document.querySelector('table.sb-code tr.error');"
        "return [row.querySelector('td.n').textContent, row.querySelector('td.t').textContent]"
    )
    assert (number, line) == ("12", '    route "api" {')
    highlighted = chromium.find_element(By.CSS_SELECTOR, "table.sb-code tr.error td.t")
    assert highlighted.is_displayed()
    plain = chromium.find_element(By.CSS_SELECTOR, "table.sb-code tr:not([class]) td.t")
    assert highlighted.value_of_css_property("background-color") != (
        plain.value_of_css_property("background-color")
    )

    ARTIFACTS.mkdir(exist_ok=True)
    chromium.set_window_size(1280, 1600)  # the editor and the diagnostics in one picture
    chromium.save_screenshot(str(ARTIFACTS / "console-bundle-error.png"))


# --- 2 and 3. a rollout started in the console, followed live, paused --------------------


def test_a_rollout_created_in_the_console_shows_nodes_verifying_live_and_pauses(
    console: Console, chromium: Any
) -> None:
    from selenium.webdriver.common.by import By

    log_in(chromium, console.url, "/rollouts/new", "admin@localhost")
    waiting(chromium).until(lambda d: f"{FLEET_SIZE} nodes match" in body_text(d))
    choose(chromium, "Bundle (compiled)", "2024.07.1")
    choose(chromium, "Strategy", "rolling (batches)")
    field_input(chromium, "Batch size (nodes)").send_keys("2")
    field_input(chromium, "Bake time (s)").send_keys(str(BAKE_S))
    waiting(chromium).until(lambda d: "3 steps" in body_text(d))  # the plan preview
    click(chromium, "//button[contains(., 'Create rollout')]")
    waiting(chromium).until(lambda d: "/rollouts/new" not in d.current_url)
    rollout_id = chromium.current_url.rsplit("/", 1)[1]
    try:
        created = console.rollout(rollout_id)
        assert created["bundle_id"] == console.bundles["2024.07.1"]
        assert created["strategy"] == "rolling"
        assert [len(step["nodes"]) for step in created["steps"]] == [2, 2, 2]
        assert created["config"]["bake_s"] == BAKE_S

        waiting(chromium).until(lambda d: len(chips(d)) == FLEET_SIZE)
        wait_for_websocket(chromium)
        chromium.execute_script("window.__same_page = true")
        first_step = [node["name"] for node in created["steps"][0]["nodes"]]
        before = chips(chromium)
        in_flight = [name for name in first_step if before[name]["state"] != "verified"]
        assert in_flight, f"step 1 verified before the page could watch it: {before}"
        watched = before[in_flight[0]]
        assert watched["state"] in ("pending", "assigned", "downloaded", "staged", "activated")

        waiting(chromium, REPORT_WAIT_S).until(
            lambda d: all(chips(d).get(name, {}).get("state") == "verified" for name in first_step)
        )
        grid = chips(chromium)
        after = grid[watched["name"]]
        assert "bg-green-7" in after["classes"] and "bg-green-7" not in watched["classes"]
        assert after["colour"] != watched["colour"]
        later = {chip["state"] for name, chip in grid.items() if name not in first_step}
        assert later == {"pending"}  # steps 2 and 3 wait for step 1's bake
        assert "2/6 verified" in body_text(chromium)
        assert still_same_page(chromium)  # followed over the websocket, never reloaded
        ARTIFACTS.mkdir(exist_ok=True)
        chromium.set_window_size(1280, 1300)
        chromium.save_screenshot(str(ARTIFACTS / "console-rollout-live.png"))

        assert chromium.execute_script(STATE_BADGE) == "running"
        click(chromium, "//div[contains(@class, 'q-page')]//button[contains(., 'Pause')]")
        dialog = waiting(chromium).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".q-dialog input")
        )
        # the question is read once the dialog has faded in (Selenium skips transparent text)
        waiting(chromium).until(lambda d: "No further node is assigned" in body_text(d))
        dialog.send_keys(PAUSE_REASON)
        click(chromium, "//div[contains(@class, 'q-dialog')]//button[contains(., 'Pause')]")
        waiting(chromium).until(lambda d: d.execute_script(STATE_BADGE) == "paused")
        text = body_text(chromium)
        assert "Operator paused" in text and PAUSE_REASON in text
        assert action_buttons(chromium) == ["Resume", "Cancel", "Roll back"]
        assert still_same_page(chromium)

        paused = console.rollout(rollout_id)
        assert (paused["state"], paused["reason"]) == ("paused", "operator_paused")
        audit = console.api.get(
            "/api/v1/projects/default/audit",
            params={"action": "rollout.paused", "resource": f"rollout:{rollout_id}"},
        )
        assert audit.status_code == 200, audit.text
        (entry,) = audit.json()["items"]
        assert entry["actor"]["label"] == "admin@localhost"
        assert entry["metadata"] == {"reason": PAUSE_REASON}
        assert entry["changes"] == {"state": ["running", "paused"]}
    finally:
        console.cancel(rollout_id)


# --- 4. a reader sees a rollout but cannot act on it --------------------------------------


def test_a_reader_sees_a_paused_rollout_without_any_action_button(
    console: Console, chromium: Any
) -> None:
    created = console.api.post(
        "/api/v1/projects/default/rollouts",
        json={
            "bundle_id": console.bundles["2024.07.2"],
            "strategy": "rolling",
            "batch_size": 2,
            "bake_s": BAKE_S,
        },
    )
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    try:
        paused = console.api.post(
            f"/api/v1/projects/default/rollouts/{rollout_id}/pause",
            json={"reason": "for the reader to look at"},
        )
        assert paused.status_code == 200, paused.text

        log_in(chromium, console.url, f"/rollouts/{rollout_id}", READER)
        waiting(chromium).until(lambda d: len(chips(d)) == FLEET_SIZE)
        text = body_text(chromium)
        assert READER in text and "2024.07.2 · rolling" in text
        assert chromium.execute_script(STATE_BADGE) == "paused"  # admins get Resume here
        assert action_buttons(chromium) == []
    finally:
        console.cancel(rollout_id)
