"""The dashboard's CAC validation page: the last ``cac validate`` run per model hash, for signed-in
staff only, the configured model marked (and flagged when it was never validated at the site)."""

from __future__ import annotations

import httpx

from connector.infer.manifest import BUNDLED_MODEL_DIR, load_manifest
from connector.infer.validation_store import record_run
from connector.web.permissions import STAFF, required, undeclared
from tests.web.conftest import WebSite

OTHER_SHA = "ab" * 32


def _run(sha: str, at: float, kappa: float, n: int, disagreements: int, name: str = "cac-synthetic",
         version: str = "2.0.0") -> dict:
    return {"at": at, "model_sha256": sha, "model_name": name, "model_version": version, "model_validated": False,
            "n": n, "references_total": n + 1, "kappa": kappa, "bias": 12.5, "loa_lower": -80.25, "loa_upper": 105.25,
            "rho": 0.9123, "disagreements": disagreements, "seconds": 30.0,
            "detail": {"table": [[1, 0, 0, 0]] * 4, "not_found": 1, "not_scored": 0}}


def test_the_route_is_declared_for_staff(web_site: WebSite) -> None:
    app = web_site.server.app
    assert undeclared(app) == []
    assert required(app, "cac_validation.cac_validation") == frozenset(STAFF)
    r = httpx.get(web_site.url + "/cac/validation", follow_redirects=False)
    assert r.status_code == 303 and "/login" in r.headers["location"]  # not signed in: to the sign-in


def test_last_run_per_model_hash_as_a_signed_in_user(web_site: WebSite) -> None:
    bundled = load_manifest(BUNDLED_MODEL_DIR).sha256
    client = web_site.login()
    page = client.get("/cac/validation")
    assert page.status_code == 200
    assert "No validation run yet." in page.text and 'id="cac-no-run"' in page.text
    assert "not validated for clinical use" in page.text
    with web_site.store.write() as conn:
        record_run(conn, _run(bundled, 1_800_000_000.0, 0.5, 10, 4))
        record_run(conn, _run(bundled, 1_800_000_100.0, 0.84, 20, 2))  # the last run of the configured model
        record_run(conn, _run(OTHER_SHA, 1_700_000_000.0, 0.7777, 12, 3, name="site-model", version="9"))
    page = client.get("/cac/validation")
    assert page.status_code == 200
    text = page.text
    assert 'id="cac-no-run"' not in text and "kappa 0.840" in text
    row = text.split(f'id="cac-run-{bundled[:16]}"', 1)[1].split("</tr>", 1)[0]
    assert "(configured)" in row and "0.840" in row and "0.500" not in row
    assert "20 of 21" in row and "12.5" in row and "-80.2 to 105.2" in row and "0.912" in row
    assert '<td class=num>2</td>' in row  # runs of this model
    other = text.split(f'id="cac-run-{OTHER_SHA[:16]}"', 1)[1].split("</tr>", 1)[0]
    assert "site-model 9" in other and "0.778" in other and "(configured)" not in other
    assert text.index(bundled[:16]) < text.index(OTHER_SHA[:16])  # newest first
