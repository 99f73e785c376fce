"""The ``[pacs]`` configuration section and how this connector calls the hospital PACS as an SCU.

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
``tls_key_file``, ``tls_ca_file``) with the client-side meaning. This module must not import
:mod:`connector.config` (it is imported by it).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.config_fields import check, setting, valid_ae

if TYPE_CHECKING:
    from connector.config import Config

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


def calling_ae(config: Config) -> str:
    """Our AE title towards the PACS."""
    return config.pacs.calling_ae_title or config.dicom.ae_title


def move_destination(config: Config) -> str:
    """The AE title C-MOVE asks the PACS to send to (normally our own receiver)."""
    return config.pacs.move_destination or config.dicom.ae_title


class PacsTlsError(Exception):
    """The [pacs] TLS files cannot be loaded; the message names the key and the reason (no secret)."""


def client_tls_context(cfg: PacsConfig) -> ssl.SSLContext | None:
    """The SSL context for calling the PACS, or None without TLS. Raises PacsTlsError."""
    if not cfg.tls:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise PacsTlsError(f"[pacs] tls_ca_file cannot be loaded ({_reason(exc)})") from None
    ctx.check_hostname = cfg.tls_check_hostname
    if cfg.tls_cert_file:
        try:
            ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
        except (OSError, ssl.SSLError) as exc:
            raise PacsTlsError(f"[pacs] tls_cert_file/tls_key_file cannot be loaded ({_reason(exc)}): they must "
                               "be a PEM certificate and its matching private key") from None
    return ctx


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__


def associate(config: Config, ae: Any, **kwargs: Any) -> Any:
    """Open an association from pynetdicom ``ae`` to the configured PACS (TLS when configured).

    ``ae`` carries the requested presentation contexts; kwargs go to ``AE.associate`` (e.g.
    ``ext_neg``, ``evt_handlers``). The caller checks ``is_established``.
    """
    cfg = config.pacs
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = cfg.timeout
    ae.dimse_timeout = max(cfg.timeout, 60.0)
    ctx = client_tls_context(cfg)
    tls_args = (ctx, cfg.host if cfg.tls_check_hostname else None) if ctx is not None else None
    kwargs.setdefault("max_pdu", 0)  # unlimited: we receive whole studies; the PACS may still cap its side
    return ae.associate(cfg.host, cfg.port, ae_title=cfg.ae_title, tls_args=tls_args, **kwargs)
