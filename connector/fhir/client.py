"""A small FHIR REST client: only what the death poll needs (Patient searches, paged).

Why not a general FHIR client library: the poll needs three behaviours a hospital server's
operators care about, and they are easiest to get exactly right here: honour ``Retry-After`` on 429
and 503 (up to ``max_retry_after_seconds``), stop at once on 401/403 (a wrong token is a
configuration problem, not something to hammer the server with), and follow ``next`` links only on
the configured server (a token is never sent to another origin).
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from connector.settings.fhir import FhirConfig

log = logging.getLogger(__name__)


class FhirError(Exception):
    """The server could not be asked (unreachable, an error status, a non-FHIR answer)."""


class FhirAuthError(FhirError):
    """401/403, or no usable credentials: fixing it needs the operator."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _read_secret_file(path: Any, what: str) -> bytes:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise FhirAuthError(f"{what} {path} is not readable ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FhirAuthError(f"{what} {path} is accessible by group or others (mode {mode:04o}): run chmod 600 {path}")
    with open(path, "rb") as fh:
        return fh.read()


def client_assertion(settings: FhirConfig, now: float | None = None) -> str:
    """The signed JWT of SMART backend services (RS384 for an RSA key, ES384 for an EC key)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    assert settings.private_key_file is not None
    key = serialization.load_pem_private_key(_read_secret_file(settings.private_key_file, "FHIR private key file"),
                                             password=None)
    now = time.time() if now is None else now
    alg = "RS384" if isinstance(key, rsa.RSAPrivateKey) else "ES384"
    header = {"alg": alg, "typ": "JWT"}
    claims = {"iss": settings.client_id, "sub": settings.client_id, "aud": settings.token_url,
              "exp": int(now) + 300, "jti": uuid.uuid4().hex}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}".encode()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA384())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA384())))
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        raise FhirAuthError("the FHIR private key must be an RSA or EC key")
    return signing_input.decode() + "." + _b64(signature)


class FhirClient:
    """Patient searches against ``[fhir] base_url``; use as a context manager."""

    def __init__(self, settings: FhirConfig, *, sleep: Any = time.sleep) -> None:
        if not settings.base_url:
            raise FhirAuthError("no [fhir] base_url is configured")
        self.settings = settings
        self.base = settings.base_url.rstrip("/") + "/"
        self._origin = urlsplit(self.base)[:2]
        self._http = httpx.Client(timeout=settings.timeout_seconds, headers={"Accept": "application/fhir+json"})
        self._token: str | None = None
        self._token_expires = 0.0
        self._sleep = sleep
        self.requests = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- auth ------------------------------------------------------------------------------------

    def _bearer(self, refresh: bool = False) -> str | None:
        s = self.settings
        if s.token_file is not None:
            token = _read_secret_file(s.token_file, "FHIR token file").decode().strip()
            if not token:
                raise FhirAuthError(f"FHIR token file {s.token_file} is empty")
            return token
        if not s.client_id:
            return None
        if refresh or self._token is None or time.monotonic() > self._token_expires:
            if not (s.token_url and s.private_key_file):
                raise FhirAuthError("SMART backend services needs [fhir] client_id, token_url and private_key_file")
            try:
                r = self._http.post(s.token_url, data={
                    "grant_type": "client_credentials", "scope": s.scope,
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": client_assertion(s)})
            except httpx.HTTPError as exc:
                raise FhirError(f"FHIR token endpoint unreachable ({type(exc).__name__})") from None
            if r.status_code != 200:
                raise FhirAuthError(f"FHIR token endpoint refused the client credentials (HTTP {r.status_code})")
            body = r.json()
            self._token = str(body["access_token"])
            self._token_expires = time.monotonic() + max(30.0, float(body.get("expires_in", 300)) - 30.0)
        return self._token

    # -- requests --------------------------------------------------------------------------------

    def _retry_after(self, response: httpx.Response) -> float:
        value = response.headers.get("Retry-After", "").strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return 5.0

    def get_json(self, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET on the configured server with auth, Retry-After and one token refresh."""
        if urlsplit(url)[:2] != self._origin:
            raise FhirError("the server sent a link to another origin; not followed")
        refreshed = False
        waited = 0.0
        while True:
            token = self._bearer()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                r = self._http.get(url, params=params, headers=headers)
            except httpx.HTTPError as exc:
                raise FhirError(f"FHIR server unreachable ({type(exc).__name__})") from None
            self.requests += 1
            if r.status_code in (429, 503):
                delay = self._retry_after(r)
                if waited + delay > self.settings.max_retry_after_seconds:
                    raise FhirError(f"FHIR server busy (HTTP {r.status_code}) longer than max_retry_after_seconds")
                log.info("fhir server asked to wait", extra={"event": "fhir_retry_after", "seconds": delay})
                self._sleep(delay)
                waited += delay
                continue
            if r.status_code == 401 and self.settings.client_id and not self.settings.token_file and not refreshed:
                refreshed = True  # an access token may expire early: one fresh one, then give up
                self._bearer(refresh=True)
                continue
            if r.status_code in (401, 403):
                raise FhirAuthError(f"FHIR server refused our credentials (HTTP {r.status_code})")
            if r.status_code != 200:
                raise FhirError(f"FHIR server answered HTTP {r.status_code}")
            try:
                body = r.json()
            except ValueError:
                raise FhirError("FHIR server answered something that is not JSON") from None
            if not isinstance(body, dict):
                raise FhirError("FHIR server answered something that is not a FHIR resource")
            return body

    def search_pages(self, resource: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Every page (a Bundle as JSON) of a search, following ``next`` links on the same server."""
        url: str | None = self.base + resource
        query: dict[str, str] | None = params
        while url:
            bundle = self.get_json(url, query)
            yield bundle
            query = None
            url = next((link.get("url") for link in bundle.get("link") or []
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
