"""How this connector opens an association to the configured PACS (TLS when configured).

Why apart from :mod:`connector.settings.pacs`: the section is plain values; calling needs the
whole configuration (our own AE title is ``[dicom] ae_title`` unless ``[pacs]`` names another).
"""

from __future__ import annotations

import ssl
from typing import Any

from connector.config import Config
from connector.settings.pacs import PacsConfig


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
