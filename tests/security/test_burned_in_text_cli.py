"""Burned-in text in the offline command and without a second header read (issue 25, items 3-4).

``site-connector deid`` runs the same OCR check as the daemon's study step (same images, same
quarantine reason), and the study step chooses its images from the headers the engine already
read. Real OCR, real files, the shipped rules.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from pydicom import dcmread

from connector.cli.main import main as cli_main
from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider
from connector.deid.study import deidentify_study
from connector.phi_guard import burned_in_text
from connector.phi_guard.burned_in_text import FINDING
from tests.deid.factory import Planted, StudyUids, base_dataset, encode, leaks
from tests.security.burned_in_images import ct_image, localizer_hu, name_and_mrn

SECRET = bytes(range(32))
AXIAL = ["ORIGINAL", "PRIMARY", "AXIAL"]


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def _study(folder: Path, *, burned_first_slice: bool = False) -> dict[str, Path]:
    """A localizer series (one image with the name and MRN drawn in two fonts and sizes, one
    without) and a 5-slice axial series (its first slice with the name drawn, if asked)."""
    uids = StudyUids()
    scouts = StudyUids(study=uids.study, frame_of_reference=uids.frame_of_reference)
    hu = localizer_hu()
    files = {"burned": _write(folder, "scout1.dcm", encode(ct_image(hu, name_and_mrn(), uids=scouts, instance=1))),
             "clean": _write(folder, "scout2.dcm", encode(ct_image(hu, [], uids=scouts, instance=2)))}
    for i in range(1, 6):
        if i == 1 and burned_first_slice:
            ds = ct_image(hu, name_and_mrn(), image_type=AXIAL, uids=uids, instance=1)
            ds.SeriesDescription = "CaSc 3.0 Qr36"  # nothing in the header says scout: only sampled
        else:
            ds = base_dataset(Planted(), uids, instance=i)
        files[f"ax{i}"] = _write(folder, f"ax{i}.dcm", encode(ds))
    return files


def _config(tmp_path: Path, ocr: str | None = None) -> Path:
    path = tmp_path / "connector.toml"
    path.write_text('[site]\nid = "TEST01"\n[storage]\ndata_dir = "data"\nfsync = false\n'
                    + (f'[deid]\nocr = "{ocr}"\n' if ocr else ""))
    return path


def _deid_cli(tmp_path: Path, config: Path, folder: Path) -> tuple[int, dict]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = cli_main(["deid", "-c", str(config), str(folder), str(tmp_path / "out"), "--ephemeral", "--json",
                       "--quarantine", str(tmp_path / "q")])
    return rc, json.loads(stdout.getvalue())


def test_cli_quarantines_a_localizer_with_a_drawn_name(tmp_path: Path) -> None:
    _study(tmp_path / "in")
    rc, summary = _deid_cli(tmp_path, _config(tmp_path), tmp_path / "in")
    assert rc == 0
    assert summary["quarantined"] == [{"file": "scout1.dcm", "reason": FINDING}]
    assert summary["deidentified"] == 6  # the clean localizer and the five slices
    outputs = list((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == 6 and all(not leaks(p.read_bytes()) for p in outputs)
    assert sum(dcmread(p).get("ImageType", [""])[-1] == "LOCALIZER" for p in outputs) == 1
    records = [json.loads(p.read_text()) for p in (tmp_path / "q" / "deid").glob("*.json")]
    assert [r["reason"] for r in records] == [FINDING]
    assert all(f["where"].startswith("(7FE0,0010)[frame 0] box ") for f in records[0]["details"]["findings"])
    assert not leaks(json.dumps(records).encode()) and not leaks(json.dumps(summary).encode())
    (report,) = [r for study, r in summary["privacy"].items() if study != "quarantined"]
    assert report["pixels_read_for_text"] == 5  # both scouts, first, middle and last slice


def test_cli_honours_the_ocr_setting(tmp_path: Path) -> None:
    _study(tmp_path / "in")
    rc, summary = _deid_cli(tmp_path, _config(tmp_path, "off"), tmp_path / "in")
    assert rc == 0 and summary["quarantined"] == [] and summary["deidentified"] == 7


def test_cli_and_daemon_quarantine_a_sampled_slice_after_writing_it(tmp_path: Path) -> None:
    """The first slice of a series is read because it is the first: its output, written before the
    series was known, is removed again and the original quarantined with the same reason."""
    files = _study(tmp_path / "in", burned_first_slice=True)
    rc, summary = _deid_cli(tmp_path, _config(tmp_path), tmp_path / "in")
    assert rc == 0
    assert sorted(q["file"] for q in summary["quarantined"]) == ["ax1.dcm", "scout1.dcm"]
    assert {q["reason"] for q in summary["quarantined"]} == {FINDING}
    assert summary["deidentified"] == 5 and len(list((tmp_path / "out").rglob("*.dcm"))) == 5

    engine = DeidEngine.from_rules(None, EphemeralIdentityProvider(site_id="SITE01", secret=SECRET), fsync=False)
    out = tmp_path / "daemon-out"
    outcome = deidentify_study(sorted(files.values()), out, tmp_path / "daemon-q", engine)
    assert sorted((q.source.name, q.reason) for q in outcome.quarantined) == [("ax1.dcm", FINDING),
                                                                             ("scout1.dcm", FINDING)]
    assert sorted(p.name for p in out.iterdir()) == sorted(w.path.name for w in outcome.written)
    assert len(outcome.written) == 5 and outcome.privacy.pixels_read_for_text == 5


def test_study_step_reads_no_header_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice of images comes from the engine's own read: the separate header scan
    (``instances_to_read``) and the originals' re-read for identifiers are never called."""
    files = _study(tmp_path / "in")

    def refused(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a header was read a second time")

    monkeypatch.setattr(burned_in_text, "_header", refused)
    monkeypatch.setattr(burned_in_text, "check_object", refused)
    engine = DeidEngine.from_rules(None, EphemeralIdentityProvider(site_id="SITE01", secret=SECRET), fsync=False)
    outcome = deidentify_study(sorted(files.values()), tmp_path / "out", tmp_path / "q", engine)
    assert [(q.source.name, q.reason) for q in outcome.quarantined] == [("scout1.dcm", FINDING)]
    assert outcome.privacy.pixels_read_for_text == 5 and len(outcome.written) == 6
    # the same images as the header scan chose
    monkeypatch.undo()
    chosen = burned_in_text.instances_to_read(sorted(files.values()), "at-risk-and-sample")
    assert sorted(p.name for p in chosen) == ["ax1.dcm", "ax3.dcm", "ax5.dcm", "scout1.dcm", "scout2.dcm"]


def test_reconciliation_regenerates_through_the_same_checks(tmp_path: Path) -> None:
    """Reconciliation makes lost instances again through :func:`deidentify_study` (``wanted``, no
    quarantine): a slice sent before OCR was turned on is not sent again if it shows text now, the
    other wanted slice is written byte for byte as the first time, and nothing is quarantined twice."""
    files = _study(tmp_path / "in", burned_first_slice=True)
    engine = DeidEngine.from_rules(None, EphemeralIdentityProvider(site_id="SITE01", secret=SECRET), fsync=False)
    sources = sorted(files.values())
    first = deidentify_study(sources, tmp_path / "first", tmp_path / "q1", engine, ocr="off")
    by_name = {w.source.name: w for w in first.written}
    assert {"ax1.dcm", "ax2.dcm"} <= set(by_name)  # without OCR the burned slice went out
    wanted = {by_name["ax1.dcm"].sop_instance_uid, by_name["ax2.dcm"].sop_instance_uid}
    again = deidentify_study(sources, tmp_path / "again", None, engine, wanted=wanted)
    assert [w.source.name for w in again.written] == ["ax2.dcm"]
    assert again.written[0].path.read_bytes() == by_name["ax2.dcm"].path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [again.written[0].path.name]
    assert again.quarantined == []  # dealt with the first time: not quarantined again
