"""Drop folder: files settle, go through the same durable intake; junk is quarantined with a reason."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tests.support.daemon import ConnectorProcess
from tests.support.dicomfiles import dataset_bytes, stored_by_sop


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_drop_folder_ingests_dicom_and_quarantines_junk(tmp_path: Path, small_study) -> None:
    _, files = small_study
    drop = tmp_path / "drop"
    drop.mkdir()
    # present before start-up (no watchdog event for these): picked up by the initial scan
    shutil.copy(files[0], drop / "before-start.dcm")
    with ConnectorProcess(tmp_path / "site", dropfolder__path=str(drop), dropfolder__settle_seconds=0.5,
                          dropfolder__poll_seconds=0.2) as daemon:
        sub = drop / "nested" / "series"
        sub.mkdir(parents=True)
        for i, f in enumerate(files[1:6]):
            shutil.copy(f, sub / f"img{i}.dcm")
        (drop / "notes.txt").write_text("this is not DICOM")
        truncated = drop / "truncated.dcm"
        truncated.write_bytes(files[6].read_bytes()[:-100])  # a copy cut short in the pixel data
        (drop / ".hidden-being-copied.part").write_bytes(b"partial")
        _wait(lambda: not (drop / "notes.txt").exists() and not truncated.exists()
              and not list(sub.glob("*.dcm")) and not (drop / "before-start.dcm").exists())
        stored = stored_by_sop(daemon.spool)
        reasons = sorted(json.loads(p.read_text())["reason"] for p in daemon.data_dir.glob("quarantine/ingest/*.json"))
    assert len(stored) == 6
    sent = {dataset_bytes(f) for f in files[:6]}
    assert {dataset_bytes(p) for p in stored.values()} == sent
    assert reasons == ["not-dicom", "truncated"]
    assert (drop / ".hidden-being-copied.part").exists(), "files still being written are left alone"


def test_file_still_growing_is_not_taken_until_stable(tmp_path: Path, small_study) -> None:
    _, files = small_study
    drop = tmp_path / "drop"
    drop.mkdir()
    data = files[0].read_bytes()
    with ConnectorProcess(tmp_path / "site", dropfolder__path=str(drop), dropfolder__settle_seconds=1.5,
                          dropfolder__poll_seconds=0.1) as daemon:
        target = drop / "slow-copy.dcm"
        with open(target, "wb") as fh:
            for i in range(0, len(data), len(data) // 5 + 1):
                fh.write(data[i:i + len(data) // 5 + 1])
                fh.flush()
                time.sleep(0.5)
                assert target.exists(), "taken while still growing"
        _wait(lambda: not target.exists())
        stored = stored_by_sop(daemon.spool)
    assert [dataset_bytes(p) for p in stored.values()] == [dataset_bytes(files[0])]
