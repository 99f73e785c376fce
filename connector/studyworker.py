"""The study worker: carries each stable study through the stages after reception.

    stable study (leased from the state DB)
      -> de-identification + PHI guard   (connector.deid)  -> spool/outgoing/<study key>/
      -> later stages registered as steps (inference, queuing for the registry)

Why a lease: the worker takes a study with a time-limited lease in the DB, so a worker that dies
leaves nothing stuck: the lease expires (or start-up recovery hands it back) and the study is
processed again. Every step is idempotent: the same originals give the same de-identified bytes
and file names, and the outbox ignores jobs it already holds.

The worker runs beside the receiver and never blocks it: the receiver only writes rows that the
worker later reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from connector.deid.engine import DeidEngine
from connector.deid.study import StudyOutcome, deidentify_study
from connector.store.layout import SiteLayout
from connector.store.state import StateStore

log = logging.getLogger(__name__)

LEASE_SECONDS = 30 * 60


@dataclass
class StudyContext:
    """What the steps after de-identification get to see about one study."""

    study_key: str
    originals: list[Path]  # identified files on the spool (never leave the site)
    outcome: StudyOutcome  # de-identified files, their new UIDs and the pseudonym
    out_dir: Path
    notes: dict[str, object] = field(default_factory=dict)


Step = Callable[[StudyContext], None]


class StudyWorker:
    def __init__(self, store: StateStore, layout: SiteLayout, engine: DeidEngine,
                 steps: list[tuple[str, Step]] | None = None, *, name: str = "study-worker") -> None:
        self.store = store
        self.layout = layout
        self.engine = engine
        self.steps = steps or []
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
        key = self.store.lease_study(self.name, LEASE_SECONDS)
        if key is None:
            return False
        started = time.monotonic()
        rows = self.store.study_instances(key)
        originals = [self.layout.spool / r["path"] for r in rows]
        out_dir = self.layout.outgoing / key
        try:
            outcome = deidentify_study(originals, out_dir, self.layout.quarantine, self.engine)
        except Exception as exc:
            log.error("de-identification failed for study; marked failed",
                      extra={"event": "deid_failed", "study": key, "error": type(exc).__name__})
            self.store.set_study_state(key, "failed")
            return True
        state = "deidentified" if outcome.written else "quarantined"
        context = StudyContext(key, originals, outcome, out_dir)
        for step_name, step in self.steps:
            if not outcome.written:
                break
            try:
                step(context)
            except Exception as exc:
                log.error("study step failed", extra={"event": "step_failed", "step": step_name, "study": key,
                                                      "error": type(exc).__name__})
                state = "failed"
                break
            state = str(context.notes.get("state", state))
        self.store.set_study_state(key, state, only_if="processing")
        self.processed += 1
        log.info("study processed", extra={"event": "study_processed", "study": key, "state": state,
                                           "seconds": round(time.monotonic() - started, 3), **outcome.summary()})
        return True
