"""A headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium, for
the dashboard's browser tests.

Selenium is synchronous: every call runs in a worker thread (``trio.to_thread``) so the trio
loop, which serves the gateway under test in the same process, keeps running. Each wait is
bounded twice: by Selenium's own timeout in the thread, and by the test's
``trio.fail_after`` (the thread is then abandoned, and the browser killed at teardown).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

# Seconds one wait for the page may take: live updates arrive within a second or two.
WAIT = 15.0
REPOSITORY = Path(__file__).resolve().parents[2]
# Screenshots of each page, kept after the run (ignored by git).
ARTIFACTS = REPOSITORY / "test-artifacts" / "dashboard"

T = TypeVar("T")


def find_browser() -> tuple[str, str] | None:
    """Paths of chromium and chromedriver, or None when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        return None
    return chromium, driver


def start_chromium(chromium: str, driver: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        # Tests run as root in containers, where Chromium's sandbox cannot start.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    # The driver path is given: Selenium Manager must not try to download one.
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    browser.set_page_load_timeout(WAIT)
    browser.set_script_timeout(WAIT)
    return browser


class Browser:
    """Async wrappers over one Chrome session."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(function, *args), abandon_on_cancel=True)

    async def open(self, url: str) -> None:
        await self._run(self.driver.get, url)

    async def script(self, source: str, *args: Any) -> Any:
        return await self._run(self.driver.execute_script, source, *args)

    async def element(self, css: str) -> WebElement:
        """The first element matching ``css``, once there is one."""
        return await self.wait_for(
            f"an element {css}", lambda driver: driver.find_element(By.CSS_SELECTOR, css)
        )

    async def text(self, css: str) -> str:
        element = await self.element(css)
        return await self._run(lambda: element.text)

    async def wait_for(self, description: str, condition: Callable[[webdriver.Chrome], Any]) -> Any:
        """Until ``condition(driver)`` is truthy; fails naming ``description`` after WAIT."""
        try:
            return await self._run(
                lambda: WebDriverWait(self.driver, WAIT, ignored_exceptions=(Exception,)).until(
                    condition
                )
            )
        except TimeoutException:
            # What the page said (script errors, CSP violations) is the likeliest cause.
            logs = await self._run(self.driver.get_log, "browser")
            await self.screenshot("failure")
            raise AssertionError(
                f"waited {WAIT:g} s for {description} on {self.driver.current_url}; "
                f"browser console: {[entry['message'] for entry in logs]}"
            ) from None

    async def wait_text(self, css: str, expected: str) -> None:
        """Until the element matching ``css`` shows exactly ``expected``."""
        await self.wait_for(
            f"{css} to read {expected!r}",
            lambda driver: driver.find_element(By.CSS_SELECTOR, css).text == expected,
        )

    async def click(self, css: str) -> None:
        element = await self.element(css)
        await self._run(element.click)

    async def type(self, css: str, text: str) -> None:
        element = await self.element(css)
        await self._run(element.clear)
        await self._run(element.send_keys, text)

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self._run(self.driver.save_screenshot, str(path))
        return path

    async def console_errors(self) -> list[str]:
        """The page's console errors (a CSP violation shows up here)."""
        logs = await self._run(self.driver.get_log, "browser")
        return [entry["message"] for entry in logs if entry["level"] == "SEVERE"]
