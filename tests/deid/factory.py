"""Synthetic DICOM objects with planted, clearly fake identifiers for the de-identification tests.

Every identifier is made up and distinctive (ZEBRAFISH, SYN48151623, ...), so a byte scan of an
output can tell a leak from a coincidence.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

ORG = "1.2.826.0.1.3680043.10.1432.99."  # test-only UID root


@dataclass(frozen=True)
class Planted:
    family: str = "ZEBRAFISH"
    given: str = "OPHELIANA"
    patient_id: str = "SYN48151623"
    other_id: str = "OTH77123456"
    issuer: str = "QUOKKAMRN"
    accession: str = "ACC9081726"
    birth_date: str = "19470312"
    institution: str = "NARWHAL VALLEY HOSPITAL"
    referrer: str = "PLATYPUSKY^BARTHOLOMEW"

    @property
    def name(self) -> str:
        return f"{self.family}^{self.given}"

    def strings(self) -> list[str]:
        """Every planted value as it could appear in bytes (for leak scans)."""
        return [self.family, self.given, self.patient_id, self.other_id, self.issuer, self.accession,
                self.birth_date, self.institution, "PLATYPUSKY", "BARTHOLOMEW"]


@dataclass
class StudyUids:
    study: str = field(default_factory=lambda: generate_uid(ORG))
    series: str = field(default_factory=lambda: generate_uid(ORG))
    frame_of_reference: str = field(default_factory=lambda: generate_uid(ORG))


def base_dataset(p: Planted = Planted(), uids: StudyUids | None = None, *, modality: str = "CT",
                 sop_class: str = CTImageStorage, study_date: str = "20240115", instance: int = 1,
                 pixels: bool = True) -> Dataset:
    uids = uids or StudyUids()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(ORG)
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.AcquisitionDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "083015.123456"
    ds.AcquisitionDateTime = study_date + "083015.123456+0100"
    ds.AccessionNumber = p.accession
    ds.Modality = modality
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = p.institution
    ds.InstitutionAddress = "1 Quokka Road"
    ds.ReferringPhysicianName = p.referrer
    ds.StationName = "CT-STATION-7"
    ds.StudyDescription = f"CARDIAC CT {p.family} {p.patient_id}"
    ds.SeriesDescription = f"CAC 3.0 mm born {p.birth_date[:4]}-{p.birth_date[4:6]}-{p.birth_date[6:]}"
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = p.issuer
    ds.OtherPatientIDs = p.other_id
    other = Dataset()
    other.PatientID = p.other_id
    other.IssuerOfPatientID = p.issuer
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = "077Y"
    ds.PatientWeight = 71.5
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.StudyID = "STUDY" + p.patient_id[-4:]
    ds.SeriesNumber = 2
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = 120
    ds.SliceThickness = 3.0
    ds.PixelSpacing = [0.75, 0.75]
    ds.ImagePositionPatient = [-100.0, -100.0, -3.0 * instance]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if pixels:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.arange(256, dtype=np.int16) * 7).tobytes()
    return ds


def add_private(ds: Dataset) -> None:
    """A private block with an identifier, a private sequence hiding one, and a safe GE attribute."""
    block = ds.private_block(0x0011, "ACME PHI STUFF", create=True)
    block.add_new(0x01, "LO", Planted().family + " private copy")
    inner = Dataset()
    inner.PatientName = Planted().name
    inner.add_new(0x00091010, "LO", "padding")  # a private tag without creator: orphan
    block.add_new(0x02, "SQ", Sequence([inner]))
    ge = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    ge.add_new(0x23, "DS", "39.37")  # Table Speed: on the safe private list
    ge.add_new(0x10, "LO", Planted().patient_id)  # not on the list


def nest_phi(ds: Dataset, depth: int) -> None:
    """PHI ``depth`` sequence levels down (1 = in an item of a top-level sequence), in sequences
    the PS3.15 table does not list, so only rules applied at every depth can find it."""
    leaf = Dataset()
    leaf.PatientName = Planted().name
    leaf.PatientID = Planted().patient_id
    leaf.PatientBirthDate = Planted().birth_date
    leaf.InstitutionName = Planted().institution
    node = leaf
    keywords = ["PurposeOfReferenceCodeSequence", "AnatomicRegionSequence", "ConceptNameCodeSequence"]
    for level in range(depth - 1):
        holder = Dataset()
        holder.CodeValue = f"L{level}"
        holder.CodingSchemeDesignator = "99TEST"
        holder.CodeMeaning = "level"
        setattr(holder, keywords[level % 3], Sequence([node]))
        node = holder
    ds.DerivationCodeSequence = Sequence([node])


def encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = ORG + "1"
    meta.SourceApplicationEntityTitle = "QUOKKA_PACS"
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def leaks(data: bytes, planted: Planted = Planted()) -> list[str]:
    """Planted values found in ``data`` (case-insensitive), for assertions."""
    upper = data.upper()
    return [s for s in planted.strings() if s.upper().encode() in upper]


ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def _code(value: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, "DCM", meaning
    return c


def enhanced_ct(index: int, frames: int, size: int = 64) -> Dataset:
    """A synthetic Enhanced CT object: per-frame groups nesting four levels, clearly fake identifiers."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = generate_uid(ORG)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
    ds.StudyTime = ds.ContentTime = "083015"
    ds.AcquisitionDateTime = "20240115083015.000000"
    ds.AccessionNumber = "ACC5550199"
    ds.Modality = "CT"
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = "BENCHMARK GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "REFERRER^SYNTHETIC"
    ds.StudyDescription = "CARDIAC CT CALCIUM SCORE"
    ds.SeriesDescription = "CAC 3.0 mm"
    ds.PatientName = "BENCHMARKOV^SYNTHETICA"
    ds.PatientID = f"BENCH{index % 7:04d}"
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "M"
    ds.PatientAge = "074Y"
    ds.StudyInstanceUID = ORG + "7001"
    ds.SeriesInstanceUID = ORG + "7002"
    ds.FrameOfReferenceUID = ORG + "7003"
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = frames
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.7, 0.7]
    measures.SliceThickness = 3.0
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for f in range(frames):
        group = Dataset()
        content = Dataset()
        content.FrameAcquisitionDateTime = f"20240115083{f // 60 % 10}{f % 60:02d}.500000"
        content.FrameReferenceDateTime = content.FrameAcquisitionDateTime
        content.FrameAcquisitionNumber = f + 1
        content.DimensionIndexValues = [1, f + 1]
        group.FrameContentSequence = Sequence([content])
        position = Dataset()
        position.ImagePositionPatient = [-100.0, -100.0, -3.0 * f]
        group.PlanePositionSequence = Sequence([position])
        source = Dataset()
        source.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        source.ReferencedSOPInstanceUID = f"{ORG}4.{index}.{f}"
        source.PurposeOfReferenceCodeSequence = Sequence([_code("121322", "Source image for processing")])
        derivation = Dataset()
        derivation.DerivationCodeSequence = Sequence([_code("113076", "Segmentation")])
        derivation.SourceImageSequence = Sequence([source])
        group.DerivationImageSequence = Sequence([derivation])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = (np.arange(size * size * frames, dtype=np.uint16) % 4096).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def undefined_lengths(ds: Dataset) -> None:
    """Encode every sequence and item with undefined length, as most modalities do."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                undefined_lengths(item)
