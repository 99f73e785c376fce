"""A build without the outbox or the follow-up import: the pages say so, nothing breaks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.web import integrations
from tests.web.conftest import WebSite, csrf_of


@pytest.fixture
def without_optional_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    real = integrations._optional_module

    def fake(name: str) -> Any:
        return None if name.startswith(("connector.outbox", "connector.followup")) else real(name)

    monkeypatch.setattr(integrations, "_optional_module", fake)


def test_pages_degrade(web_site: WebSite, without_optional_stages: None) -> None:
    c = web_site.login()
    assert "not available in this build" in c.get("/outbox").text
    assert "not available in this build" in c.get("/followup").text
    assert "not available in this build" in c.get("/").text
    token = csrf_of(c.get("/outbox").text)
    r = c.post("/outbox/retry", data={"csrf": token})
    assert "the outbox is not available in this build" in c.get(r.headers["location"]).text
    metrics = {s.name: s.value for f in text_string_to_metric_families(httpx.get(web_site.url + "/metrics").text)
               for s in f.samples}
    assert metrics["site_connector_outbox_available"] == 0
    assert metrics["site_connector_outbox_pending_jobs"] == 0


def test_followup_without_linkage_provider(web_site: WebSite) -> None:
    web_site.server.site.provider = None
    c = web_site.login()
    assert "needs the linkage table" in c.get("/followup").text
