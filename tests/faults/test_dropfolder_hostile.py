"""A hostile drop folder: symlinks pointing outside it (never followed, never deleted), zero-byte
files, a file still growing, and folders named like files, against the real daemon."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pydicom
import pytest

from connector.synthetic import SyntheticStudy, ct_slices, write_series
from tests.faults.support import TEST_STOP_TIMEOUT, stop_timed
from tests.support.waiting import wait_for
from tests.support.daemon import ConnectorProcess
from tests.support.dicomfiles import dataset_digest, stored_by_sop

pytestmark = pytest.mark.slow


def sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_hostile_drop_folder(tmp_path: Path) -> None:
    made = write_series(ct_slices(SyntheticStudy(), 6, rows=128, cols=128), tmp_path / "made")
    outside, drop = tmp_path / "outside", tmp_path / "drop"
    (outside / "dir").mkdir(parents=True)
    drop.mkdir()
    secret = outside / "secret.dcm"  # a readable DICOM file outside the folder: must never be taken
    secret.write_bytes(made[0].read_bytes())
    (outside / "dir" / "inner.dcm").write_bytes(made[1].read_bytes())
    (drop / "link-to-file.dcm").symlink_to(secret)
    (drop / "link-to-dir").symlink_to(outside / "dir", target_is_directory=True)
    (drop / "zero.dcm").write_bytes(b"")
    (drop / "empty-folder.dcm").mkdir()
    (drop / "folder.dcm").mkdir()
    (drop / "folder.dcm" / "IMG.dcm").write_bytes(made[2].read_bytes())
    (drop / "plain.dcm").write_bytes(made[3].read_bytes())
    growing = drop / "growing.dcm"
    whole = made[4].read_bytes()

    def grow() -> None:  # a slow copy: a piece every 0.4 s for about 3 s (settle time is 1 s)
        step = len(whole) // 8 + 1
        with open(growing, "wb") as fh:
            for i in range(0, len(whole), step):
                fh.write(whole[i:i + step])
                fh.flush()
                time.sleep(0.4)

    daemon = ConnectorProcess(tmp_path / "site", dropfolder__path=str(drop), dropfolder__settle_seconds=1,
                              dropfolder__poll_seconds=0.2, assemble__stable_seconds=600, cac__enabled=False,
                              service__stop_timeout=TEST_STOP_TIMEOUT).start()
    try:
        writer = threading.Thread(target=grow)
        writer.start()
        expected = {sop(made[2]), sop(made[3]), sop(made[4])}
        wait_for(lambda: expected <= set(stored_by_sop(daemon.spool)), timeout=30, interval=0.2,
                 what="the plain, nested and grown files ingested")
        writer.join()
        time.sleep(2.0)  # a few more scans: anything the watcher would wrongly take, it takes now
        stored = stored_by_sop(daemon.spool)
        assert set(stored) == expected, "only the real files inside the folder are taken"
        assert dataset_digest(stored[sop(made[4])]) == dataset_digest(made[4]), "the growing file was cut"
        # symlinks: not followed (their targets' objects are not in the spool), not deleted, targets intact
        assert (drop / "link-to-file.dcm").is_symlink() and (drop / "link-to-dir").is_symlink()
        assert secret.read_bytes() == made[0].read_bytes()
        assert (outside / "dir" / "inner.dcm").read_bytes() == made[1].read_bytes()
        # nothing of the targets' bytes was copied anywhere under the data folder (quarantine included)
        secret_digest = hashlib.sha256(made[0].read_bytes()).hexdigest()
        copies = [p for p in daemon.data_dir.rglob("*") if p.is_file() and p.stat().st_size == secret.stat().st_size
                  and hashlib.sha256(p.read_bytes()).hexdigest() == secret_digest]
        assert not copies, copies
        # the zero-byte file is quarantined with a reason; folders named like files are left alone
        assert not (drop / "zero.dcm").exists()
        reasons = [p.read_text() for p in (daemon.data_dir / "quarantine" / "ingest").glob("*.json")]
        assert len(reasons) == 1, reasons
        assert (drop / "empty-folder.dcm").is_dir() and (drop / "folder.dcm").is_dir()
        assert not (drop / "plain.dcm").exists() and not growing.exists()
        assert '"role_died"' not in daemon.logs()
    finally:
        code, _ = stop_timed(daemon)
    assert code == 0
