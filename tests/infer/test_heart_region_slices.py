"""The heart finder labels all slices in one call (issue 29, speed): each helper must give exactly what
the slice-by-slice scipy operation it replaced gives, ties between equal pieces included, since the
region (and so every score) must not change."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from connector.infer.heart_region import (
    _dilate,
    _fill_holes,
    _hull,
    _largest_per_slice,
    _midline_piece,
    _row_extremes,
)


def _masks(seed: int) -> np.ndarray:
    """Slices of random blobs, rings (holes), single pixels and empty slices, with pieces of equal size."""
    rng = np.random.default_rng(seed)
    out = rng.random((12, 37, 41)) < 0.35
    out[3] = False
    out[4, 5:15, 5:15] = True
    out[4, 8:12, 8:12] = False  # a hole
    out[5] = False
    out[5, 2:4, 2:4] = out[5, 20:22, 20:22] = True  # two pieces of the same size: the first wins
    out[6] = True
    return out


def _largest_2d(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def test_per_slice_helpers_equal_the_slice_by_slice_operations() -> None:
    for seed in range(4):
        mask = _masks(seed)
        np.testing.assert_array_equal(_largest_per_slice(mask), [_largest_2d(m) for m in mask])
        np.testing.assert_array_equal(_fill_holes(mask), [ndimage.binary_fill_holes(m) for m in mask])
        for grow in (1, 3):
            np.testing.assert_array_equal(_dilate(mask, grow), [ndimage.binary_dilation(m, iterations=grow) for m in mask])


def test_midline_piece_is_the_largest_piece_reaching_the_window() -> None:
    mask = _masks(7)
    window = np.zeros((len(mask), mask.shape[2]), dtype=bool)
    window[:, 18:23] = True
    window[2] = False  # no window: nothing is kept
    got = _midline_piece(mask, window)
    for k, m in enumerate(mask):
        labels, n = ndimage.label(m)
        near = np.unique(labels[:, window[k]])
        near = near[near > 0]
        want = labels == near[np.argmax(np.bincount(labels.ravel())[near])] if len(near) else np.zeros_like(m)
        np.testing.assert_array_equal(got[k], want)


def test_row_extremes_are_the_sorted_unique_extreme_points_and_the_hull_is_drawn_from_them() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        mask = rng.random((30, 25)) < rng.uniform(0.01, 0.3)
        rows = np.flatnonzero(mask.any(axis=1))
        left = mask[rows].argmax(axis=1)
        right = mask.shape[1] - 1 - mask[rows][:, ::-1].argmax(axis=1)
        want = np.unique(np.concatenate([np.stack([rows, left], 1), np.stack([rows, right], 1)]), axis=0)
        np.testing.assert_array_equal(_row_extremes(mask), want)
        np.testing.assert_array_equal(_row_extremes(mask, (4, 9)), want + [4, 9])
        hull = _hull(_row_extremes(mask), mask.shape)
        assert not (mask & ~hull).any()  # every set pixel lies in its hull
