"""``/healthz``: one answer to "is this connector doing its job?", for systemd, Docker and monitoring.

Checks owned here: the state DB answers a read, and the data disk is above ``[storage]
min_free_bytes``. Checks the daemon knows better (is the registry reachable, is the DICOM port
listening) come in as *probes*: callables returning None when fine, or a short message naming the
problem. A probe that raises counts as failing, with only its exception type (no message: it
might quote data).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Probe = Callable[[], "str | None"]


@dataclass(frozen=True)
class HealthReport:
    checks: dict[str, str | None]  # name -> None (ok) or what is wrong

    @property
    def ok(self) -> bool:
        return all(v is None for v in self.checks.values())

    @property
    def failing(self) -> dict[str, str]:
        return {k: v for k, v in self.checks.items() if v is not None}

    def to_json(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else "failing",
            "checks": {k: ("ok" if v is None else v) for k, v in self.checks.items()},
            "failing": self.failing,
        }


def check_state_db(path: Path, timeout: float = 2.0) -> str | None:
    """A read-only connection that must read the schema and the studies table."""
    if not path.exists():
        return "state database missing"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            conn.execute("SELECT 1 FROM studies LIMIT 1").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"state database unreadable ({type(exc).__name__})"
    return None


def disk_free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_disk(path: Path, min_free_bytes: int) -> str | None:
    try:
        free = disk_free_bytes(path)
    except OSError as exc:
        return f"data folder unavailable ({type(exc).__name__})"
    if free < min_free_bytes:
        return f"disk free {free} bytes is below the floor of {min_free_bytes} bytes"
    return None


def run_probe(probe: Probe) -> str | None:
    try:
        result = probe()
    except Exception as exc:  # a broken probe must not break /healthz
        return f"probe error ({type(exc).__name__})"
    return None if result is None else str(result)


class RegistryReachability:
    """Helper for the daemon's registry probe: failing only after ``threshold`` seconds of failures.

    The uploader calls :meth:`succeeded` / :meth:`failed` after each attempt; :meth:`probe` is what
    the daemon passes to the web server as ``probes["registry"]``. Short outages (maintenance,
    a reboot) are normal and retried, so they do not make the connector "unhealthy".
    """

    def __init__(self, threshold_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.threshold = threshold_seconds
        self._clock = clock
        self._failing_since: float | None = None
        self.last_success: float | None = None
        self._lock = threading.Lock()

    def succeeded(self) -> None:
        with self._lock:
            self._failing_since = None
            self.last_success = self._clock()

    def failed(self) -> None:
        with self._lock:
            if self._failing_since is None:
                self._failing_since = self._clock()

    def probe(self) -> str | None:
        with self._lock:
            since = self._failing_since
        if since is None:
            return None
        down = self._clock() - since
        if down < self.threshold:
            return None
        return f"registry unreachable for {int(down)} s (threshold {int(self.threshold)} s)"
