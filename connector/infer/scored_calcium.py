"""The scored-calcium map of one series: what the study page draws and what a DICOM SEG encodes.

Why a separate artefact: the Agatston numbers go to the registry, but a coordinator checking a
result (and a SEG built for the hospital) needs to see *which* pixels were scored and with which
density weight. The inference stage writes one map per scored series under
``SiteLayout.scored_calcium_path``; the web stage only reads it. It stays on the site (it holds CT
pixels of the original scan), holds no UIDs or header values, and is never pushed.

Only the slices that carry scored calcium are kept, so a map is small (a few slices of int16).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ScoredCalcium:
    """``hu`` and ``weights`` are (k, rows, columns) for the k slices listed in ``slice_indices``.

    ``weights`` is 0 where nothing was scored and the lesion's Agatston density weight (1-4) on every
    pixel of a scored lesion. ``slice_indices`` are positions in the loaded volume (0 = first slice in
    scan order), so they line up with the JSON result's lesions.
    """

    hu: np.ndarray
    weights: np.ndarray
    slice_indices: tuple[int, ...]
    pixel_spacing_mm: tuple[float, float]
    slice_increment_mm: float

    def __post_init__(self) -> None:
        if self.hu.shape != self.weights.shape or self.hu.ndim != 3:
            raise ValueError("hu and weights must both be (slices, rows, columns)")
        if len(self.slice_indices) != self.hu.shape[0]:
            raise ValueError("one slice index per kept slice")


def scored_calcium_of(
    hu: np.ndarray, weights: np.ndarray, pixel_spacing_mm: tuple[float, float], slice_increment_mm: float,
    *, first_slice: int = 0,
) -> ScoredCalcium:
    """The map of a scored volume: the slices of ``weights`` (an AgatstonResult's) that carry calcium.
    ``weights`` covers the volume's slices from ``first_slice`` on (AgatstonResult.first_slice)."""
    found = np.flatnonzero(weights.reshape(weights.shape[0], -1).any(axis=1))
    keep = found + first_slice
    return ScoredCalcium(
        hu=np.clip(np.rint(hu[keep]), -32768, 32767).astype(np.int16),
        weights=weights[found].astype(np.uint8),
        slice_indices=tuple(int(i) for i in keep),
        pixel_spacing_mm=(float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])),
        slice_increment_mm=float(slice_increment_mm),
    )


def save_scored_calcium(path: Path, scored: ScoredCalcium) -> None:
    """Write atomically (temporary file, fsync, rename) so a reader never sees half a map."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            hu=scored.hu.astype(np.int16),
            weights=scored.weights.astype(np.uint8),
            slice_indices=np.asarray(scored.slice_indices, dtype=np.int32),
            pixel_spacing_mm=np.asarray(scored.pixel_spacing_mm, dtype=np.float64),
            slice_increment_mm=np.asarray([scored.slice_increment_mm], dtype=np.float64),
        )
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_scored_calcium(path: Path) -> ScoredCalcium:
    """Read a map written by :func:`save_scored_calcium` (no pickles are ever loaded)."""
    with np.load(path, allow_pickle=False) as data:
        spacing = data["pixel_spacing_mm"]
        return ScoredCalcium(
            hu=data["hu"],
            weights=data["weights"],
            slice_indices=tuple(int(i) for i in data["slice_indices"]),
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
            slice_increment_mm=float(data["slice_increment_mm"][0]),
        )
