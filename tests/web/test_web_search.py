"""Finding a patient's studies by MRN (with issuer) or accession number: coordinators only, audited."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from connector.store.state import study_key
from connector.outbox.delivery import record_study_outputs
from tests.web.conftest import COORD, COORD_PASSWORD, WebSite, add_patient, csrf_of

MRN, ISSUER, ACCESSION = "MRN-77001", "HOSP-A", "ACC-2025-0042"


def _linked_studies(site: WebSite, tmp_path: Path) -> tuple[str, list[str], str]:
    """A patient with two studies received and linked as the pipeline links them, and a stranger's study."""
    pseudonym = add_patient(site.provider, MRN, ISSUER, "20240110")
    keys = []
    for i, accession in enumerate((ACCESSION, "ACC-2025-0099")):
        study, _ = site.receive(tmp_path / f"s{i}", ct=2, pet=1)
        key = study_key(study.study_uid)
        deid_uid = f"2.25.{1000 + i}"
        site.provider.record_study(pseudonym, study.study_uid, deid_uid, accession)
        record_study_outputs(site.store, key, [deid_uid])
        keys.append(key)
    other = add_patient(site.provider, "MRN-55555", ISSUER, "20240111")
    stranger, _ = site.receive(tmp_path / "other", ct=1, pet=0)
    site.provider.record_study(other, stranger.study_uid, "2.25.9999", "ACC-OTHER")
    record_study_outputs(site.store, study_key(stranger.study_uid), ["2.25.9999"])
    return pseudonym, keys, study_key(stranger.study_uid)


def _search(c: httpx.Client, **fields: str) -> httpx.Response:
    token = csrf_of(c.get("/search").text)
    return c.post("/search", data={"csrf": token, **fields})


def _audit(site: WebSite) -> list[dict]:
    return [e for e in site.provider.audit_log.entries() if e.get("action", "").startswith("web.search")]


def test_coordinator_finds_studies_by_mrn_and_accession(web_site: WebSite, tmp_path: Path) -> None:
    pseudonym, keys, stranger = _linked_studies(web_site, tmp_path)
    c = web_site.login(COORD, COORD_PASSWORD)
    assert 'href="/search"' in c.get("/").text  # in the navigation for coordinators

    r = _search(c, by="patient", patient_id=MRN.lower(), issuer=ISSUER)  # typed by hand: case does not matter
    assert r.status_code == 200
    assert pseudonym in r.text
    assert set(re.findall(r'href="/studies/([0-9a-f]{20})"', r.text)) == set(keys)
    assert stranger not in r.text and MRN not in r.text and MRN.lower() not in r.text
    (entry,) = _audit(web_site)
    assert entry["action"] == "web.search.patient_id" and entry["details"]["user"] == COORD
    assert entry["details"]["found"] is True and entry["details"]["pseudonym"] == pseudonym
    assert MRN not in str(entry)

    r = _search(c, by="accession", accession=ACCESSION)
    assert set(re.findall(r'href="/studies/([0-9a-f]{20})"', r.text)) == set(keys)  # the patient's studies
    assert r.text.count("this accession") == 1 and ACCESSION not in r.text
    r = _search(c, by="patient", patient_id=MRN, issuer="HOSP-B")  # another issuer's MRN is another patient
    assert 'id="search-none"' in r.text and pseudonym not in r.text
    r = _search(c, by="accession", accession="ACC-NOPE")
    assert 'id="search-none"' in r.text
    entries = _audit(web_site)
    assert [e["action"] for e in entries] == ["web.search.patient_id", "web.search.accession",
                                              "web.search.patient_id", "web.search.accession"]
    assert [e["details"]["found"] for e in entries] == [True, 1, False, 0]
    assert web_site.provider.verify_audit().ok
    r = _search(c, by="patient", patient_id="", issuer="")
    assert r.status_code == 400 and len(_audit(web_site)) == 4  # nothing looked up, nothing to record


def test_it_role_gets_403_and_nothing_is_looked_up(web_site: WebSite, tmp_path: Path) -> None:
    _linked_studies(web_site, tmp_path)
    c = web_site.login()  # role "it"
    assert 'href="/search"' not in c.get("/").text
    assert c.get("/search").status_code == 403
    token = csrf_of(c.get("/").text)
    r = c.post("/search", data={"csrf": token, "by": "patient", "patient_id": MRN, "issuer": ISSUER})
    assert r.status_code == 403 and "coordinator role" in r.text
    assert _audit(web_site) == []
    # no login at all: to the sign-in page; no CSRF token: refused before anything runs
    assert web_site.client().post("/search", data={"patient_id": MRN}).status_code == 303
    coord = web_site.login(COORD, COORD_PASSWORD)
    assert coord.post("/search", data={"by": "patient", "patient_id": MRN}).status_code == 403
    assert _audit(web_site) == []


def test_search_without_linkage_table(web_site: WebSite) -> None:
    web_site.server.site.provider = None
    c = web_site.login(COORD, COORD_PASSWORD)
    assert 'id="search-absent"' in c.get("/search").text


def test_coordinator_may_show_identifiers_on_a_study_page_audited(web_site: WebSite, tmp_path: Path) -> None:
    from tests.web.test_web_study import _site_with_a_pushed_study

    pseudonym = add_patient(web_site.provider, MRN, ISSUER, "20240110")
    key, study = _site_with_a_pushed_study(web_site, tmp_path, pseudonym)
    coord = web_site.login(COORD, COORD_PASSWORD)
    page = coord.get(f"/studies/{key}").text
    assert MRN not in page and 'id="show-identifiers"' in page  # not shown by default
    r = coord.post(f"/studies/{key}/identifiers", data={"csrf": csrf_of(page)})
    assert r.status_code == 200 and MRN in r.text and ISSUER in r.text and "SYNTHFAMILY" in r.text
    assert r.headers["Cache-Control"] == "no-store"
    [entry] = [e for e in web_site.provider.audit_log.entries() if e.get("action") == "web.show_identifiers"]
    assert entry["details"] == {"user": COORD, "source": "127.0.0.1", "study": key, "pseudonym": pseudonym,
                                "role": "test"}
    assert MRN not in coord.get(f"/studies/{key}").text  # once, in that response only
    it = web_site.login()
    page = it.get(f"/studies/{key}").text
    assert 'id="show-identifiers"' not in page
    assert it.post(f"/studies/{key}/identifiers", data={"csrf": csrf_of(page)}).status_code == 403
    assert len([e for e in web_site.provider.audit_log.entries() if e.get("action") == "web.show_identifiers"]) == 1
