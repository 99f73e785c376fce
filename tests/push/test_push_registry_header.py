"""The dev registry's own header reader agrees with pydicom, and hands every odd case to pydicom."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from devregistry.header import index_header
from devregistry.storage import _header_text, _read_header
from connector.synthetic import SyntheticStudy, ct_slices


def _encoded(ds: Dataset, syntax: str, *, sequences: bool = False) -> bytes:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == JPEG2000Lossless:  # encapsulated pixel data (a token fragment): explicit VR LE otherwise
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"
    if sequences:  # before and between the indexed elements; pydicom writes them with undefined length
        ref = Dataset()
        ref.ReferencedSOPInstanceUID = "1.2.3.4"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "X1", "DCM"
        code.ReferencedSOPSequence = Sequence([ref])
        ds.ProcedureCodeSequence = Sequence([code, code])  # (0008,1032), nested
        ds.ReferencedImageSequence = Sequence([ref])  # (0008,1140)
        ds.add_new(0x00111010, "UN", b"\x00" * 6)  # a private-ish element the reader must step over
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def instance() -> Dataset:
    ds = next(iter(ct_slices(SyntheticStudy(), 1)))
    ds.PatientIdentityRemoved = "YES"
    ds.PatientName = ds.PatientID = "PSEUDO01"
    return ds


def _pydicom_view(data: bytes) -> dict[str, str]:
    return _header_text(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless])
@pytest.mark.parametrize("sequences", [False, True])
def test_agrees_with_pydicom(instance: Dataset, syntax: str, sequences: bool) -> None:
    data = _encoded(instance, syntax, sequences=sequences)
    fast = index_header(data)
    assert fast is not None
    assert fast == _pydicom_view(data)
    assert (fast["SOPInstanceUID"], fast["PatientIdentityRemoved"], fast["InstanceNumber"]) == (
        instance.SOPInstanceUID, "YES", str(instance.InstanceNumber))
    assert index_header(memoryview(bytearray(data))[:4096]) == fast  # any buffer; the pixels are not needed


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_syntaxes_go_to_pydicom(instance: Dataset, syntax: str, tmp_path: Path) -> None:
    data = _encoded(instance, syntax)
    assert index_header(data) is None
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    slow = _read_header(path, data)
    assert (slow["SOPInstanceUID"], slow["PatientIdentityRemoved"]) == (instance.SOPInstanceUID, "YES")


def test_truncated_or_foreign_bytes_are_never_misread(instance: Dataset) -> None:
    data = _encoded(instance, ExplicitVRLittleEndian, sequences=True)
    whole = index_header(data)
    for cut in range(0, 1400, 7):
        assert index_header(data[:cut]) in (None, whole)
    assert index_header(b"\x00" * 128 + b"DICM" + b"\xff" * 400) is None
    assert index_header(b"not dicom at all") is None
    unmarked = copy.deepcopy(instance)
    del unmarked.PatientIdentityRemoved
    assert index_header(_encoded(unmarked, ExplicitVRLittleEndian)) is None  # required element missing


def test_file_without_meta_goes_to_pydicom(instance: Dataset, tmp_path: Path) -> None:
    ds = copy.deepcopy(instance)
    ds.file_meta = FileMetaDataset()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    data = buf.getvalue()
    assert index_header(data) is None
