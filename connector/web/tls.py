"""HTTPS served by waitress itself, for a site without a TLS reverse proxy (``[http] tls_cert``).

Waitress has no TLS option, but it serves the listening sockets it is given (``sockets=``). The
listening socket is wrapped with Python's :mod:`ssl` (``do_handshake_on_connect=False``), so each
accepted connection is a TLS socket whose handshake runs inside its first non-blocking reads, on
waitress's event loop: a client that connects and stays silent holds up nobody and is closed by
``channel_timeout``. :class:`TlsChannel` adapts waitress's channel to a TLS socket:

* "want read / want write" (a TLS record not complete yet, the handshake in progress) means "no
  data now", not "connection lost";
* plaintext OpenSSL already decrypted and holds (``pending()``) is read at once, since ``poll()``
  only sees the socket and would never wake for it;
* reads (the loop thread) and writes (waitress's worker threads flush responses) on one TLS
  connection are serialised: an OpenSSL connection must not be used by two threads at once.
"""

from __future__ import annotations

import errno
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

from waitress.channel import HTTPChannel

MIN_VERSION = ssl.TLSVersion.TLSv1_2


class _NotYet(Exception):
    """A TLS read that needs more bytes first (not an OSError: waitress would close the connection)."""


def server_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """A server context with the site's certificate; raises OSError naming the settings when unusable.

    A private key every local user may read is refused (fail closed), as the linkage keys are;
    group-readable is allowed (Debian's ``ssl-cert`` group for /etc/ssl/private).
    """
    key_file = key if key is not None else cert
    try:
        world_readable = bool(key_file.stat().st_mode & stat.S_IROTH)
    except OSError:
        world_readable = False  # a missing file is reported by load_cert_chain below
    if world_readable:
        raise OSError(errno.EPERM, "[http] tls_key is readable by every local user; chmod o-r it")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # renegotiation would need reads mid-response
    try:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror or getattr(exc, "reason", None) or type(exc).__name__
        raise OSError(errno.EINVAL, f"[http] tls_cert/tls_key unusable ({reason})") from None
    return context


def listening_socket(sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
    """``sock`` (bound, not yet listening) as a TLS listener whose connections handshake lazily."""
    return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


class TlsChannel(HTTPChannel):  # type: ignore[misc]
    """Waitress's HTTP channel over a non-blocking TLS socket (see the module's notes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tls_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def handle_read(self) -> None:
        try:
            super().handle_read()
        except _NotYet:
            pass

    def recv(self, buffer_size: int) -> bytes:
        with self._tls_lock:
            try:
                data: bytes = super().recv(buffer_size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise _NotYet from None
            while data and self.socket is not None and self.socket.pending():
                try:
                    data += super().recv(self.socket.pending())
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
        return data

    def send(self, data: bytes, do_close: bool = True) -> int:
        with self._tls_lock:
            try:
                return int(super().send(data, do_close=do_close))
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return 0  # waitress keeps the bytes and offers the same ones again
