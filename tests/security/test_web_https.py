"""Issue 24, row 6: the session cookie is Secure and HSTS is sent whenever the browser uses HTTPS:
behind a trusted reverse proxy that says so (X-Forwarded-Proto), or with the server's own TLS
([http] tls_cert / tls_key, tested with a real HTTPS client and a certificate made here). The
forwarded headers are believed from the configured proxies only. Real waitress, real sockets.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from connector.linkage import OpenOptions, create_key_file, open_linkage
from connector.linkage.paths import default_key_path
from connector.store.layout import SiteLayout
from connector.site_db import open_state
from connector.web.server import WebServer
from connector.web.site_context import SiteContext
from tests.security.web_support import (COORD, COORD_PASSWORD, USER, browser_like, cookie_of, dashboard,
                                       self_signed, sign_in)
from tests.web.conftest import add_patient, csrf_of, make_config

HSTS = "max-age=31536000"


def test_behind_a_trusted_proxy_https_means_secure_cookie_hsts_and_the_client_address(tmp_path: Path) -> None:
    with dashboard(tmp_path, trusted_proxies='["192.0.2.10", "127.0.0.0/8"]') as site:
        pseudonym = add_patient(site.provider, "MRN-1234", "HOSP-A", "20220101")
        proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9, 10.20.30.40"}
        c = browser_like(site.url, proxy)
        form = c.get("/login")
        assert "Secure" in cookie_of(form) and form.headers["Strict-Transport-Security"] == HSTS
        r = sign_in(c, COORD, COORD_PASSWORD)
        assert r.status_code == 303
        cookie = cookie_of(r)
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert r.headers["Strict-Transport-Security"] == HSTS

        page = c.get("/search")
        assert page.status_code == 200 and page.headers["Strict-Transport-Security"] == HSTS
        found = c.post("/search", data={"csrf": csrf_of(page.text), "by": "patient", "patient_id": "MRN-1234",
                                        "issuer": "HOSP-A"})
        assert found.status_code == 200 and pseudonym in found.text  # POSTs over (proxied) HTTPS work
        [entry] = [e for e in site.provider.audit_log.entries() if e["action"] == "web.search.patient_id"]
        # the last hop, the address the proxy saw; the client cannot smuggle one in front of it
        assert entry["details"]["user"] == COORD and entry["details"]["source"] == "10.20.30.40"

        plain = httpx.get(site.url + "/login", headers={"X-Forwarded-Proto": "http"})
        assert "Secure" not in cookie_of(plain) and "Strict-Transport-Security" not in plain.headers


@pytest.mark.parametrize("trusted", ["[]", '["192.0.2.10"]'])
def test_forwarded_headers_from_anyone_else_are_ignored(tmp_path: Path, trusted: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with dashboard(tmp_path, trusted_proxies=trusted) as site:
        forged = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.66.66.66"}
        c = httpx.Client(base_url=site.url, timeout=10, headers=forged)
        form = c.get("/login")
        assert "Secure" not in cookie_of(form) and "Strict-Transport-Security" not in form.headers
        with caplog.at_level("INFO", logger="connector.web.app"):
            r = c.post("/login", data={"csrf": csrf_of(form.text), "username": USER, "password": "not the password"})
        assert r.status_code == 401
        [failed] = [rec for rec in caplog.records if getattr(rec, "event", None) == "login_failed"]
        assert failed.source == "127.0.0.1"  # the peer, not the forged address


def test_direct_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    with dashboard(tmp_path / "site", tls_cert=str(cert), tls_key=str(key)) as site:
        assert site.url.startswith("https://127.0.0.1:")
        port = site.server.port
        trust = ssl.create_default_context(cafile=str(cert))
        c = httpx.Client(base_url=site.url, timeout=10, verify=trust)
        health = c.get("/healthz")
        assert health.status_code == 200 and health.headers["Strict-Transport-Security"] == HSTS

        silent = socket.create_connection(("127.0.0.1", port))  # connects, never says hello
        try:
            t = time.monotonic()
            r = sign_in(c, COORD, COORD_PASSWORD)
            assert time.monotonic() - t < 5  # the silent client holds up nobody
        finally:
            silent.close()
        assert r.status_code == 303
        cookie = cookie_of(r)
        assert "Secure" in cookie and "HttpOnly" in cookie
        overview = c.get("/")
        assert overview.status_code == 200 and overview.headers["Strict-Transport-Security"] == HSTS
        css = c.get("/static/style.css")  # a file response (waitress's file wrapper) over TLS
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and len(css.content) > 500

        # one TLS record larger than waitress reads at once: the rest is read too, not left in OpenSSL
        t = time.monotonic()
        form = c.get("/login")
        r = c.post("/login", data={"csrf": csrf_of(form.text), "username": USER, "password": "p" * 12_000})
        assert r.status_code in (401, 429) and time.monotonic() - t < 5
        # a body of many TLS records, and a response to it
        big = ("patient_id,issuer\n" + "x,y\n" * 150_000).encode()
        token = csrf_of(c.get("/followup").text)
        r = c.post("/followup/preview", data={"csrf": token}, files={"file": ("big.csv", big, "text/csv")})
        assert r.status_code == 303 and "could not be used" in c.get(r.headers["location"]).text

        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert c.get("/healthz").status_code == 200
        with pytest.raises(httpx.ConnectError):  # nor a certificate the client does not trust
            httpx.get(site.url + "/healthz", timeout=5)


def test_unusable_tls_settings_stop_the_start(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    (tmp_path / "tls" / "broken.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    loose = tmp_path / "tls" / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    cases = {"key without cert": {"SITE_CONNECTOR__HTTP__TLS_KEY": str(key)},
             "key every user may read": {"SITE_CONNECTOR__HTTP__TLS_CERT": str(cert),
                                         "SITE_CONNECTOR__HTTP__TLS_KEY": str(loose)},
             "broken key": {"SITE_CONNECTOR__HTTP__TLS_CERT": str(cert),
                            "SITE_CONNECTOR__HTTP__TLS_KEY": str(tmp_path / "tls" / "broken.key")},
             "missing cert": {"SITE_CONNECTOR__HTTP__TLS_CERT": str(tmp_path / "nope.crt")}}
    for name, env in cases.items():
        config = make_config(tmp_path / name, **env)
        layout = SiteLayout.from_config(config)
        layout.ensure()
        create_key_file(default_key_path(config))
        store = open_state(layout.state_db)
        provider = open_linkage(config, OpenOptions(role="test"))
        try:
            server = WebServer(SiteContext(config, store, layout, {}, provider=provider))
            with pytest.raises(OSError, match=r"\[http\] tls_"):
                server.start()  # no silent fall-back to plain HTTP
            assert server._server is None
        finally:
            store.close()
            provider.close()
