"""Lesion-level scoring: the model chooses lesions, a chosen lesion is scored whole.

Phantoms with analytic scores (exact pixel areas, or discs at a fine spacing against pi r^2), with
the model's marks written by hand the way the bundled model was seen to mark unseen scans: only a
rim of a big dense lesion marked coronary, the core marked non-coronary; a coronary lesion merged
with aortic-wall calcium; valve calcium with a few stray coronary marks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.infer.agatston import (
    CORONARY,
    MIN_CORONARY_FRACTION,
    OTHER,
    agatston,
    density_weight,
    select_coronary,
)


def disc(shape: tuple[int, int], cy: float, cx: float, r_px: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r_px**2


def score_with_marks(hu: np.ndarray, marks: np.ndarray, spacing: float, increment: float = 3.0) -> float:
    mask = select_coronary(hu, marks)
    return agatston(hu, mask, (spacing, spacing), increment).score


def within_one_percent(value: float, expected: float) -> bool:
    return abs(value - expected) <= 0.01 * expected


# ---------------------------------------------------------------------------------------------
# Sizes from 1 mm^2 to 150 mm^2, partly marked: scored whole.


@pytest.mark.parametrize("area_mm2", [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 150.0])
@pytest.mark.parametrize("hu_value", [160.0, 260.0, 350.0, 650.0])
def test_rectangular_lesions_1_to_150_mm2_partly_marked_are_scored_whole(area_mm2: float, hu_value: float) -> None:
    spacing = 0.5  # 0.25 mm^2 per pixel: every area here is a whole number of pixels
    pixels = int(round(area_mm2 / spacing**2))
    w = max(d for d in range(1, int(math.isqrt(pixels)) + 1) if pixels % d == 0)
    h = pixels // w
    hu = np.full((3, 80, 80), 30.0, dtype=np.float32)
    hu[:, 10 : 10 + h, 10 : 10 + w] = hu_value
    marks = np.zeros(hu.shape, dtype=np.uint8)
    # The model marks only the first rows (>= 20 % of the lesion, at least one pixel) coronary.
    rows = max(1, math.ceil(MIN_CORONARY_FRACTION * h))
    marks[:, 10 : 10 + rows, 10 : 10 + w] = CORONARY
    expected = 3 * area_mm2 * density_weight(hu_value)  # 3 slices at the 3 mm reference increment
    result = agatston(hu, select_coronary(hu, marks), (spacing, spacing), 3.0)
    assert within_one_percent(result.score, expected), (result.score, expected)
    assert result.lesion_count == 3
    assert result.volume_mm3 == pytest.approx(3 * area_mm2 * 3.0)
    # The weight map carries the lesion's weight on every one of its pixels, nothing elsewhere.
    assert result.weights is not None
    assert int((result.weights > 0).sum()) == 3 * pixels
    assert set(np.unique(result.weights)) == {0, density_weight(hu_value)}


@pytest.mark.parametrize("area_mm2", [10.0, 25.0, 50.0, 100.0, 150.0])
def test_disc_lesions_match_pi_r_squared(area_mm2: float) -> None:
    spacing = 0.1  # fine enough that the pixelated disc is within 1 % of pi r^2
    r_px = math.sqrt(area_mm2 / math.pi) / spacing
    size = int(2 * r_px) + 20
    lesion = disc((size, size), size / 2, size / 2, r_px)
    hu = np.where(lesion, 480.0, 40.0).astype(np.float32)[None]
    marks = np.zeros(hu.shape, dtype=np.uint8)
    marks[0][lesion & (np.indices(lesion.shape)[0] < size / 2 - 0.4 * r_px)] = CORONARY  # top cap, ~25 %
    assert MIN_CORONARY_FRACTION <= (marks == CORONARY).sum() / lesion.sum() < 0.5
    assert within_one_percent(score_with_marks(hu, marks, spacing), area_mm2 * 4)


def test_unmarked_and_sub_threshold_marked_lesions_are_not_scored() -> None:
    hu = np.zeros((1, 40, 40), dtype=np.float32)
    hu[0, 5:15, 5:15] = 500  # no mark at all
    hu[0, 20:30, 20:30] = 500  # 10 % marked coronary: below the 20 % rule
    marks = np.zeros(hu.shape, dtype=np.uint8)
    marks[0, 20, 20:30] = CORONARY
    assert score_with_marks(hu, marks, 0.5) == 0.0
    marks[0, 21, 20:30] = CORONARY  # 20 %: chosen, and scored whole
    assert score_with_marks(hu, marks, 0.5) == pytest.approx(100 * 0.25 * 4)


# ---------------------------------------------------------------------------------------------
# Big dense lesion marked the way the bundled model marks unseen ones: rim coronary, core other.


def test_large_dense_lesion_marked_on_its_rim_is_scored_whole() -> None:
    spacing = 0.25
    r_mm = 7.0  # ~154 mm^2, 650 HU
    r_px = r_mm / spacing
    size = int(2 * r_px) + 16
    c = size / 2
    lesion = disc((size, size), c, c, r_px)
    hu = np.where(lesion, 650.0, 40.0).astype(np.float32)
    hu = np.repeat(hu[None], 4, axis=0)
    marks = np.zeros(hu.shape, dtype=np.uint8)
    rows = np.indices(lesion.shape)[0]
    rim = lesion & ((rows < c - 0.6 * r_px) | (rows > c + 0.6 * r_px))  # caps above and below
    marks[:, rim] = CORONARY
    marks[:, lesion & ~rim] = OTHER  # the core looks like bone to the model
    share = rim.sum() / lesion.sum()
    assert 0.2 <= share <= 0.34  # as seen: ~22-34 % of a big dense lesion's pixels marked coronary
    result = agatston(hu, select_coronary(hu, marks), (spacing, spacing), 3.0)
    expected = 4 * math.pi * r_mm**2 * 4  # four slices, weight 4
    assert within_one_percent(result.score, expected)
    assert result.lesion_count == 4


def test_valve_calcium_with_a_few_coronary_votes_is_not_scored() -> None:
    spacing = 0.5
    valve = disc((60, 60), 30, 30, 10)
    hu = np.where(valve, 600.0, 40.0).astype(np.float32)[None]
    marks = np.zeros(hu.shape, dtype=np.uint8)
    marks[0][valve] = OTHER
    rows = np.indices(valve.shape)[0]
    marks[0][valve & (rows < 30 - 0.62 * 10)] = CORONARY  # ~17 % coronary, as the model did on valves
    assert 0.1 < (marks == CORONARY).sum() / valve.sum() < MIN_CORONARY_FRACTION
    assert score_with_marks(hu, marks, spacing) == 0.0


def test_bone_and_aortic_calcium_marked_other_is_never_scored() -> None:
    hu = np.zeros((2, 50, 50), dtype=np.float32)
    hu[:, 5:25, 5:25] = 900
    hu[:, 30:45, 30:45] = 300
    marks = np.where(hu > 0, OTHER, 0).astype(np.uint8)
    assert score_with_marks(hu, marks, 0.5) == 0.0


# ---------------------------------------------------------------------------------------------
# A coronary lesion touching aortic-wall calcium: one 8-connected component, split by the marks.


@pytest.mark.parametrize(("coronary_hu", "gap_px"), [(260.0, -1.0), (450.0, 0.0), (180.0, 0.6)])
def test_lesion_touching_aortic_wall_calcium_is_split_and_scored_alone(coronary_hu: float, gap_px: float) -> None:
    spacing = 0.25
    shape = (120, 160)
    r_cor, r_ao = 1.6 / spacing, 4.0 / spacing  # a 1.6 mm coronary lesion, 4 mm aortic-wall plaque
    aorta = disc(shape, 60, 50, r_ao)
    cx = 50 + r_ao + r_cor + gap_px  # touching (gap 0), overlapping by a pixel, or just 8-connected
    lesion = disc(shape, 60, cx, r_cor) & ~aorta
    hu2 = np.full(shape, 40.0, dtype=np.float32)
    hu2[aorta] = 750.0
    hu2[lesion] = coronary_hu
    from scipy import ndimage

    _, components = ndimage.label(hu2 >= 130, structure=np.ones((3, 3), bool))
    assert components == 1, "the lesion and the aortic calcium must form one component"
    hu = hu2[None]
    marks = np.zeros(hu.shape, dtype=np.uint8)
    # The model's marks: the lesion's inside coronary, the plaque's inside other; the rims unmarked.
    marks[0][ndimage.binary_erosion(lesion, iterations=2)] = CORONARY
    marks[0][ndimage.binary_erosion(aorta, iterations=3)] = OTHER
    result = agatston(hu, select_coronary(hu, marks), (spacing, spacing), 3.0)
    expected = lesion.sum() * spacing**2 * density_weight(coronary_hu)
    assert within_one_percent(result.score, expected), (result.score, expected)
    analytic = math.pi * 1.6**2 * density_weight(coronary_hu)
    assert result.score < 1.15 * analytic  # never any of the aortic plaque's ~50 mm^2 at weight 4
    assert result.lesions[0].peak_hu == pytest.approx(coronary_hu)  # its own peak, not the aorta's


def test_model_marking_only_the_aorta_of_a_merged_component_scores_nothing() -> None:
    hu = np.zeros((1, 40, 60), dtype=np.float32)
    hu[0, 10:30, 5:25] = 800
    hu[0, 18:22, 25:29] = 300
    marks = np.zeros(hu.shape, dtype=np.uint8)
    marks[0, 12:28, 7:23] = OTHER
    assert score_with_marks(hu, marks, 0.5) == 0.0


# ---------------------------------------------------------------------------------------------
# The bundled model on the generator's chest: lesions from 1 mm^2 to 150 mm^2 (and a large dense
# one) on a coronary artery, each scored as its exact Agatston (its labelled pixels) within 1 %.


@pytest.fixture(scope="module")
def runner():  # type: ignore[no-untyped-def]
    from connector.infer.runner import CacRunner
    from connector.settings.cac import CacConfig

    return CacRunner.from_config(CacConfig(threads=2))


@pytest.mark.parametrize(("area_mm2", "hu_value"), [(1.0, 600.0), (3.0, 350.0), (10.0, 250.0), (30.0, 600.0),
                                                    (80.0, 480.0), (150.0, 650.0), (150.0, 1000.0)])
def test_bundled_model_scores_lesions_of_every_size_whole(runner, area_mm2: float, hu_value: float) -> None:  # type: ignore[no-untyped-def]
    from connector.synthetic.phantoms import Blob, artery_points, random_spec, render

    rng = np.random.default_rng(int(area_mm2 * 10 + hu_value))
    spec = random_spec(rng, plaque_count=0)
    points = artery_points(spec, spec.arteries[0])
    p = points[int(np.argmin(np.abs(points[:, 2] - spec.heart_c[2])))]  # mid-heart, inside the slab below
    spec.plaques = [Blob(float(p[0]), float(p[1]), float(p[2]), math.sqrt(area_mm2 / math.pi), 3.0, hu_value)]
    ph = render(spec, rng, increment=3.0, n_slices=10)
    hu, spacing = ph.hu.astype(np.float32), (ph.pixel_spacing, ph.pixel_spacing)
    truth = agatston(hu, ph.coronary, spacing, ph.increment)
    assert truth.score > 0
    scored = runner.score_hu(hu, spacing, ph.increment)
    assert within_one_percent(scored.agatston.score, truth.score), (scored.agatston.score, truth.score)
    assert not (scored.mask & ph.noncoronary & ~ph.coronary).any()


def test_a_lesion_is_judged_once_across_its_slices() -> None:
    """The model is sure on one slice, barely marks the next, says nothing on the last: one lesion."""
    spacing = 0.5
    hu = np.full((4, 40, 40), 30.0, dtype=np.float32)
    hu[0:3, 10:20, 10:20] = 700  # 25 mm^2 on three slices
    hu[1:4, 10:20, 24:34] = 800  # aortic calcium beside it, marked other
    marks = np.zeros(hu.shape, dtype=np.uint8)
    marks[0, 10:20, 10:20] = CORONARY
    marks[1, 10, 10:15] = CORONARY  # 5 % coronary on this slice alone, the rest unmarked
    marks[1:4, 10:20, 24:34] = OTHER
    result = agatston(hu, select_coronary(hu, marks), (spacing, spacing), 3.0)
    assert result.score == pytest.approx(3 * 25 * 4)
    assert sorted(lesion.slice_index for lesion in result.lesions) == [0, 1, 2]
    # A slice the model marks mostly OTHER is judged on its own marks, never carried in by its neighbours.
    marks[1, 11:20, 10:20] = OTHER
    result = agatston(hu, select_coronary(hu, marks), (spacing, spacing), 3.0)
    assert sorted(lesion.slice_index for lesion in result.lesions) == [0]


def test_calcium_the_model_marks_only_other_never_joins_a_coronary_lesion() -> None:
    spacing = 0.5
    hu = np.full((2, 40, 40), 30.0, dtype=np.float32)
    hu[0, 10:20, 10:20] = 500  # coronary lesion on slice 0
    hu[1, 12:30, 12:30] = 800  # aortic calcium on slice 1, overlapping it in 3-D
    marks = np.zeros(hu.shape, dtype=np.uint8)
    marks[0, 10:20, 10:20] = CORONARY
    marks[1, 12:30, 12:30] = OTHER
    result = agatston(hu, select_coronary(hu, marks), (spacing, spacing), 3.0)
    assert result.score == pytest.approx(25 * 4)
    assert [lesion.slice_index for lesion in result.lesions] == [0]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.floats(0.0, 0.2))
def test_slice_units_label_as_a_whole_slice_labelling_would(seed: int, size: int, density: float) -> None:
    """The candidate units are labelled inside the candidates' bounding box only: the labels, their
    numbering and the boxes must be those of labelling the whole slice (no marks, so no unit is split)."""
    from scipy import ndimage

    from connector.infer.agatston import _EIGHT_CONNECTED, NECK_RATIO, _slice_units

    rng = np.random.default_rng(seed)
    hu = np.full((48, 48), -50, dtype=np.int16)
    r, c = rng.integers(0, 48 - size + 1, size=2)
    patch = rng.random((size, size)) < density
    hu[r : r + size, c : c + size][patch] = 400
    units = _slice_units(hu, 0, lambda k, rr, cc: np.zeros(len(rr), np.uint8), NECK_RATIO)
    labels, count = ndimage.label(hu >= 130, structure=_EIGHT_CONNECTED)
    assert (units.labels == labels).all()
    assert units.boxes == ndimage.find_objects(labels)
    if count:
        assert units.pixels.tolist() == [0] + np.bincount(labels.ravel())[1:].tolist()
    else:
        assert units.boxes == [] and units.pixels.tolist() == [0]
