"""The C-STORE SCP driven over a real socket by dcmtk's storescu."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest

from connector.synthetic import SyntheticStudy, ct_slices
from tests.support.daemon import ConnectorProcess, wait_for_study_state
from tests.support.dicomfiles import dataset_bytes, stored_by_sop
from tests.support.tools import dcmtk


def storescu(port: int, files: list[Path], *, aet: str = "STORESCU", called: str = "SITECONN",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("storescu"), "-v", "-aet", aet, "-aec", called, *extra, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, env={"TCP_NODELAY": "1"})


def compress(files: list[Path], tool: str, out_dir: Path, *args: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for f in files:
        target = out_dir / f.name
        subprocess.run([dcmtk(tool), *args, str(f), str(target)], check=True, capture_output=True)
        result.append(target)
    return result


def test_storescu_uncompressed_and_compressed_arrive_byte_identical(tmp_path: Path, small_study) -> None:
    _, files = small_study
    ct = [f for f in files if "/ct/" in str(f)]
    rle = compress(ct[:4], "dcmcrle", tmp_path / "rle")
    jpls = compress(ct[4:8], "dcmcjpls", tmp_path / "jpls")
    sent = files[8:] + rle + jpls
    assert pydicom.dcmread(rle[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert pydicom.dcmread(jpls[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    with ConnectorProcess(tmp_path / "site") as daemon:
        # dcmtk proposes a compressed syntax only when asked: -xr RLE, -xt JPEG-LS lossless.
        for group, extra in ((files[8:], ()), (rle, ("-xr",)), (jpls, ("-xt",))):
            out = storescu(daemon.port, group, extra=extra)
            assert out.returncode == 0, out.stdout + out.stderr
        stored = stored_by_sop(daemon.spool)
    assert len(stored) == len(sent)
    for path in sent:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(stored[uid]) == dataset_bytes(path), path.name
        stored_ts = pydicom.dcmread(stored[uid], stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert stored_ts == pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


def test_study_becomes_stable_after_quiet_period_and_late_instance_reopens(tmp_path: Path, small_study) -> None:
    _, files = small_study
    with ConnectorProcess(tmp_path / "site", assemble__stable_seconds=1.5, assemble__sweep_seconds=0.3) as daemon:
        assert storescu(daemon.port, files[:-1]).returncode == 0
        _wait_for_state(daemon, "stable")
        assert storescu(daemon.port, files[-1:]).returncode == 0
        status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        assert status["studies"]["receiving"] == 1
        _wait_for_state(daemon, "stable")
    db = sqlite3.connect(daemon.data_dir / "state" / "state.db")
    reopened, count = db.execute("SELECT reopened_count, instance_count FROM studies").fetchone()
    assert reopened == 1 and count == len(files)


def _wait_for_state(daemon: ConnectorProcess, state: str) -> None:
    wait_for_study_state(daemon, state)


def test_resent_identical_instance_is_a_noop_and_changed_bytes_replace(tmp_path: Path, small_study) -> None:
    _, files = small_study
    first = files[0]
    changed = tmp_path / "changed.dcm"
    ds = pydicom.dcmread(first)
    ds.SeriesDescription = "CTAC 3.0 mm CORRECTED"
    ds.save_as(changed)
    with ConnectorProcess(tmp_path / "site") as daemon:
        assert storescu(daemon.port, [first]).returncode == 0
        assert storescu(daemon.port, [first]).returncode == 0
        db = sqlite3.connect(daemon.data_dir / "state" / "state.db")
        assert db.execute("SELECT COUNT(*), MAX(replaced_count) FROM instances").fetchone() == (1, 0)
        assert storescu(daemon.port, [changed]).returncode == 0
        assert db.execute("SELECT COUNT(*), MAX(replaced_count) FROM instances").fetchone() == (1, 1)
        assert db.execute("SELECT event FROM instance_events").fetchall() == [("replaced",)]
        # the receiver hashes only re-sends: the event still names both versions' digests
        digests = db.execute("SELECT old_sha256, new_sha256 FROM instance_events").fetchone()
        assert digests == (hashlib.sha256(dataset_bytes(first)).hexdigest(),
                           hashlib.sha256(dataset_bytes(changed)).hexdigest())
        assert db.execute("SELECT sha256 FROM instances").fetchone()[0] == digests[1]
        stored = stored_by_sop(daemon.spool)
    assert len(stored) == 1
    assert dataset_bytes(next(iter(stored.values()))) == dataset_bytes(changed)


@pytest.mark.parametrize("setting", [{"dicom__allowed_ae_titles": ["PACS1"]},
                                     {"dicom__allowed_hosts": ["10.255.255.1/32"]}])
def test_caller_not_on_allow_list_gets_association_rejected(tmp_path: Path, small_study, setting) -> None:
    _, files = small_study
    with ConnectorProcess(tmp_path / "site", **setting) as daemon:
        out = storescu(daemon.port, files[:2], aet="INTRUDER")
        assert out.returncode != 0
        assert re.search(r"Association Rejected", out.stdout + out.stderr)
        assert not list(daemon.spool.glob("incoming/*/*.dcm"))
        # the receivers keep a few empty spare files ready; nothing of the caller's may be among them
        assert not [p for p in daemon.spool.glob("partial/**/*") if p.is_file() and p.stat().st_size]
        assert "association_rejected" in daemon.wait_for_log("association_rejected")


def test_allowed_caller_is_accepted(tmp_path: Path, small_study) -> None:
    _, files = small_study
    with ConnectorProcess(tmp_path / "site", dicom__allowed_ae_titles=["PACS1"],
                          dicom__allowed_hosts=["127.0.0.0/8"]) as daemon:
        assert storescu(daemon.port, files[:2], aet="PACS1").returncode == 0
        assert len(list(daemon.spool.glob("incoming/*/*.dcm"))) == 2


def test_disk_below_floor_answers_out_of_resources(tmp_path: Path, small_study) -> None:
    _, files = small_study
    with ConnectorProcess(tmp_path / "site", storage__min_free_bytes=2**62) as daemon:
        out = storescu(daemon.port, files[:1])
        assert re.search(r"OutOfResources|0xa700", out.stdout + out.stderr, re.I)
        assert not list(daemon.spool.glob("incoming/*/*.dcm"))
        assert "disk_low" in daemon.wait_for_log("disk_low")


def test_unreadable_dataset_is_quarantined_not_acknowledged(tmp_path: Path) -> None:
    bad = tmp_path / "no-study-uid.dcm"
    ds = next(ct_slices(SyntheticStudy(), 1, rows=16, cols=16))
    del ds.StudyInstanceUID
    ds.save_as(bad, enforce_file_format=True)
    with ConnectorProcess(tmp_path / "site") as daemon:
        out = storescu(daemon.port, [bad])
        assert re.search(r"CannotUnderstand|0xc210", out.stdout + out.stderr, re.I)
        reasons = [json.loads(p.read_text()) for p in daemon.data_dir.glob("quarantine/ingest/*.json")]
        assert [r["reason"] for r in reasons] == ["missing-attribute"]
        assert not list(daemon.spool.glob("incoming/*/*.dcm"))
        status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        assert status["quarantined"] == 1 and status["instances_received"] == 0


def test_large_object_is_streamed_to_disk_not_held_in_memory(tmp_path: Path) -> None:
    """A ~400 MB object: the receiver's peak RSS must grow far less than the object size."""
    big = tmp_path / "big.dcm"
    ds = next(ct_slices(SyntheticStudy(), 1, rows=16, cols=16))
    frames = 1600
    ds.NumberOfFrames = frames
    ds.Rows = ds.Columns = 512
    ds.PixelData = bytes(512 * 512 * 2) * frames
    ds.save_as(big, enforce_file_format=True)
    size = big.stat().st_size
    del ds
    with ConnectorProcess(tmp_path / "site") as daemon:
        assert daemon.proc is not None
        out = storescu(daemon.port, [big])
        assert out.returncode == 0, out.stderr
        status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        peak_mb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
        stored = stored_by_sop(daemon.spool)
    assert len(stored) == 1 and next(iter(stored.values())).stat().st_size >= size - 1024
    assert peak_mb < 250, f"peak RSS {peak_mb:.0f} MB for a {size / 1e6:.0f} MB object"
