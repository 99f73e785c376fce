"""The ``[stow]`` configuration section: DICOMweb STOW-RS as a second door in, beside C-STORE.

```toml
[stow]
enabled = true
port = 8043
token_file = "/etc/site-connector/stow.tokens"   # one bearer token per line, mode 0600
allowed_hosts = ["10.1.2.0/24"]
tls_cert_file = "/etc/site-connector/stow.crt"    # with tls_key_file: HTTPS
tls_key_file = "/etc/site-connector/stow.key"
tls_ca_file = "/etc/site-connector/senders-ca.pem"  # mutual TLS: senders need a certificate from this CA
```

Why off by default: every listener is something hospital IT must know about and firewall; the
DICOM port is the one a site always has. Why a sender must authenticate (a token file, or mutual
TLS): unlike a DICOM association, an HTTP request can come from any program on the network, and
what it posts becomes registry data. Requests are served by the ``stow`` role
(:mod:`connector.ingest.stow`), which files every part through the same durable intake as C-STORE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting, valid_host_entry


@dataclass(frozen=True)
class StowConfig:
    enabled: bool = setting(False, doc="listen for DICOMweb STOW-RS (POST /dicomweb/studies); off by default")
    host: str = setting("0.0.0.0", doc="address to listen on (0.0.0.0 = every interface)")
    port: int = setting(8043, check(lambda v: 1 <= v <= 65535, "must be between 1 and 65535"),
                        doc="HTTP(S) port of the STOW-RS listener")
    token_file: Path | None = setting(None, doc="file with the accepted bearer tokens, one per line (mode 0600); "
                                                "a sender sends 'Authorization: Bearer <token>'")
    tls_cert_file: Path | None = setting(None, doc="PEM certificate: set with tls_key_file to serve HTTPS")
    tls_key_file: Path | None = setting(None, doc="PEM private key for tls_cert_file")
    tls_ca_file: Path | None = setting(None, doc="PEM CA bundle: when set, senders must present a certificate "
                                                 "from it (mutual TLS; then a token is optional)")
    allowed_hosts: list[str] = setting(
        [], check(lambda v: all(valid_host_entry(x) for x in v), "every entry must be an IP address or CIDR network"),
        doc="IP addresses or networks allowed to send; others get 403 before their body is read; empty = any")
    max_request_bytes: int = setting(8 * 1024**3, check(lambda v: v >= 1024**2, "must be at least 1 MiB"),
                                     doc="largest request body accepted; a larger one is refused with 413 (at "
                                         "once when its Content-Length says so, else when the limit is crossed)")
    max_connections: int = setting(8, check(lambda v: 1 <= v <= 256, "must be between 1 and 256"),
                                   doc="requests served at once (one thread each); more wait in the kernel's queue")
    network_timeout: float = setting(60.0, check(lambda v: v > 0, "must be positive"),
                                     doc="seconds of silence from a sender before its request is dropped")


def cross_check(cfg: StowConfig) -> str | None:
    """A readable problem with the combination of [stow] keys, or None (``key: problem``)."""
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        return "tls_cert_file/tls_key_file: set both or neither"
    if cfg.tls_ca_file and not cfg.tls_cert_file:
        return "tls_ca_file: mutual TLS needs tls_cert_file and tls_key_file too"
    if cfg.enabled and cfg.token_file is None and cfg.tls_ca_file is None:
        return "token_file: set token_file (bearer tokens) or tls_ca_file (mutual TLS): senders must authenticate"
    return None
