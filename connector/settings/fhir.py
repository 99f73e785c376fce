"""The ``[fhir]`` configuration section: deaths read from the hospital's FHIR R4 server.

```toml
[fhir]
base_url = "https://fhir.hospital.example/r4"
token_file = "/etc/site-connector/fhir.token"     # or the SMART backend-services settings below
identifier_systems = ["HOSP-A=urn:oid:1.2.3.4.5"]  # issuer of patient ID -> FHIR Identifier.system
interval_minutes = 1440
```

Why a poll and only for linked patients: the connector asks for the registry's own patients, in
batches (``Patient?identifier=system|value,...``), so the hospital's server never has to send the
whole population, and nothing about other patients reaches this server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting

_CODE = re.compile(r"[a-z0-9_]{1,40}")


@dataclass(frozen=True)
class FhirConfig:
    base_url: str = setting("", check(lambda v: v == "" or v.startswith(("http://", "https://")),
                                      "must be an http(s) URL or empty"),
                            doc="FHIR R4 base URL of the hospital's server; empty = no FHIR polling")
    token_file: Path | None = setting(None, doc="file holding a bearer token (mode 0600); unset = SMART "
                                                "backend services (client_id) or no auth")
    client_id: str = setting("", doc="SMART backend-services client id (with token_url and private_key_file)")
    token_url: str = setting("", doc="SMART token endpoint")
    private_key_file: Path | None = setting(None, doc="PEM RSA/EC private key registered for client_id (JWKS)")
    scope: str = setting("system/Patient.rs", doc="scope asked for by SMART backend services")
    identifier_systems: list[str] = setting(
        [], check(lambda v: all("=" in e and e.split("=", 1)[1].strip() for e in v),
                  "every entry must look like \"ISSUER=SYSTEM\" (ISSUER may be blank)"),
        doc="issuer of patient ID -> FHIR Identifier.system; patients whose issuer is not listed are not asked for",
    )
    batch_size: int = setting(50, check(lambda v: 1 <= v <= 500, "must be between 1 and 500"),
                              doc="identifiers per Patient search")
    interval_minutes: float = setting(0.0, check(lambda v: v >= 0, "must be zero or more"),
                                      doc="how often the daemon polls; 0 = never (fhir-poll by hand only)")
    timeout_seconds: float = setting(30.0, check(lambda v: v > 0, "must be positive"), doc="HTTP timeout")
    max_retry_after_seconds: float = setting(120.0, check(lambda v: v >= 0, "must be zero or more"),
                                             doc="longest Retry-After honoured on 429/503 before giving up")
    source: str = setting("medical_records", check(lambda v: bool(_CODE.fullmatch(v)), "must be a source code"),
                          doc="follow-up source code of deaths from FHIR (one of [followup] sources)")

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    def systems(self) -> dict[str, str]:
        """issuer -> Identifier.system."""
        return {k.strip(): v.strip() for k, v in (e.split("=", 1) for e in self.identifier_systems)}
