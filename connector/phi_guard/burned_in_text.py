"""Text burned into pixels: which instances of a study to read, and what text stops an object.

Why: devices burn the patient's name and MRN into localizers, scouts, dose screens and secondary
captures, often with BurnedInAnnotation absent or NO; no tag check can see them. An OCR reader
(:mod:`connector.phi_guard.text_reader`) reads a windowed 8-bit rendering of the *output's* pixels,
what would leave the site, after any pixel-region rule has blanked its rectangles.

What stops an object (reason ``burned-in-text:ocr``; where: frame and box, never the text):

* text matching the patient's identifiers from the original object (name parts, patient and other
  IDs, accession number, birth date), allowing for OCR's usual misreadings;
* any confidently read text in a CT, PT, NM or MR image: none belongs in a measurement.

Which instances (``[deid] ocr``): ``at-risk-and-sample`` (the default) reads the images at risk --
localizers and scouts (ImageType LOCALIZER, or a series or protocol named scout, topogram, surview,
scanogram, localizer, locator, pilot), derived secondary images and screen saves, secondary
captures, ultrasound and visible-light classes, any class the profile accepts although it may
carry text -- and the first, middle and last instance of every other series; ``all`` reads every
image; ``off`` none. Anything that cannot be read fails closed (``burned-in-text:ocr-error``).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from connector.phi_guard.identifiers import Identifiers, birth_date_renderings, collect_identifiers
from connector.phi_guard.risky_objects import PIXEL_RISK_CLASSES
from connector.phi_guard.scanner_types import Finding
from connector.phi_guard.text_reader import TextLine, TextReader, text_reader
from connector.settings.deid import DEFAULT_OCR_SCOPE, OCR_SCOPES

log = logging.getLogger(__name__)

FINDING = "burned-in-text:ocr"
FAILURE = "burned-in-text:ocr-error"

# Thresholds. An identifier is specific evidence on its own: a line read with the recogniser's
# default confidence (0.5) counts. "Any text" in a CT/PT/NM/MR image must be real text, not bone:
# on the phantom chest slices the reader sees vertebrae and ribs as single characters ("8", "0",
# "9") with confidence up to 0.97, never as three or more; burned-in identifiers are longer.
MATCH_TEXT_SCORE = 0.5
TEXT_BOX_SCORE = 0.6  # the detector's mean probability in the box (its own floor is 0.5)
TEXT_SCORE = 0.8
TEXT_MIN_CHARS = 3  # letters and digits; single orientation letters (R, L, A, P, H, F) do not count
NO_TEXT_MODALITIES = frozenset({"CT", "PT", "NM", "MR"})
CT_WINDOW = (-1024.0, 3071.0)  # HU: air black, soft tissue dark grey, bone light, text (top of range) white

_RISKY_MODALITIES = frozenset({"US", "IVUS", "XC", "ES", "GM", "SM", "OT"})
_RISKY_IMAGE_TYPES = frozenset({"LOCALIZER", "SECONDARY", "SCREEN SAVE"})
_SCOUT_NAMES = re.compile(r"scout|topogra|surview|scanogra|locali[sz]er|locator|pilot", re.IGNORECASE)
_HEADER_TAGS = ["SeriesInstanceUID", "InstanceNumber", "ImageType", "SeriesDescription", "ProtocolName",
                "SOPClassUID", "Modality"]
_LETTERS = re.compile(r"[^\W\d_]+")
_ALNUM = re.compile(r"[^\W_]+")
# OCR's usual confusions between digits and letters, folded together when comparing IDs.
_FOLD = str.maketrans("OQDILSBZG", "001115826")


# -- which instances ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OcrHeader:
    """What choosing an instance for OCR needs from its original header."""

    series: str
    number: float  # Instance Number; inf when absent or unreadable (sorted last)
    at_risk: bool  # always read (localizer, scout, secondary capture, risky or accepted class, ...)


_AT_RISK = OcrHeader("", float("inf"), True)  # a header that cannot be read: read the pixels (fail closed)
_TAG = {"ImageType": 0x00080008, "SOPClassUID": 0x00080016, "Modality": 0x00080060,
        "SeriesDescription": 0x0008103E, "ProtocolName": 0x00181030, "SeriesInstanceUID": 0x0020000E,
        "InstanceNumber": 0x00200013}


def _raw_values(ds: Dataset, keyword: str) -> list[str]:
    """The element's values as text, without converting a still-encoded element (the engine's walk
    copies untouched encoded elements byte for byte, and a conversion here would cost it that)."""
    elem = ds.get_item(_TAG[keyword])
    value = None if elem is None else elem.value
    if value is None or value == b"" or value == "":
        return []
    if isinstance(value, bytes):
        return [v.strip(" \x00") for v in value.decode("latin-1").split("\\")]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


def header_facts(ds: Dataset, allowed_classes: frozenset[str] = frozenset()) -> OcrHeader:
    """The OCR choice's view of an original header: its series, instance number and whether it is
    at risk. Any failure counts as at risk (its pixels are read)."""
    try:
        image_type = {v.strip().upper() for v in _raw_values(ds, "ImageType")}
        names = " ".join(_raw_values(ds, "SeriesDescription") + _raw_values(ds, "ProtocolName"))
        sop_class = "".join(_raw_values(ds, "SOPClassUID")).strip()
        modality = "".join(_raw_values(ds, "Modality")).strip().upper()
        at_risk = (bool(image_type & _RISKY_IMAGE_TYPES) or bool(_SCOUT_NAMES.search(names))
                   or sop_class in PIXEL_RISK_CLASSES or sop_class in allowed_classes or modality in _RISKY_MODALITIES)
        number_text = "".join(_raw_values(ds, "InstanceNumber")).strip()
        number = float(number_text) if number_text else float("inf")
        return OcrHeader("".join(_raw_values(ds, "SeriesInstanceUID")).strip(), number, at_risk)
    except Exception:
        return _AT_RISK


def _header(path: Path, allowed_classes: frozenset[str]) -> OcrHeader:
    try:
        return header_facts(dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS), allowed_classes)
    except Exception:  # a header this read cannot parse: read the pixels (fail closed)
        return _AT_RISK


def sample_of_series(members: list[tuple[float, int, object]]) -> list[object]:
    """The first, middle and last member of a series, by (instance number, arrival order)."""
    members = sorted(members, key=lambda m: (m[0], m[1]))
    return [members[i][2] for i in sorted({0, len(members) // 2, len(members) - 1})]


def instances_to_read(paths: Sequence[Path], scope: str,
                      allowed_classes: frozenset[str] = frozenset()) -> frozenset[Path]:
    """The originals of a study whose de-identified pixels are read for text, under ``scope``.

    ``allowed_classes``: SOP classes the profile accepts although they may carry text (read always).
    """
    if scope == "off":
        return frozenset()
    if scope == "all":
        return frozenset(paths)
    if scope != DEFAULT_OCR_SCOPE:
        raise ValueError(f"unknown OCR scope {scope!r}; one of {', '.join(OCR_SCOPES)}")
    chosen: set[Path] = set()
    series: dict[str, list[tuple[float, int, object]]] = {}
    for order, path in enumerate(paths):
        header = _header(path, allowed_classes)
        if header.at_risk:
            chosen.add(path)
        else:
            series.setdefault(header.series, []).append((header.number, order, path))
    for members in series.values():
        chosen.update(p for p in sample_of_series(members) if isinstance(p, Path))
    return frozenset(chosen)


# -- rendering ---------------------------------------------------------------------------------


def rendered_frames(ds: Dataset) -> list[tuple[int, np.ndarray]]:
    """(frame index, H x W x 3 uint8) for the first, middle and last frame of the pixel data (only
    those are decoded: a cine loop can hold a thousand)."""
    from pydicom.pixels import apply_modality_lut, pixel_array

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    color = int(ds.get("SamplesPerPixel", 1) or 1) > 1
    modality = str(ds.get("Modality", "")).strip().upper()
    indices = sorted({0, frames // 2, frames - 1}) if frames > 1 else [0]
    out = []
    for i in indices:
        frame = pixel_array(ds, index=i if frames > 1 else None)
        if color:
            out.append((i, _to_uint8(frame, float(frame.min()), float(frame.max()))))
            continue
        values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
        rescaled = "RescaleIntercept" in ds or "ModalityLUTSequence" in ds
        lo, hi = CT_WINDOW if modality == "CT" and rescaled else (float(values.min()), float(values.max()))
        gray = _to_uint8(values, lo, hi)
        out.append((i, np.repeat(gray[:, :, None], 3, axis=2)))
    return out


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if values.dtype == np.uint8:
        return np.ascontiguousarray(values)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values.astype(np.float32), lo, hi) - lo) * (255.0 / (hi - lo))
    return np.ascontiguousarray(scaled.astype(np.uint8))


# -- what counts -------------------------------------------------------------------------------


def _allowed_edits(length: int) -> int:
    """Misread characters tolerated: none below 6, then one per three (6-8: 1, 9-11: 2, ...)."""
    return 0 if length < 6 else (length - 3) // 3


def _within(pattern: str, text: str, edits: int) -> bool:
    """``pattern`` occurs in ``text`` with at most ``edits`` insertions, deletions or substitutions."""
    if pattern in text:
        return True
    if not edits or len(text) < len(pattern) - edits:
        return False
    previous = [0] * (len(text) + 1)  # approximate substring match (Sellers): free start in text
    for i, p in enumerate(pattern, 1):
        current = [i] + [0] * len(text)
        for j, t in enumerate(text, 1):
            current[j] = min(previous[j - 1] + (p != t), previous[j] + 1, current[j - 1] + 1)
        previous = current
    return min(previous) <= edits


class IdentifierText:
    """The patient's identifiers as OCR may read them back."""

    def __init__(self, ids: Identifiers) -> None:
        # Short values only as whole words ("ANN" is not in "ANNOTATION", ID "4711" not in "47110");
        # longer ones anywhere in the line, misreadings allowed.
        self.short_names = frozenset(p for p in ids.name_parts if len(p) < 5)
        self.long_names = tuple(p for p in ids.name_parts if len(p) >= 5)
        codes = {re.sub(r"[\W_]", "", v.upper()).translate(_FOLD) for v in ids.patient_ids | ids.accession_numbers}
        self.short_codes = frozenset(c for c in codes if 3 <= len(c) < 6)
        self.long_codes = tuple(c for c in codes if len(c) >= 6)
        dates: set[str] = set()
        for rendering in ids.birth_dates:
            digits = re.sub(r"\D", "", rendering)
            if len(digits) == 8:
                dates |= {re.sub(r"\D", "", r) for r in birth_date_renderings(digits)}
        self.dates = tuple(sorted(dates))

    def found_in(self, text: str) -> bool:
        upper = text.upper()
        words = _LETTERS.findall(upper)
        if self.short_names & set(words):
            return True
        letters = "".join(words)
        if any(_within(n, letters, _allowed_edits(len(n))) for n in self.long_names):
            return True
        if self.short_codes & {w.translate(_FOLD) for w in _ALNUM.findall(upper)}:
            return True
        folded = re.sub(r"[\W_]", "", upper).translate(_FOLD)
        if any(_within(c, folded, _allowed_edits(len(c))) for c in self.long_codes):
            return True
        digits = re.sub(r"\D", "", upper)
        return any(d in digits for d in self.dates)


def line_kind(line: TextLine, modality: str, identifiers: IdentifierText) -> str | None:
    """Why this line stops the object ("patient-identifier", "text"), or None."""
    if line.text_score >= MATCH_TEXT_SCORE and identifiers.found_in(line.text):
        return "patient-identifier"
    if (modality in NO_TEXT_MODALITIES and line.box_score >= TEXT_BOX_SCORE and line.text_score >= TEXT_SCORE
            and sum(c.isalnum() for c in line.text) >= TEXT_MIN_CHARS):
        return "text"
    return None


def check_pixels(output: bytes | Dataset, identifiers: Identifiers, reader: TextReader | None = None) -> list[Finding]:
    """The guard's pixel check: text burned into the pixel data of a de-identified object.

    ``identifiers`` are the original object's (:func:`collect_identifiers`). No pixel data: no
    finding. Pixels or a reader that fail: one ``burned-in-text:ocr-error`` finding (fail closed).
    """
    try:
        ds = dcmread(io.BytesIO(output)) if isinstance(output, bytes) else output
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            return []
        modality = str(ds.get("Modality", "")).strip().upper()
        frames = rendered_frames(ds)
        reader = reader or text_reader()
        wanted = IdentifierText(identifiers)
        findings = []
        for index, image in frames:
            for line in reader.read(image):
                kind = line_kind(line, modality, wanted)
                if kind:
                    x0, y0, x1, y1 = line.box
                    findings.append(Finding(FINDING, f"(7FE0,0010)[frame {index}] box {x0},{y0},{x1},{y1}: {kind}"))
        return findings
    except Exception as exc:
        log.warning("burned-in text check failed", extra={"event": "ocr_failed", "error": type(exc).__name__})
        return [Finding(FAILURE, f"(7FE0,0010): {type(exc).__name__}")]


def check_object(output: bytes, original: Path, reader: TextReader | None = None) -> list[Finding]:
    """:func:`check_pixels` on a de-identified object, with the identifiers of its ``original`` file."""
    try:
        identifiers = collect_identifiers(dcmread(original, stop_before_pixels=True))
    except Exception as exc:
        log.warning("burned-in text check failed", extra={"event": "ocr_failed", "error": type(exc).__name__})
        return [Finding(FAILURE, f"original: {type(exc).__name__}")]
    return check_pixels(output, identifiers, reader)
