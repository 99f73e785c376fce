"""The reads reconciliation needs from the registry: QIDO-RS instance lists and the stored manifest.

Why apart from :mod:`connector.push.reconcile`: this is the HTTP side (paging, answer caps, the
errors it raises); the reconciler only asks "what do you hold for this study?".
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from connector.push.client import RegistryClient, ResponseRefused
from connector.push.reconcile_compare import Held, Sent

if TYPE_CHECKING:
    from connector.config import Config

SOP_INSTANCE_UID = "00080018"
WORKERS = 8  # registry requests in flight at once while reconciling (the reconciler's threads)
PAGE = 1000  # QIDO-RS page size asked for when a server's first answer was not the whole series
MAX_PAGES = 100


class RegistryUnreachable(Exception):
    """No connection to the registry (message names the error class only)."""


class ReconcileError(Exception):
    """The registry answered a reconciliation query with an error (status code only)."""


class RegistryReader:
    """The reads reconciliation needs: QIDO-RS instance lists and the JSON API's stored manifest."""

    def __init__(self, config: Config, client: RegistryClient | None = None) -> None:
        self.cfg = config.registry
        self._own = client is None
        # a series' instance list is longer than an upload's answer: its own, documented bound
        self.client = client or RegistryClient(self.cfg, connections=WORKERS,
                                               max_response_bytes=self.cfg.reconcile_max_response_bytes,
                                               limit_key="reconcile_max_response_bytes")

    def close(self) -> None:
        if self._own:
            self.client.close()

    def _get(self, url: str, accept: str) -> httpx.Response:
        try:
            resp = self.client.http.get(url, headers={**self.client.auth_headers(), "Accept": accept})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise RegistryUnreachable(f"network:{type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise ReconcileError(f"network:{type(exc).__name__}") from None
        except ResponseRefused as exc:  # too long (reconcile_max_response_bytes) or compressed: not read
            raise ReconcileError(str(exc)) from None
        if resp.status_code in (401, 403):
            self.client.reload_token()
            raise ReconcileError(f"http-{resp.status_code}: the registry refused the credentials")
        return resp

    def has_api(self) -> bool:
        """Whether the destination has the registry's JSON API (``GET /api/v1/stats``); a plain
        DICOMweb server answers 404."""
        resp = self._get(f"{self.cfg.resolved_api_url}/api/v1/stats", "application/json")
        if resp.status_code == 200:
            return True
        if resp.status_code in (404, 405, 501):
            return False
        raise ReconcileError(f"http-{resp.status_code}")

    def instances(self, study_uid: str, series_uid: str, expected: int = 0) -> set[str]:
        """SOP Instance UIDs held in one series.

        Servers may cut a QIDO-RS answer short (a default or maximum page size): while fewer than
        the ``expected`` count (what was sent) are seen, the next page is asked for (``offset``),
        until a page brings nothing new (also the end with a server that ignores ``offset``). A
        complete series costs one request, a short one two.
        """
        base = (f"{self.cfg.resolved_dicomweb_url}/studies/{quote(study_uid, safe='')}/series/"
                f"{quote(series_uid, safe='')}/instances")
        out: set[str] = set()
        for _ in range(MAX_PAGES):
            page = self._instance_page(base if not out else f"{base}?limit={PAGE}&offset={len(out)}")
            if not page - out:
                break
            out |= page
            if len(out) >= expected:
                break
        return out

    def _instance_page(self, url: str) -> set[str]:
        resp = self._get(url, "application/dicom+json")
        if resp.status_code in (204, 404):  # nothing (more) held: servers differ in how they say it
            return set()
        if resp.status_code != 200:
            raise ReconcileError(f"http-{resp.status_code}")
        try:
            doc = resp.json() if resp.content else []
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ReconcileError("qido-not-json") from None
        out: set[str] = set()
        for item in doc if isinstance(doc, list) else []:
            values = ((item or {}).get(SOP_INSTANCE_UID) or {}).get("Value") or []
            if values and isinstance(values[0], str):
                out.add(values[0])
        return out

    def manifest(self, study_uid: str) -> dict[str, Any] | None:
        resp = self._get(f"{self.cfg.resolved_api_url}/api/v1/studies/{quote(study_uid, safe='')}/manifest",
                         "application/json")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ReconcileError(f"http-{resp.status_code}")
        doc = resp.json()
        body = doc.get("manifest") if isinstance(doc, dict) else None
        return body if isinstance(body, dict) else None

    def held(self, sent: Sent, api: bool) -> Held:
        held = Held(api=api)
        for series_uid in sent.series:
            held.series[series_uid] = self.instances(sent.study_uid, series_uid, sent.series[series_uid])
        if api:
            held.manifest = self.manifest(sent.study_uid)
        return held
