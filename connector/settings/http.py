"""The ``[http]`` configuration section: where health, metrics and the dashboard are served.

Why 127.0.0.1 by default: the dashboard shows the state of clinical data flows and lets staff
release or purge quarantined objects, so it is reachable from the server itself unless hospital IT
deliberately opens it (``host = "0.0.0.0"`` behind their firewall or reverse proxy).

Why ``trusted_proxies`` is a list of addresses and not a switch: ``X-Forwarded-For`` and
``X-Forwarded-Proto`` decide the source address the login throttle and the audit log see, and
whether the session cookie is ``Secure``; anyone can send them, so they are believed only from the
reverse proxies named here and dropped from every other peer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting, valid_host_entry


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = setting(True, doc="serve /healthz, /metrics and the dashboard")
    host: str = setting("127.0.0.1", doc="address for health, metrics and the dashboard (0.0.0.0 = every interface)")
    port: int = setting(8080, check(lambda v: 0 <= v <= 65535, "must be between 0 and 65535"),
                        doc="HTTP port (0 = any free port, for tests)")
    users_file: Path | None = setting(None, doc="dashboard users (scrypt hashes); unset = <data_dir>/web/users.json")
    session_minutes: int = setting(480, check(lambda v: 1 <= v <= 7 * 24 * 60, "must be between 1 and 10080"),
                                   doc="a dashboard login expires after this many minutes without activity")
    registry_unreachable_seconds: float = setting(
        3600.0, check(lambda v: v > 0, "must be positive"),
        doc="/healthz reports the registry once it has been unreachable this long",
    )
    max_upload_bytes: int = setting(20 * 1024**2, check(lambda v: v > 0, "must be positive"),
                                    doc="largest follow-up file accepted by the dashboard")
    trusted_proxies: list[str] = setting(
        [], check(lambda v: all(valid_host_entry(e) for e in v), "each entry must be an IP address or network"),
        doc="reverse proxies (IP addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto are believed "
            "(have the proxy set both); empty = none, the headers are dropped",
    )
    tls_cert: Path | None = setting(None, doc="PEM certificate (with chain) to serve the dashboard over HTTPS "
                                              "directly; unset = plain HTTP (local only, or behind a TLS proxy)")
    tls_key: Path | None = setting(None, doc="PEM private key of tls_cert (readable by the service user only); "
                                             "unset = inside tls_cert")
    hsts_seconds: int = setting(31_536_000, check(lambda v: v >= 0, "must be 0 or more"),
                                doc="Strict-Transport-Security max-age sent on HTTPS responses; 0 = no HSTS header")
    login_delay_seconds: float = setting(
        1.0, check(lambda v: 0 < v <= 3600, "must be above 0 and at most 3600"),
        doc="after a failed sign-in, the same user name from the same address must wait this long; "
            "the wait doubles with each further failure",
    )
    login_max_delay_seconds: float = setting(900.0, check(lambda v: 0 < v <= 86400, "must be above 0 and at most 86400"),
                                             doc="the longest wait between sign-in attempts of one user name "
                                                 "from one address")
