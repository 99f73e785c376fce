"""Sending one outbox job and classifying the registry's answer into what happens next.

The rules (issue 5):

* network errors, 5xx, 408 and 429 are retried for ever, with backoff or the server's Retry-After;
  a refused connection pauses the whole destination instead of each job;
* 401/403 pause the destination too (a wrong or expired token is an operator problem, not a
  reason to throw data away) and the token file is re-read;
* other 4xx give the job up: it is quarantined with the response;
* STOW-RS responses are read per instance: stored ones are acknowledged, failed ones with a
  transient reason are sent again (only those), a permanent reason fails that instance, and a
  conflict (409, or FailureReason 0x0111) is settled by comparing content hashes with the registry.

Nothing here writes to the database: :class:`~connector.push.worker.PushWorker` applies the
:class:`Outcome`. Logs and outcome texts carry codes and counts, never UIDs or names.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from connector.outbox import FAILED, Item, Job, parse_retry_after
from connector.push.client import RegistryClient, ResponseRefused
from connector.settings.registry import RegistryConfig
from connector.push.stow import (
    CHUNK,
    DUPLICATE_SOP_INSTANCE,
    MultipartBody,
    UploadAborted,
    gzip_stream,
    is_retryable_reason,
    parse_stow_response,
)
from connector.push.throttle import RateLimiter
from connector.store.digests import file_sha256

log = logging.getLogger(__name__)

RESPONSE_KEEP = 64 * 1024  # bytes of a refusing response kept in quarantine
JSON_KINDS = {"subject", "manifest", "result", "event"}


@dataclass
class Outcome:
    """What to do with a job after one attempt.

    ``action``: ``done``, ``retry`` (job backoff or ``retry_after``), ``down`` (the destination is
    unreachable or refuses our credentials: pause it), ``fail`` (give up, quarantine ``response``)
    or ``release`` (stopping: back to the queue, no attempt counted).
    """

    action: str
    status: int | None = None
    error: str = ""
    retry_after: float | None = None
    count_attempt: bool = True
    acked: list[Item] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)  # item id -> reason code
    response: dict[str, Any] | None = None
    bytes_sent: int = 0


def idempotency_key(*parts: str) -> str:
    """An opaque, stable key for one logical request (hash: the parts may name a pseudonym)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def canonical_json(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()



def response_record(resp: httpx.Response) -> dict[str, Any]:
    """The parts of a refusing response worth keeping for an operator (no request data)."""
    body = resp.content[:RESPONSE_KEEP]
    try:
        text: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace")
    return {"status": resp.status_code, "reason": resp.reason_phrase,
            "content_type": resp.headers.get("content-type", ""), "body": text,
            "truncated": len(resp.content) > RESPONSE_KEEP}


def _transient(resp: httpx.Response) -> Outcome | None:
    """The common status classes: auth pause, retry for 408/429/5xx; None for anything else."""
    status = resp.status_code
    if status in (401, 403):
        return Outcome("down", status, f"http-{status}: registry refused the credentials", count_attempt=False)
    if status in (408, 429) or status >= 500:
        return Outcome("retry", status, f"http-{status}", retry_after=parse_retry_after(resp.headers.get("retry-after")))
    return None


class JobRunner:
    """Turns jobs into requests. Thread-safe: one instance serves every worker thread."""

    def __init__(self, client: RegistryClient, cfg: RegistryConfig, data_dir: Path, limiter: RateLimiter,
                 stopping: Callable[[], bool], site_id: str = "") -> None:
        self.client = client
        self.cfg = cfg
        self.data_dir = data_dir
        self.limiter = limiter
        self.stopping = stopping
        self.site_id = site_id

    def run(self, job: Job) -> Outcome:
        try:
            if job.kind == "stow":
                return self._stow(job)
            if job.kind in JSON_KINDS:
                return self._json(job)
            return Outcome("fail", None, f"unknown-kind:{job.kind}")
        except UploadAborted:
            return Outcome("release", error="stopping", count_attempt=False)
        except ResponseRefused as exc:  # an answer not read (too long, compressed): the job fails, quarantined
            return Outcome("fail", exc.status, str(exc))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return Outcome("down", error=f"network:{type(exc).__name__}", count_attempt=False)
        except httpx.TransportError as exc:  # reset, timeout or protocol error mid-request
            if self.stopping():
                return Outcome("release", error="stopping", count_attempt=False)
            return Outcome("down", error=f"network:{type(exc).__name__}", count_attempt=True)

    # -- JSON API ------------------------------------------------------------------------------

    def json_request(self, job: Job) -> tuple[str, str, Any, str]:
        """(method, URL, body, Idempotency-Key) of a JSON job."""
        api = self.cfg.resolved_api_url
        p = job.payload
        if job.kind == "subject":
            body = dict(p.get("subject") or {})
            if self.site_id:
                body.setdefault("site", self.site_id)
            return ("PUT", f"{api}/api/v1/subjects/{quote(p['pseudonym'], safe='')}", body,
                    idempotency_key(job.destination, job.kind, job.key))
        if job.kind == "manifest":
            return ("POST", f"{api}/api/v1/studies/{quote(p['study_instance_uid'], safe='')}/manifest", p,
                    idempotency_key(job.destination, job.kind, job.key))
        if job.kind == "result":
            return "POST", f"{api}/api/v1/results", p, idempotency_key(job.destination, job.kind, job.key)
        return "POST", f"{api}/api/v1/events", p, job.key  # events: the caller's idempotency key

    def _json(self, job: Job) -> Outcome:
        method, url, body, key = self.json_request(job)
        data = canonical_json(body)
        self.limiter.consume(len(data), self.stopping)
        headers = {**self.client.auth_headers(), "Content-Type": "application/json", "Accept": "application/json",
                   "Idempotency-Key": key}
        resp = self.client.http.request(method, url, content=data, headers=headers)
        if resp.status_code in (401, 403):
            self.client.reload_token()
        if 200 <= resp.status_code < 300:
            return Outcome("done", resp.status_code, bytes_sent=len(data))
        transient = _transient(resp)
        if transient is not None:
            return transient
        if resp.status_code == 409:
            theirs = _json_field(resp, "sha256")
            if theirs and theirs == hashlib.sha256(data).hexdigest():
                return Outcome("done", 409, "conflict-same-content", bytes_sent=len(data))
            return Outcome("fail", 409, "conflict-different-content", response=response_record(resp))
        return Outcome("fail", resp.status_code, f"http-{resp.status_code}", response=response_record(resp))

    # -- STOW-RS -------------------------------------------------------------------------------

    def _stow(self, job: Job) -> Outcome:
        pending = job.pending_items
        prior_failed = any(i.state == FAILED for i in job.items)
        rejected: dict[int, str] = {}
        sendable: list[tuple[Item, Path]] = []
        for item in pending:
            path = self.data_dir / item.path
            if path.is_file():
                sendable.append((item, path))
            else:
                rejected[item.id] = "missing-file"
        if not sendable:
            return self._settle(job, [], rejected, [], prior_failed, None, "")
        body = MultipartBody([p for _, p in sendable])
        refs = sorted(i.ref for i, _ in sendable)
        headers = {**self.client.auth_headers(), "Content-Type": body.content_type,
                   "Accept": "application/dicom+json",
                   "Idempotency-Key": idempotency_key(job.destination, job.kind, job.key, *refs)}
        sent = 0

        def on_chunk(n: int) -> None:
            nonlocal sent
            if self.stopping():
                raise UploadAborted()
            self.limiter.consume(n, self.stopping)
            sent += n

        # Under a cap, smaller chunks keep the rate smooth (about 8 chunks per second).
        chunk = max(16 * 1024, min(CHUNK, int(self.limiter.rate // 8))) if self.limiter.enabled else CHUNK
        stream = body.stream(chunk_size=chunk, on_chunk=on_chunk)
        if self.cfg.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
            content = gzip_stream(stream)
        else:
            headers["Content-Length"] = str(body.content_length())
            content = stream
        resp = self.client.http.post(f"{self.cfg.resolved_dicomweb_url}/studies", content=content, headers=headers)
        if resp.status_code in (401, 403):
            self.client.reload_token()
        transient = _transient(resp)
        if transient is not None:
            return transient
        parsed = parse_stow_response(resp.content)
        by_ref = {i.ref: (i, p) for i, p in sendable}
        acked: list[Item] = []
        retry: list[Item] = []
        if parsed.parsed:
            for ref, (item, path) in by_ref.items():
                if ref in parsed.stored:
                    acked.append(item)
                elif ref in parsed.failed:
                    reason = parsed.failed[ref]
                    if reason == DUPLICATE_SOP_INSTANCE or (reason is None and resp.status_code == 409):
                        self._settle_conflict(item, path, acked, retry, rejected)
                    elif is_retryable_reason(reason):
                        retry.append(item)
                    else:
                        rejected[item.id] = f"stow-failure:0x{reason:04X}"
                elif resp.status_code < 300 or resp.status_code == 409:
                    retry.append(item)  # neither stored nor failed: send again (the registry dedups)
                else:  # a refused request that names only what it did store: the rest was refused
                    rejected[item.id] = f"http-{resp.status_code}"
        elif resp.status_code == 202:  # "some failed" without saying which: send again, the registry dedups
            retry = [i for i, _ in sendable]
        elif 200 <= resp.status_code < 300:
            acked = [i for i, _ in sendable]
        elif resp.status_code == 409:
            for item, path in sendable:
                self._settle_conflict(item, path, acked, retry, rejected)
        else:
            return Outcome("fail", resp.status_code, f"http-{resp.status_code}", response=response_record(resp),
                           rejected={**rejected, **{i.id: f"http-{resp.status_code}" for i, _ in sendable}},
                           bytes_sent=sent)
        record = response_record(resp) if rejected else None
        outcome = self._settle(job, acked, rejected, retry, prior_failed, resp.status_code, "", record)
        outcome.bytes_sent = sent
        return outcome

    def _settle_conflict(self, item: Item, path: Path, acked: list[Item], retry: list[Item],
                         rejected: dict[int, str]) -> None:
        """The registry already holds this UID: the same bytes count as delivered, others do not."""
        theirs = self._registry_sha256(item.ref)
        if theirs is None:
            retry.append(item)
        elif theirs == file_sha256(path):
            acked.append(item)
        else:
            rejected[item.id] = "conflict-different-content"

    def _registry_sha256(self, sop_instance_uid: str) -> str | None:
        url = f"{self.cfg.resolved_api_url}/api/v1/instances/{quote(sop_instance_uid, safe='')}"
        try:
            resp = self.client.http.get(url, headers={**self.client.auth_headers(), "Accept": "application/json"})
        except httpx.TransportError:
            return None
        if resp.status_code != 200:
            return None
        value = _json_field(resp, "sha256")
        return value or None

    @staticmethod
    def _settle(job: Job, acked: list[Item], rejected: dict[int, str], retry: list[Item], prior_failed: bool,
                status: int | None, error: str, record: dict[str, Any] | None = None) -> Outcome:
        if retry:
            return Outcome("retry", status, error or f"{len(retry)} instance(s) to send again", acked=acked,
                           rejected=rejected, response=record)
        if rejected or prior_failed:
            codes = sorted(set(rejected.values())) or ["earlier-failures"]
            return Outcome("fail", status, "stow-refused: " + ",".join(codes), acked=acked, rejected=rejected,
                           response=record)
        return Outcome("done", status, acked=acked)


def _json_field(resp: httpx.Response, name: str) -> str:
    try:
        doc = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    value = doc.get(name) if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""
