"""CAC results back to the hospital: the SR and SEG with the ORIGINAL identifiers, to [pacs] by C-STORE.

Off by default (``[results] return_to_pacs``). The objects sent are the originals the inference
step built from the CT before de-identification and keeps on the site (``results/<key>/``); they
never pass the registry path: their outbox jobs have their own destination (``pacs``), which the
registry's uploader never leases, and this sender only ever talks to the configured PACS.

Why the outbox: the PACS may be down or busy; a job stays in the state database until the PACS
answers success, is retried with backoff (``[registry] backoff_*`` seconds, as the uploads), and
survives restarts and kill -9 (leases are handed back at start). A PACS that refuses an object for
good (a failure status other than "out of resources") leaves the job failed for an operator, with
the status code as its reason. Nothing identifying is logged: job ids, status codes and counts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.outbox import Job, Outbox, backoff_delay

if TYPE_CHECKING:
    from connector.config import Config
    from connector.store.layout import SiteLayout
    from connector.store.state import StateStore

log = logging.getLogger(__name__)

DESTINATION = "pacs"
KIND = "pacs_store"
LEASE_SECONDS = 600.0
_SUCCESS = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the coercion/elements-discarded warnings


def queue_return(outbox: Outbox, layout: SiteLayout, study_key: str, path: Path, data: bytes) -> bool:
    """Queue one original result object (already written durably at ``path``) for the PACS."""
    rel = str(path.resolve().relative_to(layout.data_dir.resolve()))
    key = f"{study_key}#{path.name}#{hashlib.sha256(data).hexdigest()[:16]}"
    return outbox.enqueue(KIND, key, DESTINATION, {"file": rel, "bytes": len(data)}, group=f"pacs:{study_key}")


def send_file(config: Config, path: Path) -> tuple[int | None, str]:
    """C-STORE one file to the configured PACS: (DIMSE status or None, error code or '')."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    from connector.pacs.scu import PacsTlsError, associate, calling_ae

    ds = pydicom.dcmread(path)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    ae = AE(ae_title=calling_ae(config))
    ae.add_requested_context(str(ds.SOPClassUID), list(dict.fromkeys([syntax, ExplicitVRLittleEndian,
                                                                      ImplicitVRLittleEndian])))
    try:
        assoc = associate(config, ae)
    except PacsTlsError:
        return None, "tls-files"
    except OSError as exc:
        return None, f"connect:{type(exc).__name__}"
    if not assoc.is_established:
        return None, "association-rejected" if assoc.is_rejected else "association-failed"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if not status or "Status" not in status:
        return None, "no-response"
    return int(status.Status), ""


class PacsReturnWorker:
    """Drains the ``pacs`` destination of the outbox; one object per association, one at a time."""

    def __init__(self, config: Config, store: StateStore, layout: SiteLayout, *, name: str = "pacs-return") -> None:
        self.config = config
        self.layout = layout
        self.outbox = Outbox(store)
        self.owner = f"{name}-{os.getpid()}-{secrets.token_hex(3)}"
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0

    def start(self) -> None:
        released = self.outbox.reset_leases(DESTINATION)
        if released:
            log.info("PACS return jobs of a previous run handed back", extra={"event": "pacs_return_reset",
                                                                               "jobs": released})
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        log.info("PACS return started", extra={"event": "pacs_return_started"})

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                did = self.run_once()
            except Exception as exc:  # the loop must survive anything (DB busy, disk error)
                log.error("PACS return loop error", extra={"event": "pacs_return_error", "error": type(exc).__name__})
                did = False
            if not did:
                self._stop.wait(self.config.registry.poll_seconds)

    def run_once(self) -> bool:
        """Send one due job; False when none was due."""
        jobs = self.outbox.lease(self.owner, DESTINATION, 1, LEASE_SECONDS)
        if not jobs:
            return False
        self._send(jobs[0])
        return True

    def _send(self, job: Job) -> None:
        payload: dict[str, Any] = job.payload
        path = self.layout.data_dir / str(payload.get("file", ""))
        if not path.is_file():
            self.outbox.give_up(job.id, self.owner, error="original-missing")
            log.error("PACS return: the result object is gone from the site", extra={"event": "pacs_return_failed",
                                                                                     "job": job.id})
            return
        try:
            status, error = send_file(self.config, path)
        except Exception as exc:  # unreadable file, a pynetdicom error: retry later, never lose the job
            status, error = None, f"error:{type(exc).__name__}"
        reg = self.config.registry
        if status in _SUCCESS:
            self.outbox.complete(job.id, self.owner, status)
            self.sent += 1
            log.info("CAC result sent to the PACS", extra={"event": "pacs_return_done", "job": job.id,
                                                           "status": f"0x{status:04X}"})
        elif status is None or 0xA700 <= status <= 0xA7FF:  # unreachable, or out of resources: later
            delay = backoff_delay(job.attempts + 1, reg.backoff_min_seconds, reg.backoff_max_seconds)
            code = error or f"status:0x{status:04X}"
            self.outbox.defer(job.id, self.owner, delay, error=code, status=status)
            log.warning("PACS return will be retried", extra={"event": "pacs_return_retry", "job": job.id,
                                                              "error": code, "retry_in_s": round(delay, 1)})
        else:
            code = f"status:0x{status:04X}"
            self.outbox.give_up(job.id, self.owner, error=code, status=status)
            log.error("the PACS refused a CAC result", extra={"event": "pacs_return_failed", "job": job.id,
                                                              "error": code})
