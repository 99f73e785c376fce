"""The ``[pacs]`` configuration section (calling the PACS: :mod:`connector.pacs.scu`).

```toml
[pacs]
host = "10.1.2.3"
port = 104
ae_title = "HOSPITALPACS"     # the PACS's AE title (called AE)
retrieve = "move"             # "move": C-MOVE to our own [dicom] ae_title; "get": C-GET on the same association
tls = false                   # true: DICOM TLS to the PACS (tls_ca_file verifies it, tls_cert_file/key = mutual TLS)
```

Why its own section: [dicom] is where the PACS reaches *us* (receiver, allow-lists, server-side
TLS); [pacs] is where *we* reach the PACS: backfill (C-FIND, C-MOVE, C-GET), ``echo --pacs`` and
sending results back (C-STORE). The TLS keys mirror [dicom]'s names (``tls_cert_file``,
``tls_key_file``, ``tls_ca_file``) with the client-side meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting, valid_ae

RETRIEVE_MODES = ("move", "get")


@dataclass(frozen=True)
class PacsConfig:
    host: str = setting("", doc="PACS address (name or IP) this connector queries and retrieves from; "
                                "empty = no PACS configured")
    port: int = setting(104, check(lambda v: 1 <= v <= 65535, "must be between 1 and 65535"),
                        doc="PACS DICOM port")
    ae_title: str = setting("", check(lambda v: v == "" or valid_ae(v),
                                      "must be 1-16 printable characters, no backslash"),
                            doc="the PACS's AE title (the called AE)")
    calling_ae_title: str = setting("", check(lambda v: v == "" or valid_ae(v),
                                              "must be 1-16 printable characters, no backslash, or empty"),
                                    doc="our AE title when calling the PACS; empty = [dicom] ae_title")
    retrieve: str = setting("move", check(lambda v: v in RETRIEVE_MODES, "must be \"move\" or \"get\""),
                            doc="\"move\": C-MOVE to move_destination (the PACS must know our address); "
                                "\"get\": C-GET, the PACS sends back on the same association")
    move_destination: str = setting("", check(lambda v: v == "" or valid_ae(v),
                                              "must be 1-16 printable characters, no backslash, or empty"),
                                    doc="AE title the PACS sends C-MOVE results to; empty = [dicom] ae_title "
                                        "(this connector's receiver)")
    timeout: float = setting(30.0, check(lambda v: v > 0, "must be positive"),
                             doc="seconds to wait for the PACS to connect or answer")
    tls: bool = setting(False, doc="call the PACS over DICOM TLS")
    tls_ca_file: Path | None = setting(None, doc="PEM CA bundle to verify the PACS's certificate (default: "
                                                 "system CAs)")
    tls_cert_file: Path | None = setting(None, doc="PEM client certificate for mutual TLS (set with tls_key_file)")
    tls_key_file: Path | None = setting(None, doc="PEM private key for tls_cert_file")
    tls_check_hostname: bool = setting(True, doc="the PACS certificate must name host; turn off only when "
                                                 "the PACS certificate carries no usable name")
    range_queries: bool = setting(True, doc="backfill asks one C-FIND for the whole date range and splits it in "
                                            "halves (by date, then by time of day) only where the answer is cut "
                                            "short; false = one C-FIND per day, for a PACS that refuses or "
                                            "mis-answers date ranges")
    max_results: int = setting(500, check(lambda v: v >= 0, "must be zero or more"),
                               doc="the PACS's C-FIND result limit, if it has one: an answer with at least this "
                                   "many studies is taken as cut short and asked again in halves (a PACS may end "
                                   "a truncated answer with success); set it to your PACS's limit when lower; "
                                   "0 = trust the PACS's status alone")

    @property
    def configured(self) -> bool:
        return bool(self.host and self.ae_title)


def cross_check(cfg: PacsConfig) -> str | None:
    """A readable problem with the combination of [pacs] keys, or None."""
    if cfg.host and not cfg.ae_title:
        return "ae_title: set the PACS's AE title together with host"
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        return "tls_cert_file/tls_key_file: set both or neither"
    if not cfg.tls and (cfg.tls_ca_file or cfg.tls_cert_file):
        return "tls: TLS files are set but tls = false; set tls = true or remove them"
    return None
