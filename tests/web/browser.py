"""Headless Chromium for the dashboard's browser tests: Debian's chromium driven by Selenium.

Fixtures (registered in tests/web/conftest.py): ``browser`` (a fresh profile per test) and
``artefacts`` (``tests/artifacts/web/<test name>/``, git-ignored, emptied at the test's start and
kept afterwards; its path is printed, so ``pytest -s`` or the failure report shows where the
screenshots are). Chromium is installed by ``packaging/install-deps.sh``; like dcmtk and Orthanc
it is a real peer, so its absence fails.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1280,900", "--force-color-profile=srgb")  # srgb: screenshots keep exact colours
ARTEFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "web"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    for tool in (CHROMIUM, CHROMEDRIVER):
        assert os.access(tool, os.X_OK), f"{tool} missing: run packaging/install-deps.sh (Debian chromium, chromium-driver)"
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artefacts(request: pytest.FixtureRequest) -> Path:
    """Where this test's screenshots are kept (after the run too)."""
    folder = Path(os.environ.get("WEB_SCREENSHOT_DIR") or ARTEFACTS) / re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"\nscreenshots: {folder}")
    return folder


def shot(driver: WebDriver, folder: Path, name: str) -> Path:
    path = folder / f"dashboard-{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000  # a rendered page, not an empty canvas
    return path


def _replaced(page: WebElement) -> bool:
    """True once ``page`` is no longer in the document.

    Selenium's ``staleness_of`` expects StaleElementReferenceException, but chromedriver answers a
    query that races with the navigation with "Node with given id does not belong to the document",
    which means the same thing.
    """
    try:
        return expected_conditions.staleness_of(page)(None)  # type: ignore[arg-type]
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise


def submit(driver: WebDriver, button: WebElement) -> None:
    """Click a button or link that loads a page, and wait until the next page has replaced this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    button.click()
    WebDriverWait(driver, 20).until(lambda d: _replaced(page))
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def flash(driver: WebDriver) -> str:
    return " ".join(el.text for el in driver.find_elements(By.CSS_SELECTOR, ".flash"))


def sign_in(driver: WebDriver, base: str, user: str, password: str) -> None:
    driver.get(base + "/")
    assert driver.current_url.endswith("/login")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    submit(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button"))
