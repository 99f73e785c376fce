"""Objects built as scanners write them (every module of the IOD filled in), for the validity tests.

Each builder returns a dataset that dciodvfy finds (nearly) valid, carrying the attributes whose
de-identification used to break validity: a ReferencedStudySequence with an item, Manufacturer,
StudyTime, an AcquisitionContextSequence, ContentDate/ContentTime and (raw data) CreatorVersionUID.
The identifiers are the planted fakes of :mod:`tests.deid.factory`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.deid.factory import ORG, Planted

CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR = "1.2.840.10008.5.1.4.1.1.4"
PET = "1.2.840.10008.5.1.4.1.1.128"
NM = "1.2.840.10008.5.1.4.1.1.20"
RAW_DATA = "1.2.840.10008.5.1.4.1.1.66"
STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.2"  # Detached Study Management (retired), what scanners still write


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _common(sop_class: str, modality: str, study: str, p: Planted) -> Dataset:
    """Patient, General Study, General Series, General Equipment and SOP Common, as a scanner fills them."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(ORG)
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20240115", "083100"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = "083015", "083500", "083612"
    ds.AccessionNumber = p.accession
    ds.Modality = modality
    ds.Manufacturer = "SYNTHETIC MEDICAL"
    ds.InstitutionName = p.institution
    ds.ReferringPhysicianName = p.referrer
    ds.StationName = "SCANNER7"
    ds.StudyDescription = "CARDIAC"
    ds.ManufacturerModelName = "Model 9"
    ref = Dataset()
    ref.ReferencedSOPClassUID = STUDY_COMPONENT
    ref.ReferencedSOPInstanceUID = generate_uid(ORG)
    ds.ReferencedStudySequence = Sequence([ref])
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = p.issuer
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = "076Y"
    ds.DeviceSerialNumber = "SN123"
    ds.SoftwareVersions = "VA10"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid(ORG)
    ds.StudyID = "S4711"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    ds.Laterality = ""
    ds.PatientPosition = "FFS"
    return ds


def _plane(ds: Dataset, rows: int = 16) -> None:
    ds.FrameOfReferenceUID = generate_uid(ORG)
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [-100, -100, 50]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 3
    ds.PatientOrientation = ""
    ds.AcquisitionDate, ds.AcquisitionTime = "20240115", "083600"
    _pixels(ds, rows)


def _pixels(ds: Dataset, rows: int = 16, frames: int = 1) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(rows * rows * frames, dtype=np.uint16).tobytes()


def ct(study: str, p: Planted = Planted()) -> Dataset:
    """CT Image IOD (PS3.3 A.3)."""
    ds = _common(CT, "CT", study, p)
    _plane(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    return ds


def mr(study: str, p: Planted = Planted()) -> Dataset:
    """MR Image IOD (PS3.3 A.4)."""
    ds = _common(MR, "MR", study, p)
    _plane(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 4.2, 1.8, 1
    ds.AcquisitionNumber = 1
    return ds


def pet(study: str, p: Planted = Planted()) -> Dataset:
    """PET Image IOD (PS3.3 A.21)."""
    ds = _common(PET, "PT", study, p)
    _plane(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Units, ds.CountsSource, ds.SeriesType = "BQML", "EMISSION", ["STATIC", "IMAGE"]
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.DecayCorrection = "START"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.NumberOfSlices = 1
    ds.CollimatorType = "NONE"
    ds.ReconstructionMethod = "OSEM"
    ds.AttenuationCorrectionMethod = "CT"
    ds.ScatterCorrectionMethod = "MODEL"
    ds.DecayFactor = 1.0
    ds.DoseCalibrationFactor = 1.0
    ds.FrameReferenceTime = 0
    ds.ActualFrameDuration = 120000
    ds.ImageIndex = 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PrimaryPromptsCountsAccumulated = 1000
    ds.AxialAcceptance = 20
    ds.AxialMash = [5, 6]
    ds.TransverseMash = 1
    ds.DetectorElementSize = [4, 4]
    ds.CoincidenceWindowWidth = 4.5
    ds.SecondaryCountsType = ["DLYD_COUNTS"]
    ds.SliceSensitivityFactor = 1
    drug = Dataset()
    drug.Radiopharmaceutical = "Fluorodeoxyglucose F^18^"
    drug.RadiopharmaceuticalStartTime = "080000"
    drug.RadionuclideTotalDose = 3.7e8
    drug.RadionuclideHalfLife = 6586.2
    drug.RadionuclidePositronFraction = 0.97
    drug.RadionuclideCodeSequence = Sequence([_code("C-111A1", "SRT", "^18^Fluorine")])
    drug.RadiopharmaceuticalAdministrationEventUID = generate_uid(ORG)
    ds.RadiopharmaceuticalInformationSequence = Sequence([drug])
    ds.PatientOrientationCodeSequence = Sequence([_code("F-10450", "SRT", "recumbent")])
    ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = Sequence(
        [_code("F-10340", "SRT", "supine")])
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code("F-10470", "SRT", "feet-first")])
    del ds.PatientPosition  # NM/PET Patient Orientation codes it instead
    return ds


def nm(study: str, p: Planted = Planted()) -> Dataset:
    """NM Image IOD (PS3.3 A.5), a static image."""
    ds = _common(NM, "NM", study, p)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    _pixels(ds, 16, 1)
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]
    ds.EnergyWindowVector = [1]
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = [1]
    ds.NumberOfDetectors = 1
    ds.PixelSpacing = [4, 4]
    ds.AcquisitionDate, ds.AcquisitionTime = "20240115", "083600"
    ds.ActualFrameDuration = 60000
    ds.CountsAccumulated = 100000
    ds.PatientOrientation = ""
    window = Dataset()
    limits = Dataset()
    limits.EnergyWindowLowerLimit, limits.EnergyWindowUpperLimit = 126, 154
    window.EnergyWindowRangeSequence = Sequence([limits])
    window.EnergyWindowName = "TC99M"
    ds.EnergyWindowInformationSequence = Sequence([window])
    drug = Dataset()
    drug.RadionuclideCodeSequence = Sequence([_code("C-163A8", "SRT", "^99m^Technetium")])
    drug.RadiopharmaceuticalStartTime = "073000"
    ds.RadiopharmaceuticalInformationSequence = Sequence([drug])
    detector = Dataset()
    detector.ImagePositionPatient = [0, 0, 0]
    detector.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    detector.CollimatorType = "PARA"
    ds.DetectorInformationSequence = Sequence([detector])
    ds.PatientOrientationCodeSequence = Sequence([_code("F-10450", "SRT", "recumbent")])
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code("F-10470", "SRT", "feet-first")])
    del ds.PatientPosition
    return ds


