"""The heart is found before anything is scored, without the model (issue 29).

A CT attenuation-correction scan reaches from the neck to the upper abdomen, often the whole body;
the bundled models scored spine and ribs below the heart. Here: on phantoms of all three
generators every coronary plaque lies inside the region; scans are extended as scanners cover
them (a neck above, liver, stomach and spleen level below the diaphragm, with dense decoys there),
and nothing outside the heart's slices or in the chest wall survives ``restrict``; a scan with no
chest at all is reported ``heart_not_found`` rather than scored 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from connector.infer.heart_region import find_heart
from connector.infer.runner import CacRunner
from connector.settings.cac import CacConfig
from connector.infer.volume import CtVolume, SpacingReport
from connector.synthetic.phantoms import WIDE, WIDE_TEST, make_phantom
from training.independent import independent_phantom


def phantoms() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for seed in range(3):
        out.append((f"default-{seed}", make_phantom(1000 + seed)))
        out.append((f"wide-{seed}", make_phantom(2000 + seed, ranges=WIDE)))
        out.append((f"wide-test-{seed}", make_phantom(3000 + seed, ranges=WIDE_TEST)))
        out.append((f"independent-{seed}", independent_phantom(seed * 3 + 1)[1]))
    return out


@pytest.mark.parametrize("name, ph", phantoms(), ids=[n for n, _ in phantoms()])
def test_every_coronary_plaque_is_inside_the_region(name: str, ph) -> None:
    region = find_heart(ph.hu.astype(np.float32), (ph.pixel_spacing, ph.pixel_spacing), ph.increment)
    assert region.found, name
    assert np.count_nonzero(ph.heart & ~region.mask) <= 0.01 * np.count_nonzero(ph.heart)
    if ph.coronary.any():
        assert not (ph.coronary & ~region.mask).any(), name
        kept = region.restrict(ph.coronary)
        np.testing.assert_array_equal(kept, ph.coronary)  # every plaque kept whole


def below_and_above(ph, below: int, above: int) -> tuple[np.ndarray, np.ndarray]:
    """The phantom with ``below`` slices of upper abdomen and ``above`` of neck added, and a mask of
    dense decoys placed there (calcified liver granuloma, aortic calcium by the spine, a rib-level
    stent-like density) that a model might call calcium."""
    hu = ph.hu.astype(np.float32)
    body_low, body_top = hu[0] > -500, hu[-1] > -500
    abdomen = hu[0].copy()
    abdomen[(abdomen < -500) & _filled(body_low)] = 55.0  # lungs gone: liver, stomach, spleen
    neck = hu[-1].copy()
    neck[(neck < -500) & _filled(body_top)] = 40.0
    rows, cols = hu.shape[1:]
    rr, cc = np.mgrid[0:rows, 0:cols]
    neck[(rr - rows * 0.42) ** 2 + (cc - cols / 2) ** 2 < 49] = -1000.0  # the trachea
    low = np.repeat(abdomen[None], below, axis=0)
    high = np.repeat(neck[None], above, axis=0)
    decoys = np.zeros((below + len(hu) + above, rows, cols), dtype=bool)
    for k in range(below):
        for cy, cx in ((0.45, 0.35), (0.62, 0.56), (0.40, 0.62)):
            blob = (rr - rows * cy) ** 2 + (cc - cols * cx) ** 2 < 16
            low[k][blob] = 650.0
            decoys[k] |= blob
    for k in range(above):
        blob = (rr - rows * 0.5) ** 2 + (cc - cols * 0.43) ** 2 < 9  # carotid calcium
        high[k][blob] = 500.0
        decoys[below + len(hu) + k] |= blob
    return np.concatenate([low, hu, high]), decoys


def _filled(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask)


@pytest.mark.parametrize("seed", [1000, 2002])
def test_neck_and_upper_abdomen_are_never_scored(seed: int) -> None:
    ph = make_phantom(seed, ranges=WIDE) if seed > 1999 else make_phantom(seed)
    below, above = 25, 15
    hu, decoys = below_and_above(ph, below, above)
    region = find_heart(hu, (ph.pixel_spacing, ph.pixel_spacing), ph.increment)
    assert region.found
    assert below <= region.first and region.last < below + len(ph.hu)  # only the chest's slices
    assert not (region.mask & decoys).any()
    assert not region.restrict(decoys).any()
    coronary = np.concatenate([np.zeros((below, *ph.hu.shape[1:]), bool), ph.coronary,
                               np.zeros((above, *ph.hu.shape[1:]), bool)])
    np.testing.assert_array_equal(region.restrict(coronary), coronary)


def test_chest_wall_bone_is_cut_out_of_the_region() -> None:
    ph = make_phantom(2001, ranges=WIDE)
    hu = ph.hu.astype(np.float32)
    region = find_heart(hu, (ph.pixel_spacing, ph.pixel_spacing), ph.increment)
    bone = (hu > 300) & ~ph.heart & ~ph.coronary & ph.noncoronary & ~ph.valve
    # bone and other non-coronary calcium outside the heart: most of it is outside the region
    assert np.count_nonzero(bone & region.mask) < 0.35 * np.count_nonzero(bone)
    assert not region.restrict(hu > 1000).any() or np.count_nonzero(region.restrict(hu > 1000)) \
        < 0.1 * np.count_nonzero(hu > 1000)


def test_a_scan_without_a_chest_is_not_scored_but_reported() -> None:
    ph = make_phantom(1000)
    hu, _ = below_and_above(ph, 20, 0)
    abdomen = hu[:20]  # upper abdomen only: no lungs on both sides anywhere
    region = find_heart(abdomen, (ph.pixel_spacing, ph.pixel_spacing), ph.increment)
    assert not region.found and not region.restrict(abdomen > 130).any()
    runner = CacRunner.from_config(CacConfig(threads=2))
    scored = runner.score_hu(abdomen, (ph.pixel_spacing, ph.pixel_spacing), ph.increment)
    assert not scored.heart_found and scored.agatston.score == 0 and not scored.mask.any()
    positions = np.arange(len(abdomen)) * ph.increment
    volume = CtVolume(abdomen, (ph.pixel_spacing, ph.pixel_spacing), positions,
                      SpacingReport(ph.increment, ph.increment, ph.increment, True, 0, 0), ph.increment, "1.2.3", "1.2.3.4")
    result = runner.score_volume(volume)
    assert result.status == "error" and result.error == "heart_not_found" and result.agatston is None


@pytest.mark.parametrize("index", [1, 6, 7, 8])
def test_big_dense_plaques_of_the_wide_test_split_are_kept(index: int) -> None:
    """The wide test split's big, dense plaques (up to 1.4 cm2, 1,400 HU) at 0.65-0.92 mm: the first
    version of the region took some for the skeleton and lost up to 38 % of the true score. Every
    category must survive, and at least 90 % of the true score (a plaque that touches the sternum
    on the 3 mm grid is the known loss: phantom 6 keeps 93 %)."""
    from connector.infer.agatston import agatston
    from training.evaluate import held_out_wide

    _, ph = held_out_wide(index)
    hu = ph.hu.astype(np.float32)
    spacing = (ph.pixel_spacing, ph.pixel_spacing)
    region = find_heart(hu, spacing, ph.increment)
    truth = agatston(hu, ph.coronary, spacing, ph.increment)
    kept = agatston(hu, region.restrict(ph.coronary), spacing, ph.increment)
    assert kept.category == truth.category and kept.score >= 0.9 * truth.score, (kept.score, truth.score)
