"""Disk full: the data folder on a small tmpfs that fills up during a transfer (root only).

The PACS gets 0xA700 (out of resources) for what could not be stored, nothing half-written is
counted as received, and once space is freed the next send completes with every byte intact.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from connector.synthetic import SyntheticStudy, ct_slices, write_pet_ct_study, write_series
from tests.faults.support import (TEST_STOP_TIMEOUT, acknowledged_files, status, stop_timed, storescu,
                                  storescu_popen)
from tests.support.waiting import wait_for
from tests.support.net import free_port
from tests.support.daemon import ConnectorProcess
from tests.support.dicomfiles import dataset_digest, stored_by_sop

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (the CI runs as root)")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def failures(storescu_log: str) -> list[str]:
    return re.findall(r"Received Store Response \(([^)]*)\)", storescu_log)


def test_full_disk_answers_a700_counts_nothing_half_written_and_recovers(tmp_path: Path, small_disk: Path) -> None:
    files = write_series(ct_slices(SyntheticStudy(), 30, rows=256, cols=256), tmp_path / "sent")
    uid_of = {str(f): pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    digest_of = {uid_of[str(f)]: dataset_digest(f) for f in files}
    daemon = ConnectorProcess(tmp_path / "site", storage__data_dir=str(small_disk), storage__min_free_bytes=0,
                              assemble__stable_seconds=600, cac__enabled=False,
                              service__stop_timeout=TEST_STOP_TIMEOUT).start()
    try:
        # leave about 1.5 MB: room for a few of the 30 objects (130 kB each), not for all
        st = os.statvfs(small_disk)
        filler = small_disk / "filler"
        with open(filler, "wb") as fh:
            fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 1_500_000))
        log = tmp_path / "storescu-full.log"
        storescu_popen(daemon.port, files, log).wait(timeout=120)
        text = log.read_text()
        answers = failures(text)
        acked = acknowledged_files(text)
        assert 0 < len(acked) < len(files), answers
        refused = [a for a in answers if a != "Success"]
        assert refused and all("OutOfResources" in a for a in refused), set(refused)  # dcmtk: 0xA7xx
        # nothing half-written counted: the database and the spool hold exactly the acknowledged objects
        stored = stored_by_sop(small_disk / "spool")
        assert set(stored) == {uid_of[f] for f in acked}
        for uid, path in stored.items():
            assert dataset_digest(path) == digest_of[uid]
        assert status(daemon)["instances_received"] == len(acked)
        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon must survive a full disk"

        filler.unlink()  # space is freed: the PACS's retry goes through
        log2 = tmp_path / "storescu-after.log"
        code = storescu_popen(daemon.port, files, log2).wait(timeout=120)
        assert code == 0, log2.read_text()[-2000:]
        assert set(failures(log2.read_text())) == {"Success"}
        stored = stored_by_sop(small_disk / "spool")
        assert len(stored) == len(files)
        assert all(dataset_digest(p) == digest_of[uid] for uid, p in stored.items())
        assert status(daemon)["instances_received"] == len(files)
        print(f"DISK_FULL acked_while_full={len(acked)} refused_a700={len(refused)} after_free={len(files)}")
    finally:
        stop_code, _ = stop_timed(daemon)
    assert stop_code == 0


def fill(disk: Path, leave: int) -> Path:
    st = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_full_disk_while_processing_defers_the_study_instead_of_failing_it(tmp_path: Path, small_disk: Path) -> None:
    """Found by this suite: de-identification meeting ENOSPC marked the study 'failed' for good, so a
    disk that filled for a moment kept that study from the registry until someone intervened."""
    _, files = write_pet_ct_study(tmp_path / "pacs", SyntheticStudy(), ct_count=12, pet_count=3, ct_rows=128)
    daemon = ConnectorProcess(tmp_path / "site", storage__data_dir=str(small_disk), storage__min_free_bytes=0,
                              assemble__stable_seconds=2, cac__enabled=False,
                              registry__url=f"http://127.0.0.1:{free_port()}",
                              service__stop_timeout=TEST_STOP_TIMEOUT).start()
    try:
        assert storescu(daemon.port, files).returncode == 0
        filler = fill(small_disk, leave=64_000)  # room for the database, not for the de-identified study
        logs = daemon.wait_for_log('"study_deferred"', timeout=30)
        assert '"study_deferred"' in logs and '"step_failed"' not in logs
        assert status(daemon)["studies"]["failed"] == 0
        filler.unlink()
        wait_for(lambda: status(daemon)["studies"]["queued"] == 1, timeout=60, interval=0.5,
                 what="the study processed once space was freed")
    finally:
        stop_code, _ = stop_timed(daemon)
    assert stop_code == 0
