"""The supervisor keeps the roles alive: a killed worker is restarted while reception goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from connector.synthetic import SyntheticStudy, ct_slices, write_series
from tests.support.daemon import ConnectorProcess
from tests.support.dicomfiles import stored_by_sop
from tests.support.tools import dcmtk


def role_pid(daemon: ConnectorProcess, role: str, timeout: float = 20.0) -> int:
    """pid of a role, from the daemon's own log lines (each carries its role)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in reversed(daemon.logs().splitlines()):
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("event") == "role_pid" and rec.get("role") == role:
                    return int(rec["pid"])
        time.sleep(0.1)
    raise AssertionError(f"no pid logged for {role}")


def test_killed_pipeline_and_receiver_are_restarted_while_transfer_continues(tmp_path: Path) -> None:
    files = write_series(ct_slices(SyntheticStudy(), 150, rows=256, cols=256), tmp_path / "sent")
    with ConnectorProcess(tmp_path / "site", dicom__receiver_processes=2) as daemon:
        victims = {role: role_pid(daemon, role) for role in ("pipeline", "receiver-1")}
        sender = subprocess.Popen([dcmtk("storescu"), "-aec", "SITECONN", "127.0.0.1", str(daemon.port),
                                   *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env={"TCP_NODELAY": "1"})
        time.sleep(0.3)
        os.kill(victims["pipeline"], signal.SIGKILL)
        _, err = sender.communicate(timeout=120)
        assert sender.returncode == 0, err.decode()[-2000:]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and '"role_restarted"' not in daemon.logs():
            time.sleep(0.2)
        assert len(stored_by_sop(daemon.spool)) == len(files)
        # the idle receiver too: the port keeps answering throughout
        os.kill(victims["receiver-1"], signal.SIGKILL)
        echo = daemon.cli("echo")
        assert echo.returncode == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and daemon.logs().count('"role_restarted"') < 2:
            time.sleep(0.2)
        restarted = [json.loads(line)["role"] for line in daemon.logs().splitlines()
                     if '"role_restarted"' in line]
        assert sorted(restarted) == ["pipeline", "receiver-1"]
        assert role_pid(daemon, "pipeline") != victims["pipeline"]
        assert daemon.stop() == 0
