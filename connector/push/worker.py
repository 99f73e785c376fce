"""The push worker: a thread that drains the outbox into the registry, for ever, unattended.

    loop: lease due jobs (up to ``concurrency``) -> send each on a pool thread -> apply the outcome
          renew leases of long uploads, remove acknowledged local copies, respect window and cap

Why this shape: the outbox in the state DB is the only truth, so a kill -9 at any point loses
nothing: leased jobs are handed back at the next start (:meth:`Outbox.reset_leases`) and sent
again, and the registry recognises instances it already holds (same SOP Instance UID and bytes).
A registry that is down pauses the destination (exponential backoff, 5 s to 30 min) instead of
burning every job's retry budget, so everything flows as soon as it is back.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from connector.outbox import Job, Outbox, backoff_delay, outbox_counts
from connector.push.client import RegistryClient
from connector.push.jobs import JobRunner, Outcome
from connector.push.throttle import RateLimiter
from connector.store.quarantine import quarantine
from connector.store.state import StateStore
from connector.outbox.delivery import promote_delivered

if TYPE_CHECKING:
    from connector.config import Config
    from connector.store.layout import SiteLayout

log = logging.getLogger(__name__)

DESTINATION = "registry"
QUARANTINE_STAGE = "push"
SWEEP_SECONDS = 60.0
KEEP_DONE_DAYS = 30  # acknowledged jobs are remembered this long (re-queued instances are not re-sent)


class PushWorker:
    """``PushWorker(config, store, layout).start()``; ``stop()`` hands unfinished jobs back."""

    def __init__(self, config: Config, store: StateStore, layout: SiteLayout, *,
                 destination: str = DESTINATION, name: str = "push-worker") -> None:
        self.config = config
        self.cfg = config.registry
        self.store = store
        self.layout = layout
        self.destination = destination
        self.name = name
        self.owner = f"{name}-{os.getpid()}-{secrets.token_hex(3)}"
        self.outbox = Outbox(store)
        self.limiter = RateLimiter(self.cfg.bandwidth_limit)
        self.window = self.cfg.window
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: dict[int, Future[None]] = {}
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_failures = 0
        self._last_renew = 0.0
        self._last_sweep = 0.0
        self.client: RegistryClient | None = None
        self.runner: JobRunner | None = None
        self.sent_jobs = 0
        self.sent_bytes = 0
        self._progress = threading.Condition()
        self._outcomes = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.client = RegistryClient(self.cfg)
        self.runner = JobRunner(self.client, self.cfg, self.layout.data_dir, self.limiter, self._stop.is_set,
                                self.config.site.id)
        released = self.outbox.reset_leases(self.destination)
        if released:
            log.info("outbox jobs of a previous run handed back", extra={"event": "outbox_leases_reset",
                                                                         "jobs": released})
        self._pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix=f"{self.name}-send")
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        log.info("push worker started", extra={"event": "push_started", "concurrency": self.cfg.concurrency,
                                               "dev_registry": self.cfg.uses_dev_registry,
                                               "window": self.cfg.upload_window or "always",
                                               "bandwidth_limit": self.cfg.bandwidth_limit})

    def stop(self, timeout: float = 30.0) -> None:
        """Stop leasing, abort uploads at the next chunk, and give the jobs back to the queue."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            futures = list(self._inflight.values())
        deadline = time.monotonic() + timeout
        for fut in futures:
            try:
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()
        log.info("push worker stopped", extra={"event": "push_stopped", "jobs_sent": self.sent_jobs})

    def wake(self) -> None:
        """New jobs were queued: look now rather than at the next poll."""
        self._wake.set()

    def counts(self) -> dict[str, object]:
        return outbox_counts(self.store)

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending (or only jobs blocked by failures); True when drained."""
        deadline = time.monotonic() + timeout
        while True:
            with self._progress:
                seen = self._outcomes
            c = outbox_counts(self.store)
            if c["outbox_pending"] - c["blocked"] == 0:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._progress:  # woken by the next job outcome (or re-checked every half second)
                if self._outcomes == seen:
                    self._progress.wait(timeout=min(left, 0.5))

    # -- main loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the tick: a job finishing during it wakes the next one at once
            try:
                self._tick()
            except Exception as exc:  # the loop must survive anything (DB busy, disk error)
                log.error("push loop error", extra={"event": "push_loop_error", "error": type(exc).__name__})
            self._wake.wait(self.cfg.poll_seconds)

    def _tick(self) -> None:
        now = time.time()
        with self._lock:
            self._inflight = {k: f for k, f in self._inflight.items() if not f.done()}
            inflight = list(self._inflight)
        if inflight and now - self._last_renew >= self.cfg.lease_seconds / 3:
            self.outbox.renew(self.owner, inflight, self.cfg.lease_seconds)
            self._last_renew = now
        if now - self._last_sweep >= SWEEP_SECONDS:
            self._last_sweep = now
            self._housekeeping()
        if not self._may_send(now):
            return
        free = self.cfg.concurrency - len(inflight)
        if free <= 0:
            return
        jobs = self.outbox.lease(self.owner, self.destination, free, self.cfg.lease_seconds, now=now)
        assert self._pool is not None
        for job in jobs:
            with self._lock:
                self._inflight[job.id] = self._pool.submit(self._execute, job)

    def _may_send(self, now: float) -> bool:
        if self._stop.is_set() or now < self._down_until:
            return False
        return self.window is None or self.window.is_open(dt.datetime.now())

    # -- one job -------------------------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        started = time.monotonic()
        assert self.runner is not None
        try:
            outcome = self.runner.run(job)
        except Exception as exc:  # a bug or a disk error: retry later, never lose the job
            outcome = Outcome("retry", error=f"error:{type(exc).__name__}")
        try:
            self._apply(job, outcome, time.monotonic() - started)
        except Exception as exc:
            log.error("could not record push outcome; the job will be retried",
                      extra={"event": "push_record_error", "job": job.id, "error": type(exc).__name__})
        finally:
            self._wake.set()
            with self._progress:
                self._outcomes += 1
                self._progress.notify_all()

    def _apply(self, job: Job, outcome: Outcome, seconds: float) -> None:
        ob, owner = self.outbox, self.owner
        if outcome.acked and outcome.action != "done":
            ob.ack_items(i.id for i in outcome.acked)
        if outcome.rejected:
            ob.fail_items(outcome.rejected)
        extra = {"job": job.id, "kind": job.kind, "status": outcome.status, "error": outcome.error,
                 "instances": len(outcome.acked), "seconds": round(seconds, 3)}
        if outcome.action == "done":
            ob.complete(job.id, owner, outcome.status, acked=[i.id for i in outcome.acked])
            if job.kind in ("manifest", "result", "stow"):  # maybe a study's last job
                promote_delivered(self.store)
            self._destination_up()
            self.sent_jobs += 1
            self.sent_bytes += outcome.bytes_sent
            log.info("pushed", extra={"event": "push_done", **extra,
                                      "mb_per_s": round(outcome.bytes_sent / 1e6 / seconds, 1) if seconds else None})
        elif outcome.action == "release":
            ob.defer(job.id, owner, 0.0, error=outcome.error, count_attempt=False)
        elif outcome.action == "down":
            delay = self._destination_down(outcome.retry_after)
            job_delay = backoff_delay(job.attempts + 1, self.cfg.backoff_min_seconds,
                                      self.cfg.backoff_max_seconds) if outcome.count_attempt else 0.0
            ob.defer(job.id, owner, job_delay, error=outcome.error, status=outcome.status,
                     count_attempt=outcome.count_attempt)
            log.warning("registry unavailable; pausing", extra={"event": "push_destination_down", **extra,
                                                                "retry_in_s": round(delay, 1)})
        elif outcome.action == "retry":
            if outcome.acked:
                self._destination_up()
            if outcome.retry_after is not None:
                delay = min(outcome.retry_after, self.cfg.backoff_max_seconds)
                if outcome.status in (429, 503):  # the registry asks the whole site to slow down
                    self._down_until = max(self._down_until, time.time() + delay)
            else:
                delay = backoff_delay(job.attempts + 1, self.cfg.backoff_min_seconds, self.cfg.backoff_max_seconds)
            ob.defer(job.id, owner, delay, error=outcome.error, status=outcome.status)
            log.warning("push will be retried", extra={"event": "push_retry", **extra, "retry_in_s": round(delay, 1)})
        else:  # fail
            entry_id = self._quarantine(job, outcome)
            ob.give_up(job.id, owner, error=outcome.error, status=outcome.status, quarantine_id=entry_id)
            log.error("registry refused; job quarantined", extra={"event": "push_failed", **extra,
                                                                  "quarantine": entry_id})
        if outcome.acked and self.cfg.retention_hours == 0:
            self._remove([(i.id, i.path) for i in outcome.acked])

    def _quarantine(self, job: Job, outcome: Outcome) -> str | None:
        record = {"job": job.id, "kind": job.kind, "destination": job.destination, "attempts": job.attempts + 1,
                  "error": outcome.error, "response": outcome.response,
                  "refused_items": {str(i.id): reason for i, reason in
                                    ((it, outcome.rejected.get(it.id)) for it in job.items) if reason}}
        try:
            entry = quarantine(self.layout.quarantine, QUARANTINE_STAGE, outcome.error.split(":")[0] or "refused",
                               data=json.dumps(record, indent=2, default=str).encode(),
                               details={"job": job.id, "kind": job.kind, "status": outcome.status})
            return entry.id
        except OSError as exc:
            log.error("could not write push quarantine entry", extra={"event": "push_quarantine_error",
                                                                       "error": type(exc).__name__})
            return None

    # -- destination health ----------------------------------------------------------------------

    def _destination_down(self, retry_after: float | None) -> float:
        with self._lock:
            self._down_failures += 1
            delay = backoff_delay(self._down_failures, self.cfg.backoff_min_seconds, self.cfg.backoff_max_seconds)
            if retry_after is not None:
                delay = min(retry_after, self.cfg.backoff_max_seconds)
            self._down_until = max(self._down_until, time.time() + delay)
            return delay

    def _destination_up(self) -> None:
        with self._lock:
            self._down_failures = 0

    # -- retention -----------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        """Remove acknowledged copies past their retention, and forget long-finished jobs."""
        now = time.time()
        if self.cfg.retention_hours >= 0:
            cutoff = now - self.cfg.retention_hours * 3600
            for _ in range(100):  # at most 100 000 files per sweep
                batch = self.outbox.removable_items(cutoff)
                if not batch or self._remove(batch) == 0:
                    break
        pruned = self.outbox.prune(now - KEEP_DONE_DAYS * 86400)
        if pruned:
            log.info("old outbox jobs forgotten", extra={"event": "outbox_pruned", "jobs": pruned})

    def _remove(self, items: list[tuple[int, str]]) -> int:
        """Delete local de-identified copies the registry holds; empty study folders go too."""
        folders: set[Path] = set()
        removed: list[int] = []
        for item_id, rel in items:
            path = self.layout.data_dir / rel
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove a pushed file", extra={"event": "push_remove_error",
                                                                     "error": type(exc).__name__})
                continue
            removed.append(item_id)
            folders.add(path.parent)
        self.outbox.mark_removed(removed)
        outgoing = self.layout.outgoing.resolve()
        for folder in folders:
            try:
                if folder.resolve() != outgoing and outgoing in folder.resolve().parents:
                    folder.rmdir()
            except OSError:
                pass  # not empty: more of the study is still waiting
        return len(removed)
