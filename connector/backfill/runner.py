"""Working through the backfill worklist: concurrency, rate, window, retries; and the daemon's service.

- ``[backfill] max_concurrent`` threads each lease one study at a time (one association each).
- ``instances_per_minute`` paces the start of each study by its expected instance count (a PACS
  sends a C-MOVE's instances at its own speed, so the cap is kept on average, per study).
- The daemon (:class:`BackfillService`, driven by the pipeline role's apscheduler) starts a pass
  only inside ``[backfill] window`` and leases no new study once it closes; a study in flight at
  that moment is finished. ``backfill run`` ignores the window.
- A failed or incomplete study (fewer instances on the spool than the C-FIND's
  NumberOfStudyRelatedInstances) is queued again after ``retry_backoff_seconds`` (doubling), and
  reported ``failed`` with its reason after ``max_attempts``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from connector.pacs import scu
from connector.backfill.retrieve import retrieve_study
from connector.backfill.schema import FAILED
from connector.backfill.worklist import LeasedStudy, Worklist, process_owner
from connector.config import Config
from connector.settings.registry import UploadWindow
from connector.store.layout import SiteLayout
from connector.store.state import StateStore

log = logging.getLogger(__name__)


class RateLimiter:
    """At most ``per_minute`` instances per minute on average, over every thread (0 = no cap)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, instances: int, stop: threading.Event) -> bool:
        """Wait for ``instances`` worth of budget; False if ``stop`` was set meanwhile."""
        if self.per_minute <= 0:
            return not stop.is_set()
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + max(1, instances) * 60.0 / self.per_minute
        return not stop.wait(max(0.0, start - now))


def window_open(config: Config, now: dt.datetime | None = None) -> bool:
    window = UploadWindow.parse(config.backfill.window)
    return window is None or window.is_open(now or dt.datetime.now())


@dataclass
class RunReport:
    retrieved: int = 0
    failed: int = 0  # given up
    retried: int = 0  # attempts that failed and were queued again
    instances: int = 0
    bytes: int = 0
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)


