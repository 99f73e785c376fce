"""The failure classes users report about de-identification tools, each against the shipped default."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ImplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from connector.deid.engine import DeidEngine
from connector.deid.profile import shipped_rules_dir
from connector.deid.provider import EphemeralIdentityProvider
from tests.deid.conftest import SECRET
from tests.deid.factory import (
    ORG,
    Planted,
    StudyUids,
    add_private,
    base_dataset,
    encode,
    leaks,
    nest_phi,
)


def run(engine: DeidEngine, ds: Dataset, syntax: str | None = None) -> Dataset:
    result = engine.process_bytes(encode(ds) if syntax is None else encode(ds, syntax))
    assert result.status == "ok", (result.reason, result.details)
    assert leaks(result.data) == []  # byte-level scan of every output for every planted value
    return dcmread(io.BytesIO(result.data))


def days_between(a: str, b: str) -> int:
    return (dt.date.fromisoformat(f"{b[:4]}-{b[4:6]}-{b[6:8]}") - dt.date.fromisoformat(f"{a[:4]}-{a[4:6]}-{a[6:8]}")).days


# -- identity -------------------------------------------------------------------------------------


def test_name_and_id_become_the_pseudonym_and_markers_are_set(engine: DeidEngine, provider) -> None:
    out = run(engine, base_dataset())
    assert out.PatientName == out.PatientID
    assert str(out.PatientID).startswith("SITE01-")
    assert out.PatientIdentityRemoved == "YES"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113108", "113105"]  # basic + the three options, in order
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "registry-default" in " ".join(out.DeidentificationMethod)
    assert out.AccessionNumber == "" and out.PatientBirthDate == ""
    assert "IssuerOfPatientID" not in out
    assert out.PatientSex == "F" and float(out.PatientWeight) == 71.5  # patient characteristics kept
    assert out.Manufacturer == "SYNTHETIC" and out.KVP == 120  # unlisted equipment/acquisition kept


def test_other_patient_ids_and_their_sequence_are_removed(engine: DeidEngine) -> None:
    out = run(engine, base_dataset())
    assert "OtherPatientIDs" not in out
    assert "OtherPatientIDsSequence" not in out


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_phi_nested_in_unlisted_sequences(engine: DeidEngine, depth: int) -> None:
    ds = base_dataset()
    nest_phi(ds, depth)
    out = run(engine, ds)
    node = out.DerivationCodeSequence[0]
    for _ in range(depth - 1):
        node = next(node[k].value[0] for k in node.keys() if node[k].VR == "SQ")
    assert node.PatientName == out.PatientName  # the same rules apply at every depth
    assert node.PatientID == out.PatientID
    assert node.PatientBirthDate == ""
    assert node.InstitutionName == "ANONYMIZED"
    if depth > 1:
        assert out.DerivationCodeSequence[0].CodeValue == f"L{depth - 2}"  # structure survives


def test_private_tags_and_private_sequences_are_removed_except_safe_ones(provider) -> None:
    ds = base_dataset()
    add_private(ds)
    default = DeidEngine.from_rules(None, provider, fsync=False)
    out = run(default, ds)
    assert not any(t.is_private for t in out.keys())

    ds = base_dataset()
    add_private(ds)
    rules = [shipped_rules_dir() / "registry-default.yaml", shipped_rules_dir() / "ps3.15-retain-safe-private.yaml"]
    safe = DeidEngine.from_rules(rules, provider, fsync=False)
    out = run(safe, ds)
    private = [t for t in out.keys() if t.is_private]
    block = out.private_block(0x0019, "GEMS_ACQU_01")
    assert float(block[0x23].value) == 39.37  # safe: (0019, GEMS_ACQU_01, xx23)
    assert {int(t) for t in private} == {int(block.get_tag(0x23)), 0x00190010}  # creator kept for its block
    assert "113111" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_every_date_vr_shifts_by_one_offset_and_intervals_survive(engine: DeidEngine, provider) -> None:
    p = Planted()
    uids1, uids2 = StudyUids(), StudyUids()
    first = base_dataset(p, uids1, study_date="20240115")
    second = base_dataset(p, uids2, study_date="20240401")
    second.AcquisitionDateTime = "20240401235959.999999-0500"
    out1, out2 = run(engine, first), run(engine, second)
    offset = days_between("20240115", out1.StudyDate)
    assert offset < 0 and offset == provider.subject_for(_identity(p)).date_offset_days
    assert days_between(out1.StudyDate, out2.StudyDate) == days_between("20240115", "20240401")  # across studies
    for keyword in ("SeriesDate", "AcquisitionDate", "ContentDate"):
        assert getattr(out1, keyword) == out1.StudyDate
    assert out1.StudyTime == "083015.123456"  # whole-day offset: times unchanged
    assert out1.AcquisitionDateTime == out1.StudyDate + "083015.123456+0100"  # fraction and zone kept
    assert out2.AcquisitionDateTime[8:] == "235959.999999-0500"
    assert days_between("20240401", out2.AcquisitionDateTime[:8]) == offset


def test_pet_radiopharmaceutical_times_keep_the_suv_interval(engine: DeidEngine) -> None:
    ds = base_dataset(modality="PT", sop_class=PositronEmissionTomographyImageStorage)
    info = Dataset()
    info.RadiopharmaceuticalStartTime = "082900.000000"
    info.RadiopharmaceuticalStartDateTime = "20240115082900.000000"
    info.RadionuclideTotalDose = 1.1e9
    ds.RadiopharmaceuticalInformationSequence = Sequence([info])
    ds.AcquisitionTime = "083000.000000"
    ds.SeriesTime = "083000.000000"
    out = run(engine, ds)
    got = out.RadiopharmaceuticalInformationSequence[0]
    assert got.RadiopharmaceuticalStartTime == "082900.000000"
    assert out.AcquisitionTime == "083000.000000"
    start = dt.datetime.strptime(got.RadiopharmaceuticalStartDateTime, "%Y%m%d%H%M%S.%f")
    acq = dt.datetime.strptime(out.AcquisitionDateTime[:21], "%Y%m%d%H%M%S.%f")
    orig = dt.datetime(2024, 1, 15, 8, 30, 15, 123456) - dt.datetime(2024, 1, 15, 8, 29)
    assert acq - start == orig  # the interval the SUV decay correction needs


def test_unlisted_dates_are_shifted_too(engine: DeidEngine) -> None:
    ds = base_dataset()
    ds.CalibrationDate = "20230110"  # (0018,1202)? no: DateOfLastCalibration is listed; this one is not
    ds.ScheduledProcedureStepStartDate = "20240110"
    out = run(engine, ds)
    offset = days_between("20240115", out.StudyDate)
    for keyword, original in (("CalibrationDate", "20230110"), ("ScheduledProcedureStepStartDate", "20240110")):
        if keyword in out:
            assert days_between(original, getattr(out, keyword)) == offset


def test_uids_are_consistent_across_series_studies_and_runs(provider) -> None:
    p = Planted()
    uids = StudyUids()
    a = base_dataset(p, uids, instance=1)
    b = base_dataset(p, uids, instance=2)
    ref = Dataset()
    ref.ReferencedSOPClassUID = a.SOPClassUID
    ref.ReferencedSOPInstanceUID = a.SOPInstanceUID
    b.ReferencedImageSequence = Sequence([ref])
    other_series = base_dataset(p, StudyUids(study=uids.study, frame_of_reference=uids.frame_of_reference))
    engine1 = DeidEngine.from_rules(None, provider, fsync=False)
    out_a, out_b, out_c = run(engine1, a), run(engine1, b), run(engine1, other_series)
    assert out_a.StudyInstanceUID == out_b.StudyInstanceUID == out_c.StudyInstanceUID
    assert out_a.SeriesInstanceUID == out_b.SeriesInstanceUID != out_c.SeriesInstanceUID
    assert out_a.FrameOfReferenceUID == out_c.FrameOfReferenceUID
    assert out_b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == out_a.SOPInstanceUID  # resolves
    assert out_b.ReferencedImageSequence[0].ReferencedSOPClassUID == a.SOPClassUID  # class UIDs are public
    for out in (out_a, out_b, out_c):
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.StudyInstanceUID.startswith("2.25.") and len(out.StudyInstanceUID) <= 64
        assert "SourceApplicationEntityTitle" not in out.file_meta
    # A separate run (new engine, new provider object, same site secret) gives the same UIDs.
    engine2 = DeidEngine.from_rules(None, EphemeralIdentityProvider(secret=SECRET), fsync=False)
    again = run(engine2, base_dataset(p, uids, instance=1))
    assert again.StudyInstanceUID == out_a.StudyInstanceUID and again.SeriesInstanceUID == out_a.SeriesInstanceUID
    # Another site secret gives unrelated UIDs (nobody can recompute them without the secret).
    engine3 = DeidEngine.from_rules(None, EphemeralIdentityProvider(secret=bytes(32)), fsync=False)
    assert run(engine3, base_dataset(p, uids)).StudyInstanceUID != out_a.StudyInstanceUID


@pytest.mark.parametrize("age,expected", [("095Y", "090Y"), ("089Y", "089Y"), ("090Y", "090Y"), ("1200M", "090Y"),
                                          ("045Y", "045Y"), ("006M", "006M"), ("5000W", "090Y"),
                                          ("999M", "999M")])
def test_ages_over_89_become_090Y(engine: DeidEngine, age: str, expected: str) -> None:
    ds = base_dataset()
    ds.PatientAge = age
    assert run(engine, ds).PatientAge == expected


def test_descriptions_keep_only_known_words_and_comments_are_removed(engine: DeidEngine) -> None:
    ds = base_dataset()
    ds.ImageComments = "Pt ZEBRAFISH seen by PLATYPUSKY, MRN SYN48151623, call 555-123-4567"
    ds.ProtocolName = "CAC NARWHAL VALLEY HOSPITAL protocol"
    out = run(engine, ds)
    assert out.StudyDescription == "CARDIAC CT ***"  # name and ID are not vocabulary words
    assert out.SeriesDescription == "CAC 3.0 mm ***"  # "born" is not a vocabulary word; nor is the date
    assert "ImageComments" not in out  # comment fields are removed by the default profile
    assert out.ProtocolName == "CAC *** protocol"


def sr_dataset() -> Dataset:
    ds = base_dataset(modality="SR", sop_class="1.2.840.10008.5.1.4.1.1.88.22", pixels=False)
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121071", "DCM", "Finding"
    text.ConceptNameCodeSequence = Sequence([concept])
    text.TextValue = "ZEBRAFISH OPHELIANA (SYN48151623) has calcified plaque"
    person = Dataset()
    person.RelationshipType = "HAS OBS CONTEXT"
    person.ValueType = "PNAME"
    person.PersonName = "PLATYPUSKY^BARTHOLOMEW"
    ds.ContentSequence = Sequence([text, person])
    ds.ValueType = "CONTAINER"
    return ds


def test_sr_text_never_leaves_under_the_default(engine: DeidEngine, provider, tmp_path) -> None:
    # a report SR is not on the default object-class allow-list: it does not leave at all
    assert engine.process_bytes(encode(sr_dataset())).reason == "object-class-not-allowed:1.2.840.10008.5.1.4.1.1.88.22"
    site = tmp_path / "site.yaml"  # a site that lets report SRs through, without the SR content option
    site.write_text('format: 1\ninclude: [registry-default.yaml]\nobject_classes: ["1.2.840.10008.5.1.4.1.1.88.22"]\n')
    out = run(DeidEngine.from_rules([site], provider, fsync=False), sr_dataset())
    assert len(out.ContentSequence) == 0  # basic profile: content sequence emptied


def test_sr_text_is_cleaned_under_clean_structured_content(provider) -> None:
    rules = [shipped_rules_dir() / "registry-default.yaml", shipped_rules_dir() / "ps3.15-clean-structured-content.yaml",
             shipped_rules_dir() / "object-classes-structured-reports.yaml"]
    engine = DeidEngine.from_rules(rules, provider, fsync=False)
    out = run(engine, sr_dataset())
    text = out.ContentSequence[0]
    assert text.TextValue.endswith("has calcified plaque") and "ZEBRAFISH" not in text.TextValue
    assert text.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    assert "PLATYPUSKY" not in str(out.ContentSequence[1].PersonName)  # Person Name: D in the table


def test_burned_in_annotation_is_quarantined(engine: DeidEngine) -> None:
    sc = base_dataset(modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7")
    assert engine.process_bytes(encode(sc)).reason == "burned-in-risk:secondary-capture"
    sc.BurnedInAnnotation = "NO"  # whatever the object says: devices that write NO burn names in too
    assert engine.process_bytes(encode(sc)).reason == "burned-in-risk:secondary-capture"
    sc.BurnedInAnnotation = "YES"
    assert engine.process_bytes(encode(sc)).reason == "burned-in-annotation"
    us = base_dataset(modality="US", sop_class="1.2.840.10008.5.1.4.1.1.6.1")
    assert engine.process_bytes(encode(us)).reason == "burned-in-risk:ultrasound"
    ct = base_dataset()
    ct.BurnedInAnnotation = "YES"
    assert engine.process_bytes(encode(ct)).status == "quarantine"


def test_a_device_pixel_region_rule_cleans_ultrasound(provider, tmp_path) -> None:
    rules = tmp_path / "site.yaml"
    rules.write_text(
        "format: 1\ninclude: [registry-default.yaml]\nobject_classes: ['1.2.840.10008.5.1.4.1.1.6.1']\n"
        "pixel_regions:\n"
        "  - id: acme-banner\n    when: {Manufacturer: [SYNTHETIC], Rows: ['16']}\n    regions: [[0, 0, 16, 4]]\n")
    engine = DeidEngine.from_rules([rules], provider, fsync=False)
    us = base_dataset(modality="US", sop_class="1.2.840.10008.5.1.4.1.1.6.1")
    us.PixelData = (np.arange(256, dtype=np.int16) + 1).tobytes()
    out = run(engine, us)
    pixels = np.frombuffer(out.PixelData, dtype=np.int16).reshape(16, 16)
    assert (pixels[:4] == 0).all() and (pixels[4:] != 0).all()
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    ct = base_dataset()  # same device, but CT pixels are never altered: the rule is refused
    ct.BurnedInAnnotation = "YES"
    assert engine.process_bytes(encode(ct)).reason == "pixel-rule-protected-modality"


def test_pixel_data_of_ct_is_byte_identical(engine: DeidEngine) -> None:
    ds = base_dataset()
    original = ds.PixelData
    assert run(engine, ds).PixelData == original


def test_implicit_vr_input_round_trips(engine: DeidEngine) -> None:
    ds = base_dataset()
    add_private(ds)
    nest_phi(ds, 2)
    out = run(engine, ds, ImplicitVRLittleEndian)
    assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert out.DerivationCodeSequence[0].CodeValue == "L0"


@pytest.mark.parametrize("junk,reason", [
    (b"", "not-dicom"),
    (b"hello, this is not DICOM at all" * 20, "not-dicom"),
    (b"\0" * 128 + b"DICM" + b"\0" * 64, "truncated"),
])
def test_junk_input_is_quarantined_not_crashed(engine: DeidEngine, junk: bytes, reason: str) -> None:
    result = engine.process_bytes(junk)
    assert (result.status, result.data) == ("quarantine", None)
    assert result.reason in (reason, "not-dicom", "missing-uid", "truncated", "unreadable")


@pytest.mark.parametrize("cut", [200, 700, 1500, -10, -1])
def test_truncated_files_are_quarantined(engine: DeidEngine, cut: int) -> None:
    data = encode(base_dataset())
    result = engine.process_bytes(data[:cut])
    assert result.status == "quarantine" and result.data is None
    assert result.reason in ("truncated", "not-dicom", "missing-uid", "unreadable")


def test_dicomdir_is_quarantined(engine: DeidEngine) -> None:
    from pydicom.data import get_testdata_file

    with open(get_testdata_file("DICOMDIR"), "rb") as fh:
        assert engine.process_bytes(fh.read()).reason == "dicomdir"


def test_a_failing_rule_quarantines_without_output(provider, tmp_path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text("format: 1\ninclude: [registry-default.yaml]\nrules:\n"
                     "  - {keyword: Rows, action: pseudonym}\n")
    engine = DeidEngine.from_rules([rules], provider, fsync=False)
    result = engine.process_bytes(encode(base_dataset()))
    assert (result.status, result.reason, result.data) == ("quarantine", "rule-error", None)
    assert result.details["tag"] == "(0028,0010)" and result.details["action"] == "pseudonym"
    assert Planted().family not in str(result.details)


def test_the_guard_stops_what_a_weak_rule_lets_through(provider, tmp_path) -> None:
    rules = tmp_path / "weak.yaml"
    rules.write_text("format: 1\ninclude: [registry-default.yaml]\nrules:\n  - {keyword: StudyDescription, action: keep}\n")
    engine = DeidEngine.from_rules([rules], provider, fsync=False)
    result = engine.process_bytes(encode(base_dataset()))
    assert result.status == "quarantine" and result.reason.startswith("phi-guard:")
    assert {"code": result.reason, "where": "(0008,1030)"} in result.details["findings"]
    assert Planted().family not in str(result.details) and result.data is None


def test_missing_patient_id_is_quarantined(engine: DeidEngine) -> None:
    ds = base_dataset()
    del ds.PatientID
    assert engine.process_bytes(encode(ds)).reason == "missing-patient-id"


def test_engine_is_safe_to_share_between_threads(engine: DeidEngine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    p = Planted()
    uids = StudyUids()
    inputs = [encode(base_dataset(p, uids, instance=i)) for i in range(24)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(engine.process_bytes, inputs))
    assert all(r.status == "ok" for r in results)
    assert len({r.study_instance_uid for r in results}) == 1
    assert len({r.sop_instance_uid for r in results}) == 24
    assert all(leaks(r.data) == [] for r in results)


def _identity(p: Planted):
    from connector.deid.provider import PatientIdentity

    return PatientIdentity(patient_id=p.patient_id, issuer=p.issuer, name=p.name, birth_date=p.birth_date)


def test_referenced_uid_in_nested_reference_uses_same_mapping(engine: DeidEngine) -> None:
    ds = base_dataset()
    target = generate_uid(ORG)
    item = Dataset()
    item.ReferencedSOPInstanceUID = target
    inner = Dataset()
    inner.ReferencedSeriesSequence = Sequence([item])
    ds.ReferencedStudySequence = Sequence()  # listed X/Z: emptied
    ds.SourceImageSequence = Sequence([item])
    out = run(engine, ds)
    mapped = out.SourceImageSequence[0].ReferencedSOPInstanceUID
    assert mapped.startswith("2.25.") and mapped != target
    assert mapped == engine.uid(target)
