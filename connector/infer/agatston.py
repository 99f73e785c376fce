"""Exact Agatston and volume scoring, independent of any model.

Why separate from the model: the model only proposes *where* coronary calcium is (a mask); the
numbers the registry stores must follow the published rule exactly so that results are comparable
across sites and model versions. The rule (Agatston 1990, as used for CTAC scans):

- candidate voxels: HU >= 130 inside the coronary-calcium mask;
- lesions: 8-connected components found slice by slice;
- a lesion counts only if its area is at least 1 mm^2;
- weight from the lesion's peak HU: 130-199 -> 1, 200-299 -> 2, 300-399 -> 3, >= 400 -> 4;
- score = sum(area_mm2 x weight) x (slice increment / 3 mm), so overlapping or thinner
  reconstructions give the same score as contiguous 3 mm slices;
- volume = sum(area_mm2) x slice increment;
- category from the unrounded score: 0, 1-100, 101-400, >400.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

HU_THRESHOLD = 130.0
MIN_LESION_AREA_MM2 = 1.0
REFERENCE_INCREMENT_MM = 3.0
CATEGORIES = ("0", "1-100", "101-400", ">400")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_AREA_EPS = 1e-9  # float slack so 4 x 0.25 mm^2 counts as the 1 mm^2 it is


@dataclass(frozen=True)
class Lesion:
    """One scored lesion on one slice."""

    slice_index: int
    pixels: int
    area_mm2: float
    peak_hu: float
    weight: int
    score: float  # area x weight x increment / 3 mm


@dataclass(frozen=True)
class AgatstonResult:
    score: float
    volume_mm3: float
    lesions: tuple[Lesion, ...]
    slice_increment_mm: float

    @property
    def lesion_count(self) -> int:
        return len(self.lesions)

    @property
    def category(self) -> str:
        return category_for(self.score)


def density_weight(peak_hu: float) -> int:
    """Agatston density factor of a lesion from its peak HU (0 below the 130 HU threshold)."""
    if peak_hu >= 400:
        return 4
    if peak_hu >= 300:
        return 3
    if peak_hu >= 200:
        return 2
    if peak_hu >= HU_THRESHOLD:
        return 1
    return 0


def category_for(score: float) -> str:
    """Risk category from the *unrounded* score: "0", "1-100", "101-400" or ">400"."""
    if score <= 0:
        return CATEGORIES[0]
    if score <= 100:
        return CATEGORIES[1]
    if score <= 400:
        return CATEGORIES[2]
    return CATEGORIES[3]


def agatston(
    hu: np.ndarray,
    mask: np.ndarray | None,
    pixel_spacing: tuple[float, float],
    slice_increment: float,
) -> AgatstonResult:
    """Score a volume ``hu`` (Z, Y, X) in Hounsfield units.

    ``mask`` (same shape, bool) restricts scoring to coronary calcium; None scores every voxel
    (useful for phantoms). ``pixel_spacing`` is (row, column) in mm; ``slice_increment`` is the
    distance between slice centres in mm (not the slice thickness).
    """
    if hu.ndim != 3:
        raise ValueError("hu must be a (slices, rows, columns) volume")
    if mask is not None and mask.shape != hu.shape:
        raise ValueError("mask and hu differ in shape")
    if slice_increment <= 0 or min(pixel_spacing) <= 0:
        raise ValueError("spacing must be positive")
    pixel_area = float(pixel_spacing[0]) * float(pixel_spacing[1])
    z_factor = float(slice_increment) / REFERENCE_INCREMENT_MM
    lesions: list[Lesion] = []
    for k in range(hu.shape[0]):
        candidate = hu[k] >= HU_THRESHOLD
        if mask is not None:
            candidate &= mask[k]
        if not candidate.any():
            continue
        labels, count = ndimage.label(candidate, structure=_EIGHT_CONNECTED)
        index = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(candidate, labels, index)
        peaks = ndimage.maximum(hu[k], labels, index)
        for pixels, peak in zip(sizes, peaks, strict=True):
            area = float(pixels) * pixel_area
            if area + _AREA_EPS < MIN_LESION_AREA_MM2:
                continue
            weight = density_weight(float(peak))
            lesions.append(Lesion(k, int(pixels), area, float(peak), weight, area * weight * z_factor))
    score = float(sum(lesion.area_mm2 * lesion.weight for lesion in lesions) * z_factor)
    volume = float(sum(lesion.area_mm2 for lesion in lesions) * slice_increment)
    return AgatstonResult(
        score=score, volume_mm3=volume, lesions=tuple(lesions), slice_increment_mm=float(slice_increment)
    )
