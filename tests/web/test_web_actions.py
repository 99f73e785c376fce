"""Dashboard actions over HTTP: quarantine release and purge, outbox retry now."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from connector.outbox import Outbox
from connector.store.state import STABLE, study_key
from tests.web.conftest import WebSite, csrf_of


def _post(c: httpx.Client, page: str, action: str, **data: str) -> str:
    token = csrf_of(c.get(page).text)
    r = c.post(action, data={"csrf": token, **data})
    assert r.status_code == 303 and r.headers["location"] == page
    return c.get(page).text


def test_release_sends_a_deid_quarantined_original_round_again(web_site: WebSite, tmp_path: Path) -> None:
    study, paths = web_site.receive(tmp_path / "s", ct=2, pet=1)
    key = study_key(study.study_uid)
    web_site.store.set_study_state(key, "quarantined")
    entry = web_site.quarantine_file("deid", "phi-guard:name", paths[0])  # the original, as deid parks it
    c = web_site.login()
    page = c.get("/quarantine").text
    assert entry in page and "phi-guard:name" in page

    page = _post(c, "/quarantine", "/quarantine/release", id=entry)
    assert "Released for re-processing" in page and entry not in page
    assert not list((web_site.layout.quarantine / "deid").glob(f"{entry}*"))
    assert web_site.store.study(key)["state"] == STABLE  # the worker takes it again
    assert web_site.woken == ["studies"]


def test_release_of_a_lost_original_files_it_again(web_site: WebSite, tmp_path: Path) -> None:
    _, paths = web_site.receive(tmp_path / "s", ct=1, pet=0)
    parked = tmp_path / "parked.dcm"
    shutil.copyfile(paths[0], parked)
    web_site.store.conn.execute("DELETE FROM instances")  # as if the object had never been filed
    entry = web_site.quarantine_file("ingest", "unreadable-dicom", parked)
    c = web_site.login()
    _post(c, "/quarantine", "/quarantine/release", id=entry)
    assert web_site.store.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1


def test_release_of_junk_keeps_it_in_quarantine(web_site: WebSite) -> None:
    entry = web_site.quarantine_bytes("ingest", "not-dicom", b"\x00" * 300)
    c = web_site.login()
    page = _post(c, "/quarantine", "/quarantine/release", id=entry)
    assert "still not acceptable (not-dicom)" in page
    assert (web_site.layout.quarantine / "ingest" / f"{entry}.bin").exists()
    assert web_site.store.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0


def test_purge_needs_confirmation_and_rejects_odd_ids(web_site: WebSite) -> None:
    entry = web_site.quarantine_bytes("deid", "burned-in-annotation", b"x" * 10)
    outside = web_site.root / "outside.json"
    outside.write_text("{}")
    c = web_site.login()
    page = _post(c, "/quarantine", "/quarantine/purge", id=entry)
    assert "Tick" in page and (web_site.layout.quarantine / "deid" / f"{entry}.bin").exists()
    page = _post(c, "/quarantine", "/quarantine/purge", id="../../outside", confirm="yes")
    assert "no such quarantine entry" in page and outside.exists()
    page = _post(c, "/quarantine", "/quarantine/purge", id=entry, confirm="yes")
    assert "Entry purged" in page
    assert not (web_site.layout.quarantine / "deid" / f"{entry}.bin").exists()
    assert not (web_site.layout.quarantine / "deid" / f"{entry}.json").exists()


def test_outbox_retry_now(web_site: WebSite) -> None:
    outbox = Outbox(web_site.store)
    outbox.enqueue("stow", "a", "registry", {})
    outbox.enqueue("stow", "b", "registry", {})
    first, second = outbox.lease("w", "registry", limit=2)
    outbox.give_up(first.id, "w", error="HTTP 400", status=400)
    outbox.defer(second.id, "w", 1800, error="connect failed")
    conn = web_site.store.conn
    c = web_site.login()
    page = c.get("/outbox").text
    assert "HTTP 400" in page and "connect failed" in page

    page = _post(c, "/outbox", "/outbox/retry")
    assert "2 job(s) will be retried now" in page
    rows = dict(conn.execute("SELECT id, state FROM outbox_jobs"))
    assert rows == {first.id: "pending", second.id: "pending"}
    due = [r[0] for r in conn.execute("SELECT id FROM outbox_jobs WHERE next_attempt_at <= ?", (time.time(),))]
    assert sorted(due) == sorted([first.id, second.id])
    assert web_site.woken == ["outbox"]
