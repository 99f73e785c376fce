"""The HTTP client for the registry: bearer token, TLS (verification on by default, CA bundle, mTLS).

Why one shared ``httpx.Client``: keep-alive connections to the registry are reused by every
worker thread (httpx clients are thread-safe), so a study of many batches pays one TLS handshake
per connection, not per request. The token is read from ``token_file`` (mode 0600: a file group or
others can read is refused, as the site key is) or the ``SITE_CONNECTOR_REGISTRY_TOKEN`` environment
variable, and re-read when the registry answers 401, so a rotated token is picked up without a
restart. The token never appears in logs.

Answers are read as a stream and given up past ``max_response_bytes`` (``[registry]``; reconciliation
passes its own, larger bound), before they are held in memory: a registry that answers a STOW-RS
request with a gigabyte cannot take the uploader's memory with it (issue 24, row 4). Compressed
answers are not asked for, and refused, since a small compressed body can inflate a thousandfold.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import stat
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from connector.settings.registry import TOKEN_ENV, RegistryConfig

log = logging.getLogger(__name__)
USER_AGENT = "site-connector"
# httpx logs every request URL at INFO; URLs carry pseudonyms and study UIDs, which stay out of logs.
for _noisy in ("httpx", "httpcore"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


class TokenError(Exception):
    """The bearer token could not be read (message names the source, never the token)."""


class TokenFileUnsafe(TokenError):
    """The token file is open to group or others: refused, the message says how to fix it."""


class ResponseRefused(Exception):
    """The registry's answer was not read: too long, or compressed. ``str()`` starts with ``code``."""

    def __init__(self, code: str, detail: str, status: int) -> None:
        super().__init__(f"{code}: {detail} (HTTP {status})")
        self.code = code
        self.status = status


def check_token_file(cfg: RegistryConfig) -> None:
    """Raise :class:`TokenFileUnsafe` when ``token_file`` exists and group or others may access it."""
    if cfg.token_file is None:
        return
    try:
        mode = stat.S_IMODE(cfg.token_file.stat().st_mode)
    except OSError:
        return  # a missing file pauses pushing (logged); start-up does not depend on it
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileUnsafe(f"registry token file {cfg.token_file} is accessible by group or others (mode "
                              f"{mode:04o}): run chmod 600 {cfg.token_file} ([registry] token_file)")


def read_token(cfg: RegistryConfig, environ: dict[str, str] | None = None) -> str | None:
    """The bearer token from ``token_file``, else the environment; None when neither is set."""
    environ = dict(os.environ) if environ is None else environ
    if cfg.token_file is not None:
        check_token_file(cfg)  # before reading: an exposed token is never sent
        try:
            text = cfg.token_file.read_text().strip()
        except OSError as exc:
            raise TokenError(f"registry token file {cfg.token_file} is not readable ({type(exc).__name__})") from None
        if not text:
            raise TokenError(f"registry token file {cfg.token_file} is empty")
        return text
    value = environ.get(TOKEN_ENV, "").strip()
    return value or None


def ssl_context(cfg: RegistryConfig) -> ssl.SSLContext | bool:
    """Verification on unless turned off; an optional CA bundle and client certificate (mTLS)."""
    if not cfg.verify_tls:
        log.warning("TLS verification of the registry is OFF", extra={"event": "tls_verify_off"})
        ctx: ssl.SSLContext = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_bundle) if cfg.ca_bundle else None)
    if cfg.client_cert is not None:
        ctx.load_cert_chain(str(cfg.client_cert), str(cfg.client_key) if cfg.client_key else None)
    return ctx


class _BoundedStream(httpx.SyncByteStream):
    """A response body that raises once more than ``limit`` bytes have come: never held whole."""

    def __init__(self, inner: httpx.SyncByteStream, limit: int, key: str, status: int) -> None:
        self._inner, self._limit, self._key, self._status = inner, limit, key, status

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise ResponseRefused("response-too-large", f"registry answer longer than {self._limit} bytes, "
                                      f"not read ([registry] {self._key})", self._status)
            yield chunk

    def close(self) -> None:
        self._inner.close()


def bound_response(response: httpx.Response, limit: int, key: str = "max_response_bytes") -> None:
    """Make ``response`` refuse a body over ``limit`` bytes (an httpx response hook: runs before the
    read); ``key`` names the setting in the message."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise ResponseRefused("response-compressed", "registry answered with a compressed body it was not "
                              "asked for, not read", response.status_code)
    length = response.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        raise ResponseRefused("response-too-large", f"registry announced an answer longer than {limit} bytes, "
                              f"not read ([registry] {key})", response.status_code)
    if isinstance(response.stream, httpx.SyncByteStream):  # always, with the synchronous client used here
        response.stream = _BoundedStream(response.stream, limit, key, response.status_code)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """Holds the httpx client and the current token; ``headers()`` gives Authorization and User-Agent."""

    def __init__(self, cfg: RegistryConfig, *, connections: int | None = None,
                 max_response_bytes: int | None = None, limit_key: str = "max_response_bytes") -> None:
        """``max_response_bytes`` (default ``cfg.max_response_bytes``): the longest answer read;
        ``limit_key`` the setting that sets it, named when an answer is refused."""
        self.cfg = cfg
        self.max_response_bytes = max_response_bytes or cfg.max_response_bytes
        self._limit_key = limit_key
        self._lock = threading.Lock()
        try:
            self._token = read_token(cfg)
        except TokenError as exc:  # receiving goes on; pushing waits until the token file is readable
            log.error("registry token unreadable; pushing paused until it is fixed",
                      extra={"event": "token_error", "error": str(exc)})
            self._token = None
        if self._token is None:
            log.warning("no registry token configured; requests go unauthenticated",
                        extra={"event": "token_missing"})
        for url in {cfg.resolved_dicomweb_url, cfg.resolved_api_url}:
            if url.startswith("http://") and not _is_loopback(url):
                log.warning("registry URL is plain HTTP on a network host: token and data are not encrypted",
                            extra={"event": "plain_http"})
        n = connections or cfg.concurrency
        uses_tls = any(u.startswith("https://") for u in (cfg.resolved_dicomweb_url, cfg.resolved_api_url))
        self.http = httpx.Client(
            verify=ssl_context(cfg) if uses_tls else False,  # plain HTTP: no TLS to set up (or verify)
            timeout=httpx.Timeout(cfg.timeout_seconds, connect=min(30.0, cfg.timeout_seconds)),
            limits=httpx.Limits(max_connections=n + 1, max_keepalive_connections=n + 1, keepalive_expiry=60),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            follow_redirects=False,
            event_hooks={"response": [self._bound]},
        )

    def _bound(self, response: httpx.Response) -> None:
        bound_response(response, self.max_response_bytes, self._limit_key)

    def auth_headers(self) -> dict[str, str]:
        with self._lock:
            token = self._token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def reload_token(self) -> bool:
        """Re-read the token (after a 401); True when it changed. A file that became readable by
        others also drops the token held (it may be known now); an unreadable one keeps it."""
        try:
            token = read_token(self.cfg)
        except TokenFileUnsafe as exc:
            log.error("registry token file exposed; pushing paused until it is fixed",
                      extra={"event": "token_error", "error": str(exc)})
            token = None
        except TokenError as exc:
            log.error("registry token unreadable", extra={"event": "token_error", "error": str(exc)})
            return False
        with self._lock:
            changed = token != self._token
            self._token = token
        return changed

    def close(self) -> None:
        self.http.close()
