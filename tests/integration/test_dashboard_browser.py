"""The dashboard in a real browser (headless Chromium), against a real gateway (embedded
broker) and simulated devices on real MQTT connections.

Each test leaves a screenshot of the page it checked under test-artifacts/dashboard/.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import trio
from selenium.webdriver.common.by import By

from pm.gateway import Gateway
from tests.integration.browser import Browser, find_browser, start_chromium
from tests.integration.gateways import GatewayFactory, SimulatorFactory

# Hang guard of one test (a browser start, a gateway start, a few page loads).
GUARD = 45
TOKEN = "dashboard-test-token-0123456789"
# What a hostile device or operator tries to get the page to run.
HOSTILE_HTML = "<img src=x onerror=\"document.title='pwned';window.pwned=1\">"
HOSTILE_SCRIPT = "<script>window.pwned=2</script>"


@pytest.fixture(scope="module")
def chrome() -> Iterator[Browser]:
    """One headless Chromium for the module (starting one takes about a second)."""
    found = find_browser()
    if found is None:
        pytest.fail(
            "chromium or chromedriver not found: `apt-get install -y chromium chromium-driver` "
            "(make test installs them)"
        )
    driver = start_chromium(*found)
    try:
        yield Browser(driver)
    finally:
        driver.quit()


@pytest.fixture
async def browser(chrome: Browser) -> Browser:
    """The module's browser on a blank page with an empty session (no token kept)."""
    await chrome.open("about:blank")
    return chrome


