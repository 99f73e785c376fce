"""The follow-up upload over HTTP: dry-run preview first, nothing queued until confirmed."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta

import httpx

from tests.web.conftest import COORD, COORD_PASSWORD, WebSite, add_patient, csrf_of


def _csv(rows: list[tuple[str, str, str, str]]) -> bytes:
    lines = ["patient_id,issuer,event,event_date"] + [",".join(r) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def _preview(c: httpx.Client, data: bytes, name: str = "deaths-2025.csv") -> httpx.Response:
    token = csrf_of(c.get("/followup").text)
    return c.post("/followup/preview", data={"csrf": token}, files={"file": (name, data, "text/csv")})


def _event_jobs(site: WebSite) -> list[dict[str, object]]:
    return [json.loads(p) for (p,) in site.store.conn.execute("SELECT payload FROM outbox_jobs WHERE kind='event'")]


def test_preview_then_queue(web_site: WebSite) -> None:
    pseudonym = add_patient(web_site.provider, "MRN-4711", "HOSP-A", "20200115")
    future = (date.today() + timedelta(days=30)).isoformat()
    data = _csv([("MRN-4711", "HOSP-A", "death", "2023-03-01"),
                 ("MRN-0000", "HOSP-A", "death", "2023-03-01"),
                 ("MRN-4711", "HOSP-A", "mi", future)])
    c = web_site.login(COORD, COORD_PASSWORD)  # the preview resolves MRNs: coordinators only
    r = _preview(c, data)
    assert r.status_code == 200
    page = r.text
    assert "Dry run: nothing has been queued yet" in page
    assert pseudonym in page
    assert str((date(2023, 3, 1) - date(2020, 1, 15)).days) in page  # days_from_index, from the real dates
    assert "2023-03-01" not in page and "20230301" not in page  # the date shown is the shifted one
    assert "unknown_patient" in page and "future_date" in page
    assert "MRN-4711" not in page and "MRN-0000" not in page
    assert _event_jobs(web_site) == []  # a dry run queues nothing

    token = re.search(r'name="token" value="([0-9a-f]+)"', page).group(1)
    staged = list((web_site.config.storage.data_dir / "web" / "uploads").iterdir())
    assert [p.name for p in staged] == [f"{token}.csv"]  # random name, never the uploaded one
    r = c.post("/followup/commit", data={"csrf": csrf_of(page), "token": token})
    assert r.status_code == 303
    done = c.get("/followup").text
    assert "Follow-up imported" in done and "queued 1" in done
    events = _event_jobs(web_site)
    assert len(events) == 1 and events[0]["pseudonym"] == pseudonym and events[0]["event"] == "death"
    assert not list((web_site.config.storage.data_dir / "web" / "uploads").iterdir())
    reports = list((web_site.config.storage.data_dir / "web" / "reports").glob("*.report.csv"))
    assert len(reports) == 1 and "MRN" not in reports[0].read_text()
    assert web_site.woken == ["outbox"]

    # the same file again: nothing new would be sent
    again = _preview(c, data).text
    assert "Nothing new would be sent" in again


def test_cancel_and_bad_uploads(web_site: WebSite) -> None:
    add_patient(web_site.provider, "MRN-1", "HOSP-A", "20200115")
    c = web_site.login(COORD, COORD_PASSWORD)  # the preview resolves MRNs: coordinators only
    page = _preview(c, _csv([("MRN-1", "HOSP-A", "death", "2022-01-01")])).text
    token = re.search(r'name="token" value="([0-9a-f]+)"', page).group(1)
    c.post("/followup/cancel", data={"csrf": csrf_of(page), "token": token})
    assert "Nothing was queued" in c.get("/followup").text
    assert not list((web_site.config.storage.data_dir / "web" / "uploads").iterdir())
    r = c.post("/followup/commit", data={"csrf": csrf_of(page), "token": token})
    assert "expired" in c.get(r.headers["location"]).text
    assert _event_jobs(web_site) == []

    r = _preview(c, b"MZ\x90\x00", name="tool.exe")
    assert "Upload a .csv or .xlsx file" in c.get(r.headers["location"]).text
    r = _preview(c, b"not,a,followup\nfile,at,all\n")
    assert "could not be used" in c.get(r.headers["location"]).text
