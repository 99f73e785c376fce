"""The connector's HTTP server: ``/healthz``, ``/metrics`` and the staff dashboard, on one port.

Why the standard library: three small JSON/text endpoints and a few server-rendered pages do not
need a framework, and the daemon already runs many threads. Requests are served by a small fixed
pool of threads (not a thread per request) so that the state DB, which keeps one connection per
thread, sees a bounded number of connections however often monitoring scrapes.

``/healthz`` and ``/metrics`` need no login (they carry counts only, and monitoring must reach
them); every dashboard page needs a session, and every POST a CSRF token.

Wiring (the daemon)::

    web = WebServer(config, store, layout, probes={"registry": reach.probe, "scp": scp_probe},
                    intake=intake, wake=lambda what: ...)
    web.start()          # binds [http] host:port; web.port is the bound port
    ...
    web.stop()
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from connector.config import Config
from connector.ingest.intake import Intake
from connector.store.layout import SiteLayout
from connector.store.quarantine import count_quarantine
from connector.store.state import STUDY_STATES, StateStore
from connector.web import integrations, metrics, pages
from connector.web import quarantine_actions as qa
from connector.web.forms import Form, FormError, parse_body
from connector.web.health import HealthReport, Probe, check_disk, check_state_db, disk_free_bytes, run_probe
from connector.web.sessions import LOGIN_COOKIE, SESSION_COOKIE, LoginThrottle, Session, SessionStore, tokens_match
from connector.web.settings import users_path
from connector.web.style import CSS
from connector.web.users import UserError, UserFile

log = logging.getLogger(__name__)

FORM_LIMIT = 64 * 1024
STUDIES_PER_PAGE = 50
UPLOAD_TTL_SECONDS = 3600
UPLOAD_SUFFIXES = (".csv", ".xlsx")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class _PooledHTTPServer(HTTPServer):
    """HTTPServer whose requests run on ``workers`` long-lived daemon threads."""

    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: WebServer,
                 workers: int = 8) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self._jobs: queue.Queue[tuple[Any, Any] | None] = queue.Queue()
        self._backlog_limit = workers * 32
        super().__init__(address, handler)
        self._workers = [threading.Thread(target=self._work, name=f"http-{i}", daemon=True) for i in range(workers)]
        for t in self._workers:
            t.start()

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can hang for
        # seconds on a hospital network with broken reverse DNS; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._jobs.qsize() > self._backlog_limit:  # overloaded: shed instead of queueing forever
            self.shutdown_request(request)
            return
        self._jobs.put((request, client_address))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            request, client_address = job
            try:
                self.finish_request(request, client_address)
            except Exception as exc:
                log.warning("http request failed", extra={"event": "http_error", "error": type(exc).__name__})
            finally:
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:  # no tracebacks on stderr
        pass

    def server_close(self) -> None:
        # Also called by TCPServer.__init__ when binding fails (port in use), before the workers exist.
        super().server_close()
        workers = getattr(self, "_workers", [])
        for _ in workers:
            self._jobs.put(None)
        # bounded as a whole: a request stuck on a slow client must not hold up the daemon's stop
        deadline = time.monotonic() + 2.0
        for t in workers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))


class WebServer:
    """Health, metrics and dashboard for one daemon. ``start()`` binds; ``stop()`` releases the port.

    ``probes`` maps a check name ("registry", "scp", ...) to a callable returning None when fine or
    a short message. ``intake`` is the daemon's :class:`Intake` (used to release quarantined
    objects; one is made when omitted). ``provider`` is the daemon's linkage identity provider, which
    the follow-up import needs to find patients (without it the follow-up page says so).
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
        self.sessions = SessionStore(config.http.session_minutes * 60)
        self.throttle = LoginThrottle()
        self._intake = intake
        self._intake_lock = threading.Lock()
        self._server: _PooledHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.uploads_dir = config.storage.data_dir / "web" / "uploads"
        self.reports_dir = config.storage.data_dir / "web" / "reports"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        http = self.config.http
        self._server = _PooledHTTPServer((http.host, http.port), _Handler, self, workers=self.workers)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http-server", daemon=True)
        self._thread.start()
        self._clean_uploads(max_age=0)  # staging files of a previous run are never committed
        log.info("http server listening", extra={"event": "http_listening", "host": http.host, "port": self.port})

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        log.info("http server stopped", extra={"event": "http_stopped"})

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the web server is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        return f"http://{host}:{self.port}/"

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

    def metrics_text(self) -> str:
        return metrics.metrics_text(self.store, self.layout.data_dir, self.layout.quarantine,
                                    self.config.storage.min_free_bytes, self.health())

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


