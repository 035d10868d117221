"""Debian's headless Chromium for the tools that drive the console from outside:
`bench/console_live.py` (live update latency) and `scripts/screenshots.py` (the README's images).

Only the system's `/usr/bin/chromium` and `/usr/bin/chromedriver` are used (`SE_OFFLINE` keeps
selenium-manager from ever downloading a browser), with a fresh profile that is removed on exit.
Waits poll real conditions (an element, the websocket handshake) with a deadline; never sleeps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

WINDOW = (1400, 1000)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


class BrowserMissing(RuntimeError):
    """Debian's chromium or chromedriver is not installed."""


@contextlib.contextmanager
def chromium(window: tuple[int, int] = WINDOW) -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile, `window` pixels wide and high."""
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        raise BrowserMissing(
            "Debian's chromium and chromedriver are needed (apt-get install chromium "
            "chromium-driver)"
        )
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, f"--window-size={window[0]},{window[1]}"):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        # --window-size sets the outer window; screenshots are of the viewport, so size that.
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        outer = driver.get_window_size()
        driver.set_window_size(
            outer["width"] + window[0] - inner[0], outer["height"] + window[1] - inner[1]
        )
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver: Any, condition: Any, timeout: float, what: str) -> Any:
    """`condition(driver)`'s first truthy value, polled until `timeout`; a timeout names `what`."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}") from None


def wait_for_websocket(driver: Any, timeout: float = 30) -> None:
    """NiceGUI handles clicks and pushes updates over its socket: wait for the handshake."""
    wait_until(
        driver,
        lambda d: d.execute_script("return window.did_handshake === true"),
        timeout,
        "the console's websocket",
    )


def open_page(driver: Any, url: str, text: str, timeout: float = 30) -> None:
    """Load `url` and wait until its socket is connected and `text` is on the page."""
    driver.get(url)
    wait_for_websocket(driver, timeout)
    wait_until(
        driver,
        lambda d: text in d.execute_script("return document.body.innerText"),
        timeout,
        f"{text!r} on {url}",
    )


def log_in(driver: Any, base_url: str, email: str, password: str, timeout: float = 30) -> None:
    """Log in through the console's own form; returns on the dashboard."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/login")
    email_input = wait_until(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "input[autocomplete=username]"),
        timeout,
        "the login form",
    )[0]
    wait_for_websocket(driver, timeout)
    email_input.send_keys(email)
    driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(password)
    driver.find_element(By.XPATH, "//button[contains(., 'Log in')]").click()

    def landed(d: Any) -> bool:
        from selenium.common.exceptions import StaleElementReferenceException

        if "/login" not in d.current_url:
            return True
        try:
            error = d.find_elements(By.XPATH, "//*[contains(@class, 'text-negative')]")
            message = error[0].text.strip() if error else ""
        except StaleElementReferenceException:
            return False  # the page is re-rendering (navigating away): look again
        if message:
            raise RuntimeError(f"login refused: {message}")
        return False

    wait_until(driver, landed, timeout, "the login to finish")
    wait_for_websocket(driver, timeout)
