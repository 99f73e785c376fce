"""Per-source counts (received, matched, unmatched dropped, sent, errors) on the dashboard's
Follow-up page and in ``status``, after real MLLP traffic: counts only, no identifier."""

from __future__ import annotations

import dataclasses
import re

from connector.cli.status_cmd import collect
from connector.hl7.listener import Hl7Service
from connector.outbox import Outbox
from connector.settings.hl7 import Hl7Config
from tests.hl7.support import MllpClient, ack_code, adt
from tests.support.waiting import wait_for
from tests.web.conftest import WebSite, add_patient, web_site  # noqa: F401  (fixture)


def test_dashboard_and_status_show_counts_per_source(web_site: WebSite) -> None:  # noqa: F811
    add_patient(web_site.provider, "CNT-1", "HOSP-A", "20200101")
    config = dataclasses.replace(web_site.config, hl7=Hl7Config(port=0, host="127.0.0.1"))
    service = Hl7Service(config, web_site.provider, web_site.store, Outbox(web_site.store)).start()
    try:
        with MllpClient(service.port) as c:
            assert ack_code(c.send(adt("A08", "CNT-1", death="20240101", indicator="Y", control="1")))[0] == "AA"
            assert ack_code(c.send(adt("A08", "STRANGER-5", death="20240101", indicator="Y", control="2")))[0] == "AA"
            assert ack_code(c.send(adt("A01", "CNT-1", control="3")))[0] == "AR"
        wait_for(lambda: collect(web_site.layout)["followup_sources"].get("hl7", {}).get("sent") == 1, 20,
                 what="the death queued and counted")
    finally:
        service.stop()
    hl7 = collect(web_site.layout)["followup_sources"]["hl7"]
    assert hl7 == {"received": 3, "matched": 1, "unmatched_dropped": 1, "sent": 1, "errors": 1}
    page = web_site.login().get("/followup").text
    row = re.search(r'<tr data-source="hl7">(.*?)</tr>', page, re.S)
    assert row is not None
    assert re.findall(r"<td>(\d+)</td>", row.group(1)) == ["3", "1", "1", "1", "1"]
    assert "STRANGER-5" not in page and "CNT-1" not in page
