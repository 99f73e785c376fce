"""The ``[cac]`` configuration section: model, runtime and series-selection rules.

Why these knobs: sites differ in scanners and naming, and the model will be replaced by a validated
one; all of that must be changeable in the TOML file (or ``SITE_CONNECTOR__CAC__*``) without code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting

KNOWN_PROVIDERS = {
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
}


@dataclass(frozen=True)
class CacConfig:
    enabled: bool = setting(True, doc="score coronary calcium on eligible CT series of every stable study")
    model_dir: Path | None = setting(
        None, doc="folder with model.onnx + manifest.json; unset = the bundled synthetic-phantom model (not clinical)"
    )
    providers: list[str] = setting(
        [],
        check(lambda v: all(p in KNOWN_PROVIDERS for p in v), f"each must be one of {sorted(KNOWN_PROVIDERS)}"),
        doc="ONNX Runtime execution providers in order of preference; empty = CUDA when available, else CPU",
    )
    threads: int = setting(
        0,
        check(lambda v: 0 <= v <= 256, "must be 0 (runtime default) to 256"),
        doc="ONNX Runtime intra-op threads; 0 = one per core",
    )
    batch_size: int = setting(
        8, check(lambda v: 1 <= v <= 256, "must be between 1 and 256"), doc="slices per inference call"
    )
    min_slice_thickness_mm: float = setting(
        2.0, check(lambda v: v > 0, "must be positive"), doc="thinnest eligible slice thickness"
    )
    max_slice_thickness_mm: float = setting(
        5.0, check(lambda v: v > 0, "must be positive"), doc="thickest eligible slice thickness"
    )
    min_coverage_mm: float = setting(
        80.0,
        check(lambda v: v >= 0, "must be zero or more"),
        doc="minimum extent along the patient axis (the heart must fit)",
    )
    min_slices: int = setting(10, check(lambda v: v >= 3, "must be at least 3"), doc="minimum slices in a series")
    max_tilt_degrees: float = setting(
        10.0,
        check(lambda v: 0 <= v <= 45, "must be between 0 and 45"),
        doc="largest angle between the slice normal and the patient axis (axial only)",
    )
    require_emission_series: bool = setting(
        False, doc="score only PET/CT and SPECT/CT studies (a PT or NM series in the study)"
    )
    require_description_match: bool = setting(
        False, doc="score only series whose description contains a preferred keyword"
    )
    prefer_description_keywords: list[str] = setting(
        ["ctac", "ct ac", "ac", "attenuation", "calcium", "cac", "casc", "ca score", "low dose"],
        doc="whole words of SeriesDescription that rank a series first (case-insensitive; 'cta' does not match 'CTAC')",
    )
    exclude_description_keywords: list[str] = setting(
        ["scout", "topogram", "localizer", "localiser", "surview", "scanogram", "mip", "cta", "angio", "bolus"],
        doc="whole words of SeriesDescription that make a series ineligible",
    )
    retry_attempts: int = setting(
        5,
        check(lambda v: 1 <= v <= 50, "must be between 1 and 50"),
        doc="runs of a study's CAC in all before giving up when it fails (the images are delivered anyway)",
    )
    retry_first_minutes: float = setting(
        10.0,
        check(lambda v: 0 <= v <= 24 * 60, "must be between 0 and 1440"),
        doc="wait before the first retry of a failed CAC; doubles each time, at most 6 hours",
    )
    max_series_per_study: int = setting(
        2,
        check(lambda v: 1 <= v <= 20, "must be between 1 and 20"),
        doc="eligible series scored per study, best-ranked first",
    )


@dataclass(frozen=True)
class ResultsConfig:
    """The ``[results]`` section: where the CAC results go besides the registry."""

    return_to_pacs: bool = setting(
        False,
        doc="also send each CAC SR and SEG, with the patient's ORIGINAL identifiers (built before "
            "de-identification, never through the registry path), to [pacs] by C-STORE through the durable "
            "outbox with retries; NOT for clinical use while the model is the synthetic one",
    )
    allow_unvalidated_model: bool = setting(
        False,
        doc="RESEARCH USE ONLY: let return_to_pacs start with a CAC model whose manifest says it is not "
            "validated for clinical use (validated_for_clinical_use: false, as the bundled synthetic models); "
            "its results then reach the hospital's records unvalidated",
    )
