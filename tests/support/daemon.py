"""Run the real connector daemon as a subprocess, the way systemd would, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def init_site(folder: Path, *, port: int | None = None, site_id: str = "TEST01") -> Path:
    """``site-connector init`` into ``folder``; returns the config path."""
    port = port or free_port()
    subprocess.run([sys.executable, "-m", "connector", "init", str(folder), "--port", str(port), "--site-id", site_id],
                   check=True, cwd=ROOT, capture_output=True)
    return folder / "connector.toml"


class ConnectorProcess:
    """The daemon under test. Settings are passed as SITE_CONNECTOR__ overrides (the documented way)."""

    def __init__(self, folder: Path, **overrides: Any) -> None:
        self.folder = folder
        self.config = folder / "connector.toml"
        if not self.config.exists():
            init_site(folder)
        self.port = int(overrides.pop("dicom__port", 0)) or _configured_port(self.config)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(ROOT)
        self.http_port = free_port()
        defaults = {"storage__min_free_bytes": 0, "assemble__stable_seconds": 2, "assemble__sweep_seconds": 0.5,
                    "http__port": self.http_port}
        for key, value in {**defaults, **overrides, "dicom__port": self.port}.items():
            section, name = key.split("__", 1)
            self.env[f"SITE_CONNECTOR__{section.upper()}__{name.upper()}"] = (
                value if isinstance(value, str) else __import__("json").dumps(value))
        self.log_path = folder / f"daemon-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    def start(self, wait: bool = True) -> ConnectorProcess:
        self.log_path = self.folder / f"daemon-{int(time.time() * 1000)}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "connector", "-c", str(self.config), "run"],
                                     cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if wait:
            try:
                wait_port(self.port, timeout=60)
            except TimeoutError:
                self.proc.kill()
                raise RuntimeError("daemon did not start:\n" + self.log_path.read_text()[-3000:]) from None
        return self

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL to the whole service (supervisor and roles), as a crash or OOM kill of its cgroup."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def role_pids(self) -> dict[str, int]:
        """pid of each role process, by role name (from /proc: children of the supervisor)."""
        assert self.proc is not None
        pids: dict[str, int] = {}
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
            if fields.get("PPid", "").strip() == str(self.proc.pid):
                cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                pids[cmdline] = int(status.parent.name)
        return pids

    def __enter__(self) -> ConnectorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "connector", "-c", str(self.config), *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, check=check)

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        """The logs once ``text`` appears (role logs reach the supervisor asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            if text in logs or time.monotonic() > deadline:
                return logs
            time.sleep(0.1)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("daemon-*.log")))


def _configured_port(config: Path) -> int:
    import tomllib

    return int(tomllib.loads(config.read_text())["dicom"]["port"])


STUDY_STATE_ORDER = ("receiving", "stable", "processing", "deidentified", "queued", "pushed", "verified")


def wait_for_study_state(daemon: ConnectorProcess, state: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until a study is in ``state`` or a later one (the pipeline moves studies on quickly).

    Returns the ``status --json`` object.
    """
    import json

    later = STUDY_STATE_ORDER[STUDY_STATE_ORDER.index(state):] if state in STUDY_STATE_ORDER else (state,)
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        if any(status["studies"].get(s) for s in later):
            return status
        time.sleep(0.3)
    raise AssertionError(f"no study reached {state}: {status['studies'] if status else 'no status'}")
