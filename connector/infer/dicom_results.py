"""A scored series as standard DICOM: a TID 1500 Measurement Report SR and a SEG of the scored calcium.

Why DICOM: clinicians read DICOM, and registries that pool AI results across sites expect coded
measurements (TID 1500), not a private JSON shape. Both objects are built with highdicom from the
ORIGINAL CT slices (same patient, study and frame of reference), so they belong to the scan they
describe; the daemon then passes them through the same de-identification stage as the images
(pseudonym, shifted dates, remapped UIDs and references, PHI guard) before anything leaves.

The SR (Comprehensive 3D SR, TID 1500) holds one measurement group (TID 1501) for the series:
- Calcium score (DCM 112058), method Agatston scoring method (DCM 112055), no units;
- Calcium volume (DCM 122660) in mm3; Number of calcifications (DCM 111038): the scored lesions
  (per-slice 8-connected lesions, as counted in the JSON result);
- the category as a qualitative evaluation (local codes ``99SITECONN``: DICOM has no code for the
  0 / 1-100 / 101-400 / >400 bands);
- finding type vascular calcification, finding site coronary artery;
- algorithm identification (TID 4019): the model's name and version, its SHA-256 and its
  validated-for-clinical-use flag as parameters;
- evidence: every CT slice of the scored series.

The SEG has one segment per Agatston density weight present (label "Agatston weight N"), so the score
can be recomputed from the SEG alone (sum of area x weight x increment / 3 mm) and a viewer shows
which density band each lesion fell in; no SEG is built when nothing was scored (a SEG must hold at
least one segment with pixels; the SR still says 0).

UIDs are derived from the series, the model and the slices scored: processing the same study again
gives the same SOP Instance UIDs, and a different result (more slices, another model) new ones. The
dates and times highdicom stamps with "now" are set to the scan's (its content, else series, else
study date and time), so the same study gives byte-identical objects: a study processed again after
a crash re-sends exactly what the registry may already hold, never a conflicting copy.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr.coding import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from connector.infer.results import SeriesResult

if TYPE_CHECKING:
    from connector.config import Config
    from connector.deid.engine import DeidEngine
    from connector.deid.provider import IdentityProvider

MANUFACTURER = "site-connector"
LOCAL_SCHEME = "99SITECONN"
SR_SERIES_NUMBER = 9901
SEG_SERIES_NUMBER = 9902

CALCIUM_SCORE = CodedConcept("112058", "DCM", "Calcium score")
AGATSTON_METHOD = CodedConcept("112055", "DCM", "Agatston scoring method")
CALCIUM_VOLUME = CodedConcept("122660", "DCM", "Calcium volume")
NUMBER_OF_CALCIFICATIONS = CodedConcept("111038", "DCM", "Number of calcifications")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
CUBIC_MM = CodedConcept("mm3", "UCUM", "cubic millimeter")
CATEGORY = CodedConcept("CACCAT", LOCAL_SCHEME, "Agatston score category")
CATEGORY_CODES = {
    "0": CodedConcept("CAC-0", LOCAL_SCHEME, "Agatston score 0"),
    "1-100": CodedConcept("CAC-1-100", LOCAL_SCHEME, "Agatston score 1 to 100"),
    "101-400": CodedConcept("CAC-101-400", LOCAL_SCHEME, "Agatston score 101 to 400"),
    ">400": CodedConcept("CAC-GT400", LOCAL_SCHEME, "Agatston score above 400"),
}
CT_CHEST = CodedConcept("24627-2", "LN", "CT Chest")
WEIGHT_BANDS = {1: "130-199 HU", 2: "200-299 HU", 3: "300-399 HU", 4: ">= 400 HU"}
TRACKING_IDENTIFIER = "Coronary artery calcium"
RESULTS_RULES = "connector-results.yaml"  # appended to the site's profile for these objects only


@dataclass(frozen=True)
class ResultObjects:
    """The SR, and the SEG when anything was scored; both still carry the original identifiers."""

    sr: Dataset
    seg: Dataset | None

    def datasets(self) -> list[Dataset]:
        return [self.sr] if self.seg is None else [self.sr, self.seg]


def _uid(*parts: str) -> str:
    """A 2.25 UID from a hash of its inputs (never a patient value in clear)."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _algorithm_texts(model: dict[str, Any]) -> tuple[str, str, list[str]]:
    name, version = str(model.get("name", "cac")), str(model.get("version", ""))
    flag = str(model.get("validated_for_clinical_use", False)).lower()
    return name, version, [f"sha256={model.get('sha256', '')}", f"validated_for_clinical_use={flag}"]


