"""The PHI guard on its own: it finds planted identifiers anywhere, says where but never what, and
shares no code with the rule engine."""

from __future__ import annotations

import ast
import io
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from connector import phi_guard
from tests.deid.factory import Planted, base_dataset, encode

GUARD_DIR = Path(phi_guard.__file__).parent


def identifiers():
    return phi_guard.collect_identifiers(dcmread(io.BytesIO(encode(base_dataset()))))


def clean_copy() -> Dataset:
    """An object with every planted value taken out by hand (no engine involved)."""
    ds = base_dataset()
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
                    "PatientBirthDate", "AccessionNumber", "InstitutionName", "InstitutionAddress",
                    "ReferringPhysicianName", "StudyDescription", "SeriesDescription", "StudyInstanceUID",
                    "SeriesInstanceUID", "FrameOfReferenceUID", "StudyID"):
        delattr(ds, keyword)
    ds.PatientName = ds.PatientID = "SITE01-ABCDEFGH"
    ds.SOPInstanceUID = "2.25.1234"
    return ds


def test_collects_the_patients_identifiers() -> None:
    ids = identifiers()
    p = Planted()
    assert {"ZEBRAFISH", "OPHELIANA"} <= ids.name_parts
    assert {p.patient_id, p.other_id} <= ids.patient_ids  # including the one inside the sequence
    assert p.issuer in ids.issuers and p.accession in ids.accession_numbers
    assert {"19470312", "1947-03-12", "12/03/1947", "03/12/1947", "12.03.1947"} <= ids.birth_dates
    assert p.institution in ids.institutions
    assert len(ids.uids) == 4  # SOP instance, study, series, frame of reference; not the SOP class
    assert "ZEBRAFISH" not in repr(ids)


def test_a_clean_object_passes() -> None:
    assert phi_guard.check_output(encode(clean_copy()), identifiers()) == []


def test_finds_each_kind_anywhere_and_reports_only_codes() -> None:
    ids = identifiers()
    cases = {
        "name": lambda ds: setattr(ds, "ImageComments", "seen: Zebrafish"),
        "patient_id": lambda ds: setattr(ds, "ImageComments", "ref " + Planted().other_id),
        "issuer": lambda ds: setattr(ds, "ImageComments", Planted().issuer),
        "accession": lambda ds: setattr(ds, "ImageComments", "acc " + Planted().accession),
        "birth_date": lambda ds: setattr(ds, "ImageComments", "dob 12/03/1947"),
        "institution": lambda ds: setattr(ds, "ImageComments", "at narwhal  valley hospital"),
    }
    for kind, plant in cases.items():
        ds = clean_copy()
        plant(ds)
        findings = phi_guard.check_output(encode(ds), ids)
        assert {"code": f"phi-guard:{kind}", "where": "(0020,4000)"} in [f.as_dict() for f in findings], kind
        text = repr(findings)
        assert all(v.upper() not in text.upper() for v in Planted().strings())


def test_finds_original_uids_and_nested_values() -> None:
    original = base_dataset()
    ids = phi_guard.collect_identifiers(original)
    ds = clean_copy()
    inner = Dataset()
    deeper = Dataset()
    deeper.ReferencedSOPInstanceUID = original.SOPInstanceUID
    deeper.PersonName = "OPHELIANA"
    inner.ReferencedImageSequence = Sequence([deeper])
    ds.DerivationCodeSequence = Sequence([inner])
    codes = {(f.code, f.where) for f in phi_guard.check_output(encode(ds), ids)}
    assert ("phi-guard:uid", "(0008,9215)[0]>(0008,1140)[0]>(0008,1155)") in codes
    assert ("phi-guard:name", "(0008,9215)[0]>(0008,1140)[0]>(0040,A123)") in codes


def test_words_that_merely_contain_a_name_do_not_hit() -> None:
    ds = clean_copy()
    ds.Manufacturer = "ZEBRAFISHES OPHELIANAS"  # letters continue: not the name (and not free text)
    assert phi_guard.check_output(encode(ds), identifiers()) == []


def test_raw_byte_scan_sees_what_a_parser_does_not() -> None:
    ids = identifiers()
    data = encode(clean_copy())
    assert phi_guard.check_bytes(data + b"\x00\x00ZEBRAFISH", ids) == [phi_guard.Finding("phi-guard:name", "bytes")]
    # The pixel data span is skipped: image bytes are not text.
    assert phi_guard.check_bytes(b"ZEBRAFISH" + data, ids, skip=(0, 9)) == []


def test_private_and_un_values_are_scanned() -> None:
    ds = clean_copy()
    ds.private_block(0x0011, "ACME", create=True).add_new(0x01, "UN", b"id SYN48151623 ")
    findings = phi_guard.check_output(encode(ds), identifiers())
    assert {"code": "phi-guard:patient_id", "where": "(0011,1001)"} in [f.as_dict() for f in findings]


def test_policy_can_retain_uids_and_institution() -> None:
    original = base_dataset()
    ids = phi_guard.collect_identifiers(original)
    ds = clean_copy()
    ds.StudyInstanceUID = original.StudyInstanceUID
    ds.InstitutionName = original.InstitutionName
    assert {f.code for f in phi_guard.check_output(encode(ds), ids)} == {"phi-guard:uid", "phi-guard:institution"}
    policy = phi_guard.GuardPolicy(uids=False, institution=False)
    assert phi_guard.check_output(encode(ds), ids, policy) == []


def test_unparseable_output_is_a_finding() -> None:
    assert phi_guard.check_output(b"garbage", identifiers())[0].code == "phi-guard:unparseable"


def test_guard_shares_no_code_with_the_rule_engine() -> None:
    for source in GUARD_DIR.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                # connector.vocabulary (a word list), connector.shipped (where data files are) and the
                # settings sections (plain values, e.g. [deid] ocr's scopes) are data only: the guard shares
                # them with the cleaner, never the cleaner's code.
                assert (not node.module.startswith("connector.") or node.module.startswith("connector.phi_guard")
                        or node.module.startswith("connector.settings.")
                        or node.module in ("connector.vocabulary", "connector.shipped")), (source.name, node.module)
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("connector.deid") for a in node.names)
