"""Input preparation shared by the runtime and the training script, so both see identical tensors.

Why shared: a model is only valid for inputs prepared exactly as in training. The manifest names
the HU window, the number of adjacent slices, the in-plane size and the pixel spacing; these helpers
turn a series' HU volume into that input and map the model's low-resolution outputs back onto the
series' own pixel grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

AIR_HU = -1000.0


class HuWindowLike(Protocol):
    lo: float
    hi: float
    to_lo: float
    to_hi: float


def window(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """HU -> float32 in [0, 1]: clip to the window and scale."""
    out = np.asarray(hu, dtype=np.float32) - np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def window_channels(planes: np.ndarray, windows: Sequence[HuWindowLike]) -> list[np.ndarray]:
    """One float32 channel per window (HU clipped to [lo, hi], scaled onto [to_lo, to_hi]); the
    runtime and the training scripts both call this, so a model sees in use what it saw in training."""
    out = []
    for w in windows:
        ch = window(planes, w.lo, w.hi)
        if (w.to_lo, w.to_hi) != (0.0, 1.0):
            ch *= np.float32(w.to_hi - w.to_lo)
            ch += np.float32(w.to_lo)
        out.append(ch)
    return out


def neighbour_indices(n_slices: int, centres: np.ndarray, per_sample: int) -> np.ndarray:
    """Slice indices (len(centres), per_sample) around each centre; edges repeat the end slice."""
    half = per_sample // 2
    offsets = np.arange(per_sample) - half
    return np.clip(centres[:, None] + offsets[None, :], 0, n_slices - 1)


@dataclass(frozen=True)
class GridMap:
    """Nearest-neighbour correspondence between a series' pixel grid and the model's grid.

    Both grids share their centre. ``model_rows[i]`` is the series row sampled for model row i (-1:
    outside the series, filled with air); ``series_rows[r]`` is the model row series row r falls in
    (-1: outside the model's field of view). Same for columns.
    """

    model_rows: np.ndarray
    model_cols: np.ndarray
    series_rows: np.ndarray
    series_cols: np.ndarray
    identity: bool

    @classmethod
    def build(
        cls, series_shape: tuple[int, int], series_spacing: tuple[float, float], model_size: int, model_spacing: float
    ) -> GridMap:
        rows, cols = series_shape
        identity = (
            rows == model_size
            and cols == model_size
            and all(abs(s - model_spacing) <= 0.01 * model_spacing for s in series_spacing)
        )
        return cls(
            model_rows=_sample_index(model_size, model_spacing, rows, series_spacing[0]),
            model_cols=_sample_index(model_size, model_spacing, cols, series_spacing[1]),
            series_rows=_sample_index(rows, series_spacing[0], model_size, model_spacing),
            series_cols=_sample_index(cols, series_spacing[1], model_size, model_spacing),
            identity=identity,
        )

    def to_model(self, slices: np.ndarray, fill: float) -> np.ndarray:
        """Resample (..., rows, cols) series slices onto the model grid."""
        if self.identity:
            return slices
        out = np.take(slices, np.clip(self.model_rows, 0, None), axis=-2)
        out = np.take(out, np.clip(self.model_cols, 0, None), axis=-1)
        out[..., self.model_rows < 0, :] = fill
        out[..., :, self.model_cols < 0] = fill
        return out


def _sample_index(n_to: int, sp_to: float, n_from: int, sp_from: float) -> np.ndarray:
    """For each of ``n_to`` pixels (spacing sp_to), the nearest of ``n_from`` pixels, or -1."""
    centre_to, centre_from = (n_to - 1) / 2.0, (n_from - 1) / 2.0
    mm = (np.arange(n_to) - centre_to) * sp_to
    idx = np.rint(mm / sp_from + centre_from).astype(np.int64)
    idx[(idx < 0) | (idx >= n_from)] = -1
    return idx


def body_box(
    volume: np.ndarray, multiple: int, margin: int, air_threshold: float = -500.0
) -> tuple[int, int, int, int]:
    """Rows/columns (r0, r1, c0, c1) holding everything denser than air on any slice, widened by
    ``margin`` pixels and snapped outwards to multiples of ``multiple``.

    Why: about half of a 500 mm field of view is air around the patient. A fully convolutional model
    gives the same outputs on a crop whose origin is a multiple of its total pooling factor (away from
    the crop's edge, which the margin keeps in air), at a fraction of the cost.
    """
    rows_n, cols_n = volume.shape[-2:]
    occupied = volume.max(axis=0) > air_threshold
    rows, cols = np.flatnonzero(occupied.any(axis=1)), np.flatnonzero(occupied.any(axis=0))
    if len(rows) == 0:
        return 0, rows_n, 0, cols_n

    def span(lo: int, hi: int, n: int) -> tuple[int, int]:
        start = max(0, (lo - margin) // multiple * multiple)
        stop = min(n, -(-(hi + 1 + margin) // multiple) * multiple)
        return start, stop

    r0, r1 = span(int(rows[0]), int(rows[-1]), rows_n)
    c0, c1 = span(int(cols[0]), int(cols[-1]), cols_n)
    return r0, r1, c0, c1
