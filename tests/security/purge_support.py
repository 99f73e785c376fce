"""A secondary capture of a synthetic study: an object de-identification always quarantines
(burned-in text risk, whatever BurnedInAnnotation says), so tests can make quarantine entries the
way the pipeline does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from connector.synthetic import SyntheticStudy, with_file_meta

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def secondary_capture(study: SyntheticStudy, path: Path, number: int = 1) -> Path:
    """Write a small SC of ``study``'s patient into ``path`` (its own series and SOP Instance UID)."""
    p = study.patient
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = p.issuer
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.StudyID = "1"
    ds.SeriesNumber = 90 + number
    ds.InstanceNumber = number
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.full((16, 16), number * 10, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with_file_meta(ds).save_as(path, enforce_file_format=True)
    return path
