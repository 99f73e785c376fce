"""The CAC result as DICOM: TID 1500 SR and SEG built with highdicom, then de-identified like the images.

A synthetic PET/CT study (distinctive fake identifiers) is scored by the bundled model; the SR and
SEG are built from its original CT slices, checked as built (highdicom reads the SR back, dcmtk's
dsrdump prints it without errors, its Agatston value is the JSON result's, the SEG's frames are the
scored weight map), then passed through the daemon's results engine (site profile +
rules/connector-results.yaml, PHI guard) and checked again: pseudonym, shifted dates, remapped
references that point at the de-identified CT, content intact, no identifier in the bytes.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from connector.config import load_config
from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider
from connector.infer.dicom_results import (
    CALCIUM_SCORE,
    CALCIUM_VOLUME,
    NUMBER_OF_CALCIFICATIONS,
    build_result_objects,
    read_sources,
    results_engine,
)
from connector.infer.results import SeriesResult
from connector.infer.runner import CacRunner
from connector.settings.cac import CacConfig
from connector.infer.study import score_study
from connector.synthetic import SyntheticPatient, SyntheticStudy, write_demo_study
from tests.support.tools import dcmtk


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticStudy, list[Path], SeriesResult]:
    folder = tmp_path_factory.mktemp("cac-dicom")
    study = SyntheticStudy(patient=SyntheticPatient(family="PERPETUALIS", given="OCTAVIANNE"))
    paths = write_demo_study(folder, ct_slices=30, study=study)
    runner = CacRunner.from_config(CacConfig(threads=2))
    [result] = score_study(paths, runner)
    assert result.ok and result.agatston is not None and result.agatston.score > 0
    return study, paths, result


def encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def measurements(data: bytes) -> tuple[dict[str, float], str]:
    """Numbers and category of the SR's one measurement group, as highdicom reads them back."""
    report = hd.sr.srread(io.BytesIO(data))
    [group] = report.content.get_planar_roi_measurement_groups() or [None]  # none: it is not ROI based
    assert group is None
    [group] = report.content.get_image_measurement_groups()
    values = {m.name.meaning: float(m.value) for m in group.get_measurements()}
    [category] = group.get_qualitative_evaluations()
    return values, str(category.value.value)


def test_sr_reads_back_and_holds_the_json_result(scored: tuple[SyntheticStudy, list[Path], SeriesResult],
                                                 tmp_path: Path) -> None:
    _, _, result = scored
    objects = build_result_objects(result, read_sources(result.source_paths))
    data = encode(objects.sr)
    # Built again (as after a crash), it is the same object byte for byte: no conflicting re-send.
    again = build_result_objects(result, read_sources(result.source_paths))
    assert encode(again.sr) == data and objects.seg is not None and encode(again.seg) == encode(objects.seg)
    values, category = measurements(data)
    doc = result.to_json(include_uids=False)
    assert values[CALCIUM_SCORE.meaning] == pytest.approx(doc["agatston"], abs=1e-9)
    assert values[CALCIUM_VOLUME.meaning] == pytest.approx(doc["volume_mm3"], abs=1e-9)
    assert values[NUMBER_OF_CALCIFICATIONS.meaning] == doc["lesions"]
    assert category == {"0": "CAC-0", "1-100": "CAC-1-100", "101-400": "CAC-101-400", ">400": "CAC-GT400"}[
        doc["category"]]
    # Algorithm identification: the model's name, version and hash.
    text = dsrdump(data, tmp_path / "sr.dcm")
    assert f'"{result.model["name"]}"' in text and f'"{result.model["version"]}"' in text
    assert "sha256=" + str(result.model["sha256"])[:20] in text
    # Evidence: every CT slice of the scored series, nothing else.
    [evidence] = objects.sr.CurrentRequestedProcedureEvidenceSequence
    [series] = evidence.ReferencedSeriesSequence
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence} == {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in result.source_paths}