def raw_data(study: str, p: Planted = Planted()) -> Dataset:
    """Raw Data IOD (PS3.3 A.37): ContentDate, ContentTime and CreatorVersionUID are type 1."""
    ds = _common(RAW_DATA, "CT", study, p)
    ds.CreatorVersionUID = generate_uid(ORG)
    ds.FrameOfReferenceUID = generate_uid(ORG)
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionContextSequence = Sequence([])
    return ds


def enhanced_ct(study: str, p: Planted = Planted()) -> Dataset:
    """Enhanced CT Image IOD (PS3.3 A.38), two frames with shared and per-frame functional groups."""
    ds = _common(ENHANCED_CT, "CT", study, p)
    del ds.Laterality
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.FrameOfReferenceUID = generate_uid(ORG)
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionContextSequence = Sequence([])
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = "20240115083600"
    ds.AcquisitionDuration = 2.0
    ds.ContentQualification = "PRODUCT"
    ds.ImageComments = ""
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.PixelPresentation = "MONOCHROME"
    _pixels(ds, 16, 2)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (np.arange(16 * 16 * 2, dtype=np.uint16) % 4096).tobytes()
    ds.NumberOfFrames = 2
    ds.DimensionOrganizationType = "3D"
    org = generate_uid(ORG)
    org_item = Dataset()
    org_item.DimensionOrganizationUID = org
    ds.DimensionOrganizationSequence = Sequence([org_item])
    dim = Dataset()
    dim.DimensionOrganizationUID = org
    dim.DimensionIndexPointer = 0x00209157 & 0 | 0x00200032
    dim.FunctionalGroupPointer = 0x00209113
    ds.DimensionIndexSequence = Sequence([dim])
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.7, 0.7]
    measures.SliceThickness = 3
    shared.PixelMeasuresSequence = Sequence([measures])
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orient])
    rescale = Dataset()
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = -1024, 1, "HU"
    shared.PixelValueTransformationSequence = Sequence([rescale])
    window = Dataset()
    window.WindowCenter, window.WindowWidth = 40, 400
    shared.FrameVOILUTSequence = Sequence([window])
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = Sequence([_code("T-D3000", "SRT", "Chest")])
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = Sequence([anatomy])
    ct_type = Dataset()
    ct_type.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ct_type.PixelPresentation, ct_type.VolumetricProperties = "MONOCHROME", "VOLUME"
    ct_type.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = Sequence([ct_type])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for i in range(2):
        item = Dataset()
        content = Dataset()
        content.FrameAcquisitionDateTime = "20240115083600"
        content.FrameReferenceDateTime = "20240115083600"
        content.FrameAcquisitionDuration = 500
        content.DimensionIndexValues = [i + 1]
        content.FrameAcquisitionNumber = 1
        item.FrameContentSequence = Sequence([content])
        position = Dataset()
        position.ImagePositionPatient = [-100, -100, 50 + 3 * i]
        item.PlanePositionSequence = Sequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


BUILDERS: dict[str, Callable[[str, Planted], Dataset]] = {
    "ct": ct, "mr": mr, "pet": pet, "nm": nm, "enhanced-ct": enhanced_ct, "raw-data": raw_data,
}


def to_file(ds: Dataset) -> Dataset:
    """``ds`` with the file meta a writer needs (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
