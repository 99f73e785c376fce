"""The dashboard as a Flask application: sign-in, sessions, CSRF, permissions, security headers, errors.

Why Flask: the dashboard grows (roles, identifier search, study pages with pictures, backfill),
and hand-written request parsing, cookies and string-built HTML is where web security bugs come
from. Flask gives the request parsing (werkzeug), a signed session cookie (itsdangerous) and Jinja2
templates that escape every value; Flask-WTF's ``CSRFProtect`` checks the token of every POST.
The app is served by waitress (:mod:`connector.web.server`), inside the supervisor process.

Every view declares who may call it (:mod:`connector.web.permissions`): ``/healthz``, ``/metrics``,
``/static`` and the sign-in form are public (counts only; monitoring must reach them); every other
page needs a session and one of the roles it names, and a view that declares nothing is refused.
The order of the checks on a request is: signed in (else 303 to ``/login``), role (else 403), body
size, CSRF token (else 403), then the page.

Sign-in attempts are slowed per (user name, source address) pair (:class:`LoginThrottle`), and each
failure is logged with the user name (when it is a user's: a password typed into the name field
stays out of the log) and the source address. Over HTTPS (the server's own TLS, or a trusted proxy
that says so) the session cookie is ``Secure`` and responses carry HSTS.
"""

from __future__ import annotations

import logging
import math
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, abort, current_app, g, redirect, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from connector.web import backfill_page, cac_validation_page, permissions, search, views
from connector.web.format import FILTERS
from connector.web.linkage_access import source_address
from connector.web.permissions import PUBLIC, STAFF, allow, public
from connector.web.rendering import CSRF_FIELD, csrf_field, message, page, site
from connector.web.users import NAME_RE, UserError

if TYPE_CHECKING:
    from connector.web.site_context import SiteContext

log = logging.getLogger(__name__)

FORM_LIMIT = 64 * 1024
SESSION_COOKIE = "sc_session"
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
    """Flask's signed cookie session, marked Secure when the browser used HTTPS.

    ``request.is_secure`` is the WSGI scheme: https with the server's own TLS, or when a trusted
    proxy's ``X-Forwarded-Proto`` said so (:mod:`connector.web.proxies`; from anyone else the
    header is dropped before the app sees it).
    """

    def get_cookie_secure(self, app: Flask) -> bool:  # type: ignore[override]
        return request.is_secure


def create_app(web: SiteContext) -> Flask:
    """The dashboard, health and metrics app for one site; the pages reach ``web`` through :func:`site`."""
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
        # Flask-WTF's HTTPS-only Referer check needs a Referer (the pages send none: no-referrer)
        # and the Host the browser used (a proxy may rewrite it), so every POST over HTTPS would fail.
        # The token is bound to the signed session, whose cookie is SameSite=Strict and Secure there.
        WTF_CSRF_SSL_STRICT=False,
        MAX_CONTENT_LENGTH=web.config.http.max_upload_bytes + FORM_LIMIT,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
        TRAP_HTTP_EXCEPTIONS=False,
    )
    app.session_interface = _SessionInterface()
    app.extensions["site_connector"] = web
    app.jinja_env.filters.update(FILTERS)
    app.jinja_env.globals["csrf_field"] = csrf_field
    csrf.init_app(app)

    app.view_functions["static"] = _static
    app.register_blueprint(views.health_bp)
    app.before_request(_guard)
    app.add_url_rule("/login", "login", public(_login_form_page), methods=["GET"])
    app.add_url_rule("/login", "login_post", public(_login), methods=["POST"])
    app.add_url_rule("/logout", "logout", allow(*STAFF)(_logout), methods=["POST"])
    app.register_blueprint(views.dashboard_bp)
    app.register_blueprint(search.search_bp)
    app.register_blueprint(backfill_page.backfill_bp)
    app.register_blueprint(cac_validation_page.cac_validation_bp)
    app.after_request(_headers)
    app.register_error_handler(CSRFError, _csrf_failed)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    permissions.freeze(app)
    return app


# -- request checks -----------------------------------------------------------------------------


@public
def _static(filename: str) -> Response:
    """Flask's static files (the stylesheet), declared public like every other view."""
    return current_app.send_static_file(filename)


def _guard() -> Any:
    """Sign-in, the view's declared roles, body size and CSRF, before any page runs."""
    permission = None if request.routing_exception is not None else \
        permissions.required(current_app, request.endpoint or "")
    if permission != PUBLIC:
        user = _signed_in_user()
        if user is None:
            return redirect("/login", code=303)
        g.user, g.role = user
        if request.routing_exception is None and (permission is None or g.role not in permission):
            _refuse(permission)
    if request.method == "POST":
        if request.path != "/followup/preview":
            request.max_content_length = FORM_LIMIT
        csrf.protect()
    return None


def _refuse(permission: frozenset[str] | str | None) -> None:
    """403 for a role the view does not allow, or a view that declares nothing (fail closed)."""
    log.warning("dashboard request refused", extra={"event": "http_forbidden", "user": g.user, "role": g.role,
                                                    "endpoint": request.endpoint, "source": source_address(),
                                                    "declared": permission is not None})
    if permission is None:
        abort(403, description="This page declares no permission, so nobody may use it.")
    roles = " or ".join(sorted(permission))
    abort(403, description=f"This is for users with the {roles} role (site-connector users role NAME {roles}); "
                           f"you are signed in with the {g.role} role.")


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
    hsts = site().config.http.hsts_seconds
    if request.is_secure and hsts > 0:  # over plain HTTP the header means nothing (and may not be sent)
        response.headers["Strict-Transport-Security"] = f"max-age={hsts}"
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    log.debug("http", extra={"event": "http_request", "method": request.method, "path": request.path,
                             "status": response.status_code})
    return response


# -- sign-in ------------------------------------------------------------------------------------


def _login_form(error: str = "", status: int = 200) -> tuple[str, int]:
    return page("login.html", "Sign in", status=status, error=error)


def _login_form_page() -> tuple[str, int]:
    return _login_form()


def _login() -> Any:
    web = site()
    name, password = request.form.get("username", "").strip(), request.form.get("password", "")
    source = source_address()
    wait = web.throttle.attempt(name, source)
    if wait > 0:
        seconds = math.ceil(wait)
        log.warning("login throttled", extra={"event": "login_throttled", "user": _loggable_name(name),
                                              "source": source, "retry_after_s": round(wait, 3)})
        body, status = _login_form(f"Too many failed attempts for this user name from this address. "
                                   f"Wait {seconds} second{'s' if seconds != 1 else ''} and try again.", 429)
        return body, status, {"Retry-After": str(seconds)}
    try:
        ok = web.users.verify(name, password)
    except UserError:
        web.throttle.release(name, source)
        return _login_form("The users file is damaged; ask IT to check the service log.", 500)
    if not ok:
        failures, delay = web.throttle.failed(name, source)
        log.warning("login failed", extra={"event": "login_failed", "user": _loggable_name(name), "source": source,
                                           "failures": failures, "next_attempt_in_s": round(delay, 3)})
        return _login_form("Wrong user name or password.", 401)
    web.throttle.succeeded(name, source)
    session.clear()  # a fresh session (and CSRF token) at sign-in: no fixation
    session.permanent = True
    session["user"] = name
    session["sid"] = secrets.token_urlsafe(16)
    log.info("login", extra={"event": "login", "user": name, "source": source})
    return redirect("/", code=303)


def _loggable_name(name: str) -> str:
    """The typed name when it is a user's; otherwise a placeholder (it may be a password typed there)."""
    return name if NAME_RE.match(name) and site().users.role(name) is not None else "(not a user)"


def _logout() -> Any:
    sid = session.get("sid")
    if isinstance(sid, str):
        site().revoked.revoke(sid)
    log.info("logout", extra={"event": "logout", "user": g.get("user"), "source": source_address()})
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
