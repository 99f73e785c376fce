"""Who may use the STOW-RS door: bearer tokens from ``[stow] token_file`` and the TLS context (mutual TLS).

Why a module of its own: the daemon checks the token file and the TLS files at start-up (exit 2
with one line to fix it) without importing the HTTP server.
"""

from __future__ import annotations

import hmac
import logging
import ssl
import stat
import threading
from pathlib import Path

from connector.settings.stow import StowConfig

log = logging.getLogger(__name__)


class TokenFileUnsafe(Exception):
    """The token file is open to group or others; ``str()`` says what to ``chmod``."""


def check_token_file(cfg: StowConfig) -> None:
    """Raise :class:`TokenFileUnsafe` when ``[stow] token_file`` exists and group or others may access it.

    Why: whoever reads a token can post data that ends up at the registry as this site's.
    """
    if cfg.token_file is None:
        return
    try:
        mode = stat.S_IMODE(cfg.token_file.stat().st_mode)
    except OSError:
        return  # a missing file refuses every token (logged); the start does not depend on it
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileUnsafe(f"STOW-RS token file {cfg.token_file} is accessible by group or others (mode "
                              f"{mode:04o}): run chmod 600 {cfg.token_file} ([stow] token_file)")


class Tokens:
    """The accepted bearer tokens, re-read when the file changes (so a token can be revoked without a restart)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return self.path is not None

    def _load(self) -> tuple[bytes, ...]:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return ()
        with self._lock:
            if self._seen != (st.st_mtime_ns, st.st_size):
                if stat.S_IMODE(st.st_mode) & (stat.S_IRWXG | stat.S_IRWXO):
                    log.error("STOW-RS token file readable by others: every token refused",
                              extra={"event": "stow_token_file_unsafe"})
                    self._tokens = ()
                else:
                    lines = self.path.read_text().splitlines()
                    self._tokens = tuple(t.strip().encode() for t in lines if t.strip() and not t.startswith("#"))
                self._seen = (st.st_mtime_ns, st.st_size)
            return self._tokens

    def accepts(self, header: str) -> bool:
        """Whether an ``Authorization`` header value carries one of the tokens (constant-time compare)."""
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False
        given = value.strip().encode()
        ok = False
        for token in self._load():
            ok |= hmac.compare_digest(given, token)
        return ok


def tls_context(cfg: StowConfig) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain HTTP. Raises OSError/ssl.SSLError on bad files."""
    if not cfg.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
    if cfg.tls_ca_file:
        ctx.load_verify_locations(str(cfg.tls_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: only senders holding a certificate from this CA
    return ctx
