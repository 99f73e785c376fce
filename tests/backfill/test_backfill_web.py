"""The dashboard's Backfill page: jobs with progress, failures with reasons, pause/resume/cancel."""

from __future__ import annotations

from connector.backfill.worklist import FoundStudy, Worklist, process_owner
from tests.web.conftest import WebSite, csrf_of, web_site  # noqa: F401  (fixture)


def test_backfill_page_shows_progress_and_failures(web_site: WebSite) -> None:  # noqa: F811
    wl = Worklist(web_site.store)
    job = wl.create_job([FoundStudy(f"1.2.3.{i}", 2) for i in range(4)],
                        {"from": "2024-03-01", "to": "2024-03-03", "modalities": ["PT"], "description": "",
                         "accessions": 0})["job"]
    done = wl.lease(process_owner(), job_id=job)
    wl.succeed(done, 2, 4096, 1.0)
    bad = wl.lease(process_owner(), job_id=job)
    wl.fail(bad, "incomplete: 1 of 2 instances", max_attempts=1, backoff_seconds=0)
    c = web_site.login()
    html = c.get("/backfill").text
    assert 'href="/backfill"' in html and 'id="backfill-job-1"' in html and "2024-03-01 to 2024-03-03 PT" in html
    assert '<progress max="100" value="50' in html  # 2 of 4 settled
    assert "incomplete: 1 of 2 instances" in html and bad.study_key in html
    assert "1.2.3." not in html  # study keys only, never a UID
    assert 'id="backfill-no-pacs"' in html
    r = c.post(f"/backfill/{job}/pause", data={"csrf": csrf_of(html)})
    assert r.status_code == 303 and wl.job(job)["state"] == "paused"
    r = c.post(f"/backfill/{job}/pause", data={})
    assert r.status_code in (400, 403) and wl.job(job)["state"] == "paused"  # CSRF checked
    html = c.get("/backfill").text
    c.post(f"/backfill/{job}/cancel", data={"csrf": csrf_of(html)})
    assert wl.job(job)["state"] == "cancelled" and wl.counts(job)["cancelled"] == 2
