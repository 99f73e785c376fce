"""Issue 24, row 3: every dashboard route declares who may use it, the follow-up preview and import
are the coordinator's (they resolve MRNs to pseudonyms and shifted dates), and every linkage audit
entry a dashboard action writes names the user and the source address. Real dashboard, real HTTP,
real linkage table and audit log."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from connector.web.app import create_app
from connector.web.permissions import PUBLIC, allow, required, undeclared
from connector.web.users import ROLES
from tests.security.web_support import COORD, COORD_PASSWORD, PASSWORD, USER, dashboard
from tests.web.conftest import WebSite, add_patient, csrf_of

PUBLIC_ENDPOINTS = {"static", "health.healthz", "health.metrics", "health.favicon", "login", "login_post"}
COORDINATOR_ENDPOINTS = {"dashboard.followup_preview", "dashboard.followup_commit", "dashboard.followup_cancel",
                         "search.search_form", "search.search", "search.show_identifiers"}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[WebSite]:
    with dashboard(tmp_path) as running:
        yield running


def _login(site: WebSite, user: str, password: str) -> httpx.Client:
    c = httpx.Client(base_url=site.url, timeout=10)
    form = c.get("/login")
    r = c.post("/login", data={"csrf": csrf_of(form.text), "username": user, "password": password})
    assert r.status_code == 303, r.status_code
    return c


def _csv(rows: list[tuple[str, str, str, str]]) -> bytes:
    return ("\n".join(["patient_id,issuer,event,event_date", *(",".join(r) for r in rows)]) + "\n").encode()


def _preview(c: httpx.Client, data: bytes) -> httpx.Response:
    token = csrf_of(c.get("/").text)
    return c.post("/followup/preview", data={"csrf": token}, files={"file": ("outcomes.csv", data, "text/csv")})


def _audit(site: WebSite, prefix: str) -> list[dict]:
    return [e for e in site.provider.audit_log.entries() if str(e.get("action", "")).startswith(prefix)]


def test_every_route_in_the_url_map_declares_who_may_use_it(site: WebSite) -> None:
    app = site.server.app
    assert undeclared(app) == []
    declared = {rule.endpoint: required(app, rule.endpoint) for rule in app.url_map.iter_rules()}
    assert {e for e, p in declared.items() if p == PUBLIC} == PUBLIC_ENDPOINTS
    assert {e for e, p in declared.items() if p == frozenset({"coordinator"})} == COORDINATOR_ENDPOINTS
    assert all(p == PUBLIC or (p and p <= set(ROLES)) for p in declared.values())

    # the walk finds a route someone adds without a declaration ...
    fresh = create_app(site.server)
    fresh.add_url_rule("/new-page", "new_page", lambda: "hello")
    assert undeclared(fresh) == ["new_page"]


def test_a_route_without_a_declaration_answers_403_to_everybody(site: WebSite) -> None:
    app = site.server.app
    app.add_url_rule("/undeclared", "undeclared", lambda: "should never be seen")  # before the first request
    app.add_url_rule("/declared-later", "declared_later", allow(*ROLES)(lambda: "nor this"))
    coord = _login(site, COORD, COORD_PASSWORD)
    for path in ("/undeclared", "/declared-later"):  # declared after the app was built: not a route's declaration
        r = coord.get(path)
        assert r.status_code == 403 and "should never be seen" not in r.text and "nor this" not in r.text
    assert httpx.get(site.url + "/undeclared").status_code == 303  # and without a session: to the sign-in
    assert coord.get("/").status_code == 200


def test_it_is_refused_the_followup_preview_and_import(site: WebSite) -> None:
    pseudonym = add_patient(site.provider, "MRN-4711", "HOSP-A", "20200115")
    data = _csv([("MRN-4711", "HOSP-A", "death", "2023-03-01"), ("MRN-0000", "HOSP-A", "death", "2023-03-01")])
    it = _login(site, USER, PASSWORD)

    page = it.get("/followup")
    assert page.status_code == 200 and 'id="followup-coordinators"' in page.text
    assert 'action="/followup/preview"' not in page.text  # no upload form to try
    r = _preview(it, data)
    assert r.status_code == 403 and "coordinator role" in r.text
    assert pseudonym not in r.text and "unknown_patient" not in r.text
    token = csrf_of(it.get("/").text)
    for action in ("commit", "cancel"):
        assert it.post(f"/followup/{action}", data={"csrf": token, "token": "0" * 32}).status_code == 403
    assert _audit(site, "followup") == []  # nothing was looked up
    uploads = site.config.storage.data_dir / "web" / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir())  # nor kept
    assert site.store.conn.execute("SELECT COUNT(*) FROM outbox_jobs WHERE kind='event'").fetchone()[0] == 0


def test_coordinator_imports_and_each_audit_entry_names_user_and_source(site: WebSite) -> None:
    pseudonym = add_patient(site.provider, "MRN-4711", "HOSP-A", "20200115")
    coord = _login(site, COORD, COORD_PASSWORD)
    r = _preview(coord, _csv([("MRN-4711", "HOSP-A", "death", "2023-03-01"),
                              ("MRN-0000", "HOSP-A", "death", "2023-03-01")]))
    assert r.status_code == 200 and pseudonym in r.text and "unknown_patient" in r.text
    token = re.search(r'name="token" value="([0-9a-f]+)"', r.text).group(1)
    assert coord.post("/followup/commit", data={"csrf": csrf_of(r.text), "token": token}).status_code == 303
    assert site.store.conn.execute("SELECT COUNT(*) FROM outbox_jobs WHERE kind='event'").fetchone()[0] == 1

    search = coord.post("/search", data={"csrf": csrf_of(coord.get("/search").text), "by": "patient",
                                         "patient_id": "MRN-4711", "issuer": "HOSP-A"})
    assert search.status_code == 200 and pseudonym in search.text

    entries = _audit(site, "followup") + _audit(site, "web.")
    assert [(e["action"], e["details"].get("dry_run")) for e in entries] == [
        ("followup.import", True), ("followup.import", False), ("web.search.patient_id", None)]
    for entry in entries:
        assert entry["details"]["user"] == COORD and entry["details"]["source"] == "127.0.0.1"
        assert "MRN-4711" not in json.dumps(entry)
    assert site.provider.verify_audit().ok  # the chain holds with the new fields


def test_the_dashboard_import_keeps_the_patients_name_out_of_free_text(tmp_path: Path) -> None:
    """The wrapper hands the import what its text cleaner needs: the patient's own words to refuse,
    even ones the vocabulary knows (Mrs Arrest's "cardiac arrest")."""
    from connector.config import load_config
    from connector.deid.provider import PatientIdentity

    (tmp_path / "c.toml").write_text('[followup]\nallowed_free_text = ["cause"]\n')
    followup = load_config(tmp_path / "c.toml", environ={}).followup
    with dashboard(tmp_path / "site") as site:
        pseudonym = site.provider.subject_for(PatientIdentity("MRN-4711", "HOSP-A", "ARREST^MARY", "19470312", "F"),
                                              study_date="20200115").pseudonym
        site.server.site.config = replace(site.server.site.config, followup=followup)
        coord = _login(site, COORD, COORD_PASSWORD)
        r = _preview(coord, b"patient_id,issuer,event,event_date,cause\n"
                            b"MRN-4711,HOSP-A,death,2023-03-01,cardiac arrest\n")
        assert r.status_code == 200 and pseudonym in r.text
        token = re.search(r'name="token" value="([0-9a-f]+)"', r.text).group(1)
        assert coord.post("/followup/commit", data={"csrf": csrf_of(r.text), "token": token}).status_code == 303
        [(payload,)] = site.store.conn.execute("SELECT payload FROM outbox_jobs WHERE kind='event'").fetchall()
        assert json.loads(payload)["cause"] == "cardiac ***"
