"""The long-running service: a small supervisor process and the role processes it keeps alive.

    supervisor (this module)
      |- receiver-0 .. receiver-N-1   C-STORE SCP on one shared port (+ drop folder in receiver-0)
      |- pipeline                     stable-study sweep, de-identification, inference, queuing
      |- push                         outbox -> registry (STOW-RS, JSON API)
      |- stow                         DICOMweb STOW-RS listener, only with [stow] enabled
      |- hl7                          HL7 v2 (MLLP) listener for deaths, only with [hl7] enabled

Why processes: a crash in de-identification or inference must not stop reception, and receiving
must never wait on them; separate interpreters also let the receivers use every core despite the
GIL. The supervisor itself only runs start-up recovery, starts the roles, restarts any that dies
(with backoff), forwards SIGTERM/SIGINT and collects their logs, so it has little that can fail.
Why this length: supervision (start, restart with backoff, stop, reap) is one loop over one set of
processes; the start-up checks already live in :mod:`connector.preflight` and the role bodies in
:mod:`connector.roles`.

Start is all or nothing. Everything that can be checked before a role runs is checked first
(:mod:`connector.preflight`), in this order: TLS files, rules and vocabulary, the CAC model for
results sent to the PACS -> DICOM, STOW-RS, HTTP and HL7 ports free -> data folder writable ->
site key -> registry token file private -> state database opens -> start-up recovery. Then the HTTP server
binds, the receivers start (and must be listening), then the pipeline and the uploader. Any
failure stops whatever was started and raises :class:`DaemonStartError`: one line saying what
failed and how to fix it, with exit code 2 when the operator must change the configuration, files
or permissions, 1 otherwise. SIGTERM during start-up stops it the same way.

Stop (SIGTERM/SIGINT) is bounded by ``[service] stop_timeout`` (T): every role gets SIGTERM;
receivers stop accepting and let associations finish for up to T/2, then abort them (the PACS was
not told "stored", so it resends); the pipeline leaves the study in hand leased (start-up recovery
hands it back); the uploader gives its jobs back. A role still running at T-3 s exits by itself,
and the supervisor SIGKILLs any still alive at T-1.5 s, then exits 0 (shorter margins for T < 15 s:
:func:`connector.roles.stop_budget`). Nothing acknowledged to the
PACS or by the registry is lost: both are recorded durably before the acknowledgement.

Signals only set a flag and wake the main loop through a pipe (:mod:`connector.stop_signals`), so a
stop can never wait on a lock the interrupted code holds; every role is joined (reaped) before the
supervisor exits, and so is multiprocessing's resource tracker. As PID 1 (a container without
an init) it also waits for the orphans re-parented to it, so none stays a zombie. The daemon runs
with umask 0077 (:data:`connector.store.layout.PRIVATE_UMASK`): whatever it writes is the service
user's alone, however it was started.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connector.config import Config
from connector.ingest.intake import Intake
from connector.ingest.recovery import RecoveryReport, recover
from connector import preflight
from connector.preflight import EXIT_CONFIG, DaemonStartError, reason_of as _reason
from connector.roles import EXIT_BIND_FAILED, ROLE_TARGETS, kill_after, spawn_context
from connector.stop_signals import StopSignals
from connector.store.layout import PRIVATE_UMASK, SiteLayout
from connector.store.state import StateStore
from connector.site_db import open_state

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a role that ran this long gets its backoff reset
LISTEN_TIMEOUT = 60.0  # receivers must be listening this soon after they are started

class StartInterrupted(Exception):
    """SIGTERM or SIGINT arrived while the daemon was starting: it stopped instead."""


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
    _signals: StopSignals = field(init=False, default_factory=StopSignals)

    def __post_init__(self) -> None:
        self.layout = SiteLayout.from_config(self.config)
        self._ctx = spawn_context()
        self.web: Any = None
        self._web_store: StateStore | None = None
        self._web_provider: Any = None
        self._log_queue: Any = None
        self._listener: logging.handlers.QueueListener | None = None
        self.stop_seconds: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything or nothing: on any failure what was started is stopped, then it raises."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.config
        # checks without side effects first, then the ones that create folders and the first key
        preflight.check_dicom_tls(cfg)
        preflight.check_deid(cfg)
        preflight.check_results_model(cfg)
        preflight.check_port("DICOM", cfg.dicom.host, cfg.dicom.port, "[dicom] port", "[dicom] host")
        if cfg.stow.enabled:
            preflight.check_stow(cfg)
        if cfg.http.enabled and cfg.http.port:
            preflight.check_port("HTTP", cfg.http.host, cfg.http.port, "[http] port", "[http] host")
        if cfg.hl7.enabled:
            preflight.check_hl7_tls(cfg)
        if cfg.hl7.enabled and cfg.hl7.port:
            preflight.check_port("HL7", cfg.hl7.host, cfg.hl7.port, "[hl7] port", "[hl7] host")
        preflight.check_data_dir(cfg, self.layout)
        preflight.check_keys(cfg)
        preflight.check_registry_token(cfg)
        self._interrupted()
        self._recover()
        self._interrupted()
        self._log_queue = self._ctx.Queue()
        self._listener = logging.handlers.QueueListener(self._log_queue, *logging.getLogger().handlers,
                                                        respect_handler_level=True)
        self._listener.start()
        if cfg.http.enabled:
            self._start_web()
        for i in range(cfg.dicom.receiver_processes):
            self.roles.append(_Role(f"receiver-{i}", "receiver", (cfg, i, self._log_queue)))
        for role in self.roles:
            self._spawn(role)
        self._await_listening()
        # the pipeline and the uploader only once reception works: a failed start leaves no half-run work
        first_late = len(self.roles)
        self.roles.append(_Role("pipeline", "pipeline", (cfg, self._log_queue)))
        self.roles.append(_Role("push", "push", (cfg, self._log_queue)))
        if cfg.stow.enabled:  # the DICOMweb door (issue 28), after recovery like the receivers
            self.roles.append(_Role("stow", "stow", (cfg, self._log_queue)))
        for role in self.roles[first_late:]:
            self._spawn(role)
        if cfg.hl7.enabled:  # the HL7 v2 ADT listener (deaths into follow-up), in its own process
            self.roles.append(_Role("hl7", "hl7", (cfg, self._log_queue)))
            self._spawn(self.roles[-1])
        log.info("daemon started", extra={"event": "daemon_started", "pid": os.getpid(), "config": cfg.source,
                                          "site": cfg.site.id, "port": cfg.dicom.port,
                                          "receivers": cfg.dicom.receiver_processes})

    def _interrupted(self) -> None:
        if self._signals.received() is not None:
            raise StartInterrupted()

    def _recover(self) -> None:
        db = self.layout.state_db
        try:
            store = open_state(db)
            try:
                self.recovery = recover(Intake(self.layout, store))
            finally:
                store.close()
        except sqlite3.DatabaseError as exc:
            raise DaemonStartError(
                f"state database {db} cannot be used ({_reason(exc)}): if it is damaged, restore it from a "
                "backup, or move it aside and start again (objects on the spool are registered again and "
                "re-sent; the registry keeps each instance once)") from None
        except OSError as exc:
            raise DaemonStartError(f"start-up recovery failed in {self.config.storage.data_dir} "
                                   f"({_reason(exc)}): check the disk and the folder's permissions") from None

    # -- roles ---------------------------------------------------------------------------------

    def _spawn(self, role: _Role) -> None:
        role.process = self._ctx.Process(target=ROLE_TARGETS[role.kind], args=role.args, name=role.name,
                                         daemon=False)
        role.process.start()
        role.started_at = time.monotonic()

    def _await_listening(self, timeout: float = LISTEN_TIMEOUT) -> None:
        """Wait until the port answers; a receiver that exits meanwhile stops the daemon."""
        deadline = time.monotonic() + timeout
        host = "127.0.0.1" if self.config.dicom.host in ("0.0.0.0", "", "::") else self.config.dicom.host
        port = self.config.dicom.port
        while time.monotonic() < deadline:
            self._interrupted()
            for role in self.roles:
                if role.kind != "receiver" or role.process.is_alive():
                    continue
                if role.process.exitcode == EXIT_BIND_FAILED:
                    raise DaemonStartError(f"DICOM port {port} could not be opened by the receiver (taken just "
                                           f"now by another program?): stop it, or set [dicom] port")
                raise DaemonStartError(f"the DICOM receiver exited while starting (exit code "
                                       f"{role.process.exitcode}); its log lines above say why")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise DaemonStartError(f"the DICOM receiver was not listening on port {port} after {timeout:.0f} s "
                               "(an overloaded server?); start again")

    def supervise_once(self) -> None:
        """Restart any role that died (with backoff); called every half second."""
        self._reap_orphans()
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
        """Stop every role and the HTTP server within ``[service] stop_timeout``; safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        began = time.monotonic()
        kill_at = began + kill_after(self.config)
        started_anything = bool(self.roles) or self.web is not None or self._listener is not None
        if started_anything:
            log.info("daemon stopping", extra={"event": "daemon_stopping"})
        running = [r for r in self.roles if r.process is not None]
        for role in running:
            if role.process.is_alive():
                role.process.terminate()  # SIGTERM: each role stops by itself before stop_timeout
        for role in running:
            role.process.join(max(0.0, kill_at - time.monotonic()))
        for role in running:
            if role.process.is_alive():
                log.error("role did not stop in time; killing", extra={"event": "role_killed", "role": role.name})
                role.process.kill()
        for role in running:
            role.process.join(max(0.1, began + self.config.service.stop_timeout - 0.5 - time.monotonic()))
        for name, close in (("http", lambda: self.web.stop() if self.web is not None else None),
                            ("web_store", lambda: self._web_store.close() if self._web_store is not None else None),
                            ("linkage", lambda: self._web_provider.close() if self._web_provider else None)):
            try:
                close()
            except Exception as exc:  # clean-up must not stop the rest of the clean-up
                log.warning("error while stopping", extra={"event": "stop_error", "part": name,
                                                           "error": type(exc).__name__})
        self.stop_seconds = time.monotonic() - began
        if started_anything:
            log.info("daemon stopped", extra={"event": "daemon_stopped", "seconds": round(self.stop_seconds, 3)})
        # the roles' last lines may still be in the pipe: read them for what is left of the budget
        self._stop_log_listener(max(0.5, began + self.config.service.stop_timeout - 0.3 - time.monotonic()))

    def _stop_log_listener(self, timeout: float = 2.0) -> None:
        """Like QueueListener.stop, but bounded: a role killed mid-write can leave the pipe unreadable."""
        listener, queue = self._listener, self._log_queue
        self._listener = None
        if listener is None:
            return
        thread = getattr(listener, "_thread", None)
        try:
            listener.enqueue_sentinel()
        except Exception:
            pass
        if thread is not None:
            thread.join(timeout)
        listener._thread = None  # type: ignore[attr-defined]
        if queue is not None:
            queue.cancel_join_thread()  # never hang at exit on a pipe nobody reads

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT (which may also arrive while starting)."""
        os.umask(PRIVATE_UMASK)  # also when started from a shell with umask 022: PHI files stay 0600
        self._signals.install()
        try:
            try:
                self.start()
            except StartInterrupted:
                self._log_signal()
                log.info("stopped while starting", extra={"event": "start_interrupted"})
                return
            while self._signals.wait(0.5) is None:
                self.supervise_once()
            self._log_signal()
        finally:
            self.stop()
            self._reap_resource_tracker()
            self._signals.ignore()  # stopped: a late SIGTERM must not turn exit code 0 into -15

    def _log_signal(self) -> None:
        signum = self._signals.received()
        if signum is not None:
            log.info("signal received", extra={"event": "signal", "signal": signal.Signals(signum).name})

    def _reap_resource_tracker(self) -> None:
        """Wait for multiprocessing's resource tracker, a child started with the first role.

        It is meant to outlive its parent and exit when the last role's copy of its pipe closes; the
        supervisor would leave it an orphan (a zombie under an init that does not reap, such as a
        container's). With every role gone, the semaphore clean-ups it serves run now, then it is
        told to stop and waited for. Uses multiprocessing internals, so anything unexpected is
        skipped: at worst the tracker outlives the supervisor by a moment, as before.
        """
        if any(r.process is not None and r.process.is_alive() for r in self.roles):
            return  # it still serves a role that escaped the stop: do not block on it
        try:
            from multiprocessing import resource_tracker, util

            run_finalizers: Callable[[int], None] = util._run_finalizers  # type: ignore[attr-defined]
            run_finalizers(0)  # the log queue's semaphores, unregistered while the tracker still runs
            resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
        except Exception as exc:
            log.debug("resource tracker not reaped", extra={"event": "tracker_not_reaped",
                                                            "error": type(exc).__name__})

    def _reap_orphans(self) -> None:
        """As PID 1 (a container started without an init), wait for the orphans handed to us.

        Processes orphaned inside the container (a role's helper, whatever ``podman exec`` left
        running) are re-parented to PID 1, and stay zombies until it waits for them. The roles and
        multiprocessing's resource tracker are left alone: multiprocessing waits for those itself,
        and would take a child reaped here for one still running.
        """
        if os.getpid() != 1:
            return
        ours = {r.process.pid for r in self.roles if r.process is not None}
        try:
            from multiprocessing import process, resource_tracker

            ours.update(p.pid for p in list(process._children))  # type: ignore[attr-defined]
            ours.add(resource_tracker._resource_tracker._pid)  # type: ignore[attr-defined]
        except Exception:
            pass
        for pid in _zombie_children(os.getpid()):
            if pid in ours:
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def _start_web(self) -> None:
        """Health, metrics and dashboard, served from the supervisor: up as long as the service is."""
        from connector.linkage import open_identity_provider
        from connector.outbox import outbox_counts
        from connector.web.server import WebServer
        from connector.web.site_context import SiteContext

        store = open_state(self.layout.state_db)
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
        self.web = WebServer(SiteContext(self.config, store, self.layout, {"registry": registry_probe, "scp": scp_probe},
                                         intake=intake, provider=self._web_provider, wake=lambda _what: None))
        try:
            self.web.start()
        except OSError as exc:
            self.web = None
            port = self.config.http.port
            if str(exc.strerror or "").startswith("[http] tls"):  # a TLS file problem, not a taken port
                raise DaemonStartError(f"cannot serve the dashboard over HTTPS: {exc.strerror}",
                                       code=EXIT_CONFIG) from None
            raise DaemonStartError(f"cannot listen on HTTP port {port} ({_reason(exc)}): stop the program "
                                   "holding it, or set [http] port to a free port") from None
        log.info("dashboard and health endpoints listening", extra={"event": "http_listening", "url": self.web.url})

    def role_pids(self) -> dict[str, int]:
        return {r.name: r.process.pid for r in self.roles if r.process is not None and r.process.is_alive()}


def _zombie_children(parent: int) -> list[int]:
    """Pids of ``parent``'s children that have exited and not been waited for (Linux /proc)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1 and fields[0] == b"Z" and fields[1] == str(parent).encode():
            found.append(int(name))
    return found
