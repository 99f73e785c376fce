"""The ``[hl7]`` configuration section: deaths from the hospital's HL7 v2 ADT feed over MLLP.

```toml
[hl7]
port = 2575                                   # unset = no listener (the default)
allowed_hosts = ["10.1.2.3"]                  # the interface engine; empty = any peer
issuer_map = ["HOSP_MRN=HOSP-A"]              # PID-3.4 assigning authority -> the issuer the PACS sends
expired_dispositions = ["20", "40", "41", "42"]
```

Why a separate listener and not the coordinators' inbox: the interface engine already publishes
every death as ADT; listening to it captures a registry patient's death without anyone typing it.
Why ``allowed_hosts`` and TLS: the ADT feed carries identifiers of every patient of the hospital,
so only the interface engine should be able to talk to this port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting, valid_host_entry

#: HL7 table 0112 (discharge disposition): 20 expired, 40 expired at home, 41 in a facility, 42 place unknown.
DEFAULT_EXPIRED = ["20", "40", "41", "42"]
_CODE = re.compile(r"[a-z0-9_]{1,40}")


def _valid_map(entry: str) -> bool:
    authority, sep, issuer = entry.partition("=")
    return bool(sep and authority.strip())


@dataclass(frozen=True)
class Hl7Config:
    port: int | None = setting(None, check(lambda v: v is None or 0 <= v <= 65535, "must be between 0 and 65535"),
                               doc="MLLP port of the ADT listener; unset = no listener (0 = any free port, tests)")
    host: str = setting("0.0.0.0", doc="address the ADT listener binds to")
    allowed_hosts: list[str] = setting(
        [], check(lambda v: all(valid_host_entry(e) for e in v), "each entry must be an IP address or network"),
        doc="peers (IP addresses or networks) allowed to send; others are disconnected at once; empty = any",
    )
    max_message_bytes: int = setting(1024 * 1024, check(lambda v: 1024 <= v <= 64 * 1024**2,
                                                         "must be between 1024 and 67108864"),
                                     doc="larger messages are refused with AR and the connection closed")
    max_connections: int = setting(8, check(lambda v: 1 <= v <= 256, "must be between 1 and 256"),
                                   doc="connections served at once (engines use one or two); more are closed at once")
    idle_timeout_seconds: float = setting(300.0, check(lambda v: v > 0, "must be positive"),
                                          doc="a connection silent this long is closed (the engine reconnects)")
    tls_cert_file: Path | None = setting(None, doc="PEM certificate (with chain): the listener speaks MLLP over "
                                                   "TLS; unset = plain TCP")
    tls_key_file: Path | None = setting(None, doc="PEM private key of tls_cert_file; unset = inside tls_cert_file")
    tls_ca_file: Path | None = setting(None, doc="PEM CA bundle: the engine must present a certificate it signed "
                                                 "(mutual TLS); unset = no client certificate asked")
    expired_dispositions: list[str] = setting(
        DEFAULT_EXPIRED, check(lambda v: all(str(c).strip() for c in v), "entries must not be empty"),
        doc="PV1-36 discharge dispositions that mean the patient died (A03)",
    )
    issuer_map: list[str] = setting(
        [], check(lambda v: all(_valid_map(e) for e in v), "every entry must look like \"AUTHORITY=ISSUER\""),
        doc="PID-3.4 assigning authority -> issuer of patient ID as the PACS sends it; unmapped = used as is, "
            "blank = [followup] default_issuer",
    )
    identifier_types: list[str] = setting(
        [], doc="PID-3.5 identifier type codes to match on (e.g. [\"MR\"]); empty = every PID-3 repetition",
    )
    source: str = setting("hospital_discharge", check(lambda v: bool(_CODE.fullmatch(v)), "must be a source code"),
                          doc="follow-up source code of deaths from this feed (one of [followup] sources)")
    application: str = setting("SITECONN", doc="MSH-3 sending application of our ACKs")
    facility: str = setting("", doc="MSH-4 sending facility of our ACKs")

    @property
    def enabled(self) -> bool:
        return self.port is not None
