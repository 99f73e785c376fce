"""The dev registry's group commit: what is accepted is stored once and durably, what is not leaves nothing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
import pytest

import devregistry.storage as storage
from devregistry.storage import RegistryStore
from connector.synthetic import SyntheticStudy, ct_slices


def _instances(count: int, *, marked: bool = True) -> list[bytes]:
    out = []
    for ds in ct_slices(SyntheticStudy(), count, rows=32, cols=32):
        ds.PatientName = ds.PatientID = "PSEUDO01"
        if marked:
            ds.PatientIdentityRemoved = "YES"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _received(store: RegistryStore, data: bytes) -> tuple[Path, int]:
    """A part as the server leaves it: written to a fresh temporary file that is still open."""
    path, fd = store.new_temp_file()
    os.write(fd, data)
    return path, fd


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("max_open", [256, 2])
def test_commit_stores_each_accepted_instance_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   max_open: int) -> None:
    monkeypatch.setattr(storage, "MAX_OPEN_FILES", max_open)  # 2: the early-sync path of a large request
    store = RegistryStore(tmp_path / "reg", fsync=True)
    try:
        good, unmarked = _instances(5), _instances(1, marked=False)
        before = _open_fds()
        batch = store.batch()
        outcomes = []
        for i, data in enumerate([*good, *unmarked, good[0]]):
            path, fd = _received(store, data)
            if i == 1:  # a caller without the open file: the batch opens it for the fsync
                os.close(fd)
                fd = None
            outcomes.append(batch.add(path, len(data), fd=fd, head=data[:65536]))
        # the last is the first again, byte for byte: a duplicate, acknowledged but not stored twice
        assert [o.status for o in outcomes] == ["accepted"] * 5 + ["rejected", "duplicate"]
        batch.commit()
        final = [batch.final(o).status for o in outcomes]
        assert final == ["stored"] * 5 + ["rejected", "duplicate"]
        held = store.query("SELECT sop_instance_uid, path, size FROM instances")
        assert len(held) == 5 and len({r["sop_instance_uid"] for r in held}) == 5
        for row in held:  # each file whole, under its final name
            data = (store.root / row["path"]).read_bytes()
            assert len(data) == row["size"]
            assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == row["sop_instance_uid"]
        assert [p for p in store.tmp_dir.iterdir() if p.stat().st_size > 0] == []
        counters = store.counters()
        assert (counters["rejected_identity"], counters["duplicates"], counters["instances_stored"]) == (1, 1, 5)
        store.close()
        assert _open_fds() <= before  # every part's file was closed (spares included)
    finally:
        store.close()


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "reg", fsync=True)
    try:
        before = _open_fds()
        batch = store.batch()
        for data in _instances(3):
            path, fd = _received(store, data)
            assert batch.add(path, len(data), fd=fd, head=data[:65536]).status == "accepted"
        batch.abort()
        assert store.query("SELECT COUNT(*) AS n FROM instances") == [{"n": 0}]
        assert [p for p in store.tmp_dir.iterdir() if p.stat().st_size > 0] == []
        assert not store._reserved  # the UIDs may be sent again
        store.close()
        assert _open_fds() <= before
    finally:
        store.close()
