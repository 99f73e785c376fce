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

    site = SiteContext(config, store, layout, probes={"registry": reach.probe, "scp": scp_probe},
                       intake=intake, provider=provider, wake=lambda what: ...)
    web = WebServer(site)
    web.start()          # binds [http] host:port (OSError when taken); web.port is the bound port
    ...
    web.stop()           # bounded: a request stuck on a slow client does not hold up the stop
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from typing import Any

from waitress.server import create_server

from connector.web import proxies, tls
from connector.web.app import create_app
from connector.web.site_context import SiteContext

log = logging.getLogger(__name__)

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
    """Serves one :class:`SiteContext`'s app: ``start()`` binds; ``stop()`` releases the port."""

    def __init__(self, site: SiteContext, workers: int = 8) -> None:
        self.site = site
        self.config = site.config
        self.workers = workers
        self.app = create_app(site)
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
        self.site.clean_uploads(max_age=0)  # staging files of a previous run are never committed
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
