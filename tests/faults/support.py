"""Helpers for the fault-injection suite: the real daemon, the real dev registry, storescu, and checks
that no process of a stopped daemon is left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.daemon import ROOT, ConnectorProcess
from tests.support.net import free_port, wait_port
from tests.support.tools import dcmtk

TEST_STOP_TIMEOUT = 10  # [service] stop_timeout in these tests: every stop must finish within it


def group_members(pgid: int) -> list[int]:
    """pids still in process group ``pgid`` (the daemon runs in its own session: roles share it)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def wait_group_gone(pgid: int, timeout: float = 5.0) -> list[int]:
    """Wait until nothing of the daemon's process group runs; returns the survivors (empty = none)."""
    deadline = time.monotonic() + timeout
    while True:
        left = group_members(pgid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def start_and_wait_exit(daemon: ConnectorProcess, timeout: float = 30.0) -> tuple[int, str, float]:
    """Start a daemon expected to fail: (exit code, its output, seconds until it exited)."""
    began = time.monotonic()
    daemon.start(wait=False)
    assert daemon.proc is not None
    try:
        code = daemon.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.proc.pid, signal.SIGKILL)
        raise AssertionError("the daemon did not exit:\n" + daemon.log_path.read_text()[-3000:]) from None
    return code, daemon.log_path.read_text(errors="replace"), time.monotonic() - began


def plain_lines(output: str) -> list[str]:
    """The operator-facing lines (not the JSON log lines)."""
    return [line for line in output.splitlines() if line.strip() and not line.startswith("{")]


def stop_timed(daemon: ConnectorProcess, limit: float = TEST_STOP_TIMEOUT + 20) -> tuple[int, float]:
    """SIGTERM the daemon: (exit code, seconds until it and every role process had exited)."""
    assert daemon.proc is not None
    began = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        code = daemon.proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.proc.pid, signal.SIGKILL)
        raise AssertionError(f"SIGTERM did not stop the daemon within {limit} s") from None
    left = wait_group_gone(daemon.proc.pid, timeout=limit)
    seconds = time.monotonic() - began
    assert not left, f"role processes survived the stop: {left}"
    return code, seconds


def token_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "registry.token"
    path.write_text(os.urandom(16).hex() + "\n")
    os.chmod(path, 0o600)
    return path


class RegistryProcess:
    """``site-connector registry serve`` as a subprocess (the real dev registry, over loopback)."""

    def __init__(self, data: Path, token: Path, port: int | None = None) -> None:
        self.data, self.token, self.port = data, token, port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RegistryProcess:
        log = open(self.data.parent / f"registry-{self.port}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "connector", "registry", "serve", "--data", str(self.data),
                                      "--port", str(self.port), "--token-file", str(self.token), "--no-fsync"],
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stats(self) -> dict[str, Any]:
        req = urllib.request.Request(self.url + "/api/v1/stats",
                                     headers={"Authorization": f"Bearer {self.token.read_text().strip()}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def push_settings(registry_url: str, token: Path, **extra: Any) -> dict[str, Any]:
    """Daemon overrides for pushing to ``registry_url`` quickly (short polls and backoff)."""
    return {"registry__url": registry_url, "registry__token_file": str(token), "registry__poll_seconds": 0.2,
            "registry__backoff_min_seconds": 0.2, "registry__backoff_max_seconds": 2,
            "service__stop_timeout": TEST_STOP_TIMEOUT, **extra}


def acknowledged_files(storescu_log: str) -> set[str]:
    """Files for which storescu received a Success response, from its -v log."""
    acked, current = set(), None
    for line in storescu_log.splitlines():
        m = re.match(r"I: Sending file: (.+)$", line)
        if m:
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acked.add(current)
            current = None
    return acked


def storescu_popen(port: int, files: list[Path], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen([dcmtk("storescu"), "-v", *extra, "-aec", "SITECONN", "127.0.0.1", str(port),
                             *map(str, files)], stdout=out, stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1"})


def storescu(port: int, files: list[Path], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("storescu"), "-aec", "SITECONN", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout, env={"TCP_NODELAY": "1"})


def status(daemon: ConnectorProcess) -> dict[str, Any]:
    return dict(json.loads(daemon.cli("status", "--json", check=True).stdout))


def study_states(daemon: ConnectorProcess) -> dict[str, int]:
    """Studies per state, read straight from the state DB (cheaper than ``status`` in a tight loop)."""
    import sqlite3

    db = daemon.data_dir / "state" / "state.db"
    if not db.exists():
        return {}
    conn = sqlite3.connect(db, timeout=30)
    try:
        return dict(conn.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


class StallServer:
    """A registry that accepts connections and reads requests but never answers (a hung peer)."""

    def __init__(self, port: int | None = None) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.conns: list[Any] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: Any) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += len(data)

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass
