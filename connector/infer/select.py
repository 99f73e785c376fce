"""Pick the series of a study worth scoring: axial, non-contrast CT attenuation-correction / calcium scans.

Why rules and not a model: which series is the CTAC is a matter of DICOM headers, and sites need to
see and tune why a series was or was not scored. Each rejected series gets one reason code (logged
as counts only); eligible series are ranked so the best one is scored first:
a preferred description keyword, then slice thickness closest to 3 mm, then more slices.

Only headers are read here (no pixel data), so scanning a large study is cheap. A CT file's header is
kept with its candidate, so loading the chosen series does not parse it again
(:mod:`connector.infer.slice_file`).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.errors import InvalidDicomError

from connector.infer.slice_file import SliceHeader, read_slice_header
from connector.settings.cac import CacConfig

log = logging.getLogger(__name__)

EMISSION_MODALITIES = {"PT", "NM"}


@dataclass(frozen=True)
class SeriesCandidate:
    """An eligible series: its files and the facts the ranking used."""

    study_uid: str = field(repr=False)
    series_uid: str = field(repr=False)
    paths: tuple[Path, ...] = field(repr=False)
    slices: int
    slice_thickness_mm: float
    coverage_mm: float
    preferred_description: bool
    # each file's header as read here, in ``paths`` order: the load reads only the pixels
    headers: tuple[SliceHeader, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class Selection:
    eligible: tuple[SeriesCandidate, ...]  # ranked, best first, capped at max_series_per_study
    rejected: dict[str, str]  # series UID -> reason code (not logged: UIDs are identifiers)
    unreadable_files: int

    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(self.rejected.values()))


@dataclass
class _Header:
    path: Path
    modality: str
    study_uid: str
    series_uid: str
    image_type: tuple[str, ...]
    description: str
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    thickness: float | None
    frames: int
    contrast: str
    study_modalities: tuple[str, ...]
    slice: SliceHeader | None  # kept for CT only: no other modality is ever loaded


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def has_keyword(description: str, keywords: Iterable[str]) -> bool:
    """True when a keyword (one or more words) appears as whole words in ``description``."""
    words = _words(description)
    for keyword in keywords:
        kw = _words(keyword)
        if kw and any(words[i : i + len(kw)] == kw for i in range(len(words) - len(kw) + 1)):
            return True
    return False


def _read_header(path: Path) -> _Header | None:
    try:
        header = read_slice_header(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
        return None
    ds = header.dataset
    if "SeriesInstanceUID" not in ds:
        return None

    def floats(keyword: str) -> tuple[float, ...] | None:
        try:
            value = ds.get(keyword)
            return tuple(float(v) for v in value) if value is not None else None
        except (TypeError, ValueError):
            return None

    try:
        thickness = float(ds.SliceThickness) if ds.get("SliceThickness") not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    image_type = ds.get("ImageType") or ()
    image_type = (image_type,) if isinstance(image_type, str) else tuple(image_type)
    study_modalities = ds.get("ModalitiesInStudy") or ()
    study_modalities = (study_modalities,) if isinstance(study_modalities, str) else tuple(study_modalities)
    modality = str(ds.get("Modality", "")).upper()
    return _Header(
        path=path,
        modality=modality,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.SeriesInstanceUID),
        image_type=tuple(str(v).upper() for v in image_type),
        description=str(ds.get("SeriesDescription", "") or ""),
        orientation=floats("ImageOrientationPatient"),
        position=floats("ImagePositionPatient"),
        thickness=thickness,
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        contrast=str(ds.get("ContrastBolusAgent", "") or "").strip(),
        study_modalities=tuple(str(m).upper() for m in study_modalities),
        slice=header if modality == "CT" else None,
    )


def _tilt_degrees(orientation: Sequence[float]) -> float:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return 90.0
    return math.degrees(math.acos(min(1.0, abs(float(normal[2])) / norm)))


def _judge(
    headers: list[_Header], rules: CacConfig, study_has_emission: bool
) -> tuple[str | None, SeriesCandidate | None]:
    """(reason, None) for a rejected series, (None, candidate) for an eligible one."""
    first = headers[0]
    if first.modality != "CT":
        return "not_ct", None
    if any("LOCALIZER" in h.image_type for h in headers):
        return "localizer", None
    if any(h.frames != 1 for h in headers):
        return "multiframe_unsupported", None
    if len(headers) < rules.min_slices:
        return "too_few_slices", None
    if any(h.orientation is None or len(h.orientation) != 6 or h.position is None for h in headers):
        return "missing_geometry", None
    if _tilt_degrees(first.orientation) > rules.max_tilt_degrees:  # type: ignore[arg-type]
        return "not_axial", None
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])  # type: ignore[index]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.sort([float(np.dot(h.position, normal)) for h in headers])  # type: ignore[arg-type]
    steps = np.diff(positions)
    steps = steps[steps > 0.01]
    increment = float(np.median(steps)) if len(steps) else 0.0
    thickness = first.thickness if first.thickness else increment
    if not rules.min_slice_thickness_mm <= thickness <= rules.max_slice_thickness_mm:
        return "slice_thickness", None
    coverage = float(positions[-1] - positions[0]) + thickness
    if coverage < rules.min_coverage_mm:
        return "coverage", None
    if any(h.contrast for h in headers):
        return "contrast", None
    if has_keyword(first.description, rules.exclude_description_keywords):
        return "description_excluded", None
    preferred = has_keyword(first.description, rules.prefer_description_keywords)
    if rules.require_description_match and not preferred:
        return "description_not_preferred", None
    if rules.require_emission_series and not study_has_emission:
        return "no_emission_series", None
    return None, SeriesCandidate(
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        paths=tuple(h.path for h in headers),
        slices=len(headers),
        slice_thickness_mm=float(thickness),
        coverage_mm=coverage,
        preferred_description=preferred,
        headers=tuple(h.slice for h in headers if h.slice is not None) if all(h.slice for h in headers) else (),
    )


def select_series(paths: Iterable[Path], rules: CacConfig) -> Selection:
    """Group the study's instance files by series and apply the selection rules."""
    by_series: dict[str, list[_Header]] = defaultdict(list)
    unreadable = 0
    emission = False
    for path in paths:
        header = _read_header(Path(path))
        if header is None:
            unreadable += 1
            continue
        by_series[header.series_uid].append(header)
        if header.modality in EMISSION_MODALITIES or EMISSION_MODALITIES & set(header.study_modalities):
            emission = True
    eligible: list[SeriesCandidate] = []
    rejected: dict[str, str] = {}
    for series_uid, headers in by_series.items():
        reason, candidate = _judge(headers, rules, emission)
        if candidate is not None:
            eligible.append(candidate)
        else:
            rejected[series_uid] = reason or "rejected"
    eligible.sort(key=lambda c: (not c.preferred_description, abs(c.slice_thickness_mm - 3.0), -c.slices))
    selection = Selection(tuple(eligible[: rules.max_series_per_study]), rejected, unreadable)
    log.info(
        "cac series selection: eligible=%d rejected=%s unreadable_files=%d",
        len(eligible),
        selection.reason_counts(),
        unreadable,
    )
    return selection