async def post_job(gateway: Gateway, body: dict, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as client:
        response = await client.post("/jobs", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


async def test_a_job_created_through_the_form_resolves_live(
    browser: Browser, start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        # Answers after 1.5 s with two 206 progress answers first: the page sees it run.
        await start_simulator(gateway, ["dev-a", "dev-b"], latency=1.5, progress_steps=2)
        await browser.open(gateway.http_url + "/")
        await browser.wait_text("#fleet-online", "2")

        await browser.click("#nav-new")
        await browser.element("#job-submit")
        # A resource without its leading "/": the API's 400 lands next to that field.
        await browser.type("#entry-0-resource", "system/status")
        await browser.type("#entry-0-destinations", "dev-a\ndev-b")
        await browser.type("#entry-0-data", '{"verbose": true}')
        await browser.click("#job-submit")
        error = await browser.text("#entry-0-resource-error")
        assert "$.batch[0].resource" in error, error
        await browser.screenshot("new-job-error")

        await browser.type("#entry-0-resource", "/system/status")
        await browser.script("window.sameDocument = 'yes'")  # gone if the page reloads
        await browser.click("#job-submit")
        await browser.wait_for("the job page", lambda d: "#/jobs/" in d.current_url)
        await browser.wait_text("#job-status", "dispatching")
        await browser.wait_text("#job-status", "resolved")
        await browser.wait_for(
            "the task table to show both results",
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tasks-table tr.status-resolved")) == 2,
        )
        assert await browser.script("return window.sameDocument") == "yes"
        assert await browser.text("#job-resolved") == "2"
        assert "resolved" in await browser.text("#job-histogram-table")
        await browser.screenshot("job")
        await browser.click("#nav-fleet")
        await browser.wait_text("#fleet-answered", "2")
        await browser.screenshot("fleet")
        # No script error and no CSP violation (the 400 of the first try is logged as a
        # failed resource load, which is expected).
        errors = await browser.console_errors()
        assert [error for error in errors if "Failed to load resource" not in error] == []


async def test_cancel_a_running_job_and_page_through_a_large_one(
    browser: Browser, start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        # One slow device and two commands for it: one in flight, one waiting. A cancel
        # (DELETE, or POST /jobs/{id}/cancel, which lets the task in flight finish) ends it.
        await start_simulator(gateway, ["dev-slow"], latency=2.0)
        slow = [
            {"method": "get", "resource": f"/x/{n}", "__destination": "dev-slow"} for n in (1, 2)
        ]
        running = await post_job(gateway, {"batch": slow, "timeout": 600})
        # 120 tasks to devices that do not exist: pending, three pages of 50.
        destinations = [f"ghost-{number:03d}" for number in range(120)]
        large = await post_job(
            gateway,
            {"batch": [{"method": "get", "resource": "/y", "__destination": destinations}]},
        )

        await browser.open(f"{gateway.http_url}/ui/#/jobs")
        await browser.element(f"#job-row-{large}")
        await browser.screenshot("jobs")

        await browser.open(f"{gateway.http_url}/ui/#/jobs/{large}")
        await browser.wait_text("#tasks-range", "1–50 of 120")
        await browser.click("#tasks-next")
        await browser.wait_text("#tasks-range", "51–100 of 120")
        await browser.click("#tasks-next")
        await browser.wait_text("#tasks-range", "101–120 of 120")
        rows = "return document.querySelectorAll('#tasks-table tbody tr').length"
        assert await browser.script(rows) == 20
        await browser.type("#tasks-device", "ghost-007\n")
        await browser.wait_text("#tasks-range", "1–1 of 1")
        await browser.screenshot("job-large")

        await browser.open(f"{gateway.http_url}/ui/#/jobs/{running}")
        await browser.wait_text("#job-status", "dispatching")
        await browser.click("#job-cancel")
        await browser.wait_text("#job-status", "cancelled")
        await browser.screenshot("job-cancelled")


async def test_an_offline_device_and_a_device_page(
    browser: Browser, start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        simulator = await start_simulator(gateway, ["dev-on", "dev-off"])
        await post_job(
            gateway,
            {"batch": [{"method": "get", "resource": "/z", "__destination": ["dev-on"]}]},
        )
        await simulator.disconnect("dev-off")
        await browser.open(f"{gateway.http_url}/ui/#/devices")
        await browser.wait_text('tr[data-device="dev-off"] .device-presence', "offline")
        await browser.wait_text('tr[data-device="dev-on"] .device-presence', "online")
        await browser.screenshot("devices")
        await browser.type("#devices-search", "dev-of")
        await browser.wait_text("#devices-range", "1–1 of 1")

        await browser.open(f"{gateway.http_url}/ui/#/devices/dev-on")
        await browser.wait_text("#device-presence", "online")
        await browser.wait_for(
            "the device's recent task",
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#device-tasks tbody tr")) == 1,
        )
        await browser.screenshot("device")


async def test_hostile_results_resources_and_ids_are_shown_as_text(
    browser: Browser, start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    # Device ids cannot hold markup (^[A-Za-z0-9._:-]{1,64}$), but one can look like a URL
    # scheme: as a link it must stay a link into the dashboard.
    scheme_id = "javascript:alert"
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        await start_simulator(gateway, ["dev-x", scheme_id])
        job = await post_job(
            gateway,
            {
                "batch": [
                    {
                        "method": "post",
                        "resource": "/" + HOSTILE_HTML,
                        "__destination": ["dev-x", scheme_id],
                        # The simulated device echoes it back in its result.
                        "data": {"html": HOSTILE_HTML, "script": HOSTILE_SCRIPT},
                    }
                ]
            },
        )
        await browser.open(f"{gateway.http_url}/ui/#/jobs/{job}")
        await browser.wait_text("#job-status", "resolved")
        await browser.wait_for(
            "both results in the task table",
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tasks-table tr.status-resolved")) == 2,
        )
        results = await browser.text("#tasks-table")
        assert HOSTILE_HTML in results and HOSTILE_SCRIPT in results  # shown, as text
        assert await browser.script("return document.querySelectorAll('main img').length") == 0
        assert await browser.script("return window.pwned") is None
        assert await browser.script("return document.title") == "puppetmaster"
        href = await browser.script(
            "return document.querySelector('#tasks-table a[href*=\"javascript\"]').href"
        )
        assert href.startswith(gateway.http_url + "/ui/#/devices/javascript"), href
        await browser.screenshot("job-hostile")

        await browser.open(f"{gateway.http_url}/ui/#/devices/dev-x")
        await browser.wait_for(
            "the device's hostile result",
            lambda d: HOSTILE_HTML in d.find_element(By.CSS_SELECTOR, "#device-tasks").text,
        )
        assert await browser.script("return window.pwned") is None
        assert await browser.script("return document.title") == "puppetmaster"


async def test_with_api_tokens_the_page_asks_once_and_watches_with_its_token(
    browser: Browser, start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway(api={"tokens": [TOKEN]})
        await start_simulator(gateway, ["dev-t"], latency=1.0)
        job = await post_job(
            gateway,
            {"batch": [{"method": "get", "resource": "/t", "__destination": "dev-t"}]},
            token=TOKEN,
        )
        await browser.open(f"{gateway.http_url}/ui/#/jobs/{job}")
        await browser.script("sessionStorage.clear()")
        await browser.open(f"{gateway.http_url}/ui/#/jobs/{job}")
        await browser.type("#token-input", TOKEN)
        await browser.screenshot("token")
        await browser.click("#token-save")
        # The job's WebSocket carries the token as a subprotocol; its updates arrive.
        await browser.wait_text("#job-status", "resolved")
        await browser.click("#nav-jobs")
        await browser.element(f"#job-row-{job}")
        assert await browser.script("return document.getElementById('token-form').hidden")