def connector_texts(model: dict[str, Any]) -> frozenset[str]:
    """Every TEXT value :func:`build_result_objects` writes for ``model``: all from the manifest or
    constants, none from the patient's record. The results engine's PHI guard exempts exactly these
    from its free-text shape check (a SHA-256 looks like a digit run); it still searches them for
    every identifier of the patient."""
    name, version, parameters = _algorithm_texts(model)
    return frozenset({name, version, *parameters, TRACKING_IDENTIFIER, f"{MANUFACTURER} CAC", MANUFACTURER})


def results_engine(config: Config, provider: IdentityProvider, model: dict[str, Any]) -> DeidEngine:
    """The de-identification engine for the connector's own SR and SEG: the site's profile (the same
    pseudonym, date offset and UID mapping as the images) plus ``rules/connector-results.yaml``."""
    from connector.deid.engine import DeidEngine
    from connector.deid.profile import default_rules_path, load_profile
    from connector.deid.rule_sources import rule_paths, vocabulary_files
    from connector.vocabulary import load_vocabulary

    paths = [*rule_paths(config), default_rules_path().parent / RESULTS_RULES]
    vocabulary = load_vocabulary(config.deid.extra_vocabulary, vocabulary_files(config))
    return DeidEngine(load_profile(paths), provider, site_id=config.site.id, fsync=config.storage.fsync,
                      vocabulary=vocabulary, allowed_texts=connector_texts(model))


def read_sources(paths: Sequence[Path]) -> list[Dataset]:
    """The CT slices' headers, in the volume's order (pixels are not needed to reference them)."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


# Attributes highdicom reads from the sources to build the SR and SEG: the patient and study ones
# it copies from the first, and the slice thickness of each (the SEG's pixel measures). PS3.3 makes
# them type 2 in a CT (present, may be empty) and scanners and PACS do omit them; highdicom reads
# them as attributes, so one absent raised and, before stages were isolated, held the images back.
TYPE2_READ = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
              "ReferringPhysicianName", "StudyID", "AccessionNumber", "SliceThickness")
PATIENT_SEX_VALUES = {"M", "F", "O"}


def complete_type2(sources: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the source headers with every attribute of :data:`TYPE2_READ` present: absent ones
    become empty (what type 2 allows), and a PatientSex outside M/F/O becomes empty too (highdicom
    checks the enumeration). The sources themselves are not changed; UIDs and geometry are kept."""
    out = []
    for source in sources:
        ds = copy.copy(source)  # shallow: only top-level elements are added or replaced
        for keyword in TYPE2_READ:
            if keyword not in ds or ds[keyword].value is None:
                setattr(ds, keyword, "")
        if str(ds.PatientSex).strip().upper() not in PATIENT_SEX_VALUES:
            ds.PatientSex = ""
        out.append(ds)
    return out


