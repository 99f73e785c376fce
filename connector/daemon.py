"""The long-running service: a small supervisor process and the role processes it keeps alive.

    supervisor (this module)
      |- receiver-0 .. receiver-N-1   C-STORE SCP on one shared port (+ drop folder in receiver-0)
      |- pipeline                     stable-study sweep, de-identification, inference, queuing
      |- push                         outbox -> registry (STOW-RS, JSON API)

Why processes: a crash in de-identification or inference must not stop reception, and receiving
must never wait on them; separate interpreters also let the receivers use every core despite the
GIL. The supervisor itself only runs start-up recovery, starts the roles, restarts any that dies
(with backoff), forwards SIGTERM/SIGINT and collects their logs, so it has little that can fail.

Start: folders -> key check -> start-up recovery -> receivers -> pipeline.
Stop (SIGTERM/SIGINT): every role gets SIGTERM; receivers stop accepting and let associations in
progress finish, the pipeline finishes the study in hand; then the supervisor exits 0.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from connector.config import Config
from connector.ingest.intake import Intake
from connector.ingest.recovery import RecoveryReport, recover
from connector.roles import EXIT_BIND_FAILED, ROLE_TARGETS, spawn_context
from connector.store.layout import SiteLayout
from connector.store.state import StateStore

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a role that ran this long gets its backoff reset
STOP_TIMEOUT = 90.0


class DaemonStartError(Exception):
    """The daemon cannot run (port taken, key problem): say why and exit, do not retry."""


@dataclass
class _Role:
    name: str
    kind: str
    args: tuple[Any, ...]
    process: Any = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 1.0
    next_start: float = 0.0


@dataclass
class Supervisor:
    config: Config
    layout: SiteLayout = field(init=False)
    recovery: RecoveryReport | None = field(init=False, default=None)
    roles: list[_Role] = field(init=False, default_factory=list)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _signalled: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.layout = SiteLayout.from_config(self.config)
        self._ctx = spawn_context()
        self.web: Any = None
        self._web_store: StateStore | None = None
        self._web_provider: Any = None
        self._log_queue: Any = None
        self._listener: logging.handlers.QueueListener | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        self.layout.ensure()
        check_site_keys(cfg)  # raises LinkageKeyError before anything runs
        store = StateStore(self.layout.state_db)
        try:
            self.recovery = recover(Intake(self.layout, store))
        finally:
            store.close()
        self._log_queue = self._ctx.Queue()
        self._listener = logging.handlers.QueueListener(self._log_queue, *logging.getLogger().handlers,
                                                        respect_handler_level=True)
        self._listener.start()
        for i in range(cfg.dicom.receiver_processes):
            self.roles.append(_Role(f"receiver-{i}", "receiver", (cfg, i, self._log_queue)))
        self.roles.append(_Role("pipeline", "pipeline", (cfg, self._log_queue)))
        self.roles.append(_Role("push", "push", (cfg, self._log_queue)))
        for role in self.roles:
            self._spawn(role)
        self._await_listening()
        if cfg.http.enabled:
            self._start_web()
        log.info("daemon started", extra={"event": "daemon_started", "pid": os.getpid(), "config": cfg.source,
                                          "site": cfg.site.id, "port": cfg.dicom.port,
                                          "receivers": cfg.dicom.receiver_processes})

    def _spawn(self, role: _Role) -> None:
        role.process = self._ctx.Process(target=ROLE_TARGETS[role.kind], args=role.args, name=role.name,
                                         daemon=False)
        role.process.start()
        role.started_at = time.monotonic()

    def _await_listening(self, timeout: float = 60.0) -> None:
        """Wait until the port answers; a receiver that cannot bind stops the daemon."""
        import socket

        deadline = time.monotonic() + timeout
        host = "127.0.0.1" if self.config.dicom.host in ("0.0.0.0", "", "::") else self.config.dicom.host
        while time.monotonic() < deadline:
            for role in self.roles:
                if role.kind == "receiver" and role.process.exitcode == EXIT_BIND_FAILED:
                    self.stop()
                    raise DaemonStartError(f"cannot listen on port {self.config.dicom.port} "
                                           "(in use, or a privileged port without the capability)")
            try:
                with socket.create_connection((host, self.config.dicom.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise DaemonStartError("the DICOM receiver did not start listening in time")

    def supervise_once(self) -> None:
        """Restart any role that died (with backoff); called every half second."""
        now = time.monotonic()
        for role in self.roles:
            proc = role.process
            if proc is None or proc.is_alive():
                if proc is not None and now - role.started_at > STABLE_AFTER:
                    role.backoff = 1.0
                continue
            if role.next_start == 0.0:
                role.next_start = now + role.backoff
                log.error("role process died; restarting", extra={"event": "role_died", "role": role.name,
                                                                  "exitcode": proc.exitcode,
                                                                  "restart_in_s": role.backoff})
            elif now >= role.next_start:
                role.restarts += 1
                role.backoff = min(role.backoff * 2, RESTART_BACKOFF_MAX)
                role.next_start = 0.0
                self._spawn(role)
                log.info("role process restarted", extra={"event": "role_restarted", "role": role.name,
                                                          "restarts": role.restarts, "pid": role.process.pid})

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        log.info("daemon stopping", extra={"event": "daemon_stopping"})
        for role in self.roles:
            if role.process is not None and role.process.is_alive():
                role.process.terminate()  # SIGTERM: graceful in every role
        deadline = time.monotonic() + STOP_TIMEOUT
        for role in self.roles:
            if role.process is None:
                continue
            role.process.join(max(0.0, deadline - time.monotonic()))
            if role.process.is_alive():
                log.error("role did not stop in time; killing", extra={"event": "role_killed", "role": role.name})
                role.process.kill()
                role.process.join(5)
        if self.web is not None:
            self.web.stop()
        if self._web_store is not None:
            self._web_store.close()
        if self._web_provider is not None:
            self._web_provider.close()
        log.info("daemon stopped", extra={"event": "daemon_stopped"})
        if self._listener is not None:
            self._listener.stop()

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        signal.signal(signal.SIGTERM, lambda signum, _f: self._on_signal(signum))
        signal.signal(signal.SIGINT, lambda signum, _f: self._on_signal(signum))
        self.start()
        try:
            while not self._signalled.wait(0.5):
                self.supervise_once()
        finally:
            self.stop()

    def _on_signal(self, signum: int) -> None:
        log.info("signal received", extra={"event": "signal", "signal": signal.Signals(signum).name})
        self._signalled.set()

    def _start_web(self) -> None:
        """Health, metrics and dashboard, served from the supervisor: up as long as the service is."""
        from connector.linkage import open_identity_provider
        from connector.outbox import outbox_counts
        from connector.web import WebServer

        store = StateStore(self.layout.state_db)
        self._web_store = store
        self._web_provider = open_identity_provider(self.config)
        threshold = self.config.http.registry_unreachable_seconds

        def registry_probe() -> str | None:
            # The uploader retries quietly; unhealthy only once work has waited longer than the threshold.
            age = float(outbox_counts(store).get("oldest_pending_age_s", 0.0))
            return f"registry: oldest unsent job waiting {age:.0f} s" if age > threshold else None

        def scp_probe() -> str | None:
            alive = [r for r in self.roles if r.kind == "receiver" and r.process is not None and r.process.is_alive()]
            return None if alive else f"DICOM port {self.config.dicom.port}: no receiver running"

        intake = Intake(self.layout, store, min_free_bytes=self.config.storage.min_free_bytes,
                        fsync=self.config.storage.fsync)
        # the pipeline and push roles poll the DB every second: nothing to wake across processes
        self.web = WebServer(self.config, store, self.layout, {"registry": registry_probe, "scp": scp_probe},
                             intake=intake, provider=self._web_provider, wake=lambda _what: None)
        try:
            self.web.start()
        except OSError as exc:
            self.stop()
            raise DaemonStartError(f"cannot listen on HTTP port {self.config.http.port}: {exc.strerror}") from None
        log.info("dashboard and health endpoints listening", extra={"event": "http_listening", "url": self.web.url})

    def role_pids(self) -> dict[str, int]:
        return {r.name: r.process.pid for r in self.roles if r.process is not None and r.process.is_alive()}


def check_site_keys(config: Config) -> None:
    """Open (and on a brand-new site, create) the linkage key once, so key problems stop start-up.

    A key file is created only when neither it nor a linkage table exists (first start of the
    embedded default). A missing key with an existing table is an error: a new key could never
    read it.
    """
    from connector.linkage import create_key_file, open_identity_provider, resolved_paths

    paths = resolved_paths(config)
    if config.linkage.key_source == "file" and not paths.key_file.exists() and not paths.db.exists():
        create_key_file(paths.key_file)
        log.warning("created a new site key file; back it up separately from the data",
                    extra={"event": "key_created"})
    open_identity_provider(config).close()
