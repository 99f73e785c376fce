"""Text burned into pixels (issue 25, item 5): OCR in de-identification and in the PHI guard.

Real OCR (the PP-OCR models of the rapidocr-onnxruntime wheel), real files, the shipped rules.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from connector import phi_guard
from connector.config import load_config
from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider
from connector.deid.study import deidentify_study
from connector.phi_guard.burned_in_text import FAILURE, FINDING, IdentifierText, instances_to_read
from connector.settings.deid import OCR_SCOPES
from connector.phi_guard.identifiers import Identifiers
from tests.deid.factory import Planted, StudyUids, base_dataset, encode, leaks
from tests.security.burned_in_images import ct_image, localizer_hu, name_and_mrn

SECRET = bytes(range(32))
PLANTED = Planted()


@pytest.fixture
def engine() -> DeidEngine:
    return DeidEngine.from_rules(None, EphemeralIdentityProvider(site_id="SITE01", secret=SECRET), fsync=False)


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def _study_with_localizers(folder: Path) -> tuple[Path, Path, list[Path]]:
    """One study: a localizer series (one image with the name and MRN burned in, the same image
    without), and a 5-slice axial series."""
    uids = StudyUids()
    scouts = StudyUids(study=uids.study, frame_of_reference=uids.frame_of_reference)
    hu = localizer_hu()
    burned = _write(folder, "scout1.dcm", encode(ct_image(hu, name_and_mrn(), uids=scouts, instance=1)))
    clean = _write(folder, "scout2.dcm", encode(ct_image(hu, [], uids=scouts, instance=2)))
    axial = [_write(folder, f"ax{i}.dcm", encode(base_dataset(PLANTED, uids, instance=i))) for i in range(1, 6)]
    return burned, clean, axial


def _log_text(records: list[logging.LogRecord]) -> bytes:
    return "\n".join(json.dumps(r.__dict__, default=str) for r in records).encode()


def test_localizer_with_burned_in_name_and_mrn_is_quarantined(tmp_path: Path, engine: DeidEngine,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    burned, clean, axial = _study_with_localizers(tmp_path / "in")
    out, quarantine = tmp_path / "out", tmp_path / "q"
    caplog.set_level(logging.DEBUG)

    outcome = deidentify_study([burned, clean, *axial], out, quarantine, engine)

    assert [(q.source, q.reason) for q in outcome.quarantined] == [(burned, FINDING)]
    assert sorted(w.source for w in outcome.written) == sorted([clean, *axial])
    assert len(list(out.iterdir())) == 6  # nothing of the burned localizer reached the outgoing folder
    # both scouts and the first, middle and last axial slice were read
    assert outcome.privacy.pixels_read_for_text == 5 and outcome.summary()["ocr_images"] == 5
    record = json.loads((quarantine / "deid" / f"{outcome.quarantined[0].entry_id}.json").read_text())
    wheres = [f["where"] for f in record["details"]["findings"]]
    assert len(wheres) == 2 and all(w.endswith("patient-identifier") for w in wheres), wheres
    assert all(w.startswith("(7FE0,0010)[frame 0] box ") for w in wheres)
    # the reason, the record and the logs name boxes, never the text read
    assert leaks(json.dumps(record).encode()) == []
    assert leaks(json.dumps(outcome.summary()).encode()) == []
    assert leaks(_log_text(caplog.records)) == []


def test_guard_reads_burned_in_text_the_engine_lets_through(engine: DeidEngine) -> None:
    """The issue's failure: without OCR the engine and the tag guard pass the localizer unchanged."""
    hu = localizer_hu()
    for lines, expected in ((name_and_mrn(), 2), ([], 0)):
        original = encode(ct_image(hu, lines))
        result = engine.process_bytes(original)
        assert result.status == "ok" and result.data is not None
        assert dcmread(io.BytesIO(result.data)).PixelData == dcmread(io.BytesIO(original)).PixelData
        identifiers = phi_guard.collect_identifiers(dcmread(io.BytesIO(original)))
        findings = phi_guard.check_pixels(result.data, identifiers)
        assert [f.code for f in findings] == [FINDING] * expected
        assert leaks(json.dumps([f.as_dict() for f in findings]).encode()) == []


def test_only_identifiers_count_where_text_may_belong() -> None:
    """A radiograph may say PORTABLE; it may not say the MRN. A CT may say neither."""
    hu = localizer_hu()
    dx = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image for presentation
    identifiers = phi_guard.collect_identifiers(base_dataset(PLANTED, pixels=False))
    portable = [((40, 20), "PORTABLE AP SUPINE", 1)]
    mrn = [((40, 20), f"ID {PLANTED.patient_id}", 1)]
    as_dx = phi_guard.check_pixels(encode(ct_image(hu, portable, modality="DX", sop_class=dx,
                                                   image_type=["ORIGINAL"])), identifiers)
    assert as_dx == []
    found = phi_guard.check_pixels(encode(ct_image(hu, mrn, modality="DX", sop_class=dx, image_type=["ORIGINAL"])),
                                   identifiers)
    assert [f.where.rsplit(": ", 1)[1] for f in found] == ["patient-identifier"]
    as_ct = phi_guard.check_pixels(encode(ct_image(hu, portable)), identifiers)
    assert [f.where.rsplit(": ", 1)[1] for f in as_ct] == ["text"]


