"""Synthetic, clearly fake DICOM studies for tests, benchmarks and the demo.

Every identifier is generated (``SYNTH^...`` names, random IDs), so nothing here is real patient
data. The objects are realistic enough to exercise the pipeline: a CT attenuation-correction
series (512x512, 16-bit, ~0.5 MB per slice) and a PET series sharing frame of reference and study.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1432.1"  # used only in synthetic file meta


@dataclass
class SyntheticPatient:
    """A made-up patient. Values are deliberately distinctive so a byte scan can find leaks."""

    patient_id: str = field(default_factory=lambda: f"SYN{random.randint(10**7, 10**8 - 1)}")
    family: str = field(default_factory=lambda: random.choice(["ZEBRAFISH", "QUOKKAWILD", "NARWHALSON"]))
    given: str = field(default_factory=lambda: random.choice(["OPHELIANA", "BARTHOLOMEW", "GWENDOLYN"]))
    birth_date: str = "19470312"
    sex: str = "F"
    issuer: str = "SYNTH-HOSPITAL"

    @property
    def name(self) -> str:
        return f"{self.family}^{self.given}"


@dataclass
class SyntheticStudy:
    patient: SyntheticPatient = field(default_factory=SyntheticPatient)
    study_uid: str = field(default_factory=generate_uid)
    accession: str = field(default_factory=lambda: f"ACC{random.randint(10**6, 10**7 - 1)}")
    study_date: str = "20240115"
    study_time: str = "083015.123456"
    institution: str = "SYNTHETIC GENERAL HOSPITAL"
    frame_of_reference_uid: str = field(default_factory=generate_uid)


def _base(study: SyntheticStudy, sop_class: str, modality: str, series_uid: str, number: int) -> Dataset:
    ds = Dataset()
    p = study.patient
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.AcquisitionDate = study.study_date
    ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = study.institution
    ds.ReferringPhysicianName = "REFERRER^SYNTHETIC"
    ds.StudyDescription = "PET CT CARDIAC REST STRESS"
    ds.SeriesDescription = "CTAC 3.0 mm" if modality == "CT" else "PET AC"
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = p.issuer
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.PatientAge = "077Y"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2 if modality == "CT" else 3
    ds.InstanceNumber = number
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PatientPosition = "FFS"
    return ds


def with_file_meta(ds: Dataset) -> Dataset:
    """Explicit VR little endian file meta for a synthetic object."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def ct_slices(study: SyntheticStudy, count: int, rows: int = 512, cols: int = 512,
              thickness: float = 3.0, seed: int = 0) -> Iterator[Dataset]:
    """A CT attenuation-correction series: soft-tissue body ellipse with noise, air outside."""
    rng = np.random.default_rng(seed)
    series_uid = generate_uid()
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = ((yy - rows / 2) / (rows * 0.38)) ** 2 + ((xx - cols / 2) / (cols * 0.45)) ** 2 <= 1
    for i in range(count):
        ds = _base(study, CTImageStorage, "CT", series_uid, i + 1)
        hu = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-15, 16, (rows, cols), dtype=np.int16)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "CT_SOM5 SPI"]
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.KVP = 120
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.ImagePositionPatient = [-250.0, -250.0, -float(i) * thickness]
        ds.SliceLocation = -float(i) * thickness
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.RescaleType = "HU"
        ds.ConvolutionKernel = "B30f"
        ds.PixelData = hu.tobytes()
        yield with_file_meta(ds)


def pet_slices(study: SyntheticStudy, count: int, size: int = 128, seed: int = 1) -> Iterator[Dataset]:
    """A PET series with radiopharmaceutical timing (start time matters for SUV)."""
    rng = np.random.default_rng(seed)
    series_uid = generate_uid()
    for i in range(count):
        ds = _base(study, PositronEmissionTomographyImageStorage, "PT", series_uid, i + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.Units = "BQML"
        ds.DecayCorrection = "START"
        ds.CorrectedImage = ["ATTN", "DECY"]
        info = Dataset()
        info.Radiopharmaceutical = "Rubidium-82"
        info.RadiopharmaceuticalStartTime = "082900.000000"
        info.RadiopharmaceuticalStartDateTime = study.study_date + "082900.000000"
        info.RadionuclideTotalDose = 1.1e9
        info.RadionuclideHalfLife = 76.0
        ds.RadiopharmaceuticalInformationSequence = [info]
        ds.AcquisitionTime = "083000.000000"
        ds.SliceThickness = 3.27
        ds.PixelSpacing = [3.18, 3.18]
        ds.ImagePositionPatient = [-203.0, -203.0, -float(i) * 3.27]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope = 0, 0.5
        ds.NumberOfSlices = count
        ds.PixelData = rng.integers(0, 3000, (size, size), dtype=np.uint16).tobytes()
        yield with_file_meta(ds)


def write_series(datasets: Iterator[Dataset], folder: Path, prefix: str = "IMG") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{prefix}{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_pet_ct_study(folder: Path, study: SyntheticStudy | None = None, ct_count: int = 40,
                       pet_count: int = 20, ct_rows: int = 512) -> tuple[SyntheticStudy, list[Path]]:
    """Write a PET/CT study (CTAC + PET) into ``folder``; returns the study and the file paths."""
    study = study or SyntheticStudy()
    paths = write_series(ct_slices(study, ct_count, rows=ct_rows, cols=ct_rows), folder / "ct", "CT")
    paths += write_series(pet_slices(study, pet_count), folder / "pt", "PT")
    return study, paths


def today_da() -> str:
    return dt.date.today().strftime("%Y%m%d")