class Runner:
    """Retrieve due studies until none is left (or the window closes, or ``stop`` is set)."""

    def __init__(self, config: Config, store: StateStore, layout: SiteLayout, *, stop: threading.Event,
                 job_id: int | None = None, respect_window: bool = True,
                 on_progress: Callable[[int], None] | None = None,
                 on_study: Callable[[LeasedStudy, str, str | None], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.layout = layout
        self.stop = stop
        self.job_id = job_id
        self.respect_window = respect_window
        self.on_progress = on_progress
        self.on_study = on_study
        self.worklist = Worklist(store)
        self.owner = process_owner()
        self.limiter = RateLimiter(config.backfill.instances_per_minute)
        self.report = RunReport()
        self._lock = threading.Lock()
        self._intake: Any = None

    # -- one pass ----------------------------------------------------------------------------------

    def run_pass(self) -> RunReport:
        """Every due study once (studies waiting for a retry are left for a later pass)."""
        started = time.monotonic()
        self.worklist.release_orphans()
        try:
            workers = self.config.backfill.max_concurrent
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill") as pool:
                futures = [pool.submit(self._worker) for _ in range(workers)]
                try:
                    for future in futures:
                        future.result()
                except BaseException:  # Ctrl-C or an error: the other workers hand their studies back
                    self.stop.set()
                    raise
        finally:
            if self._intake is not None:
                self._intake.close()
                self._intake = None
            self.worklist.finish_jobs()
        self.report.seconds += time.monotonic() - started
        return self.report

    def run_until_done(self) -> RunReport:
        """Passes until the job has nothing queued (waiting out retry backoffs), or ``stop``."""
        while not self.stop.is_set():
            self.run_pass()
            pending, _, next_at = self.worklist.pending(self.job_id)
            if not pending or next_at is None:
                break
            self.stop.wait(max(0.0, next_at - time.time()) + 0.05)
        return self.report

    def _allowed(self) -> bool:
        return not self.stop.is_set() and (not self.respect_window or window_open(self.config))

    def _worker(self) -> None:
        while self._allowed():
            study = self.worklist.lease(self.owner, job_id=self.job_id)
            if study is None:
                return
            try:
                self._one(study)
            except BaseException:
                self.worklist.give_back(study)
                raise

    def _intake_for_get(self) -> Any:
        with self._lock:
            if self._intake is None:
                from connector.ingest.intake import Intake

                partial = self.layout.partial / f"backfill-{self.owner.split(':')[0]}"
                partial.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._intake = Intake(self.layout, self.store, min_free_bytes=self.config.storage.min_free_bytes,
                                      fsync=self.config.storage.fsync, partial_dir=partial)
            return self._intake

    def _one(self, study: LeasedStudy) -> None:
        cfg = self.config.backfill
        if not self.limiter.acquire(study.expected_instances or 1, self.stop):
            self.worklist.give_back(study)
            return
        intake = self._intake_for_get() if self.config.pacs.retrieve == "get" else None
        started = time.monotonic()
        last = [0]

        def progress(done: int) -> None:
            if self.on_progress is not None and done > last[0]:
                self.on_progress(done - last[0])
                last[0] = done

        outcome = retrieve_study(self.config, study, stop=self.stop, intake=intake, on_progress=progress)
        if outcome.stopped:
            self.worklist.give_back(study)
            return
        have, size = self.worklist.held(study.study_key)
        problem = outcome.problem()
        if study.expected_instances is not None and have < study.expected_instances:
            problem = f"incomplete: {have} of {study.expected_instances} instances" + (f"; {problem}" if problem else "")
        elif study.expected_instances is not None:
            problem = None  # everything the PACS reported is here (a warning status changes nothing)
        elif problem is None and have == 0:
            problem = "the PACS sent nothing"
        if problem is not None and have == 0 and self.config.pacs.retrieve == "move" and outcome.failed:
            problem += (f"; nothing arrived: is this connector's receiver running, and does the PACS know "
                        f"{scu.move_destination(self.config)} at this server's address and [dicom] port?")
        seconds = time.monotonic() - started
        if problem is None:
            self.worklist.succeed(study, have, size, seconds)
            progress(have)
            with self._lock:
                self.report.retrieved += 1
                self.report.instances += have
                self.report.bytes += size
            log.info("backfill study retrieved", extra={"event": "backfill_retrieved", "study": study.study_key,
                                                         "job": study.job_id, "instances": have,
                                                         "seconds": round(seconds, 3)})
            state = "retrieved"
        else:
            state = self.worklist.fail(study, problem, max_attempts=cfg.max_attempts,
                                       backoff_seconds=cfg.retry_backoff_seconds, instances=have, size=size)
            with self._lock:
                if state == FAILED:
                    self.report.failed += 1
                else:
                    self.report.retried += 1
                self.report.reasons.append(problem)
            log.warning("backfill study " + ("failed" if state == FAILED else "incomplete, retrying later"),
                        extra={"event": "backfill_failed" if state == FAILED else "backfill_retry",
                               "study": study.study_key, "job": study.job_id, "attempt": study.attempts + 1,
                               "reason": problem})
        if self.on_study is not None:
            self.on_study(study, state, problem)


# -- daily mode ------------------------------------------------------------------------------------


def ensure_daily_job(config: Config, store: StateStore, today: dt.date | None = None) -> int | None:
    """Daily mode: once per day, queue the previous ``daily_days`` days' studies matching the filters.

    Returns the new job's id, or None when today's job exists already. Studies already received
    or queued by an earlier night are recorded ``present`` and not retrieved again.
    """
    from connector.backfill.query import StudyFilter, find_studies

    today = today or dt.date.today()
    worklist = Worklist(store)
    label = today.isoformat()
    if worklist.daily_job(label) is not None:
        return None
    cfg = config.backfill
    flt = StudyFilter(date_from=today - dt.timedelta(days=cfg.daily_days), date_to=today - dt.timedelta(days=1),
                      modalities=tuple(cfg.modalities), description=cfg.description)
    report = find_studies(config, flt)
    created = worklist.create_job(report.studies, flt.as_dict(), kind="daily", label=label, query=report.record())
    log.info("daily backfill queued", extra={"event": "backfill_daily", "job": created["job"],
                                             "studies_found": len(report.studies), "queued": created["queued"]})
    return created["job"]


# -- the daemon's service --------------------------------------------------------------------------


class BackfillService:
    """What the daemon's pipeline role runs: a pass in a thread of its own whenever the window is
    open and work is due, so the scheduler's tick never blocks for the hours a backfill takes."""

    def __init__(self, config: Config, layout: SiteLayout, stop: threading.Event) -> None:
        self.config = config
        self.layout = layout
        self.stop = stop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            if self.stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            if not window_open(self.config):
                return
            self._thread = threading.Thread(target=self._pass, name="backfill-pass", daemon=True)
            self._thread.start()

    def _pass(self) -> None:
        from connector.backfill.query import PacsUnavailable, QueryFailed

        store = StateStore(self.layout.state_db)
        try:
            if self.config.backfill.daily:
                try:
                    ensure_daily_job(self.config, store)
                except (PacsUnavailable, QueryFailed) as exc:
                    log.warning("daily backfill query failed; tried again at the next tick",
                                extra={"event": "backfill_daily_failed", "error": str(exc)})
            if not Worklist(store).pending()[0]:
                return
            report = Runner(self.config, store, self.layout, stop=self.stop).run_pass()
            if report.retrieved or report.failed or report.retried:
                log.info("backfill pass done", extra={"event": "backfill_pass", "retrieved": report.retrieved,
                                                      "retried": report.retried, "failed": report.failed,
                                                      "instances": report.instances,
                                                      "seconds": round(report.seconds, 3)})
        except Exception as exc:  # never take the pipeline role down; the next tick tries again
            log.error("backfill pass failed", extra={"event": "backfill_error", "error": type(exc).__name__,
                                                     "detail": str(exc) if isinstance(exc, OSError) else ""})
        finally:
            store.close()

    def join(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