class _Handler(BaseHTTPRequestHandler):
    server: _PooledHTTPServer
    server_version = "site-connector"
    sys_version = ""
    timeout = 15  # seconds a client may stay silent; keeps the pool from being held by idle sockets

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def app(self) -> WebServer:
        return self.server.app

    def log_message(self, format: str, *args: Any) -> None:  # access log at DEBUG, path only
        pass

    def _path(self) -> tuple[str, dict[str, str]]:
        parsed = urllib.parse.urlsplit(self.path)
        return parsed.path, dict(urllib.parse.parse_qsl(parsed.query))

    def _send(self, status: int, body: bytes | str, content_type: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None, cookies: list[str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in _SECURITY_HEADERS.items():
            self.send_header(k, v)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        for c in cookies or []:
            self.send_header("Set-Cookie", c)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        log.debug("http", extra={"event": "http_request", "method": self.command, "path": self._path()[0],
                                 "status": status})

    def _redirect(self, location: str, cookies: list[str] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", headers={"Location": location}, cookies=cookies)

    def _cookie(self, name: str) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            jar = SimpleCookie(raw)
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel else None

    def _set_cookie(self, name: str, value: str, max_age: int | None = None) -> str:
        parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if self.headers.get("X-Forwarded-Proto", "").lower() == "https":
            parts.append("Secure")
        return "; ".join(parts)

    def _read_body(self, limit: int) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(HTTPStatus.LENGTH_REQUIRED, "Content-Length required", "text/plain; charset=utf-8")
            return None
        if length < 0 or length > limit:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request too large", "text/plain; charset=utf-8")
            self.close_connection = True
            return None
        return self.rfile.read(length)

    def _session(self) -> Session | None:
        session = self.app.sessions.get(self._cookie(SESSION_COOKIE))
        if session is not None and not self.app.users.exists(session.user):
            self.app.sessions.end(session.id)
            return None
        return session

    def _page(self, session: Session, title: str, body: str, current: str, status: int = 200) -> None:
        flashes, session.flash = session.flash, []
        html = pages.layout(title, body, user=session.user, csrf=session.csrf, current=current,
                            site=self.app.config.site.id, flashes=flashes)
        self._send(status, html)

    # -- dispatch ------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path, query = self._path()
        try:
            if path == "/healthz":
                return self._healthz()
            if path == "/metrics":
                return self._send(200, self.app.metrics_text(), metrics.CONTENT_TYPE)
            if path == "/static/style.css":
                return self._send(200, CSS, "text/css; charset=utf-8",
                                  headers={"Cache-Control": "max-age=3600"})
            if path == "/favicon.ico":
                return self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            if path == "/login":
                return self._login_form()
            session = self._session()
            if session is None:
                return self._redirect("/login")
            routes = {"/": self._overview, "/studies": self._studies, "/quarantine": self._quarantine,
                      "/outbox": self._outbox, "/followup": self._followup}
            handler = routes.get(path)
            if handler is None:
                return self._send(404, pages.layout("Not found", pages.message_page("Not found", "No such page.")))
            handler(session, query)
        except Exception as exc:
            self._fail(exc)

    def do_POST(self) -> None:
        path, _ = self._path()
        try:
            if path == "/login":
                return self._login()
            session = self._session()
            if session is None:
                return self._redirect("/login")
            limit = self.app.config.http.max_upload_bytes + FORM_LIMIT if path == "/followup/preview" else FORM_LIMIT
            body = self._read_body(limit)
            if body is None:
                return
            try:
                form = parse_body(self.headers.get("Content-Type", ""), body)
            except FormError as exc:
                return self._send(400, str(exc), "text/plain; charset=utf-8")
            if not tokens_match(session.csrf, form.get("csrf")):
                log.warning("csrf token mismatch", extra={"event": "http_csrf_rejected", "path": path})
                return self._send(403, pages.layout("Forbidden", pages.message_page(
                    "Forbidden", "The form was stale or not sent by this dashboard. Reload the page and try again.")))
            routes = {"/logout": self._logout, "/quarantine/release": self._q_release,
                      "/quarantine/purge": self._q_purge, "/outbox/retry": self._outbox_retry,
                      "/followup/preview": self._followup_preview, "/followup/commit": self._followup_commit,
                      "/followup/cancel": self._followup_cancel}
            handler = routes.get(path)
            if handler is None:
                return self._send(404, "not found", "text/plain; charset=utf-8")
            handler(session, form)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        log.error("http handler error", extra={"event": "http_handler_error", "path": self._path()[0],
                                               "error": type(exc).__name__})
        try:
            self._send(500, pages.layout("Error", pages.message_page(
                "Something went wrong", "The error was logged (type only). Try again, or check the service log.")))
        except OSError:
            pass

    # -- health and metrics --------------------------------------------------------------------

    def _healthz(self) -> None:
        report = self.app.health()
        self._send(200 if report.ok else 503, json.dumps(report.to_json(), sort_keys=True),
                   "application/json")

    # -- login ---------------------------------------------------------------------------------

    def _login_form(self, error: str = "", status: int = 200) -> None:
        token = secrets.token_urlsafe(24)
        html = pages.layout("Sign in", pages.login_page(token, error), site=self.app.config.site.id)
        self._send(status, html, cookies=[self._set_cookie(LOGIN_COOKIE, token, max_age=3600)])

    def _login(self) -> None:
        body = self._read_body(FORM_LIMIT)
        if body is None:
            return
        try:
            form = parse_body(self.headers.get("Content-Type", ""), body)
        except FormError:
            return self._send(400, "malformed form", "text/plain; charset=utf-8")
        if not tokens_match(self._cookie(LOGIN_COOKIE), form.get("csrf")):
            return self._login_form("The sign-in form expired. Please try again.", 403)
        name, password = form.get("username").strip(), form.get("password")
        client = f"ip:{self.client_address[0]}"
        user_key = f"user:{name.lower()}"
        if self.app.throttle.blocked(client, user_key):
            log.warning("login throttled", extra={"event": "login_throttled"})
            return self._login_form("Too many failed attempts. Wait a few minutes and try again.", 429)
        try:
            ok = self.app.users.verify(name, password)
        except UserError:
            return self._login_form("The users file is damaged; ask IT to check the service log.", 500)
        if not ok:
            self.app.throttle.failed(client, user_key)
            log.warning("login failed", extra={"event": "login_failed"})
            return self._login_form("Wrong user name or password.", 401)
        self.app.throttle.succeeded(client, user_key)
        session = self.app.sessions.create(name)
        log.info("login", extra={"event": "login", "user": name})
        self._redirect("/", cookies=[self._set_cookie(SESSION_COOKIE, session.id),
                                     self._set_cookie(LOGIN_COOKIE, "", max_age=0)])

    def _logout(self, session: Session, form: Form) -> None:
        self.app.sessions.end(session.id)
        log.info("logout", extra={"event": "logout", "user": session.user})
        self._redirect("/login", cookies=[self._set_cookie(SESSION_COOKIE, "", max_age=0)])

    # -- pages ---------------------------------------------------------------------------------

    def _overview(self, session: Session, query: dict[str, str]) -> None:
        app = self.app
        figures = integrations.outbox_figures(app.store)
        try:
            free: float | None = disk_free_bytes(app.layout.data_dir)
        except OSError:
            free = None
        body = pages.overview_page(app.health(), app.store.counts(), figures, count_quarantine(app.layout.quarantine),
                                   free, app.config.storage.min_free_bytes, integrations.cac_runs(figures))
        self._page(session, "Overview", body, "/")

    def _studies(self, session: Session, query: dict[str, str]) -> None:
        state = query.get("state", "")
        if state and state not in STUDY_STATES:
            state = ""
        try:
            page = max(1, int(query.get("page", "1")))
        except ValueError:
            page = 1
        where, args = ("WHERE state=?", [state]) if state else ("", [])
        conn = self.app.store.conn
        total = conn.execute(f"SELECT COUNT(*) FROM studies {where}", args).fetchone()[0]
        cur = conn.execute(
            "SELECT study_key, state, instance_count, first_received_at, last_received_at, updated_at "
            f"FROM studies {where} ORDER BY last_received_at DESC LIMIT ? OFFSET ?",
            [*args, STUDIES_PER_PAGE + 1, (page - 1) * STUDIES_PER_PAGE])
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur]
        body = pages.studies_page(rows[:STUDIES_PER_PAGE], STUDY_STATES, state, page,
                                  len(rows) > STUDIES_PER_PAGE, total)
        self._page(session, "Studies", body, "/studies")

    def _quarantine(self, session: Session, query: dict[str, str]) -> None:
        body = pages.quarantine_page(qa.list_entries(self.app.layout.quarantine), session.csrf)
        self._page(session, "Quarantine", body, "/quarantine")

    def _outbox(self, session: Session, query: dict[str, str]) -> None:
        store = self.app.store
        body = pages.outbox_page(integrations.outbox_figures(store), integrations.outbox_jobs(store), session.csrf)
        self._page(session, "Outbox", body, "/outbox")

    def _followup(self, session: Session, query: dict[str, str]) -> None:
        body = pages.followup_form(session.csrf, integrations.followup_available(self.app.provider),
                                   self.app.config.http.max_upload_bytes)
        self._page(session, "Follow-up", body, "/followup")

    # -- actions (POST, CSRF checked) ----------------------------------------------------------

    def _q_release(self, session: Session, form: Form) -> None:
        try:
            key = qa.release(self.app.layout.quarantine, form.get("id"), self.app.intake, self.app.store,
                             user=session.user)
        except qa.QuarantineActionError as exc:
            session.flash.append(("error", f"Release failed: {exc}"))
        else:
            session.flash.append(("ok", f"Released for re-processing (study {key})."))
            self.app.notify("studies")
        self._redirect("/quarantine")

    def _q_purge(self, session: Session, form: Form) -> None:
        if form.get("confirm") != "yes":
            session.flash.append(("error", "Tick 'delete for good' to purge an entry."))
            return self._redirect("/quarantine")
        try:
            qa.purge(self.app.layout.quarantine, form.get("id"), user=session.user)
        except qa.QuarantineActionError as exc:
            session.flash.append(("error", f"Purge failed: {exc}"))
        else:
            session.flash.append(("ok", "Entry purged."))
        self._redirect("/quarantine")

    def _outbox_retry(self, session: Session, form: Form) -> None:
        try:
            n = integrations.outbox_retry_now(self.app.store)
        except LookupError as exc:
            session.flash.append(("error", str(exc)))
        else:
            log.info("outbox retry requested", extra={"event": "outbox_retry_now", "jobs": n, "user": session.user})
            session.flash.append(("ok", f"{n} job(s) will be retried now."))
            self.app.notify("outbox")
        self._redirect("/outbox")

    def _followup_preview(self, session: Session, form: Form) -> None:
        upload = form.files.get("file")
        suffix = Path(upload.filename).suffix.lower() if upload else ""
        if upload is None or not upload.data:
            session.flash.append(("error", "Choose a file to upload."))
            return self._redirect("/followup")
        if suffix not in UPLOAD_SUFFIXES:
            session.flash.append(("error", "Upload a .csv or .xlsx file."))
            return self._redirect("/followup")
        token, path = self.app.stage_upload(upload.data, suffix)
        outcome = integrations.run_followup_import(self.app.config, self.app.store, self.app.provider, path,
                                                   dry_run=True)
        if not outcome.ok:
            path.unlink(missing_ok=True)
            session.flash.append(("error", outcome.message))
            return self._redirect("/followup")
        session.uploads[token] = path
        self._page(session, "Follow-up preview", pages.followup_preview(outcome, token, session.csrf), "/followup")

    def _followup_commit(self, session: Session, form: Form) -> None:
        path = session.uploads.pop(form.get("token"), None)
        if path is None or not path.exists():
            session.flash.append(("error", "That preview has expired; upload the file again."))
            return self._redirect("/followup")
        self.app.reports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        report = self.app.reports_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{path.stem[:8]}.report.csv"
        try:
            outcome = integrations.run_followup_import(self.app.config, self.app.store, self.app.provider, path,
                                                       dry_run=False, report=report)
        finally:
            path.unlink(missing_ok=True)
        if outcome.ok:
            summary = ", ".join(f"{k} {v}" for k, v in outcome.summary.items() if not isinstance(v, dict))
            log.info("follow-up file imported from dashboard", extra={"event": "followup_web_import",
                                                                    "user": session.user, **{
                                                                        k: v for k, v in outcome.summary.items()
                                                                        if isinstance(v, int)}})
            session.flash.append(("ok", f"Follow-up imported: {summary}. Row report: {report.name}."))
            self.app.notify("outbox")
        else:
            session.flash.append(("error", outcome.message))
        self._redirect("/followup")

    def _followup_cancel(self, session: Session, form: Form) -> None:
        path = session.uploads.pop(form.get("token"), None)
        if path is not None:
            path.unlink(missing_ok=True)
        session.flash.append(("ok", "Nothing was queued."))
        self._redirect("/followup")
