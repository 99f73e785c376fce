"""The WSGI server under the dashboard (waitress): port taken, silent and half-sent clients, HEAD."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from connector.store.layout import SiteLayout
from connector.site_db import open_state
from connector.web.server import WebServer
from connector.web.site_context import SiteContext
from tests.web.conftest import WebSite, make_config


def test_port_in_use_raises_before_serving(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    config = make_config(tmp_path, SITE_CONNECTOR__HTTP__PORT=str(port))
    layout = SiteLayout.from_config(config)
    layout.ensure()
    store = open_state(layout.state_db)
    try:
        with pytest.raises(OSError):
            WebServer(SiteContext(config, store, layout, {})).start()
    finally:
        holder.close()
        store.close()


def test_stop_is_bounded_with_stalled_clients_and_frees_the_port(web_site: WebSite) -> None:
    port = web_site.server.port
    stalled = []
    for i in range(12):
        s = socket.create_connection(("127.0.0.1", port))
        if i % 2:  # half a request: headers promise a body that never comes
            s.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
        stalled.append(s)
    assert httpx.get(web_site.url + "/healthz", timeout=10).status_code == 200  # the others are still served
    t = time.monotonic()
    web_site.server.stop()
    assert time.monotonic() - t < 3.0
    again = socket.socket()
    again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    again.bind(("127.0.0.1", port))  # released
    again.close()
    for s in stalled:
        s.close()


def test_head_and_unknown_pages(web_site: WebSite) -> None:
    r = httpx.head(web_site.url + "/healthz")
    assert r.status_code == 200 and r.content == b""
    c = web_site.login()
    r = c.get("/no-such-page")
    assert r.status_code == 404 and "No such page" in r.text
    assert r.headers["Server"] == "site-connector"
    big = c.post("/quarantine/purge", content=b"x" * (200 * 1024),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413  # forms other than the follow-up upload are small


def test_a_failing_page_logs_the_error_type_only(web_site: WebSite, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> str:
        raise ValueError("MRN-123 would be a leak")

    web_site.server.app.view_functions["dashboard.outbox"] = broken
    c = web_site.login()
    with caplog.at_level("DEBUG"):
        r = c.get("/outbox")
    assert r.status_code == 500 and "Something went wrong" in r.text and "MRN-123" not in r.text
    assert "MRN-123" not in caplog.text and "Traceback" not in caplog.text
    assert any(getattr(rec, "error", None) == "ValueError" for rec in caplog.records)
