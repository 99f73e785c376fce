"""Login, sessions, CSRF and what the pages may show, over real HTTP."""

from __future__ import annotations

from pathlib import Path

from connector.web.users import UserFile, users_path
from tests.web.conftest import PASSWORD, USER, WebSite, csrf_of

PAGES = ("/", "/studies", "/quarantine", "/outbox", "/followup")


def test_pages_need_a_login(web_site: WebSite) -> None:
    c = web_site.client()
    for page in PAGES:
        r = c.get(page)
        assert r.status_code == 303 and r.headers["location"] == "/login", page
    r = c.post("/quarantine/purge", data={"id": "x", "confirm": "yes"})
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_login_cookie_flags_and_pages(web_site: WebSite) -> None:
    c = web_site.client()
    form = c.get("/login")
    r = c.post("/login", data={"csrf": csrf_of(form.text), "username": USER, "password": PASSWORD})
    assert r.status_code == 303
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("sc_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    for page in PAGES:
        page_r = c.get(page)
        assert page_r.status_code == 200, page
        assert "Content-Security-Policy" in page_r.headers and page_r.headers["X-Frame-Options"] == "DENY"
        assert page_r.headers["Cache-Control"] == "no-store"
        assert "<script" not in page_r.text.lower()
        assert 'href="http' not in page_r.text and 'src="http' not in page_r.text  # no external assets
    css = c.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_wrong_password_and_throttle(web_site: WebSite) -> None:
    c = web_site.client()
    r = c.post("/login", data={"csrf": csrf_of(c.get("/login").text), "username": USER, "password": "wrong-password"})
    assert r.status_code == 401
    assert not any(v.startswith("sc_session=") for v in r.headers.get_list("set-cookie"))
    r = c.post("/login", data={"csrf": csrf_of(c.get("/login").text), "username": USER, "password": "wrong-password"})
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"  # this name from this address waits
    r = c.post("/login", data={"csrf": csrf_of(c.get("/login").text), "username": USER, "password": PASSWORD})
    assert r.status_code == 429  # even the right password waits until the delay has passed


def test_login_form_needs_its_token(web_site: WebSite) -> None:
    c = web_site.client()
    c.get("/login")
    r = c.post("/login", data={"csrf": "forged", "username": USER, "password": PASSWORD})
    assert r.status_code == 403
    fresh = web_site.client()  # no pre-login cookie at all (a cross-site form)
    r = fresh.post("/login", data={"csrf": "x", "username": USER, "password": PASSWORD})
    assert r.status_code == 403


def test_post_without_csrf_changes_nothing(web_site: WebSite) -> None:
    entry = web_site.quarantine_bytes("ingest", "not-dicom", b"junk")
    c = web_site.login()
    r = c.post("/quarantine/purge", data={"id": entry, "confirm": "yes"})
    assert r.status_code == 403
    r = c.post("/quarantine/purge", data={"id": entry, "confirm": "yes", "csrf": "not-the-token"})
    assert r.status_code == 403
    assert (web_site.layout.quarantine / "ingest" / f"{entry}.bin").exists()
    token = csrf_of(c.get("/quarantine").text)
    r = c.post("/quarantine/purge", data={"id": entry, "confirm": "yes", "csrf": token})
    assert r.status_code == 303
    assert not (web_site.layout.quarantine / "ingest" / f"{entry}.bin").exists()


def test_logout_and_user_removal_end_sessions(web_site: WebSite) -> None:
    c = web_site.login()
    token = csrf_of(c.get("/").text)
    assert c.post("/logout", data={"csrf": token}).status_code == 303
    assert c.get("/").status_code == 303

    c2 = web_site.login()
    assert c2.get("/").status_code == 200
    UserFile(users_path(web_site.config)).remove(USER)
    assert c2.get("/").status_code == 303


def test_studies_page_shows_keys_never_identifiers(web_site: WebSite, tmp_path: Path) -> None:
    study, _ = web_site.receive(tmp_path / "s", ct=2, pet=1)
    key = web_site.store.conn.execute("SELECT study_key FROM studies").fetchone()[0]
    c = web_site.login()
    pages = [c.get(p).text for p in (*PAGES, "/studies?state=receiving")]
    assert key in pages[1] and key in pages[-1]
    assert key not in c.get("/studies?state=pushed").text
    for text in pages:
        for secret in (study.patient.patient_id, study.patient.family, study.patient.given, study.study_uid,
                       study.accession):
            assert secret not in text
