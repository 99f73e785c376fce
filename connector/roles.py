"""The processes the daemon runs, one function per role. Each runs until SIGTERM.

- ``receiver``: a C-STORE SCP on the shared DICOM port (SO_REUSEPORT: the kernel spreads
  associations over the receivers, so one crashing never stops reception), plus the drop folder in
  receiver 0. Receivers write the spool and the state DB and nothing else.
- ``pipeline``: the stable-study sweep and the study worker (de-identification, inference, queuing)
  and the periodic jobs (apscheduler). It reads what receivers wrote and never talks to them.
- ``push``: drains the outbox to the registry (STOW-RS and the JSON API), with its own retries.

Roles are started by :mod:`connector.daemon` in fresh interpreters (multiprocessing "spawn"), so
they share no state but the files and the database.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import shutil
import signal
import threading
from typing import Any

from connector.config import Config
from connector.logsetup import quiet_libraries

log = logging.getLogger(__name__)

EXIT_BIND_FAILED = 4
STOP_GRACE_SECONDS = 60.0  # receivers drain associations for up to 30 s  # the receiver could not listen: the supervisor stops instead of retrying


class _SafeQueueHandler(logging.handlers.QueueHandler):
    """Ships records to the supervisor without exception text (which may quote data)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        out = logging.makeLogRecord(record.__dict__)
        out.msg = record.getMessage()
        out.args = None
        if record.exc_info and record.exc_info[0] is not None:
            out.exc_type = record.exc_info[0].__name__
        out.exc_info = None
        out.exc_text = None
        return out


def _die_with_parent() -> None:
    """Linux: if the supervisor dies (killed, crashed), its roles die too, as the service would.

    Otherwise orphaned receivers would keep the port while a restarted supervisor runs recovery.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def _child_setup(config: Config, log_queue: Any, role: str) -> threading.Event:
    """Logging through the supervisor, SIGTERM = stop, SIGINT ignored (the supervisor forwards)."""
    _die_with_parent()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _SafeQueueHandler(log_queue)
    handler.addFilter(_RoleFilter(role))
    root.addHandler(handler)
    root.setLevel(config.logging.level.upper())
    quiet_libraries()
    log.info("role started", extra={"event": "role_pid", "pid": os.getpid()})
    stop = threading.Event()

    def on_term(*_: object) -> None:
        stop.set()
        # a role that cannot finish its clean-up in time must still exit
        timer = threading.Timer(STOP_GRACE_SECONDS, lambda: os._exit(3))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return stop


def _wait_for_stop(stop: threading.Event) -> None:
    """Wait in short slices: a signal the kernel delivers to another thread only runs its Python
    handler when the main thread next wakes, so an unbounded wait could miss SIGTERM for good."""
    while not stop.wait(0.25):
        pass


class _RoleFilter(logging.Filter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


def receiver_main(config: Config, index: int, log_queue: Any) -> None:
    stop = _child_setup(config, log_queue, f"receiver-{index}")
    from connector.ingest.folder import DropFolderWatcher
    from connector.ingest.intake import Intake
    from connector.ingest.scp import StoreSCP, configure_receiver_process
    from connector.store.layout import SiteLayout
    from connector.store.state import StateStore

    layout = SiteLayout.from_config(config)
    partial = layout.partial / f"r{index}"
    shutil.rmtree(partial, ignore_errors=True)  # this receiver's half-received objects, if it crashed
    partial.mkdir(mode=0o700, parents=True)
    store = StateStore(layout.state_db)
    intake = Intake(layout, store, min_free_bytes=config.storage.min_free_bytes, fsync=config.storage.fsync,
                    partial_dir=partial)
    configure_receiver_process()
    scp = StoreSCP(config.dicom, intake, reuse_port=True)
    try:
        scp.start()
    except OSError as exc:
        log.error("cannot listen on the DICOM port", extra={"event": "bind_failed", "port": config.dicom.port,
                                                            "error": exc.strerror})
        os._exit(EXIT_BIND_FAILED)
    folder = None
    if index == 0 and config.dropfolder.path is not None:
        folder = DropFolderWatcher(config.dropfolder.path, intake, settle_seconds=config.dropfolder.settle_seconds,
                                   poll_seconds=config.dropfolder.poll_seconds)
        folder.start()
    _wait_for_stop(stop)
    scp.stop()
    if folder is not None:
        folder.stop()
    intake.close()
    store.close()


def pipeline_main(config: Config, log_queue: Any) -> None:
    stop = _child_setup(config, log_queue, "pipeline")
    from apscheduler.schedulers.background import BackgroundScheduler

    from connector.assemble.stability import StudyAssembler
    from connector.deid.engine import DeidEngine
    from connector.linkage import open_identity_provider
    from connector.store.layout import SiteLayout
    from connector.store.state import StateStore
    from connector.studyworker import StudyWorker, cac_step, registry_step

    layout = SiteLayout.from_config(config)
    store = StateStore(layout.state_db)
    provider = open_identity_provider(config)
    engine = DeidEngine.from_config(config, provider)
    steps = [("registry", registry_step(config, store, layout, provider))]
    if config.cac.enabled:
        steps.append(("cac", cac_step(config, store, engine)))
    worker = StudyWorker(store, layout, engine, steps)
    worker.start()
    assembler = StudyAssembler(store, config.assemble.stable_seconds)

    def sweep() -> None:
        if assembler.sweep():
            worker.wake()

    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(sweep, "interval", seconds=config.assemble.sweep_seconds, id="stable-study-sweep",
                      max_instances=1, coalesce=True)
    if config.followup.inbox is not None:
        from connector.followup.inbox import process_inbox
        from connector.outbox import Outbox

        outbox = Outbox(store)
        scheduler.add_job(lambda: process_inbox(config, store, provider, outbox), "interval",
                          seconds=config.followup.poll_seconds, id="followup-inbox", max_instances=1, coalesce=True)
    scheduler.add_job(lambda: daily_summary(store), "interval", hours=24, id="daily-summary",
                      max_instances=1, coalesce=True)
    scheduler.start()
    daily_summary(store)
    _wait_for_stop(stop)
    scheduler.shutdown(wait=True)
    worker.stop()
    store.close()
    provider.close()


def daily_summary(store: Any) -> None:
    """One line a day with the counts hospital IT looks at first (and one at start-up)."""
    from connector.outbox import outbox_counts

    counts = store.counts()
    out = outbox_counts(store)
    log.info("daily summary", extra={"event": "daily_summary", "instances_received": counts["instances_received"],
                                     "studies": counts["studies"], "outbox_pending": out.get("outbox_pending"),
                                     "pushed": out.get("pushed"), "failed": out.get("failed"),
                                     "oldest_pending_age_s": out.get("oldest_pending_age_s")})


def push_main(config: Config, log_queue: Any) -> None:
    """Drains the outbox to the registry; never waits on, nor holds up, the other roles."""
    stop = _child_setup(config, log_queue, "push")
    from connector.push import PushWorker
    from connector.store.layout import SiteLayout
    from connector.store.state import StateStore

    layout = SiteLayout.from_config(config)
    store = StateStore(layout.state_db)
    worker = PushWorker(config, store, layout)
    worker.start()
    _wait_for_stop(stop)
    worker.stop()
    store.close()


ROLE_TARGETS = {"receiver": receiver_main, "pipeline": pipeline_main, "push": push_main}


def spawn_context() -> Any:
    return multiprocessing.get_context("spawn")
