"""Agatston scoring: an exact tier (phantoms with known answers) and an analytic tier (cylinders)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from connector.infer.agatston import agatston, category_for, density_weight


def prism_volume(
    hu_value: float, slices: int = 4, side: int = 4, shape: tuple[int, int, int] = (8, 24, 24)
) -> np.ndarray:
    vol = np.zeros(shape, dtype=np.float32)
    vol[2 : 2 + slices, 10 : 10 + side, 10 : 10 + side] = hu_value
    return vol


@pytest.mark.parametrize(
    ("hu_value", "weight"),
    [(129, 0), (130, 1), (199, 1), (200, 2), (299, 2), (300, 3), (399, 3), (400, 4), (800, 4)],
)
def test_prism_density_thresholds(hu_value: int, weight: int) -> None:
    vol = prism_volume(hu_value)
    result = agatston(vol, None, (1.0, 1.0), 3.0)
    # 4 slices x 16 mm^2 x weight, at the 3 mm reference increment.
    assert result.score == pytest.approx(4 * 16 * weight)
    assert result.lesion_count == (4 if weight else 0)
    assert result.volume_mm3 == pytest.approx(4 * 16 * 3.0 if weight else 0.0)
    assert all(lesion.weight == weight for lesion in result.lesions)
    assert density_weight(hu_value) == weight


def test_all_threshold_prisms_in_one_volume_add_up() -> None:
    values = [129, 130, 199, 200, 299, 300, 399, 400, 800]
    vol = np.full((3, 20, 20 * len(values)), -50.0, dtype=np.float32)
    for i, v in enumerate(values):
        vol[:, 5:10, 20 * i + 5 : 20 * i + 10] = v  # 25 mm^2 per slice, 3 slices
    result = agatston(vol, None, (1.0, 1.0), 3.0)
    expected = sum(3 * 25 * density_weight(v) for v in values)
    assert expected == 3 * 25 * (0 + 1 + 1 + 2 + 2 + 3 + 3 + 4 + 4)
    assert result.score == pytest.approx(expected)
    assert result.lesion_count == 3 * 8


def test_lesion_weight_comes_from_its_peak() -> None:
    vol = prism_volume(150, slices=1)
    vol[2, 11, 11] = 450  # one bright voxel inside a 150 HU lesion
    result = agatston(vol, None, (1.0, 1.0), 3.0)
    assert result.lesion_count == 1
    assert result.lesions[0].peak_hu == 450
    assert result.score == pytest.approx(16 * 4)


def test_speck_below_one_square_mm_scores_zero_and_one_square_mm_blob_scores() -> None:
    spacing = (0.5, 0.5)  # 0.25 mm^2 per pixel
    speck = np.zeros((1, 16, 16), dtype=np.float32)
    speck[0, 4, 4:7] = 600  # 3 pixels = 0.75 mm^2
    result = agatston(speck, None, spacing, 3.0)
    assert result.score == 0.0
    assert result.lesion_count == 0
    assert result.category == "0"

    blob = np.zeros((1, 16, 16), dtype=np.float32)
    blob[0, 8:10, 8:10] = 600  # 2 x 2 pixels = 1.00 mm^2
    result = agatston(blob, None, spacing, 3.0)
    assert result.lesion_count == 1
    assert result.lesions[0].area_mm2 == pytest.approx(1.0)
    assert result.score == pytest.approx(1.0 * 4)
    assert result.category == "1-100"


def test_diagonal_contacts_join_lesions_with_eight_connectivity() -> None:
    vol = np.zeros((1, 12, 12), dtype=np.float32)
    vol[0, 2:4, 2:4] = 150  # 4 mm^2 at weight 1 on its own
    vol[0, 4:6, 4:6] = 450  # touches the first only at a corner: (3,3)-(4,4)
    result = agatston(vol, None, (1.0, 1.0), 3.0)
    assert result.lesion_count == 1
    # One lesion of 8 mm^2 weighted by its 450 HU peak; 4-connectivity would give 4*1 + 4*4 = 20.
    assert result.score == pytest.approx(8 * 4)


def test_diagonal_chain_of_single_pixels_is_one_lesion() -> None:
    vol = np.zeros((1, 12, 12), dtype=np.float32)
    for i in range(5):
        vol[0, 3 + i, 3 + i] = 300  # five 0.25 mm^2 pixels along a diagonal = 1.25 mm^2
    result = agatston(vol, None, (0.5, 0.5), 3.0)
    assert result.lesion_count == 1
    assert result.score == pytest.approx(1.25 * 3)


def test_separated_lesions_stay_separate() -> None:
    vol = np.zeros((1, 12, 12), dtype=np.float32)
    vol[0, 2:4, 2:4] = 150
    vol[0, 2:4, 5:7] = 450  # one empty column between them
    result = agatston(vol, None, (1.0, 1.0), 3.0)
    assert result.lesion_count == 2
    assert result.score == pytest.approx(4 * 1 + 4 * 4)


def z_sampled_prism(increment: float, z_extent: float = 12.0, hu_value: float = 350.0) -> np.ndarray:
    """A prism occupying z in [0, z_extent) sampled by slices centred at (k + 0.5) * increment."""
    centres = (np.arange(int(round(24 / increment))) + 0.5) * increment
    vol = np.zeros((len(centres), 16, 16), dtype=np.float32)
    vol[(centres >= 0) & (centres < z_extent), 4:9, 4:9] = hu_value
    return vol


def test_increment_correction_makes_1_5_mm_and_3_mm_agree() -> None:
    thick = agatston(z_sampled_prism(3.0), None, (1.0, 1.0), 3.0)
    thin = agatston(z_sampled_prism(1.5), None, (1.0, 1.0), 1.5)
    assert thick.lesion_count == 4 and thin.lesion_count == 8
    assert thin.score == pytest.approx(thick.score)
    assert thick.score == pytest.approx(4 * 25 * 3)
    assert thin.volume_mm3 == pytest.approx(thick.volume_mm3) == pytest.approx(12 * 25)


def test_mask_limits_scoring_to_coronary_voxels() -> None:
    vol = np.zeros((1, 20, 20), dtype=np.float32)
    vol[0, 2:6, 2:6] = 500  # "coronary"
    vol[0, 12:18, 12:18] = 900  # "bone", outside the mask
    mask = np.zeros_like(vol, dtype=bool)
    mask[0, 0:8, 0:8] = True
    result = agatston(vol, mask, (1.0, 1.0), 3.0)
    assert result.lesion_count == 1
    assert result.score == pytest.approx(16 * 4)
    assert agatston(vol, None, (1.0, 1.0), 3.0).score == pytest.approx(16 * 4 + 36 * 4)


def test_category_uses_the_unrounded_score() -> None:
    assert [category_for(s) for s in (0.0, 0.5, 1.0, 100.0, 100.0001, 400.0, 400.5, 5000.0)] == [
        "0",
        "1-100",
        "1-100",
        "1-100",
        "101-400",
        "101-400",
        ">400",
        ">400",
    ]
    vol = np.zeros((1, 40, 40), dtype=np.float32)
    flat = vol[0].reshape(-1)
    flat[:402] = 150  # 402 pixels x 0.25 mm^2 = 100.5 mm^2 at weight 1: score 100.5 (rounds to 100 or 101)
    result = agatston(vol, None, (0.5, 0.5), 3.0)
    assert result.score == pytest.approx(100.5)
    assert result.category == "101-400"


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        agatston(np.zeros((4, 4)), None, (1.0, 1.0), 3.0)
    with pytest.raises(ValueError):
        agatston(np.zeros((1, 4, 4)), np.zeros((1, 4, 5), bool), (1.0, 1.0), 3.0)
    with pytest.raises(ValueError):
        agatston(np.zeros((1, 4, 4)), None, (1.0, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
# Analytic tier: cylinders of known size and density, within one slice's contribution.


def axial_cylinder(
    radius: float, length: float, hu_value: float, increment: float, spacing: float, z0: float
) -> np.ndarray:
    """A cylinder along z: disc of ``radius`` on every slice whose centre lies within the length."""
    n = int(math.ceil((length + 4 * increment) / increment))
    centres = -2 * increment + z0 + increment * np.arange(n)
    size = int(math.ceil(2 * radius / spacing)) + 8
    coords = (np.arange(size) - (size - 1) / 2) * spacing
    disc = (coords[None, :] ** 2 + coords[:, None] ** 2) <= radius**2
    vol = np.full((n, size, size), 20.0, dtype=np.float32)
    vol[(centres >= 0) & (centres <= length)] = np.where(disc, hu_value, 20.0)
    return vol


def transverse_cylinder(
    radius: float, length: float, hu_value: float, increment: float, spacing: float, z0: float
) -> np.ndarray:
    """A cylinder lying along x: each slice cuts a rectangle 2*sqrt(r^2 - z^2) wide."""
    n = int(math.ceil((2 * radius + 4 * increment) / increment))
    centres = -radius - 2 * increment + z0 + increment * np.arange(n)
    cols = int(math.ceil(length / spacing))
    rows = int(math.ceil(2 * radius / spacing)) + 8
    y = (np.arange(rows) - (rows - 1) / 2) * spacing
    vol = np.full((n, rows, cols + 8), 20.0, dtype=np.float32)
    for k, z in enumerate(centres):
        if abs(z) < radius:
            half = math.sqrt(radius**2 - z**2)
            vol[k, np.abs(y) <= half, 4 : 4 + cols] = hu_value
    return vol


@pytest.mark.parametrize(
    ("radius", "length", "hu_value", "increment"),
    [(2.0, 9.0, 250.0, 3.0), (3.5, 15.0, 650.0, 2.5), (1.5, 12.0, 180.0, 1.5), (5.0, 20.0, 380.0, 5.0)],
)
def test_axial_cylinders_match_analytic_score(radius: float, length: float, hu_value: float, increment: float) -> None:
    spacing = 0.25
    weight = density_weight(hu_value)
    rng = np.random.default_rng(int(radius * 100 + length))
    for z0 in rng.uniform(0, increment, 3):
        vol = axial_cylinder(radius, length, hu_value, increment, spacing, float(z0))
        result = agatston(vol, None, (spacing, spacing), increment)
        expected = math.pi * radius**2 * weight * length / 3.0
        one_slice = math.pi * radius**2 * weight * increment / 3.0
        assert abs(result.score - expected) <= one_slice * 1.02
        assert abs(result.volume_mm3 - math.pi * radius**2 * length) <= math.pi * radius**2 * increment * 1.02


@pytest.mark.parametrize(
    ("radius", "length", "hu_value", "increment"),
    [(4.0, 10.0, 500.0, 3.0), (6.0, 8.0, 220.0, 1.5), (7.5, 12.0, 310.0, 2.5)],
)
def test_transverse_cylinders_match_analytic_score(
    radius: float, length: float, hu_value: float, increment: float
) -> None:
    spacing = 0.25
    weight = density_weight(hu_value)
    for z0 in (0.0, increment / 3, increment / 2):
        vol = transverse_cylinder(radius, length, hu_value, increment, spacing, z0)
        result = agatston(vol, None, (spacing, spacing), increment)
        expected = math.pi * radius**2 * length * weight / 3.0
        one_slice = 2 * radius * length * weight * increment / 3.0  # the widest slice's contribution
        assert abs(result.score - expected) <= one_slice
        assert result.category == category_for(result.score)
