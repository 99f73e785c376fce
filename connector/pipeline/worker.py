"""The study worker: leases each stable study and carries it through the pipeline's stages.

    stable study (leased from the state DB)
      -> the stages of :func:`connector.pipeline.stages.build_stages`, in order: de-identification
         first; a study of which nothing may leave (all quarantined) stops there

Why a lease: the worker takes a study with a time-limited lease in the DB, so a worker that dies
leaves nothing stuck: the lease expires (or start-up recovery hands it back) and the study is
processed again. Every stage is idempotent: the same originals give the same de-identified bytes
and file names, and the outbox ignores jobs it already holds.

Required and optional stages: a required stage's failure marks the study failed; an optional one's
(CAC and its SR/SEG) is recorded on the study (``connector.store.stage_failures``: stage, exception
type, a scrubbed one-line reason) and scheduled again with backoff, while the images go on.

The worker runs beside the receiver and never blocks it: the receiver only writes rows that the
worker later reads.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time

from connector.pipeline.context import Stage, StudyContext
from connector.safe_reason import frames, safe_reason
from connector.store import stage_failures
from connector.store.layout import SiteLayout
from connector.store.state import StateStore
from connector.outbox.delivery import promote_delivered

log = logging.getLogger(__name__)

LEASE_SECONDS = 30 * 60
RETRY_SECONDS = 60.0  # a study that met a full disk is taken again after this long


def is_transient(exc: BaseException) -> bool:
    """A failure that says nothing about the study: the disk (or the database's disk) is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


class StudyWorker:
    def __init__(self, store: StateStore, layout: SiteLayout, stages: list[Stage], *, name: str = "study-worker",
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.store = store
        self.retry_seconds = retry_seconds
        self._unrecorded_retries: dict[str, float] = {}  # study -> monotonic time to hand it back
        self.layout = layout
        self.stages = stages
        self.name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        """True while the worker thread still runs (after ``stop`` timed out: a study is in hand)."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Called when studies became stable, so they are taken at once rather than at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                did = self.run_once()
            except Exception as exc:  # never let one bad study stop the worker
                log.error("study worker error", extra={"event": "worker_error", "error": type(exc).__name__})
                did = False
            if not did:
                self._wake.wait(1.0)
                self._wake.clear()

    def run_once(self) -> bool:
        """Process one leased study; False when none was waiting."""
        if self._unrecorded_retries:
            self._hand_back_due()
        key = self.store.lease_study(self.name, LEASE_SECONDS)
        if key is None:
            return False
        started = time.monotonic()
        rows = self.store.study_instances(key)
        originals = [self.layout.spool / r["path"] for r in rows]
        context = StudyContext(key, originals, self.layout.outgoing / key)
        state = "failed"
        for stage in self.stages:
            if context.outcome is not None and not context.outcome.written:
                break  # everything was quarantined: nothing for the later stages
            try:
                stage.run(context)
            except Exception as exc:
                if is_transient(exc):
                    return self._defer(key, stage.name, exc)
                self._record_failure(key, stage, exc)
                if stage.required:
                    state = "failed"
                    break
                continue  # an optional analysis never holds the images back
            if not stage.required:
                with self.store.write() as conn:
                    if stage_failures.clear_failure(conn, key, stage.name):
                        log.info("optional stage succeeded on retry", extra={"event": "stage_recovered",
                                                                             "step": stage.name, "study": key})
            state = str(context.notes.get("state", state))
        self.store.set_study_state(key, state, only_if="processing")
        if state == "queued":  # the uploader may have delivered everything already
            promote_delivered(self.store)
        self.processed += 1
        log.info("study processed", extra={"event": "study_processed", "study": key, "state": state,
                                           "seconds": round(time.monotonic() - started, 3),
                                           **(context.outcome.summary() if context.outcome else {})})
        return True

    def _record_failure(self, key: str, stage: Stage, exc: BaseException) -> None:
        """Log what failed in words an operator can act on (scrubbed: no identifier, no UID), with the
        code locations at DEBUG; an optional stage's failure is also kept and scheduled again."""
        reason = safe_reason(exc)
        extra: dict[str, object] = {"event": "step_failed", "step": stage.name, "study": key,
                                    "error": type(exc).__name__, "reason": reason, "required": stage.required}
        if not stage.required:
            try:
                version = stage.version()
            except Exception:
                version = ""
            with self.store.write() as conn:
                attempts = stage_failures.record_failure(conn, key, stage.name, type(exc).__name__, reason,
                                                         version, stage.retry)
            extra["attempts"] = attempts
            extra["retry_in_s"] = stage.retry.delay(attempts)
        log.error("study step failed" if stage.required else "optional stage failed; the images go on",
                  extra=extra)
        log.debug("study step failed at", extra={"event": "step_failed_frames", "step": stage.name, "study": key,
                                                 "frames": frames(exc)})

    def retry_due(self) -> int:
        """Hand back the studies whose failed optional stage is due (called by the pipeline's scheduler)."""
        keys = stage_failures.take_due(self.store)
        for key in keys:
            log.info("retrying a failed optional stage", extra={"event": "stage_retry", "study": key})
        if keys:
            self.wake()
        return len(keys)

    def _defer(self, key: str, stage: str, exc: BaseException) -> bool:
        """A full disk is not the study's fault: take it again later instead of marking it failed.

        Re-processing is safe: de-identification gives the same bytes and UIDs, queuing is idempotent.
        If even this cannot be recorded, the study's lease runs out and it is taken again then.
        """
        log.error("disk full while processing a study; it is taken again later",
                  extra={"event": "study_deferred", "study": key, "stage": stage, "error": type(exc).__name__,
                         "retry_in_s": self.retry_seconds})
        try:
            self.store.defer_study(key, self.retry_seconds)
        except Exception as inner:  # the database's disk is full too: remember it here instead
            log.error("could not record the deferral; retried from memory",
                      extra={"event": "study_defer_failed", "study": key, "error": type(inner).__name__})
            self._unrecorded_retries[key] = time.monotonic() + self.retry_seconds
        return True

    def _hand_back_due(self) -> None:
        now = time.monotonic()
        for key, due in list(self._unrecorded_retries.items()):
            if due <= now:
                try:
                    self.store.defer_study(key, 0.0)  # its lease ends now: lease_study takes it again
                except Exception:
                    self._unrecorded_retries[key] = now + self.retry_seconds
                else:
                    del self._unrecorded_retries[key]
