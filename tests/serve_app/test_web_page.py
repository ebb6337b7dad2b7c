"""The web page at `/`, driven by a real headless Chromium against the running app.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver) and
the `selenium` package; skipped with the reason when any is missing. Selenium Manager is never
used (the driver path is given), so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
JOB_TIMEOUT_S = 120

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,1000",
]


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    return None


# Decided before any fixture runs, so a machine without a browser does not start the app for nothing.
pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="skyreels-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS + [f"--user-data-dir={profile}"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _diagnostics(driver) -> str:
    by_id = lambda i: driver.find_element("id", i)  # noqa: E731
    try:
        logs = [entry["message"] for entry in driver.get_log("browser")]
    except Exception:  # noqa: BLE001 - diagnostics only
        logs = []
    return (
        f"status={by_id('status').text!r} progress={by_id('progress').get_attribute('value')} "
        f"error={by_id('error').text!r} console={logs[-10:]}"
    )


def _wait(driver, predicate, timeout: float, what: str) -> None:
    """Polls `predicate`; the page re-renders lists while we read them, so a stale element means retry."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    waiting = WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,))
    try:
        waiting.until(lambda _driver: predicate())
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {_diagnostics(driver)}") from None


@pytest.mark.slow
def test_page_generates_and_plays_a_video(browser, serve_base_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    driver = browser
    by_id = lambda i: driver.find_element("id", i)  # noqa: E731
    driver.get(serve_base_url.rstrip("/") + "/")

    # the model list comes from GET /v1/models, which replaces the page's built-in options
    _wait(driver, lambda: by_id("model").get_attribute("data-loaded") == "true", 30, "the model list")
    assert "skyreels-v1-t2v" in [o.get_attribute("value") for o in Select(by_id("model")).options]
    Select(by_id("model")).select_by_value("skyreels-v1-t2v")
    assert not by_id("image").is_displayed(), "the image input is for i2v only"

    # the tiny preset's recommended defaults, from GET /v1/models, fill the form
    assert Select(by_id("size")).first_selected_option.get_attribute("value") == "64x64"
    assert (by_id("frames").get_attribute("value"), by_id("steps").get_attribute("value")) == ("9", "4")
    assert "Recommended for skyreels-v1-t2v" in by_id("defaults-help").text
    # the size picker shows its longest label whole
    assert driver.execute_script(
        "const select = arguments[0], style = getComputedStyle(select);"
        "const context = document.createElement('canvas').getContext('2d');"
        "context.font = `${style.fontSize} ${style.fontFamily}`;"
        "const widest = Math.max(...[...select.options].map((o) => context.measureText(o.text).width));"
        "return select.getBoundingClientRect().width >= widest + 24;",
        by_id("size"),
    ), "the size picker cuts its labels off"

    by_id("prompt").send_keys("a cat walks on the grass, realistic")
    assert not by_id("custom-size").is_displayed()
    Select(by_id("size")).select_by_value("custom")
    assert by_id("custom-size").is_displayed()
    by_id("custom-size").send_keys("64x64")
    for field, value in (("frames", "9"), ("steps", "4"), ("seed", "42")):
        by_id(field).clear()
        by_id(field).send_keys(value)
    # the server's LoRA adapters (GET /v1/loras) that fit the model, each with its scale
    _wait(driver, lambda: by_id("lora-list").get_attribute("data-loaded") == "true", 30, "the adapter list")
    assert by_id("lora-field").is_displayed()
    by_id("lora-ink").click()
    scale = driver.find_element("css selector", "#lora-list input.lora-scale")
    scale.clear()
    scale.send_keys("0.5")
    by_id("submit").click()

    def finished() -> bool:
        if by_id("error").is_displayed():
            raise AssertionError(f"the server refused the job: {_diagnostics(driver)}")
        status = by_id("status").text
        if status.startswith(("Failed", "Cancelled")):
            raise AssertionError(f"the job did not complete: {_diagnostics(driver)}")
        return by_id("progress").get_attribute("value") == "100" and status.startswith("Completed")

    _wait(driver, finished, JOB_TIMEOUT_S, "the job to complete")
    assert not by_id("cancel").is_displayed()

    player = by_id("player")
    assert player.tag_name == "video" and player.is_displayed()
    _wait(
        driver,
        lambda: driver.execute_script(
            "const v = arguments[0];"
            "return v.readyState >= 2 && v.duration > 0 && v.videoWidth === 64"
            " && (v.currentTime > 0 || !v.paused);",
            player,
        ),
        30,
        "the <video> to play",
    )
    state = driver.execute_script(
        "const v = arguments[0]; return {w: v.videoWidth, h: v.videoHeight, d: v.duration, src: v.currentSrc};",
        player,
    )
    assert state["w"] == 64 and state["h"] == 64 and state["d"] > 0, state
    assert "/v1/videos/" in state["src"] and "/content" in state["src"], state

    # the gallery shows the job as completed, with its thumbnail
    job_id = state["src"].split("/v1/videos/")[1].split("/")[0]
    assert httpx.get(f"{serve_base_url.rstrip('/')}/v1/videos/{job_id}").json()["loras"] == [
        {"name": "ink", "scale": 0.5}]
    card = f'#gallery li[data-id="{job_id}"]'
    _wait(driver, lambda: driver.execute_script(
        "const li = document.querySelector(arguments[0]); return !!li"
        " && li.querySelector('.card-prompt').textContent === 'a cat walks on the grass, realistic';", card),
        30, "the gallery card to show the prompt as typed")
    _wait(
        driver,
        lambda: driver.execute_script(
            "const li = document.querySelector(arguments[0]); if (!li) return false;"
            "const img = li.querySelector('img');"
            "return li.querySelector('.badge').classList.contains('completed')"
            " && !!img && img.complete && img.naturalWidth > 0;",
            card,
        ),
        30,
        "the gallery card with its thumbnail",
    )

    shot = tmp_path / "web_page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
