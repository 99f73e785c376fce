"""The processes the daemon runs, one function per role. Each runs until SIGTERM.

- ``receiver``: a C-STORE SCP on the shared DICOM port (SO_REUSEPORT: the kernel spreads
  associations over the receivers, so one crashing never stops reception), plus the drop folder in
  receiver 0. Receivers write the spool and the state DB and nothing else.
- ``pipeline``: the stable-study sweep and the study worker running the stages of
  :mod:`connector.pipeline.stages` (de-identification, CAC, registry queuing), and the periodic jobs
  (apscheduler). It reads what receivers wrote and never talks to them.
- ``push``: drains the outbox to the registry (STOW-RS and the JSON API), with its own retries.
- ``stow`` (only with ``[stow] enabled``): the DICOMweb STOW-RS listener; like a receiver it writes
  the spool and the state DB through the same intake, and nothing else.

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
import time
from collections.abc import Callable
from typing import Any

from connector.config import Config
from connector.logsetup import quiet_libraries
from connector.stop_signals import StopSignals
from connector.store.layout import PRIVATE_UMASK

log = logging.getLogger(__name__)

EXIT_BIND_FAILED = 4  # the receiver could not listen: the supervisor stops instead of retrying
EXIT_STOP_OVERDUE = 3  # a role still busy this long after SIGTERM exits by itself


def _listen_or_exit(start: Callable[[], None], what: str, port: int,
                    reason: Callable[[OSError], object]) -> None:
    """Start a listener role's server; a port that cannot be opened ends the role with EXIT_BIND_FAILED,
    which the supervisor reports as such (a start failure, not a crash to restart)."""
    try:
        start()
    except OSError as exc:
        log.error(f"cannot listen on the {what} port", extra={"event": "bind_failed", "port": port,
                                                              "error": reason(exc)})
        os._exit(EXIT_BIND_FAILED)


def stop_budget(config: Config) -> tuple[float, float]:
    """(seconds a role may spend finishing its work, seconds after SIGTERM at which it exits regardless).

    With the default stop_timeout of 30 s: 15 s to finish (receivers drain associations, the
    pipeline finishes its study, the uploader its requests), exit at 27 s; the supervisor kills
    what is left at 28.5 s (:func:`kill_after`).
    """
    total = config.service.stop_timeout
    return total / 2, total - min(3.0, max(1.0, total * 0.2))


def kill_after(config: Config) -> float:
    """Seconds after SIGTERM at which the supervisor SIGKILLs the roles still running."""
    total = config.service.stop_timeout
    return total - min(1.5, total * 0.1)


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
    The supervisor may have died before the death signal was armed: then this process has been
    re-parented (to init, or to a subreaper such as a container's init or systemd --user), so the
    parent is compared with the supervisor's pid, never with 1: in a container the supervisor
    itself is PID 1 (``podman run`` without ``--init``), and its roles' parent is then 1 while it
    is alive.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None and os.getppid() != parent.pid:
        os._exit(1)  # the supervisor that started this role is already gone


def _child_setup(config: Config, log_queue: Any, role: str) -> threading.Event:
    """Logging through the supervisor, SIGTERM = stop, SIGINT ignored (the supervisor forwards).

    The returned event is set by a watcher thread, never by the signal handler: a handler that
    sets an event the main thread is waiting on can deadlock it (:mod:`connector.stop_signals`).
    """
    os.umask(PRIVATE_UMASK)  # inherited from the supervisor already; a role started otherwise gets it too
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
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signals = StopSignals((signal.SIGTERM,))
    signals.install()
    _, exit_after = stop_budget(config)

    def watch() -> None:
        # woken through the signal pipe at once, even while the main thread is busy (loading a model)
        while signals.wait(1.0) is None:
            pass
        stop.set()
        # a role that cannot finish its clean-up in time (a hung request, a long study) must still
        # exit: its work is leased in the state DB and handed back at the next start
        time.sleep(exit_after)
        os._exit(EXIT_STOP_OVERDUE)

    threading.Thread(target=watch, name="stop-signal", daemon=True).start()
    return stop


def _wait_for_stop(stop: threading.Event) -> None:
    """Block until SIGTERM. The event is set by the watcher thread of :func:`_child_setup`, not by a
    signal handler, so waiting on it cannot deadlock; the slices only keep the main thread waking."""
    while not stop.wait(0.25):
        pass


def _exit_role(log_queue: Any) -> None:
    """End the role now that its clean-up is done: hand the last log lines over, then exit.

    Without this the interpreter's exit would wait for every non-daemon thread, e.g. an upload
    thread blocked on a registry that stopped answering, and only the overdue timer would end it.
    """
    logging.shutdown()
    try:
        log_queue.close()
        log_queue.join_thread()  # bounded by the overdue timer if the supervisor no longer reads
    except Exception:
        pass
    os._exit(0)


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
    from connector.site_db import open_state

    layout = SiteLayout.from_config(config)
    partial = layout.partial / f"r{index}"
    shutil.rmtree(partial, ignore_errors=True)  # this receiver's half-received objects, if it crashed
    partial.mkdir(mode=0o700, parents=True)
    store = open_state(layout.state_db)
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
    drain, _ = stop_budget(config)
    scp.stop(drain_seconds=drain)
    if folder is not None:
        folder.stop()
    intake.close()
    store.close()
    _exit_role(log_queue)


def pipeline_main(config: Config, log_queue: Any) -> None:
    stop = _child_setup(config, log_queue, "pipeline")
    from apscheduler.schedulers.background import BackgroundScheduler

    from connector.assemble.stability import StudyAssembler
    from connector.deid.engine import DeidEngine
    from connector.linkage import open_identity_provider
    from connector.pipeline.stages import build_stages
    from connector.pipeline.worker import StudyWorker
    from connector.store.layout import SiteLayout
    from connector.site_db import open_state

    layout = SiteLayout.from_config(config)
    store = open_state(layout.state_db)
    provider = open_identity_provider(config)
    engine = DeidEngine.from_config(config, provider)
    stages = build_stages(config, store, layout, engine, provider)  # the pipeline, as one list
    # a study that met a full disk is retried after the quiet period (5 s to 5 min)
    worker = StudyWorker(store, layout, stages, retry_seconds=min(300.0, max(5.0, config.assemble.stable_seconds)))
    worker.start()
    assembler = StudyAssembler(store, config.assemble.stable_seconds)

    def sweep() -> None:
        if assembler.sweep():
            worker.wake()

    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(sweep, "interval", seconds=config.assemble.sweep_seconds, id="stable-study-sweep",
                      max_instances=1, coalesce=True)
    scheduler.add_job(worker.retry_due, "interval", seconds=min(15.0, config.assemble.sweep_seconds * 10),
                      id="optional-stage-retry", max_instances=1, coalesce=True)
    if config.followup.inbox is not None:
        from connector.followup.inbox import process_inbox
        from connector.outbox import Outbox

        outbox = Outbox(store)
        scheduler.add_job(lambda: process_inbox(config, store, provider, outbox), "interval",
                          seconds=config.followup.poll_seconds, id="followup-inbox", max_instances=1, coalesce=True)
    if config.fhir.enabled and config.fhir.interval_minutes > 0:  # deaths from the hospital's FHIR server
        from connector.fhir.deaths import scheduled_job as fhir_job

        scheduler.add_job(fhir_job(config, store, provider), "interval", minutes=config.fhir.interval_minutes,
                          id="fhir-poll", max_instances=1, coalesce=True)
    scheduler.add_job(lambda: daily_summary(store), "interval", hours=24, id="daily-summary",
                      max_instances=1, coalesce=True)
    if config.registry.reconcile_interval_minutes > 0:  # ask the registry what it holds; re-send what it lacks
        from connector.push.reconcile import scheduled_job

        scheduler.add_job(scheduled_job(config, layout, provider), "interval",
                          minutes=config.registry.reconcile_interval_minutes, id="registry-reconcile",
                          max_instances=1, coalesce=True)
    backfill = None
    if config.pacs.configured:  # retrospective backfill from the PACS, only inside [backfill] window
        from connector.backfill.runner import BackfillService

        backfill = BackfillService(config, layout, stop)
        scheduler.add_job(backfill.tick, "interval", seconds=config.backfill.poll_seconds, id="backfill",
                          max_instances=1, coalesce=True)
    scheduler.start()
    daily_summary(store)
    if backfill is not None:
        backfill.tick()
    _wait_for_stop(stop)
    finish, _ = stop_budget(config)
    scheduler.shutdown(wait=False)
    if backfill is not None:  # its associations are aborted by the stop event; unfinished studies stay queued
        backfill.join(finish / 2)
    worker.stop(timeout=finish)
    if worker.busy:  # a study still in hand stays leased: start-up recovery hands it back
        log.warning("stopping with a study in hand; it is taken up again at the next start",
                    extra={"event": "study_left_leased"})
        _exit_role(log_queue)  # its thread still uses the database: do not close it underneath
    store.close()
    provider.close()
    _exit_role(log_queue)


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
    from connector.push.worker import PushWorker
    from connector.store.layout import SiteLayout
    from connector.site_db import open_state

    layout = SiteLayout.from_config(config)
    store = open_state(layout.state_db)
    worker = PushWorker(config, store, layout)
    worker.start()
    returns = None
    if config.results.return_to_pacs:  # CAC SR/SEG with the original identifiers to [pacs], own outbox destination
        from connector.infer.pacs_return import PacsReturnWorker

        returns = PacsReturnWorker(config, store, layout)
        returns.start()
    _wait_for_stop(stop)
    finish, _ = stop_budget(config)
    worker.stop(timeout=finish / 2)  # uploads not finished by then are sent again at the next start
    if returns is not None:
        returns.stop(timeout=finish / 4)
    store.close()
    _exit_role(log_queue)


def hl7_main(config: Config, log_queue: Any) -> None:
    """The HL7 v2 ADT listener ([hl7] port): deaths of linked patients into follow-up.

    Its own process, so a flood of ADT traffic or a parser fault never slows the DICOM receivers.
    """
    stop = _child_setup(config, log_queue, "hl7")
    from connector.hl7.listener import Hl7Service
    from connector.linkage import open_identity_provider
    from connector.outbox import Outbox
    from connector.site_db import open_state
    from connector.store.layout import SiteLayout

    store = open_state(SiteLayout.from_config(config).state_db)
    provider = open_identity_provider(config)
    service = Hl7Service(config, provider, store, Outbox(store))
    _listen_or_exit(service.start, "HL7", config.hl7.port, lambda exc: exc.strerror)
    _wait_for_stop(stop)
    finish, _ = stop_budget(config)
    service.stop(timeout=finish)
    store.close()
    provider.close()
    _exit_role(log_queue)


def stow_main(config: Config, log_queue: Any) -> None:
    """The DICOMweb STOW-RS listener ([stow], issue 28): files parts through the same intake as C-STORE."""
    stop = _child_setup(config, log_queue, "stow")
    from connector.ingest.intake import Intake
    from connector.ingest.negotiation import Offer
    from connector.ingest.scp import configure_receiver_process
    from connector.ingest.stow import StowServer, bind_error_reason
    from connector.site_db import open_state
    from connector.store.layout import SiteLayout

    layout = SiteLayout.from_config(config)
    partial = layout.partial / "stow"
    shutil.rmtree(partial, ignore_errors=True)  # parts of requests cut short when this role last stopped
    partial.mkdir(mode=0o700, parents=True)
    store = open_state(layout.state_db)
    intake = Intake(layout, store, min_free_bytes=config.storage.min_free_bytes, fsync=config.storage.fsync,
                    partial_dir=partial)
    configure_receiver_process()
    offer = Offer(max_pdu_length=config.dicom.max_pdu_length,
                  extra_storage_classes=frozenset(config.dicom.extra_storage_sop_classes))
    server = StowServer(config.stow, intake, offer)
    _listen_or_exit(server.start, "STOW-RS", config.stow.port, bind_error_reason)
    _wait_for_stop(stop)
    drain, _ = stop_budget(config)
    server.stop(drain_seconds=drain)
    intake.close()
    store.close()
    _exit_role(log_queue)


ROLE_TARGETS = {"receiver": receiver_main, "pipeline": pipeline_main, "push": push_main, "stow": stow_main,
                "hl7": hl7_main}


def spawn_context() -> Any:
    return multiprocessing.get_context("spawn")
