"""The connector's HTTP server: ``/healthz``, ``/metrics`` and the staff dashboard, on one port.

The application is Flask (:mod:`connector.web.app`); it is served by waitress, a maintained
production WSGI server in pure Python, on a thread of the supervisor process. Waitress answers
requests from a fixed pool of threads, so the state DB, which keeps one connection per thread,
sees a bounded number of connections however often monitoring scrapes.

HTTPS: either a reverse proxy in front (named in ``[http] trusted_proxies``, whose
``X-Forwarded-Proto`` then says the browser used HTTPS; :mod:`connector.web.proxies`), or the
server's own TLS with ``[http] tls_cert`` / ``tls_key`` (:mod:`connector.web.tls`). Either way the
app sees ``wsgi.url_scheme = https`` and marks the session cookie ``Secure`` and sends HSTS.

Wiring (the daemon)::

    web = WebServer(config, store, layout, probes={"registry": reach.probe, "scp": scp_probe},
                    intake=intake, provider=provider, wake=lambda what: ...)
    web.start()          # binds [http] host:port (OSError when taken); web.port is the bound port
    ...
    web.stop()           # bounded: a request stuck on a slow client does not hold up the stop
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from waitress.server import create_server

from connector.config import Config
from connector.ingest.intake import Intake
from connector.store.layout import SiteLayout
from connector.store.state import StateStore
from connector.web import metrics, proxies, tls
from connector.web.app import create_app
from connector.web.auth import LoginThrottle, RevokedSessions
from connector.web.health import HealthReport, Probe, check_disk, check_state_db, run_probe
from connector.web.settings import users_path
from connector.web.study import QuarantineIndex
from connector.web.users import UserFile

log = logging.getLogger(__name__)

UPLOAD_TTL_SECONDS = 3600
STOP_SECONDS = 2.0  # at most this long for requests in progress when stopping


def _bind(host: str, port: int) -> socket.socket:
    """One listening address, bound here so that a taken port raises OSError before anything runs.

    (Waitress would bind every address a host name resolves to; the connector listens on exactly
    the first, as its start-up check tested.)
    """
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of a previous run is fine
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class WebServer:
    """Health, metrics and dashboard for one daemon. ``start()`` binds; ``stop()`` releases the port.

    ``probes`` maps a check name ("registry", "scp", ...) to a callable returning None when fine or
    a short message. ``intake`` is the daemon's :class:`Intake` (used to release quarantined
    objects; one is made when omitted). ``provider`` is the daemon's linkage identity provider, which
    the follow-up import and the identifier search need (without it those pages say so).
    ``wake(what)`` is called with "studies" after a release and "outbox" after a retry or a
    follow-up import, so the daemon can nudge the worker concerned.
    """

    def __init__(self, config: Config, store: StateStore, layout: SiteLayout,
                 probes: dict[str, Probe] | None = None, *, intake: Intake | None = None,
                 provider: Any | None = None, wake: Callable[[str], None] | None = None,
                 workers: int = 8) -> None:
        self.config = config
        self.store = store
        self.layout = layout
        self.probes = dict(probes or {})
        self.provider = provider
        self.wake = wake
        self.workers = workers
        self.users = UserFile(users_path(config))
        self.throttle = LoginThrottle(config.http.login_delay_seconds, config.http.login_max_delay_seconds)
        self.revoked = RevokedSessions(config.http.session_minutes * 60)
        self.quarantine_index = QuarantineIndex()
        self._intake = intake
        self._intake_lock = threading.Lock()
        self.uploads_dir = config.storage.data_dir / "web" / "uploads"
        self.reports_dir = config.storage.data_dir / "web" / "reports"
        self.app = create_app(self)
        self.metrics_registry = metrics.make_registry(metrics.ConnectorCollector(
            store, layout.data_dir, layout.quarantine, config.storage.min_free_bytes, self.health))
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the port and serve on a background thread.

        Raises OSError when the port is taken or the TLS certificate or key cannot be used (then
        nothing listens: no silent fall-back to plain HTTP).
        """
        http = self.config.http
        self._stopping.clear()
        context = self._tls_context()
        sock = _bind(http.host, http.port)
        if context is not None:
            try:
                sock = tls.listening_socket(sock, context)
            except BaseException:
                sock.close()
                raise
        self._server = create_server(
            proxies.proxy_gate(self.app, http.trusted_proxies), sockets=[sock], threads=self.workers,
            ident="site-connector", url_scheme="https" if context is not None else "http",
            channel_timeout=15,  # seconds a client may stay silent: idle sockets do not pile up
            connection_limit=200, asyncore_use_poll=True,  # poll(): no select() limit on descriptors
            expose_tracebacks=False, log_socket_errors=False, **proxies.WAITRESS_OFF)
        if context is not None:
            self._server.channel_class = tls.TlsChannel
        self._thread = threading.Thread(target=self._serve, name="http-server", daemon=True)
        self._thread.start()
        self._clean_uploads(max_age=0)  # staging files of a previous run are never committed
        log.info("http server listening", extra={"event": "http_listening", "host": http.host, "port": self.port,
                                                  "tls": context is not None,
                                                  "trusted_proxies": len(http.trusted_proxies)})

    def _tls_context(self) -> ssl.SSLContext | None:
        http = self.config.http
        if http.tls_cert is None:
            if http.tls_key is not None:
                raise OSError(errno.EINVAL, "[http] tls_key is set without tls_cert")
            return None
        return tls.server_context(http.tls_cert, http.tls_key)

    def _serve(self) -> None:
        server = self._server
        while not self._stopping.is_set():
            try:
                server.asyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=1)
            except Exception as exc:  # keep serving; one bad socket must not end the dashboard
                log.warning("http loop error", extra={"event": "http_error", "error": type(exc).__name__})
        # closed on this thread, the one that owns the socket map
        for channel in list(server._map.values()):
            try:
                channel.close()
            except Exception:  # already closed, or its socket went away: nothing left to release
                pass
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=STOP_SECONDS)

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        try:
            self._server.pull_trigger()  # wake the loop now rather than at its next poll timeout
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=STOP_SECONDS + 1.0)
        self._server = None
        log.info("http server stopped", extra={"event": "http_stopped"})

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the web server is not started")
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = self.config.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        scheme = "https" if self.config.http.tls_cert is not None else "http"
        return f"{scheme}://{host}:{self.port}/"

    @property
    def intake(self) -> Intake:
        with self._intake_lock:
            if self._intake is None:
                self._intake = Intake(self.layout, self.store, min_free_bytes=self.config.storage.min_free_bytes,
                                      fsync=self.config.storage.fsync)
            return self._intake

    # -- health and metrics --------------------------------------------------------------------

    def health(self) -> HealthReport:
        checks: dict[str, str | None] = {
            "db": check_state_db(self.layout.state_db),
            "disk": check_disk(self.layout.data_dir, self.config.storage.min_free_bytes),
        }
        for name, probe in self.probes.items():
            checks[name] = run_probe(probe)
        return HealthReport(checks)

    def metrics_text(self) -> bytes:
        return metrics.metrics_text(self.metrics_registry)

    def notify(self, what: str) -> None:
        if self.wake is not None:
            try:
                self.wake(what)
            except Exception as exc:
                log.warning("wake callback failed", extra={"event": "http_wake_failed", "error": type(exc).__name__})

    # -- follow-up staging ---------------------------------------------------------------------

    def stage_upload(self, data: bytes, suffix: str) -> tuple[str, Path]:
        """Keep an upload under a random name (the original name may identify someone) until committed."""
        self.uploads_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._clean_uploads(UPLOAD_TTL_SECONDS)
        token = secrets.token_hex(16)
        path = self.uploads_dir / f"{token}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return token, path

    def _clean_uploads(self, max_age: float) -> None:
        if not self.uploads_dir.exists():
            return
        cutoff = time.time() - max_age
        for p in self.uploads_dir.iterdir():
            try:
                if p.stat().st_mtime <= cutoff:
                    p.unlink()
            except OSError:
                continue
