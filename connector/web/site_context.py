"""What the dashboard's pages work with: the site's config, state, users and services, in one object.

Why apart from :mod:`connector.web.server`: the pages need the site (the state store, the users,
the linkage provider, the intake that releases quarantined objects, the health probes), not the
waitress lifecycle. The daemon builds one :class:`SiteContext` and hands it to
:func:`connector.web.app.create_app`; :class:`connector.web.server.WebServer` only serves that app.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connector.config import Config
from connector.ingest.intake import Intake
from connector.store.layout import SiteLayout
from connector.store.state import StateStore
from connector.web import metrics
from connector.web.auth import LoginThrottle, RevokedSessions
from connector.web.health import HealthReport, Probe, check_disk, check_state_db, run_probe
from connector.web.users import users_path
from connector.web.study import QuarantineIndex
from connector.web.users import UserFile

log = logging.getLogger(__name__)

UPLOAD_TTL_SECONDS = 3600


class SiteContext:
    """The site as the dashboard sees it.

    ``probes`` maps a check name ("registry", "scp", ...) to a callable returning None when fine or
    a short message. ``intake`` is the daemon's :class:`Intake` (used to release quarantined
    objects; one is made when omitted). ``provider`` is the daemon's linkage identity provider, which
    the follow-up import and the identifier search need (without it those pages say so).
    ``wake(what)`` is called with "studies" after a release and "outbox" after a retry or a
    follow-up import, so the daemon can nudge the worker concerned.
    """

    def __init__(self, config: Config, store: StateStore, layout: SiteLayout,
                 probes: dict[str, Probe] | None = None, *, intake: Intake | None = None,
                 provider: Any | None = None, wake: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.layout = layout
        self.probes = dict(probes or {})
        self.provider = provider
        self.wake = wake
        self.users = UserFile(users_path(config))
        self.throttle = LoginThrottle(config.http.login_delay_seconds, config.http.login_max_delay_seconds)
        self.revoked = RevokedSessions(config.http.session_minutes * 60)
        self.quarantine_index = QuarantineIndex()
        self._intake = intake
        self._intake_lock = threading.Lock()
        self.uploads_dir = config.storage.data_dir / "web" / "uploads"
        self.reports_dir = config.storage.data_dir / "web" / "reports"
        self.metrics_registry = metrics.make_registry(metrics.ConnectorCollector(
            store, layout.data_dir, layout.quarantine, config.storage.min_free_bytes, self.health))

    @property
    def intake(self) -> Intake:
        with self._intake_lock:
            if self._intake is None:
                self._intake = Intake(self.layout, self.store, min_free_bytes=self.config.storage.min_free_bytes,
                                      fsync=self.config.storage.fsync)
            return self._intake

    # -- health and metrics --------------------------------------------------------------------

    def health(self) -> HealthReport:
        checks: dict[str, str | None] = {
            "db": check_state_db(self.layout.state_db),
            "disk": check_disk(self.layout.data_dir, self.config.storage.min_free_bytes),
        }
        for name, probe in self.probes.items():
            checks[name] = run_probe(probe)
        return HealthReport(checks)

    def metrics_text(self) -> bytes:
        return metrics.metrics_text(self.metrics_registry)

    def notify(self, what: str) -> None:
        if self.wake is not None:
            try:
                self.wake(what)
            except Exception as exc:
                log.warning("wake callback failed", extra={"event": "http_wake_failed", "error": type(exc).__name__})

    # -- follow-up staging ---------------------------------------------------------------------

    def stage_upload(self, data: bytes, suffix: str) -> tuple[str, Path]:
        """Keep an upload under a random name (the original name may identify someone) until committed."""
        self.uploads_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.clean_uploads(UPLOAD_TTL_SECONDS)
        token = secrets.token_hex(16)
        path = self.uploads_dir / f"{token}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return token, path

    def clean_uploads(self, max_age: float) -> None:
        if not self.uploads_dir.exists():
            return
        cutoff = time.time() - max_age
        for p in self.uploads_dir.iterdir():
            try:
                if p.stat().st_mtime <= cutoff:
                    p.unlink()
            except OSError:
                continue
