"""Write a rendered phantom as a synthetic CT attenuation-correction DICOM series (tests, bench, demo).

All identifiers are generated and obviously fake. The files look like a SPECT/CT or PET/CT CTAC
series (axial, ORIGINAL/PRIMARY/AXIAL, 16-bit signed with a -1024 rescale intercept) and can be
written in any transfer syntax pydicom can encode here (explicit VR little endian, RLE, JPEG 2000).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from connector.synthetic.phantoms import Phantom
from connector.synthetic.studies import with_file_meta



def write_phantom_series(
    hu: np.ndarray,
    z_positions: Sequence[float],
    pixel_spacing: float,
    folder: Path,
    *,
    thickness: float | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    description: str = "CTAC 3.0 mm",
    transfer_syntax: str = ExplicitVRLittleEndian,
    shuffle_seed: int | None = 0,
    extra: dict[str, object] | None = None,
) -> list[Path]:
    """One file per slice. File names are shuffled (seeded) so loaders cannot rely on file order."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    n, rows, cols = hu.shape
    steps = np.diff(np.asarray(z_positions, dtype=float))
    thickness = float(thickness if thickness is not None else (np.median(steps) if len(steps) else 3.0))
    names = np.arange(n)
    if shuffle_seed is not None:
        names = np.random.default_rng(shuffle_seed).permutation(n)
    paths = []
    origin = -(np.array([cols, rows]) - 1) / 2.0 * pixel_spacing
    frame_of_reference = study_uid + ".1" if len(study_uid) < 60 else generate_uid()  # one per series
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PatientName = "SYNTH^PHANTOM"
        ds.PatientID = "PHANTOM0001"
        ds.PatientBirthDate = "19500101"
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = "20240101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.AccessionNumber = "SYNTH0001"
        ds.StudyID = "1"
        ds.Modality = "CT"
        ds.Manufacturer = "SYNTHETIC PHANTOM"
        ds.SeriesDescription = description
        ds.SeriesNumber = 2
        ds.InstanceNumber = i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(z_positions[i])]
        ds.SliceLocation = float(z_positions[i])
        ds.SliceThickness = thickness
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
        ds.KVP = 120
        ds.PatientPosition = "FFS"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        stored = (np.asarray(hu[i], dtype=np.int32) + 1024).clip(-32768, 32767).astype(np.int16)
        ds.PixelData = stored.tobytes()
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        with_file_meta(ds)
        if UID(transfer_syntax) != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        path = folder / f"CT{int(names[i]):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_phantom(ph: Phantom, folder: Path, **kw: object) -> list[Path]:
    """Write a rendered :class:`Phantom` (its HU volume, positions and spacing)."""
    return write_phantom_series(ph.hu, ph.z_positions, ph.pixel_spacing, folder, **kw)  # type: ignore[arg-type]
