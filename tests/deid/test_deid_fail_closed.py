"""Fail closed beyond free text (issue 25): object classes and UIDs by allow-list.

Objects are made here as scanners and PACS write them (not from the corpus that found the leaks):
a retired US image written with Modality OT, an ophthalmic photograph, a dose SR, a PET with the
newer RadiopharmaceuticalAdministrationEventUID, UIDs nested in sequences and in private-looking
places. Each would have come out (or been quarantined for the wrong reason) before.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from connector.deid.engine import DeidEngine
from connector.deid.profile import default_rules_path, load_profile
from connector.deid.provider import EphemeralIdentityProvider
from tests.deid.factory import ORG, base_dataset, encode, leaks

PET = "1.2.840.10008.5.1.4.1.1.128"
RETIRED_US = "1.2.840.10008.5.1.4.1.1.6"
OPHTHALMIC_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
RAW_DATA = "1.2.840.10008.5.1.4.1.1.66"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
RT_STRUCT = "1.2.840.10008.5.1.4.1.1.481.3"


@pytest.mark.parametrize("sop_class, modality", [
    (RETIRED_US, "OT"),            # retired US Image Storage, as an old cart writes it
    (OPHTHALMIC_8BIT, "OP"),       # not on the burned-in deny-list: came out before
    (RAW_DATA, "CT"),              # a vendor's raw data, text inside
    (DOSE_SR, "SR"),               # not allowed unless the site opts in
    (RT_STRUCT, "RTSTRUCT"),
    ("1.2.3.4.5.6.7.8", "CT"),     # a private class
])
def test_a_class_not_on_the_allow_list_is_quarantined_naming_it(engine: DeidEngine, sop_class: str,
                                                                 modality: str) -> None:
    ds = base_dataset(modality=modality, sop_class=sop_class)
    ds.BurnedInAnnotation = "NO"  # says nothing about what the class can carry
    result = engine.process_bytes(encode(ds))
    assert result.status == "quarantine"
    assert result.reason == f"object-class-not-allowed:{sop_class}"
    assert result.details["sop_class_uid"] == sop_class


def test_absent_class_is_refused_and_allowed_classes_pass(engine: DeidEngine) -> None:
    data = encode(base_dataset())  # file meta needs a class; remove it from the data set afterwards
    raw = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    del raw.SOPClassUID
    assert engine.process_dataset(raw).reason.startswith("object-class-not-allowed:")
    for sop_class, modality in ((PET, "PT"), ("1.2.840.10008.5.1.4.1.1.20", "NM"),
                                ("1.2.840.10008.5.1.4.1.1.5", "NM"), ("1.2.840.10008.5.1.4.1.1.4", "MR")):
        result = engine.process_bytes(encode(base_dataset(modality=modality, sop_class=sop_class)))
        assert result.status == "ok", (sop_class, result.reason)


def test_a_site_widens_the_list_with_a_rule_file(provider: EphemeralIdentityProvider, tmp_path: Path) -> None:
    dose = default_rules_path().parent / "object-classes-dose-reports.yaml"
    engine = DeidEngine(load_profile([default_rules_path(), dose]), provider, fsync=False)
    ds = base_dataset(modality="SR", sop_class=DOSE_SR, pixels=False)
    assert not engine.process_bytes(encode(ds)).reason.startswith("object-class-not-allowed")
    mine = tmp_path / "site-classes.yaml"
    mine.write_text('format: 1\nname: site\nobject_classes: ["1.2.840.10008.5.1.4.1.1.481.3"]\n')
    widened = DeidEngine(load_profile([default_rules_path(), mine]), provider, fsync=False)
    assert not widened.process_bytes(encode(base_dataset(modality="RTSTRUCT", sop_class=RT_STRUCT))) \
        .reason.startswith("object-class-not-allowed")
    bad = tmp_path / "bad.yaml"
    bad.write_text('format: 1\nname: bad\nobject_classes: ["CT Image Storage"]\n')
    with pytest.raises(Exception, match="SOP Class UIDs"):
        load_profile([bad])


def test_the_guard_refuses_a_class_off_the_list_on_its_own(engine: DeidEngine) -> None:
    from connector import phi_guard

    data = encode(base_dataset(modality="OT", sop_class=RETIRED_US))
    identifiers = phi_guard.collect_identifiers(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)))
    codes = {f.code for f in phi_guard.check_output(data, identifiers, engine.guard_policy)}
    assert "phi-guard:object-class" in codes


def test_every_uid_is_remapped_unless_well_known(engine: DeidEngine) -> None:
    """A PET with RadiopharmaceuticalAdministrationEventUID (quarantined by the guard before), and
    UIDs in attributes no table row names, nested two levels deep."""
    ds = base_dataset(modality="PT", sop_class=PET)
    event_uid, nested_uid, context_uid = (generate_uid(ORG) for _ in range(3))
    info = Dataset()
    info.RadiopharmaceuticalAdministrationEventUID = event_uid
    info.Radiopharmaceutical = "Rubidium-82"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-B1031", "SRT", "Rubidium-82"
    code.ContextUID = context_uid
    info.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([info])
    ds.RadiopharmaceuticalAdministrationEventUID = event_uid
    ref = Dataset()
    ref.ReferencedSOPClassUID = PET
    ref.ReferencedSOPInstanceUID = nested_uid
    ds.ReferencedImageSequence = Sequence([ref])
    data = encode(ds)
    result = engine.process_bytes(data)
    assert result.status == "ok", (result.reason, result.details)
    assert result.data is not None
    for original in (event_uid, nested_uid, context_uid, ds.StudyInstanceUID):
        assert original.encode() not in result.data, original
    out = pydicom.dcmread(pydicom.filebase.DicomBytesIO(result.data))
    assert out.RadiopharmaceuticalAdministrationEventUID == engine.uid(event_uid)
    # the same UID remaps alike wherever it appears (references stay consistent)
    assert out.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalAdministrationEventUID \
        == engine.uid(event_uid)
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == PET  # a registry UID stays
    assert not leaks(result.data)


def test_patient_characteristics_keep_their_value_sets_only(engine: DeidEngine) -> None:
    """EthnicGroup under Retain Patient Characteristics was kept as any token (issue 25): now a value
    outside the words registries use is cleaned, and enumerated characteristics keep their terms."""
    ds = base_dataset()
    ds.EthnicGroup = "QWX7ZEBRA"  # an arbitrary token: could be anything the site typed
    ds.SmokingStatus = "NO"
    ds.PatientSexNeutered = "UNALTERED"
    out = pydicom.dcmread(pydicom.filebase.DicomBytesIO(engine.process_bytes(encode(ds)).data))
    assert "QWX7ZEBRA" not in str(out.EthnicGroup) and out.SmokingStatus == "NO"
    assert out.PatientSexNeutered == "UNALTERED" and out.PatientSex == "F"
    ds = base_dataset()
    ds.EthnicGroup = "ASIAN"
    out = pydicom.dcmread(pydicom.filebase.DicomBytesIO(engine.process_bytes(encode(ds)).data))
    assert out.EthnicGroup == "ASIAN"