def build_result_objects(result: SeriesResult, sources: Sequence[Dataset]) -> ResultObjects:
    """SR (and SEG) for one scored series; ``sources`` are its slices in the volume's order.

    Any valid CT will do: type 2 attributes the slices omit are supplied empty (:func:`complete_type2`).
    """
    if not result.ok or result.agatston is None or result.scored_calcium is None:
        raise ValueError("only a scored series has DICOM results")
    if len(sources) != (result.slices or len(sources)):
        raise ValueError("one source dataset per scored slice")
    sources = complete_type2(sources)
    model = result.model
    sha = str(model.get("sha256", ""))
    series_uid = str(sources[0].SeriesInstanceUID)
    key = [series_uid, sha, str(model.get("version", "")), *sorted(str(s.SOPInstanceUID) for s in sources)]
    name, version, parameters = _algorithm_texts(model)
    algorithm = hd.sr.AlgorithmIdentification(name=name, version=version, parameters=parameters)
    score = result.agatston
    category = score.category
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid("tracking", *key), identifier=TRACKING_IDENTIFIER),
        finding_type=codes.SCT.VascularCalcification,
        finding_sites=[hd.sr.FindingSite(codes.SCT.CoronaryArtery)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=CALCIUM_SCORE, value=round(score.score, 3), unit=NO_UNITS, method=AGATSTON_METHOD),
            hd.sr.Measurement(name=CALCIUM_VOLUME, value=round(score.volume_mm3, 3), unit=CUBIC_MM),
            hd.sr.Measurement(name=NUMBER_OF_CALCIFICATIONS, value=score.lesion_count, unit=NO_UNITS),
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=CATEGORY, value=CATEGORY_CODES[category])],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("device", MANUFACTURER, str(model.get("name", ""))),
            name=f"{MANUFACTURER} CAC",
            manufacturer_name=MANUFACTURER,
            model_name=str(model.get("name", "cac")),
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CT_CHEST,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources),
        content=report,
        series_instance_uid=_uid("sr-series", *key),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid("sr", *key),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="CAC Agatston SR",
    )
    seg = _build_seg(result, sources, key, algorithm)
    for ds in (sr, seg):
        if ds is not None:
            _settle(ds, sources[0], key)
    return ResultObjects(sr=sr, seg=seg)


def _scan_date_time(source: Dataset) -> tuple[str, str]:
    for date, time in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime")):
        if source.get(date):
            return str(source.get(date)), str(source.get(time, "") or "000000")
    return "19000101", "000000"


def _settle(ds: Dataset, source: Dataset, key: list[str]) -> None:
    """Replace highdicom's "now" stamps and random dimension UID with values fixed by the input."""
    date, time = _scan_date_time(source)
    for date_kw, time_kw in (("ContentDate", "ContentTime"), ("InstanceCreationDate", "InstanceCreationTime")):
        if date_kw in ds or time_kw in ds:
            setattr(ds, date_kw, date)
            setattr(ds, time_kw, time)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time
    organization = _uid("dimension-organization", *key)
    for seq in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in ds.get(seq, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = organization


def _build_seg(result: SeriesResult, sources: Sequence[Dataset], key: list[str],
               algorithm: hd.sr.AlgorithmIdentification) -> Dataset | None:
    scored = result.scored_calcium
    assert scored is not None
    present = sorted(int(w) for w in np.unique(scored.weights) if w)
    if not present:
        return None
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    labels = np.zeros((len(sources), rows, cols), dtype=np.uint8)
    segment_of = {w: i + 1 for i, w in enumerate(present)}
    for k, index in enumerate(scored.slice_indices):
        for w, number in segment_of.items():
            labels[index][scored.weights[k] == w] = number
    model = result.model
    algorithm_seq = hd.AlgorithmIdentificationSequence(
        name=str(model.get("name", "cac")),
        family=codes.cid7162.ArtificialIntelligence,
        version=str(model.get("version", "")),
        parameters={"sha256": str(model.get("sha256", ""))},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=segment_of[w],
            segment_label=f"Agatston weight {w}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.PathologicCalcification,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_seq,
            tracking_uid=_uid("segment", str(w), *key),
            tracking_id=f"Coronary calcium weight {w} ({WEIGHT_BANDS[w]})",
            anatomic_regions=[codes.SCT.CoronaryArtery],
        )
        for w in present
    ]
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_uid("seg-series", *key),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=_uid("seg", *key),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=str(model.get("name", "cac")),
        software_versions=str(model.get("version", "")),
        device_serial_number="0",
        series_description="CAC scored calcium",
        omit_empty_frames=True,
    )