def dsrdump(data: bytes, path: Path) -> str:
    path.write_bytes(data)
    out = subprocess.run([dcmtk("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "error" not in (out.stdout + out.stderr).lower(), out.stderr
    return out.stdout


def seg_weights(seg: pydicom.Dataset | bytes, source_uids: list[str]) -> np.ndarray:
    """The SEG as a (slices, rows, columns) map of Agatston weights over the given source slices."""
    seg = hd.seg.segread(io.BytesIO(seg if isinstance(seg, bytes) else encode(seg)))
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, combine_segments=True,
                                               skip_overlap_checks=True)
    weight_of = {int(s.SegmentNumber): int(str(s.SegmentLabel).rsplit(" ", 1)[1]) for s in seg.SegmentSequence}
    lut = np.zeros(max(weight_of) + 1, dtype=np.uint8)
    for number, weight in weight_of.items():
        lut[number] = weight
    return lut[labels]


def expected_weights(result: SeriesResult, rows: int, cols: int) -> np.ndarray:
    scored = result.scored_calcium
    assert scored is not None
    full = np.zeros((len(result.source_paths), rows, cols), dtype=np.uint8)
    full[list(scored.slice_indices)] = scored.weights
    return full


def test_seg_frames_are_the_scored_weight_map(scored: tuple[SyntheticStudy, list[Path], SeriesResult]) -> None:
    _, _, result = scored
    sources = read_sources(result.source_paths)
    objects = build_result_objects(result, sources)
    assert objects.seg is not None
    uids = [str(s.SOPInstanceUID) for s in sources]
    expected = expected_weights(result, int(sources[0].Rows), int(sources[0].Columns))
    assert expected.any()
    np.testing.assert_array_equal(seg_weights(objects.seg, uids), expected)
    # One segment per density weight present, so the SEG alone gives the score back.
    spacing = result.pixel_spacing_mm
    assert spacing is not None and result.agatston is not None
    score = float((expected.astype(float)).sum()) * spacing[0] * spacing[1] * result.agatston.slice_increment_mm / 3
    assert score == pytest.approx(result.agatston.score, rel=1e-9)


def test_results_are_deidentified_like_the_images(scored: tuple[SyntheticStudy, list[Path], SeriesResult],
                                                  tmp_path: Path) -> None:
    study, paths, result = scored
    config = load_config(None, {})
    provider = EphemeralIdentityProvider(site_id="TEST01")
    images = DeidEngine.from_config(config, provider)
    engine = results_engine(config, provider, result.model)
    sources = read_sources(result.source_paths)
    objects = build_result_objects(result, sources)
    deid_ct = {}
    for path in result.source_paths:
        out = images.process_path(path)
        assert out.status == "ok", out.reason
        deid_ct[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = out
    needles = [v.encode() for v in (study.patient.patient_id, study.patient.family, study.patient.given,
                                    study.patient.birth_date, study.accession, study.study_uid, study.study_date,
                                    study.institution)] + [uid.encode() for uid in deid_ct]
    outputs = {}
    for kind, ds in zip(("sr", "seg"), objects.datasets(), strict=True):
        out = engine.process_bytes(encode(ds))
        assert out.status == "ok", (kind, out.reason, out.details)
        assert out.data is not None
        assert not [n for n in needles if n in out.data], kind
        outputs[kind] = out
    first_ct = next(iter(deid_ct.values()))
    sr = pydicom.dcmread(io.BytesIO(outputs["sr"].data))
    assert sr.PatientID == first_ct.pseudonym == outputs["seg"].pseudonym
    assert sr.StudyInstanceUID == first_ct.study_instance_uid
    ct_ds = pydicom.dcmread(io.BytesIO(first_ct.data), stop_before_pixels=True)
    assert sr.StudyDate == ct_ds.StudyDate != study.study_date  # shifted by the patient's one offset
    # References now point at the de-identified CT.
    [evidence] = sr.CurrentRequestedProcedureEvidenceSequence
    [series] = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first_ct.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence} == {
        o.sop_instance_uid for o in deid_ct.values()}
    # The content survived de-identification, numbers and model identification included.
    values, _ = measurements(outputs["sr"].data)
    assert values[CALCIUM_SCORE.meaning] == pytest.approx(result.to_json()["agatston"], abs=1e-9)
    text = dsrdump(outputs["sr"].data, tmp_path / "deid-sr.dcm")
    assert "sha256=" + str(result.model["sha256"])[:20] in text
    # The SEG's frames still match, over the de-identified slices in the volume's order.
    order = [deid_ct[str(s.SOPInstanceUID)].sop_instance_uid for s in sources]
    expected = expected_weights(result, int(sources[0].Rows), int(sources[0].Columns))
    np.testing.assert_array_equal(seg_weights(outputs["seg"].data, order), expected)
    assert len(paths) > len(result.source_paths)  # the PET series was not referenced


def test_guard_exempts_only_the_exact_connector_texts_and_still_finds_identifiers() -> None:
    from pydicom.dataset import Dataset

    from connector import phi_guard

    original = Dataset()
    original.PatientName = "QUILLFEATHER^ROSAMUND"
    original.PatientID = "MRN4455667"
    identifiers = phi_guard.collect_identifiers(original)
    out = Dataset()
    item = Dataset()
    item.TextValue = "sha256=0123456789abcdef0123"
    named = Dataset()
    named.TextValue = "QUILLFEATHER model"
    out.ContentSequence = [item, named]
    plain = phi_guard.GuardPolicy()
    assert {f.code for f in phi_guard.check_dataset(out, identifiers, plain)} >= {"phi-guard:free-text-digits"}
    allowed = phi_guard.GuardPolicy(allowed_texts=frozenset({"sha256=0123456789abcdef0123", "QUILLFEATHER model"}))
    codes = [f.code for f in phi_guard.check_dataset(out, identifiers, allowed)]
    assert "phi-guard:free-text-digits" not in codes
    assert "phi-guard:name" in codes  # an exempt text is still searched for the patient's identifiers
    item.TextValue = "sha256=0123456789abcdef0124"  # not exactly the connector's text: checked as usual
    assert "phi-guard:free-text-digits" in {f.code for f in phi_guard.check_dataset(out, identifiers, allowed)}
