"""A real dashboard for the security tests: the site of ``tests/web/conftest.py`` (state DB, linkage
table, users ``USER`` (role it) and ``COORD`` (coordinator)) with ``[http]`` settings of the test's
choosing, served by waitress on 127.0.0.1; plus what those tests share (a self-signed certificate,
a sign-in over raw HTTP with headers of the test's choosing)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connector.ingest.intake import Intake
from connector.linkage import OpenOptions, create_key_file, open_linkage
from connector.linkage.paths import default_key_path
from connector.store.layout import SiteLayout
from connector.site_db import open_state
from connector.web.users import UserFile, users_path
from connector.web.server import WebServer
from connector.web.site_context import SiteContext
from tests.web.conftest import COORD, COORD_PASSWORD, PASSWORD, USER, WebSite, csrf_of, make_config

__all__ = ["COORD", "COORD_PASSWORD", "PASSWORD", "USER", "browser_like", "cookie_of", "dashboard", "self_signed",
           "sign_in"]


@contextmanager
def dashboard(root: Path, **http: str) -> Iterator[WebSite]:
    """A running dashboard; ``http`` are ``[http]`` keys, e.g. ``trusted_proxies='["127.0.0.1"]'``."""
    config = make_config(root, **{f"SITE_CONNECTOR__HTTP__{k.upper()}": v for k, v in http.items()})
    layout = SiteLayout.from_config(config)
    layout.ensure()
    create_key_file(default_key_path(config))
    provider = open_linkage(config, OpenOptions(role="test"))
    store = open_state(layout.state_db)
    intake = Intake(layout, store, min_free_bytes=0, fsync=False)
    UserFile(users_path(config)).add(USER, PASSWORD)
    UserFile(users_path(config)).add(COORD, COORD_PASSWORD, role="coordinator")
    server = WebServer(SiteContext(config, store, layout, {}, intake=intake, provider=provider,
                                    wake=lambda _what: None))
    server.start()
    try:
        yield WebSite(root, config, layout, store, intake, provider, server)
    finally:
        server.stop()
        store.close()
        provider.close()


def cookie_of(response: httpx.Response, name: str = "sc_session") -> str:
    """The Set-Cookie line of ``name`` (with its attributes)."""
    lines = [v for v in response.headers.get_list("set-cookie") if v.startswith(f"{name}=")]
    assert lines, f"no {name} cookie set"
    return lines[-1]


def browser_like(url: str, headers: dict[str, str] | None = None, **kwargs: object) -> httpx.Client:
    """A client that sends back the session cookie it was last given, Secure or not.

    httpx (rightly) keeps a Secure cookie off plain HTTP, but between a TLS proxy and the
    dashboard the hop is plain HTTP while the browser's side is HTTPS: the test plays that proxy.
    """
    client = httpx.Client(base_url=url, timeout=10, headers=headers, **kwargs)  # type: ignore[arg-type]

    def keep(response: httpx.Response) -> None:
        lines = [v for v in response.headers.get_list("set-cookie") if v.startswith("sc_session=")]
        if lines:
            client.headers["Cookie"] = lines[-1].split(";")[0]

    client.event_hooks["response"] = [keep]
    return client


def sign_in(client: httpx.Client, user: str, password: str) -> httpx.Response:
    form = client.get("/login")
    return client.post("/login", data={"csrf": csrf_of(form.text), "username": user, "password": password})


def self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throw-away certificate for ``host`` (an IP address) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site-connector test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "dashboard.crt", folder / "dashboard.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
