"""[registry] settings, the upload window, the token sources, and TLS (verification, CA bundle, mTLS)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connector.config import ConfigError, load_config
from connector.outbox import outbox_counts
from connector.push.worker import PushWorker
from connector.push.client import TokenError, read_token
from connector.settings.registry import DEV_REGISTRY_URL, TOKEN_ENV, RegistryConfig, UploadWindow
from connector.push.throttle import RateLimiter
from devregistry import RegistryServer
from tests.push.conftest import Site
from tests.support.waiting import wait_for


def test_url_alone_gives_both_bases() -> None:
    cfg = load_config(None, {"SITE_CONNECTOR__REGISTRY__URL": "https://registry.example.org/"}).registry
    assert cfg.resolved_dicomweb_url == "https://registry.example.org/dicomweb"
    assert cfg.resolved_api_url == "https://registry.example.org"
    split = RegistryConfig(url="https://r.example.org", dicomweb_url="https://pacs.example.org/dicom-web/")
    assert split.resolved_dicomweb_url == "https://pacs.example.org/dicom-web"
    assert split.resolved_api_url == "https://r.example.org"


def test_empty_url_means_the_dev_registry() -> None:
    cfg = load_config(None, {}).registry
    assert cfg.uses_dev_registry and cfg.resolved_api_url == DEV_REGISTRY_URL
    assert cfg.resolved_dicomweb_url == DEV_REGISTRY_URL + "/dicomweb"
    assert cfg.verify_tls is True and cfg.batch_max_instances == 50 and cfg.batch_max_bytes == 64 * 1024**2
    assert 2 <= cfg.concurrency <= 4 and cfg.backoff_min_seconds == 5 and cfg.backoff_max_seconds == 1800


@pytest.mark.parametrize("key,value", [("url", "ftp://x"), ("upload_window", "7pm-7am"), ("upload_window", "19:00-19:00"),
                                       ("compression", "zstd"), ("concurrency", "0"), ("batch_max_bytes", "100"),
                                       ("retention_hours", "-2")])
def test_bad_values_are_refused_with_the_key_named(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {f"SITE_CONNECTOR__REGISTRY__{key.upper()}": value})
    assert f"[registry] {key}" in str(err.value)


def test_upload_window_across_midnight() -> None:
    window = UploadWindow.parse("19:00-07:00")
    assert window is not None and UploadWindow.parse("  ") is None
    day = dt.datetime(2024, 5, 1)
    assert window.is_open(day.replace(hour=23)) and window.is_open(day.replace(hour=6, minute=59))
    assert not window.is_open(day.replace(hour=7)) and not window.is_open(day.replace(hour=12))
    assert window.seconds_until_open(day.replace(hour=18, minute=30)) == 1800
    assert window.seconds_until_open(day.replace(hour=20)) == 0
    office = UploadWindow.parse("09:00-17:00")
    assert office.is_open(day.replace(hour=9)) and not office.is_open(day.replace(hour=17))
    assert office.seconds_until_open(day.replace(hour=18)) == 15 * 3600


def test_rate_limiter_shares_one_cap() -> None:
    clock = [0.0]
    limiter = RateLimiter(1000, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    for _ in range(10):
        limiter.consume(500)
    assert clock[0] == pytest.approx(5.0, abs=0.01)  # 5000 bytes at 1000 B/s, from an empty bucket
    clock[0] += 100  # a long pause banks at most one second
    start = clock[0]
    limiter.consume(3000)
    assert clock[0] - start == pytest.approx(2.0, abs=0.01)
    assert not RateLimiter(0).enabled


def test_token_sources(tmp_path: Path) -> None:
    assert read_token(RegistryConfig(), {TOKEN_ENV: " from-env \n"}) == "from-env"
    assert read_token(RegistryConfig(), {}) is None
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    os.chmod(token_file, 0o600)
    assert read_token(RegistryConfig(token_file=token_file), {TOKEN_ENV: "ignored"}) == "from-file"
    os.chmod(token_file, 0o644)  # readable by others: refused, not sent (issue 24)
    with pytest.raises(TokenError) as unsafe:
        read_token(RegistryConfig(token_file=token_file), {TOKEN_ENV: "ignored"})
    assert "chmod 600" in str(unsafe.value) and "from-file" not in str(unsafe.value)
    with pytest.raises(TokenError) as err:
        read_token(RegistryConfig(token_file=tmp_path / "missing"), {})
    assert "missing" in str(err.value)


# -- TLS -------------------------------------------------------------------------------------------


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, ip: str | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer[0].subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    data = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    return {
        "ca": _write(tmp_path / "ca.pem", ca),
        "server": _write(tmp_path / "server.pem", _cert("registry", server_key, (ca, ca_key), ip="127.0.0.1"),
                         server_key),
        "client": _write(tmp_path / "client.pem", _cert("site TEST01", client_key, (ca, ca_key)), client_key),
    }


def _tls_registry(site: Site, pki: dict[str, Path]) -> tuple[RegistryServer, str]:
    server = RegistryServer(site.root / "registry", token=site.token_file.read_text().strip(), port=0, fsync=False)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    ctx.load_cert_chain(str(pki["server"]))
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the site must present its certificate
    server.httpd.socket = ctx.wrap_socket(server.httpd.socket, server_side=True, do_handshake_on_connect=False)
    port = server.httpd.server_address[1]
    return server.start(), f"https://127.0.0.1:{port}"


def _try(site: Site, config, seconds: float) -> dict[str, object]:
    worker = PushWorker(config, site.store, site.layout)
    worker.start()
    time.sleep(seconds)
    worker.stop()
    return outbox_counts(site.store)


def test_mutual_tls_with_a_ca_bundle(site: Site, pki: dict[str, Path]) -> None:
    registry, url = _tls_registry(site, pki)
    try:
        site.outbox.enqueue("event", "ev-tls", "registry", {"type": "tls-check"})
        # Verification is on by default: a private CA is not trusted without the bundle.
        counts = _try(site, site.config(url), 1.0)
        assert counts["pushed"] == 0 and counts["failed"] == 0
        assert site.store.conn.execute("SELECT last_error FROM outbox_jobs").fetchone()[0] == "network:ConnectError"
        # Trusted, but without a client certificate the registry refuses the handshake.
        with site.store.write() as conn:
            conn.execute("UPDATE outbox_jobs SET last_error=NULL")
        counts = _try(site, site.config(url, ca_bundle=pki["ca"]), 1.0)
        assert counts["pushed"] == 0 and counts["failed"] == 0
        assert site.store.conn.execute("SELECT last_error FROM outbox_jobs").fetchone()[0].startswith("network:")
        worker = PushWorker(site.config(url, ca_bundle=pki["ca"], client_cert=pki["client"]), site.store, site.layout)
        worker.start()
        try:
            wait_for(lambda: outbox_counts(site.store)["pushed"] == 1, timeout=30)
        finally:
            worker.stop()
        assert [e["type"] for e in registry.store.records("events")] == ["tls-check"]
    finally:
        registry.stop()
