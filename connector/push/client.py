"""The HTTP client for the registry: bearer token, TLS (verification on by default, CA bundle, mTLS).

Why one shared ``httpx.Client``: keep-alive connections to the registry are reused by every
worker thread (httpx clients are thread-safe), so a study of many batches pays one TLS handshake
per connection, not per request. The token is read from ``token_file`` (preferred: mode 0600) or
the ``SITE_CONNECTOR_REGISTRY_TOKEN`` environment variable, and re-read when the registry answers
401, so a rotated token is picked up without a restart. The token never appears in logs.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import stat
import threading
from urllib.parse import urlsplit

import httpx

from connector.push.settings import TOKEN_ENV, RegistryConfig

log = logging.getLogger(__name__)
USER_AGENT = "site-connector"
# httpx logs every request URL at INFO; URLs carry pseudonyms and study UIDs, which stay out of logs.
for _noisy in ("httpx", "httpcore"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


class TokenError(Exception):
    """The bearer token could not be read (message names the source, never the token)."""


def read_token(cfg: RegistryConfig, environ: dict[str, str] | None = None) -> str | None:
    """The bearer token from ``token_file``, else the environment; None when neither is set."""
    environ = dict(os.environ) if environ is None else environ
    if cfg.token_file is not None:
        try:
            mode = cfg.token_file.stat().st_mode
            text = cfg.token_file.read_text().strip()
        except OSError as exc:
            raise TokenError(f"registry token file {cfg.token_file} is not readable ({type(exc).__name__})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("registry token file is readable by others; chmod 600 it",
                        extra={"event": "token_file_mode", "mode": oct(mode & 0o777)})
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

    def __init__(self, cfg: RegistryConfig, *, connections: int | None = None) -> None:
        self.cfg = cfg
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
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )

    def auth_headers(self) -> dict[str, str]:
        with self._lock:
            token = self._token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def reload_token(self) -> bool:
        """Re-read the token (after a 401); True when it changed."""
        try:
            token = read_token(self.cfg)
        except TokenError as exc:
            log.error("registry token unreadable", extra={"event": "token_error", "error": str(exc)})
            return False
        with self._lock:
            changed = token != self._token
            self._token = token
        return changed

    def close(self) -> None:
        self.http.close()
