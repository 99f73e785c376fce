"""The long-running service: wires the stages together and stops them cleanly.

Start order: folders -> state DB -> start-up recovery -> receiver -> drop folder -> scheduler.
Stop order is the reverse, and on SIGTERM/SIGINT the receiver first stops accepting, then lets
in-flight associations finish before the DB is closed, so nothing acknowledged is cut short.
Receiving never waits on later stages: those run from the scheduler and worker threads, fed from
the state DB.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from connector.assemble.stability import StudyAssembler
from connector.config import Config
from connector.ingest.folder import DropFolderWatcher
from connector.ingest.intake import Intake
from connector.ingest.recovery import RecoveryReport, recover
from connector.ingest.scp import StoreSCP, configure_pynetdicom
from connector.store.layout import SiteLayout
from connector.store.state import StateStore

log = logging.getLogger(__name__)


@dataclass
class Daemon:
    config: Config
    layout: SiteLayout = field(init=False)
    store: StateStore = field(init=False)
    intake: Intake = field(init=False)
    scp: StoreSCP | None = field(init=False, default=None)
    dropfolder: DropFolderWatcher | None = field(init=False, default=None)
    scheduler: BackgroundScheduler | None = field(init=False, default=None)
    recovery: RecoveryReport | None = field(init=False, default=None)
    _stopping: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.layout = SiteLayout.from_config(self.config)

    def start(self) -> None:
        cfg = self.config
        self.layout.ensure()
        self.store = StateStore(self.layout.state_db)
        self.intake = Intake(self.layout, self.store, min_free_bytes=cfg.storage.min_free_bytes,
                             fsync=cfg.storage.fsync)
        self.recovery = recover(self.intake)
        configure_pynetdicom(self.layout.partial)
        self.scp = StoreSCP(cfg.dicom, self.intake)
        self.scp.start()
        if cfg.dropfolder.path is not None:
            self.dropfolder = DropFolderWatcher(cfg.dropfolder.path, self.intake,
                                                settle_seconds=cfg.dropfolder.settle_seconds,
                                                poll_seconds=cfg.dropfolder.poll_seconds)
            self.dropfolder.start()
        assembler = StudyAssembler(self.store, cfg.assemble.stable_seconds)
        self.scheduler = BackgroundScheduler(daemon=True)
        self.scheduler.add_job(assembler.sweep, "interval", seconds=cfg.assemble.sweep_seconds,
                               id="stable-study-sweep", max_instances=1, coalesce=True)
        self.scheduler.start()
        log.info("daemon started", extra={"event": "daemon_started", "pid": os.getpid(),
                                          "config": self.config.source, "site": cfg.site.id})

    def stop(self) -> None:
        """Stop accepting, drain, stop the workers, close the DB. Safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("daemon stopping", extra={"event": "daemon_stopping"})
        if self.scp is not None:
            self.scp.stop()
        if self.dropfolder is not None:
            self.dropfolder.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        self.store.close()
        log.info("daemon stopped", extra={"event": "daemon_stopped"})

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        done = threading.Event()

        def _on_signal(signum: int, _frame: Any) -> None:
            log.info("signal received", extra={"event": "signal", "signal": signal.Signals(signum).name})
            done.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self.start()
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
