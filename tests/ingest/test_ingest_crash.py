"""kill -9 mid-transfer: every instance the PACS was told is stored survives, intact."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from connector.synthetic import SyntheticStudy, ct_slices, write_series
from tests.support.daemon import ConnectorProcess
from tests.support.dicomfiles import dataset_bytes, stored_by_sop
from tests.support.tools import dcmtk


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


@pytest.mark.slow
def test_kill_9_during_transfer_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    files = write_series(ct_slices(SyntheticStudy(), 200, rows=256, cols=256), tmp_path / "sent")
    uid_of = {str(f): pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    digest_of = {str(f): hashlib.sha256(dataset_bytes(f)).hexdigest() for f in files}
    daemon = ConnectorProcess(tmp_path / "site").start()
    log_path = tmp_path / "storescu.log"
    with open(log_path, "w") as log:
        sender = subprocess.Popen([dcmtk("storescu"), "-v", "-aec", "SITECONN", "127.0.0.1", str(daemon.port),
                                   *map(str, files)], stdout=log, stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1"})
        deadline = time.monotonic() + 60
        while len(acknowledged_files(log_path.read_text())) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        daemon.kill()  # SIGKILL: no clean-up of any kind
        sender.wait(timeout=60)
    acked = acknowledged_files(log_path.read_text())
    assert 60 <= len(acked) < len(files), "the kill must land mid-transfer"
    left_behind = {p for p in (daemon.spool / "partial").rglob("*") if p.is_file()}
    assert left_behind, "a mid-transfer kill leaves a half-received object (and the receivers' spare files)"

    daemon.start()
    stored = stored_by_sop(daemon.spool)
    for f in acked:
        assert uid_of[f] in stored, "an acknowledged instance is missing after the crash"
        assert hashlib.sha256(dataset_bytes(stored[uid_of[f]])).hexdigest() == digest_of[f]
    assert not [p for p in left_behind if p.exists()], "start-up recovery must remove what the crash left"
    status = json.loads(daemon.cli("status", "--json", check=True).stdout)
    assert status["instances_received"] == len(stored)

    resend = subprocess.run([dcmtk("storescu"), "-aec", "SITECONN", "127.0.0.1", str(daemon.port), *map(str, files)],
                            capture_output=True, text=True, env={"TCP_NODELAY": "1"})
    assert resend.returncode == 0, resend.stderr
    stored = stored_by_sop(daemon.spool)
    assert daemon.stop() == 0
    assert len(stored) == len(files)
    for f in files:
        assert hashlib.sha256(dataset_bytes(stored[uid_of[str(f)]])).hexdigest() == digest_of[str(f)]
    recovery = [json.loads(line) for line in daemon.logs().splitlines()
                if line.startswith("{") and '"event": "recovery"' in line]
    assert len(recovery) == 2 and recovery[1]["missing_files"] == 0
