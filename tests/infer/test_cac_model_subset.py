"""The model runs only on the slices the score depends on (issue 29, item 4: speed), and the score
is the same as with the model on every slice.

The slices are the heart region's slices with a candidate (HU >= 130) pixel in it, grown by
:func:`connector.infer.agatston.lesion_reach` until no lesion that could be scored continues onto a
slice without marks (the lesion choice pools a lesion's marks across its slices). The first test
builds a lesion whose only coronary marks lie beyond the heart's slices: marks on the heart's slices
alone would drop it; the grown set keeps it. The others run the bundled models (every layout:
2.5d v1/v2, 2d, 3d patches with and without resampling along z) on a chest padded with abdomen and
neck and compare with the model on every slice.
"""

from __future__ import annotations

import numpy as np
import pytest

from connector.infer.agatston import CORONARY, OTHER, UnitCache, lesion_reach, select_coronary
from connector.infer.manifest import BUNDLED_MODEL_DIR
from connector.infer.runner import CacRunner
from connector.synthetic.phantoms import make_phantom
from tests.infer.test_infer_heart_region import below_and_above

MODELS = BUNDLED_MODEL_DIR.parent


def _grow(hu: np.ndarray, marks: np.ndarray, inside: np.ndarray, first: int) -> tuple[np.ndarray, list[list[int]]]:
    """lesion_reach to its fixpoint with marks that read NO_MARK until a slice is "run" (and fail
    if an unknown slice's marks are looked at)."""
    known = np.zeros(len(hu), dtype=bool)

    def lookup(k: int, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
        assert known[k], f"slice {k} looked at before its marks exist"
        return marks[k, rr, cc]

    units, rounds = UnitCache(hu, lookup), []
    while needed := lesion_reach(units, known, inside, first):
        rounds.append(needed)
        known[needed] = True
    return known, rounds


def test_a_lesion_is_followed_beyond_the_heart_slices_it_is_scored_on() -> None:
    hu = np.zeros((14, 32, 32), dtype=np.float32)
    hu[3:10, 10:14, 10:14] = 400.0  # one lesion on slices 3..9
    hu[0:14, 24:28, 24:28] = 400.0  # bone through every slice, unmarked, 1 of its 16 pixels in the region
    marks = np.zeros(hu.shape, dtype=np.uint8)
    marks[8:10, 10:14, 10:14] = CORONARY  # 2 of 7 slices marked: 29 % of the lesion, >= 20 %
    first, inside = 4, np.zeros((3, 32, 32), dtype=bool)  # the region: slices 4..6, around the lesion
    inside[:, 8:16, 8:16] = True
    inside[:, 27:29, 27:29] = True  # restrict_slab would drop the bone (< half inside): not followed

    known, rounds = _grow(hu, marks, inside, first)
    assert rounds[0] == [4, 5, 6]  # the region's slices with a candidate inside
    assert rounds[1:] == [[3, 7], [8], [9]]  # slice by slice along the lesion, and no further
    assert list(np.flatnonzero(known)) == [3, 4, 5, 6, 7, 8, 9]
    partial = np.where(known[:, None, None], marks, 0).astype(np.uint8)
    full = select_coronary(hu, marks, within=(4, 6))
    assert full.any()  # the lesion is chosen from its marks beyond the region
    np.testing.assert_array_equal(select_coronary(hu, partial, within=(4, 6)), full)
    region_only = marks.copy()
    region_only[:4] = region_only[7:] = 0
    assert not select_coronary(hu, region_only, within=(4, 6)).any()  # why the set must grow


def test_a_mostly_other_unit_is_not_followed() -> None:
    """A unit with more OTHER than CORONARY marks is judged alone (select_coronary): its neighbours'
    marks cannot change the choice, so no slice is added for it."""
    hu = np.zeros((10, 32, 32), dtype=np.float32)
    hu[2:8, 10:14, 10:14] = 400.0
    marks = np.zeros(hu.shape, dtype=np.uint8)
    marks[5, 10:14, 10:14] = OTHER
    inside = np.zeros((1, 32, 32), dtype=bool)
    inside[0, 8:16, 8:16] = True
    known, rounds = _grow(hu, marks, inside, 5)
    assert rounds == [[5]] and list(np.flatnonzero(known)) == [5]


@pytest.fixture(scope="module")
def padded() -> tuple[np.ndarray, tuple[float, float], float]:
    ph = make_phantom(1000)
    hu, _ = below_and_above(ph, 25, 15)  # upper abdomen below, neck above, with decoys
    return hu, (ph.pixel_spacing, ph.pixel_spacing), ph.increment


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.agatston == b.agatston  # score, volume, every lesion
    assert a.first == b.first
    np.testing.assert_array_equal(a.slab, b.slab)
    np.testing.assert_array_equal(a.agatston.weights, b.agatston.weights)


@pytest.mark.parametrize("model", ["cac-synthetic-v2", "cac-synthetic-v1", "cac-synthetic-2d-v1",
                                   "cac-synthetic-3d-v1"])
def test_the_model_runs_on_fewer_slices_and_scores_the_same(
    padded: tuple[np.ndarray, tuple[float, float], float], model: str
) -> None:
    hu, spacing, increment = padded
    runner = CacRunner.load(MODELS / model, threads=2)
    subset = runner.score_hu(hu, spacing, increment)
    whole = runner.score_hu(hu, spacing, increment, all_slices=True)
    assert whole.model_slices == len(hu)
    if model == "cac-synthetic-2d-v1":
        # Its marks leave a dense structure unmarked that runs along z through the padding (the
        # padded slices repeat the chest's end slices): a lesion, for all the rule knows, so it is
        # followed to both ends. Exact, no saving.
        assert subset.model_slices <= len(hu)
    else:
        assert subset.model_slices < 0.75 * len(hu)  # not the neck's 15 and abdomen's 25 slices of 94
    assert subset.agatston.lesion_count > 0
    _same(subset, whole)


def test_3d_resampled_along_z_runs_only_the_patches_it_needs(
    padded: tuple[np.ndarray, tuple[float, float], float]
) -> None:
    """A 1.5 mm series read at 3 mm by the 3d model: the subset maps series slices to model planes
    and runs only the patches that own them."""
    hu, spacing, _ = padded
    fine = np.repeat(hu, 2, axis=0)[:-1]
    runner = CacRunner.load(MODELS / "cac-synthetic-3d-v1", threads=2)
    subset = runner.score_hu(fine, spacing, 1.5)
    whole = runner.score_hu(fine, spacing, 1.5, all_slices=True)
    assert subset.model_slices < 0.75 * len(fine)
    _same(subset, whole)
