"""The dashboard as a Flask application: sign-in, sessions, CSRF, security headers and errors.

Why Flask: the dashboard grows (roles, identifier search, study pages with pictures, backfill),
and hand-written request parsing, cookies and string-built HTML is where web security bugs come
from. Flask gives the request parsing (werkzeug), a signed session cookie (itsdangerous) and Jinja2
templates that escape every value; Flask-WTF's ``CSRFProtect`` checks the token of every POST.
The app is served by waitress (:mod:`connector.web.server`), inside the supervisor process.

``/healthz``, ``/metrics`` and ``/static`` need no login (counts only; monitoring must reach
them); every other page needs a session, and every POST (sign-in included) a CSRF token. The
order of the checks on a request is: signed in (else 303 to ``/login``), body size, CSRF token
(else 403), then the page.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, redirect, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from connector.web import backfill_page, search, views
from connector.web.format import FILTERS
from connector.web.rendering import CSRF_FIELD, csrf_field, message, page, site
from connector.web.users import UserError

if TYPE_CHECKING:
    from connector.web.server import WebServer

log = logging.getLogger(__name__)

FORM_LIMIT = 64 * 1024
SESSION_COOKIE = "sc_session"
PUBLIC_ENDPOINTS = {"health.healthz", "health.metrics", "static", "health.favicon", "login", "login_post"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

csrf = CSRFProtect()


class _App(Flask):
    def log_exception(self, exc_info: Any) -> None:
        """Type only, like every other log line: a traceback's messages may quote request data."""
        log.error("http handler error", extra={"event": "http_handler_error", "path": request.path,
                                               "error": exc_info[0].__name__ if exc_info and exc_info[0] else "?"})


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, marked Secure when the reverse proxy says the browser used HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:  # type: ignore[override]
        return request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def create_app(web: WebServer) -> Flask:
    app = _App("connector.web", static_folder="static", template_folder="templates")
    lifetime = timedelta(minutes=web.config.http.session_minutes)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),  # new at each start: a restart signs everybody out
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=lifetime,  # also the idle limit: the cookie's signature carries its time
        SESSION_REFRESH_EACH_REQUEST=True,
        WTF_CSRF_FIELD_NAME=CSRF_FIELD,
        WTF_CSRF_CHECK_DEFAULT=False,  # checked in _guard, after the sign-in check
        WTF_CSRF_TIME_LIMIT=None,  # a form is good as long as its session
        MAX_CONTENT_LENGTH=web.config.http.max_upload_bytes + FORM_LIMIT,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
        TRAP_HTTP_EXCEPTIONS=False,
    )
    app.session_interface = _SessionInterface()
    app.extensions["site_connector"] = web
    app.jinja_env.filters.update(FILTERS)
    app.jinja_env.globals["csrf_field"] = csrf_field
    csrf.init_app(app)

    app.register_blueprint(views.health_bp)
    app.before_request(_guard)
    app.add_url_rule("/login", "login", _login_form, methods=["GET"])
    app.add_url_rule("/login", "login_post", _login, methods=["POST"])
    app.add_url_rule("/logout", "logout", _logout, methods=["POST"])
    app.register_blueprint(views.dashboard_bp)
    app.register_blueprint(search.search_bp)
    app.register_blueprint(backfill_page.backfill_bp)
    app.after_request(_headers)
    app.register_error_handler(CSRFError, _csrf_failed)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    return app


# -- request checks -----------------------------------------------------------------------------


def _guard() -> Any:
    """Sign-in, body size and CSRF, before any page runs."""
    endpoint = request.endpoint or ""
    if endpoint not in PUBLIC_ENDPOINTS:
        user = _signed_in_user()
        if user is None:
            return redirect("/login", code=303)
        g.user, g.role = user
    if request.method == "POST":
        if request.path != "/followup/preview":
            request.max_content_length = FORM_LIMIT
        csrf.protect()
    return None


def _signed_in_user() -> tuple[str, str] | None:
    name, sid = session.get("user"), session.get("sid")
    if not isinstance(name, str) or not isinstance(sid, str) or site().revoked.is_revoked(sid):
        return None
    role = site().users.role(name)  # read on every request: removing a user ends their sessions at once
    if role is None:
        session.clear()
        return None
    return name, role


def _headers(response: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    log.debug("http", extra={"event": "http_request", "method": request.method, "path": request.path,
                             "status": response.status_code})
    return response


# -- sign-in ------------------------------------------------------------------------------------


def _login_form(error: str = "", status: int = 200) -> tuple[str, int]:
    return page("login.html", "Sign in", status=status, error=error)


def _login() -> Any:
    web = site()
    name, password = request.form.get("username", "").strip(), request.form.get("password", "")
    client = f"ip:{request.remote_addr}"
    user_key = f"user:{name.lower()}"
    if web.throttle.blocked(client, user_key):
        log.warning("login throttled", extra={"event": "login_throttled"})
        return _login_form("Too many failed attempts. Wait a few minutes and try again.", 429)
    try:
        ok = web.users.verify(name, password)
    except UserError:
        return _login_form("The users file is damaged; ask IT to check the service log.", 500)
    if not ok:
        web.throttle.failed(client, user_key)
        log.warning("login failed", extra={"event": "login_failed"})
        return _login_form("Wrong user name or password.", 401)
    web.throttle.succeeded(client, user_key)
    session.clear()  # a fresh session (and CSRF token) at sign-in: no fixation
    session.permanent = True
    session["user"] = name
    session["sid"] = secrets.token_urlsafe(16)
    log.info("login", extra={"event": "login", "user": name})
    return redirect("/", code=303)


def _logout() -> Any:
    sid = session.get("sid")
    if isinstance(sid, str):
        site().revoked.revoke(sid)
    log.info("logout", extra={"event": "logout", "user": g.get("user")})
    session.clear()
    return redirect("/login", code=303)


# -- errors -------------------------------------------------------------------------------------


def _csrf_failed(exc: CSRFError) -> Any:
    log.warning("csrf token mismatch", extra={"event": "http_csrf_rejected", "path": request.path})
    if request.endpoint == "login_post":
        return _login_form("The sign-in form expired. Please try again.", 403)
    return message("Forbidden", "The form was stale or not sent by this dashboard. Reload the page and try again.", 403)


def _http_error(exc: HTTPException) -> Any:
    code = exc.code or 500
    if code == 404:
        return message("Not found", "No such page.", 404)
    if code == 403:
        return message("Forbidden", exc.description or "You may not do that.", 403)
    if code == 413:
        return Response("request too large", 413, content_type="text/plain; charset=utf-8")
    return exc


def _internal_error(exc: Exception) -> Any:
    log.error("http handler error", extra={"event": "http_handler_error", "path": request.path,
                                           "error": type(exc).__name__})
    return message("Something went wrong", "The error was logged (type only). Try again, or check the service log.",
                   500)
