"""The dashboard in a real headless browser: Debian's chromium driven by Selenium.

A person's path through it: sign in, look at every page, purge a quarantined object, retry the
outbox, upload a follow-up file, check the dry-run preview and queue it. Screenshots of each page
are kept in ``tests/artifacts/web/<test>/`` (git-ignored; the path is printed). Chromium is installed by
``packaging/install-deps.sh``; like dcmtk and Orthanc it is a real peer, so its absence fails.
"""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from connector.outbox import Outbox
from tests.web.browser import flash as _flash
from tests.web.browser import shot, submit as _submit
from tests.web.conftest import COORD, COORD_PASSWORD, WebSite, add_patient

def test_dashboard_in_chromium(web_site: WebSite, browser: WebDriver, tmp_path: Path, artefacts: Path) -> None:
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
    d.find_element(By.ID, "username").send_keys(COORD)  # the follow-up import below is for coordinators
    d.find_element(By.ID, "password").send_keys(COORD_PASSWORD)
    _submit(d, d.find_element(By.CSS_SELECTOR, "form[action='/login'] button"))
    assert d.find_element(By.TAG_NAME, "h1").text == "Overview"
    assert d.find_element(By.CSS_SELECTOR, "#instances .value").text == "8"
    assert d.find_element(By.CSS_SELECTOR, "#quarantined .value").text == "2"
    assert "healthy" in d.find_element(By.ID, "health").text
    css_applied = d.find_element(By.TAG_NAME, "header").value_of_css_property("background-color")
    assert css_applied in ("rgba(20, 80, 140, 1)", "rgb(20, 80, 140)")  # the local stylesheet loaded
    shot(d, artefacts, "overview")

    _submit(d, d.find_element(By.LINK_TEXT, "Studies"))
    rows = d.find_elements(By.CSS_SELECTOR, "#studies tr")
    assert len(rows) == 3  # header + two studies
    assert study.patient.patient_id not in d.page_source and study.study_uid not in d.page_source
    shot(d, artefacts, "studies")

    _submit(d, d.find_element(By.LINK_TEXT, "Quarantine"))
    row = d.find_element(By.CSS_SELECTOR, f"tr[data-entry='{junk}']")
    row.find_element(By.CSS_SELECTOR, "form[action='/quarantine/purge'] input[name=confirm]").click()
    _submit(d, row.find_element(By.CSS_SELECTOR, "form[action='/quarantine/purge'] button"))
    assert "Entry purged" in _flash(d)
    assert not d.find_elements(By.CSS_SELECTOR, f"tr[data-entry='{junk}']")
    assert d.find_elements(By.CSS_SELECTOR, f"tr[data-entry='{kept}']")
    assert not (web_site.layout.quarantine / "ingest" / f"{junk}.bin").exists()
    shot(d, artefacts, "quarantine")

    _submit(d, d.find_element(By.LINK_TEXT, "Outbox"))
    assert d.find_element(By.CSS_SELECTOR, "#outbox-failed .value").text == "1"
    _submit(d, d.find_element(By.ID, "retry-now"))
    assert "1 job(s) will be retried now" in _flash(d)
    assert d.find_element(By.CSS_SELECTOR, "#outbox-failed .value").text == "0"
    shot(d, artefacts, "outbox")

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
    shot(d, artefacts, "followup-preview")
    _submit(d, d.find_element(By.ID, "queue"))
    assert "Follow-up imported" in _flash(d)
    n_events = web_site.store.conn.execute("SELECT COUNT(*) FROM outbox_jobs WHERE kind='event'").fetchone()[0]
    assert n_events == 1
    shot(d, artefacts, "followup-done")

    _submit(d, d.find_element(By.CSS_SELECTOR, "form[action='/logout'] button"))
    assert d.current_url.endswith("/login")
    d.get(base + "/quarantine")
    assert d.current_url.endswith("/login")
