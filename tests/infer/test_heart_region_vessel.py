"""The heart region on the third generator (issue 29): tilted hearts, lung bases round a liver dome.

``training.vessel_phantoms`` draws scans that reach 60-120 mm below the heart, where the liver's dome
rises as an island into the right lung base, level with the heart's lower half, and can be larger
than the heart's section; below it the lung bases are thin rims round the liver and stomach. The
finder chose the liver there before the midline and lung-share rules (a rib beside the liver was then
scored as 1,679 voxels of coronary calcium; on 14 of 16 such phantoms the region held under 8 % of
the heart). Here: every countable lesion inside the region, the heart covered, the region not reaching
down into the abdomen; and the per-lesion counting that the sensitivity
table rests on.
"""

from __future__ import annotations

import numpy as np
import pytest

from connector.infer.heart_region import find_heart
from training.lesion_sensitivity import Lesion, found, lesions_of
from training.vessel_phantoms import TEST_SEED_BASE, vessel_phantom


@pytest.mark.parametrize("index", range(6))
def test_region_holds_the_heart_and_its_lesions_not_the_liver_dome(index: int) -> None:
    ph = vessel_phantom(TEST_SEED_BASE + index, reach_below=True)
    region = find_heart(ph.hu, (ph.pixel_spacing, ph.pixel_spacing), ph.increment)
    assert region.found
    mask = region.mask
    assert np.count_nonzero(ph.heart & mask) >= 0.95 * np.count_nonzero(ph.heart)
    for lesion in lesions_of(ph):
        assert mask[lesion.voxels].mean() >= 0.5  # what restrict() needs to let the lesion be scored
    # the region reaches some way below the heart label (the run continues while the lungs still fill
    # 30 % of their hull; 8-45 mm on 16 such phantoms) but not down into the abdomen; level with the
    # heart the liver dome can lie inside its in-plane footprint (a known limit, docs/cac.md)
    heart_slices = np.flatnonzero(ph.heart.any(axis=(1, 2)))
    assert (heart_slices[0] - region.first) * ph.increment <= 50.0


def _phantom(hu: np.ndarray, ids: np.ndarray, spacing: float) -> object:
    class P:
        pass

    p = P()
    p.hu, p.lesion_ids, p.pixel_spacing = hu, ids, spacing  # type: ignore[attr-defined]
    return p


def test_lesions_count_from_one_square_mm_at_130_hu_and_are_found_by_any_voxel() -> None:
    hu = np.zeros((3, 20, 20), dtype=np.int16)
    ids = np.zeros(hu.shape, dtype=np.int16)
    hu[1, 2:4, 2:4], ids[1, 1:5, 1:5] = 300, 1  # 4 px of 0.64 mm2 = 2.56 mm2: counts, small and faint
    hu[1, 10, 10], ids[1, 9:12, 9:12] = 900, 2  # 0.64 mm2: too small for Agatston, not counted
    hu[0:3, 14:18, 14:18], ids[0:3, 13:19, 13:19] = 500, 3  # 10.24 mm2 a slice at 500 HU: counts, not faint
    hu[2, 5:9, 12:16], ids[2, 5:9, 12:16] = 120, 4  # under 130 HU: not calcium
    lesions = lesions_of(_phantom(hu, ids, 0.8))
    assert len(lesions) == 2
    small, big = lesions
    assert small.small_faint and small.max_area_mm2 == pytest.approx(2.56)
    assert not big.small_faint and big.peak_hu == 500
    scored = np.zeros(hu.shape, dtype=bool)
    assert not found(small, scored)
    scored[1, 3, 3] = True
    assert found(small, scored) and not found(big, scored)


def test_a_lesion_without_ids_is_a_connected_piece_of_the_coronary_label() -> None:
    hu = np.zeros((2, 12, 12), dtype=np.int16)
    coronary = np.zeros(hu.shape, dtype=bool)
    hu[0, 1:4, 1:4] = hu[1, 7:10, 7:10] = 250
    coronary[0, 0:5, 0:5] = coronary[1, 6:11, 6:11] = True

    class P:
        pass

    p = P()
    p.hu, p.coronary, p.pixel_spacing = hu, coronary, 1.0  # type: ignore[attr-defined]
    lesions = lesions_of(p)
    assert [round(les.max_area_mm2) for les in lesions] == [9, 9]
    assert all(isinstance(les, Lesion) for les in lesions)
