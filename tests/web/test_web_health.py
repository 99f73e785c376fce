"""/healthz against a real server: ok, and 503 naming each failing check."""

from __future__ import annotations

from pathlib import Path

import httpx

from connector.store.layout import SiteLayout
from connector.site_db import open_state
from connector.web.health import RegistryReachability
from connector.web.server import WebServer
from connector.web.site_context import SiteContext
from connector.web.health import disk_free_bytes
from tests.web.conftest import WebSite, make_config


def test_healthz_ok_without_login(web_site: WebSite) -> None:
    r = httpx.get(web_site.url + "/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"db": "ok", "disk": "ok", "registry": "ok", "scp": "ok"}
    assert body["failing"] == {}


def test_healthz_names_failing_probes(web_site: WebSite) -> None:
    web_site.probe_results["scp"] = "DICOM port 11112 not listening"
    r = httpx.get(web_site.url + "/healthz")
    assert r.status_code == 503
    assert r.json()["failing"] == {"scp": "DICOM port 11112 not listening"}
    web_site.probe_results["scp"] = None
    assert httpx.get(web_site.url + "/healthz").status_code == 200


def test_a_probe_that_raises_counts_as_failing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    layout = SiteLayout.from_config(config)
    layout.ensure()
    store = open_state(layout.state_db)

    def broken() -> str | None:
        raise RuntimeError("secret detail that must not be shown")

    server = WebServer(SiteContext(config, store, layout, {"registry": broken}))
    server.start()
    try:
        r = httpx.get(server.url + "healthz")
    finally:
        server.stop()
        store.close()
    assert r.status_code == 503
    assert r.json()["failing"] == {"registry": "probe error (RuntimeError)"}
    assert "secret" not in r.text


def test_disk_below_floor(tmp_path: Path) -> None:
    free = disk_free_bytes(tmp_path)
    config = make_config(tmp_path, SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES=str(free * 4 + 10**12))
    layout = SiteLayout.from_config(config)
    layout.ensure()
    store = open_state(layout.state_db)
    server = WebServer(SiteContext(config, store, layout, {}))
    server.start()
    try:
        r = httpx.get(server.url + "healthz")
    finally:
        server.stop()
        store.close()
    assert r.status_code == 503
    assert set(r.json()["failing"]) == {"disk"}
    assert "below the floor" in r.json()["failing"]["disk"]


def test_state_db_unreadable(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    layout = SiteLayout.from_config(config)
    layout.ensure()
    store = open_state(layout.state_db)
    server = WebServer(SiteContext(config, store, layout, {}))
    server.start()
    try:
        assert httpx.get(server.url + "healthz").status_code == 200
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(layout.state_db) + suffix).unlink(missing_ok=True)
        layout.state_db.write_bytes(b"this is not a database" * 100)
        r = httpx.get(server.url + "healthz")
        assert r.status_code == 503
        assert "state database unreadable" in r.json()["failing"]["db"]
        layout.state_db.unlink()
        r = httpx.get(server.url + "healthz")
        assert r.json()["failing"]["db"] == "state database missing"
    finally:
        server.stop()


def test_registry_reachability_threshold() -> None:
    now = [1000.0]
    reach = RegistryReachability(600, clock=lambda: now[0])
    assert reach.probe() is None
    reach.failed()
    now[0] += 599
    reach.failed()
    assert reach.probe() is None  # short outages are normal
    now[0] += 2
    assert reach.probe() == "registry unreachable for 601 s (threshold 600 s)"
    reach.succeeded()
    assert reach.probe() is None and reach.last_success == now[0]
