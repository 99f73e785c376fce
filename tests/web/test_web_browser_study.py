"""The study page, its CAC picture and the identifier search in headless Chromium.

A coordinator signs in, finds the patient by MRN and issuer, opens the study from the results and
sees its journey, pseudonym and CAC picture (the image as the browser drew it is checked for the
legend's colours, on exactly as many pixels as the phantom has lesion pixels); a user with the it
role is refused the search. Screenshots are kept in tests/artifacts/web/<test>/ (printed).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from connector.infer.scored_calcium import save_scored_calcium
from connector.web import cac_picture
from tests.web.browser import shot, sign_in, submit
from tests.web.conftest import COORD, COORD_PASSWORD, PASSWORD, USER, WebSite, add_patient
from tests.web.test_web_study import DEID_UID, _site_with_a_pushed_study, coloured, scored_from_phantom

MRN, ISSUER, ACCESSION = "MRN-31337", "HOSP-A", "ACC-7"


def test_study_page_picture_and_search_in_chromium(web_site: WebSite, browser: WebDriver, tmp_path: Path,
                                                    artefacts: Path) -> None:
    pseudonym = add_patient(web_site.provider, MRN, ISSUER, "20250102")
    key, study = _site_with_a_pushed_study(web_site, tmp_path, pseudonym)
    web_site.provider.record_study(pseudonym, study.study_uid, DEID_UID, ACCESSION)
    scored, lesions = scored_from_phantom()
    save_scored_calcium(web_site.layout.scored_calcium_path(key, 0), scored)
    d = browser

    sign_in(d, web_site.url, COORD, COORD_PASSWORD)
    submit(d, d.find_element(By.LINK_TEXT, "Find patient"))
    d.find_element(By.ID, "patient_id").send_keys(MRN)
    d.find_element(By.ID, "issuer").send_keys(ISSUER)
    submit(d, d.find_element(By.ID, "search-patient"))
    assert d.find_element(By.CSS_SELECTOR, ".pseudonym").text == pseudonym
    assert MRN not in d.page_source and "/search?" not in d.current_url  # nothing typed ends up in the URL
    shot(d, artefacts, "search-results")
    entries = [e for e in web_site.provider.audit_log.entries() if e.get("action") == "web.search.patient_id"]
    assert len(entries) == 1 and entries[0]["details"]["user"] == COORD

    submit(d, d.find_element(By.LINK_TEXT, key))
    assert key in d.find_element(By.TAG_NAME, "h1").text
    assert d.find_element(By.CSS_SELECTOR, "#pseudonym .value").text == pseudonym
    journey = d.find_element(By.ID, "journey").text
    for step in ("first instance received", "de-identified", "CAC scored", "verified with the registry"):
        assert step in journey
    assert "187.5" in d.find_element(By.ID, "cac-0").text
    for secret in (MRN, study.patient.patient_id, study.study_uid, study.accession, ACCESSION):
        assert secret not in d.page_source
    img = d.find_element(By.ID, "cac-picture-0")
    natural = d.execute_script("return [arguments[0].complete, arguments[0].naturalWidth, arguments[0].naturalHeight,"
                               " arguments[0].clientWidth]", img)
    _, (width, height) = cac_picture.layout_tiles(scored)
    assert natural == [True, width, height, width]  # loaded, and drawn at its own size
    d.execute_script("arguments[0].scrollIntoView()", img)
    drawn = np.asarray(Image.open(io.BytesIO(img.screenshot_as_png)).convert("RGB"))
    assert drawn.shape[:2] == (height, width)
    painted = coloured(drawn)
    palette = {tuple(c) for c in cac_picture.WEIGHT_COLOURS.values()}
    assert {tuple(int(v) for v in px) for px in drawn[painted]} <= palette
    shown = sum(int(lesions[t.slice_index].sum()) * t.scale**2 for t in cac_picture.layout_tiles(scored)[0])
    assert int(painted.sum()) == shown  # as many coloured pixels on screen as lesion pixels in the phantom
    legend = d.find_element(By.ID, "cac-legend").text
    assert "130-199 HU" in legend and "400 HU and above" in legend
    shot(d, artefacts, "study")
    submit(d, d.find_element(By.ID, "show-identifiers"))  # on purpose, audited, this response only
    assert MRN in d.find_element(By.ID, "identifiers").text
    shot(d, artefacts, "study-identifiers")

    submit(d, d.find_element(By.CSS_SELECTOR, "form[action='/logout'] button"))
    sign_in(d, web_site.url, USER, PASSWORD)  # role "it"
    assert not d.find_elements(By.LINK_TEXT, "Find patient")
    d.get(web_site.url + "/search")
    assert d.find_element(By.TAG_NAME, "h1").text == "Forbidden" and "coordinator role" in d.page_source
    shot(d, artefacts, "search-forbidden")
    d.get(web_site.url + f"/studies/{key}")  # the study page itself is for every signed-in user
    assert d.find_element(By.ID, "cac-picture-0").get_attribute("naturalWidth") == str(width)