def test_identifier_text_allows_for_misreadings() -> None:
    ids = Identifiers(name_parts=frozenset({"ZEBRAFISH", "OPHELIANA", "ANN"}),
                      patient_ids=frozenset({"SYN48151623", "4711"}), accession_numbers=frozenset({"ACC9081726"}),
                      birth_dates=frozenset({"19470312"}))
    wanted = IdentifierText(ids)
    for read in ("ZEBRAFISH^OPHELIANA", "ZEEFAFISHOPHELIANA", "OPHELI ANA", "MRN: 5YN48I51623", "ACC 908 1726",
                 "DOB 12/03/1947", "Ann", "zebrafish", "ID 4711", "ID:47l1"):
        assert wanted.found_in(read), read
    for read in ("ANNOTATION", "ZEBRA", "SYN4815", "ACC9000000", "1947", "PORTABLE AP", "8", "47110", "RUN 14711"):
        assert not wanted.found_in(read), read


def test_which_instances_are_read(tmp_path: Path) -> None:
    uids = StudyUids()
    axial = []
    for number in (5, 1, 7, 3, 2, 6, 4):  # file order is not instance order
        axial.append(_write(tmp_path, f"ax{number}.dcm", encode(base_dataset(PLANTED, uids, instance=number))))
    other = StudyUids(study=uids.study)
    scout = base_dataset(PLANTED, other, instance=1)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    named = base_dataset(PLANTED, StudyUids(study=uids.study), instance=9)
    named.SeriesDescription = "Surview"
    dose = base_dataset(PLANTED, StudyUids(study=uids.study), instance=1)
    dose.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc = base_dataset(PLANTED, StudyUids(study=uids.study), modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7")
    lone = base_dataset(PLANTED, StudyUids(study=uids.study), instance=1)
    risky = [_write(tmp_path, f"{n}.dcm", encode(ds)) for n, ds in
             (("scout", scout), ("named", named), ("dose", dose), ("sc", sc))]
    single = _write(tmp_path, "lone.dcm", encode(lone))
    junk = _write(tmp_path, "junk.dcm", b"not dicom")
    paths = [*axial, *risky, single, junk]

    chosen = instances_to_read(paths, "at-risk-and-sample")

    by_number = {dcmread(p).InstanceNumber: p for p in axial}
    assert chosen == {by_number[1], by_number[4], by_number[7], *risky, single, junk}
    assert instances_to_read(paths, "all") == set(paths)
    assert instances_to_read(paths, "off") == set()
    accepted = base_dataset(PLANTED, StudyUids(study=uids.study), instance=2, sop_class="1.2.840.10008.5.1.4.1.1.2")
    accepted_path = _write(tmp_path, "accepted.dcm", encode(accepted))
    assert accepted_path in instances_to_read([*axial, accepted_path], "at-risk-and-sample",
                                              frozenset({"1.2.840.10008.5.1.4.1.1.2"}))
    with pytest.raises(ValueError):
        instances_to_read(paths, "sometimes")


def test_unreadable_pixels_fail_closed(tmp_path: Path, engine: DeidEngine) -> None:
    ds = ct_image(localizer_hu(64, 64), [])
    ds.BitsStored = 20  # more bits stored than allocated: no decoder can render these pixels
    source = _write(tmp_path / "in", "scout.dcm", encode(ds))
    assert engine.process_path(source).status == "ok"  # the tag checks cannot see it
    outcome = deidentify_study([source], tmp_path / "out", tmp_path / "q", engine)
    assert [q.reason for q in outcome.quarantined] == [FAILURE] and not outcome.written


def test_ocr_setting(tmp_path: Path, engine: DeidEngine) -> None:
    assert load_config(None, environ={}).deid.ocr == "at-risk-and-sample"
    path = tmp_path / "connector.toml"
    path.write_text('[deid]\nocr = "off"\n')
    assert load_config(path, environ={}).deid.ocr == "off"
    path.write_text('[deid]\nocr = "sometimes"\n')
    with pytest.raises(Exception, match="ocr"):
        load_config(path, environ={})
    assert set(OCR_SCOPES) == {"at-risk-and-sample", "all", "off"}
    # off means off: the burned localizer goes out (what the site chose; the default reads it)
    burned, _clean, _axial = _study_with_localizers(tmp_path / "in")
    outcome = deidentify_study([burned], tmp_path / "out", tmp_path / "q", engine, ocr="off")
    assert len(outcome.written) == 1 and outcome.privacy.pixels_read_for_text == 0
    assert np.array_equal(dcmread(outcome.written[0].path).pixel_array, dcmread(burned).pixel_array)
