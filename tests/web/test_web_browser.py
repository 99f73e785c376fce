"""The dashboard in a real headless browser: Debian's chromium driven by Selenium.

A person's path through it: sign in, look at every page, purge a quarantined object, retry the
outbox, upload a follow-up file, check the dry-run preview and queue it. Screenshots of each page
land in the test's tmp folder (``dashboard-*.png``). Chromium is installed by
``packaging/install-deps.sh``; like dcmtk and Orthanc it is a real peer, so its absence fails.
"""

from __future__ import annotations

import os
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

from connector.outbox import Outbox
from tests.web.conftest import PASSWORD, USER, WebSite, add_patient

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1280,900")


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


def _shot(driver: WebDriver, folder: Path, name: str) -> Path:
    path = folder / f"dashboard-{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000  # a rendered page, not an empty canvas
    keep = os.environ.get("WEB_SCREENSHOT_DIR")  # for a person who wants to look at them
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep)
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


def _submit(driver: WebDriver, button: WebElement) -> None:
    """Click a button that submits a form, and wait until the next page has replaced this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    button.click()
    WebDriverWait(driver, 20).until(lambda d: _replaced(page))
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _flash(driver: WebDriver) -> str:
    return " ".join(el.text for el in driver.find_elements(By.CSS_SELECTOR, ".flash"))


def test_dashboard_in_chromium(web_site: WebSite, browser: WebDriver, tmp_path: Path) -> None:
    study, _ = web_site.receive(tmp_path / "s1", ct=3, pet=2)
    web_site.receive(tmp_path / "s2", ct=2, pet=1)
    junk = web_site.quarantine_bytes("ingest", "not-dicom", b"\x00" * 2048)
    kept = web_site.quarantine_bytes("deid", "phi-guard:name", b"\x01" * 4096)
    outbox = Outbox(web_site.store)
    outbox.enqueue("stow", "study-a", "registry", {})
    (job,) = outbox.lease("w", "registry")
    outbox.give_up(job.id, "w", error="HTTP 400 refused", status=400)
    pseudonym = add_patient(web_site.provider, "MRN-9001", "HOSP-A", "20210610")
    base = web_site.url
    d = browser

    d.get(base + "/")
    assert d.current_url.endswith("/login")
    d.find_element(By.ID, "username").send_keys(USER)
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    _submit(d, d.find_element(By.CSS_SELECTOR, "form[action='/login'] button"))
    assert d.find_element(By.TAG_NAME, "h1").text == "Overview"
    assert d.find_element(By.CSS_SELECTOR, "#instances .value").text == "8"
    assert d.find_element(By.CSS_SELECTOR, "#quarantined .value").text == "2"
    assert "healthy" in d.find_element(By.ID, "health").text
    css_applied = d.find_element(By.TAG_NAME, "header").value_of_css_property("background-color")
    assert css_applied in ("rgba(20, 80, 140, 1)", "rgb(20, 80, 140)")  # the local stylesheet loaded
    _shot(d, tmp_path, "overview")

    _submit(d, d.find_element(By.LINK_TEXT, "Studies"))
    rows = d.find_elements(By.CSS_SELECTOR, "#studies tr")
    assert len(rows) == 3  # header + two studies
    assert study.patient.patient_id not in d.page_source and study.study_uid not in d.page_source
    _shot(d, tmp_path, "studies")

    _submit(d, d.find_element(By.LINK_TEXT, "Quarantine"))
    row = d.find_element(By.CSS_SELECTOR, f"tr[data-entry='{junk}']")
    row.find_element(By.CSS_SELECTOR, "form[action='/quarantine/purge'] input[name=confirm]").click()
    _submit(d, row.find_element(By.CSS_SELECTOR, "form[action='/quarantine/purge'] button"))
    assert "Entry purged" in _flash(d)
    assert not d.find_elements(By.CSS_SELECTOR, f"tr[data-entry='{junk}']")
    assert d.find_elements(By.CSS_SELECTOR, f"tr[data-entry='{kept}']")
    assert not (web_site.layout.quarantine / "ingest" / f"{junk}.bin").exists()
    _shot(d, tmp_path, "quarantine")

    _submit(d, d.find_element(By.LINK_TEXT, "Outbox"))
    assert d.find_element(By.CSS_SELECTOR, "#outbox-failed .value").text == "1"
    _submit(d, d.find_element(By.ID, "retry-now"))
    assert "1 job(s) will be retried now" in _flash(d)
    assert d.find_element(By.CSS_SELECTOR, "#outbox-failed .value").text == "0"
    _shot(d, tmp_path, "outbox")

    upload = tmp_path / "followup.csv"
    upload.write_text("patient_id,issuer,event,event_date\nMRN-9001,HOSP-A,death,2024-02-29\n"
                      "MRN-0404,HOSP-A,mi,2024-01-01\n")
    _submit(d, d.find_element(By.LINK_TEXT, "Follow-up"))
    d.find_element(By.ID, "file").send_keys(str(upload))
    _submit(d, d.find_element(By.ID, "preview"))
    assert d.find_element(By.TAG_NAME, "h1").text == "Follow-up: preview"
    preview_rows = d.find_elements(By.CSS_SELECTOR, "#followup-events tr")
    assert len(preview_rows) == 2 and pseudonym in preview_rows[1].text
    assert "unknown_patient" in d.find_element(By.ID, "followup-rejected").text
    assert "MRN-9001" not in d.page_source
    _shot(d, tmp_path, "followup-preview")
    _submit(d, d.find_element(By.ID, "queue"))
    assert "Follow-up imported" in _flash(d)
    n_events = web_site.store.conn.execute("SELECT COUNT(*) FROM outbox_jobs WHERE kind='event'").fetchone()[0]
    assert n_events == 1
    _shot(d, tmp_path, "followup-done")

    _submit(d, d.find_element(By.CSS_SELECTOR, "form[action='/logout'] button"))
    assert d.current_url.endswith("/login")
    d.get(base + "/quarantine")
    assert d.current_url.endswith("/login")
