"""The vessel generator's costal-arch cartilage (round 4's training data, docs/cac.md): only training
phantoms asked for it get it, nothing else in them moves, and it lies where round 3's candidates
scored cartilage on the independent chests: 2-8 mm outside the heart label, at 600-700 HU."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from training import vessel_phantoms as vessel


def _digest(ph: object) -> str:
    return hashlib.sha256(ph.hu.tobytes() + ph.noncoronary.tobytes() + ph.coronary.tobytes()).hexdigest()  # type: ignore[attr-defined]


def test_the_splits_are_the_phantoms_every_earlier_round_used() -> None:
    """Digests recorded before the option existed: validation and test splits (and training phantoms
    without the option) must not drift, or rounds 1-3's tables stop being comparable."""
    assert _digest(vessel.train_phantom(3)[1]) == "2a6ada5af31d71ae6553385a9fc8a1674d7d23a918f18d98af3c01edbbfbf85f"
    assert _digest(vessel.validation_phantom(3)[1]) == "ae78858c798c48f05120c5f6ee0caa2334e6943a971d861c35c6149790e7c957"
    assert _digest(vessel.test_phantom(3)[1]) == "2e2eeda3bdbcd981e65fbd2c532a2f1126c9996243e19e6e0846c4adfa99dc76"


@pytest.mark.parametrize("index", [0, 3, 7])
def test_arch_cartilage_lies_just_outside_the_heart_label_and_changes_nothing_else(index: int) -> None:
    _, plain = vessel.train_phantom(index)
    _, with_it = vessel.train_phantom(index, arch_cartilage=True)
    added = with_it.noncoronary & ~plain.noncoronary
    assert added.any()
    assert not (added & with_it.coronary).any() and (with_it.coronary == plain.coronary).all()
    assert (with_it.heart == plain.heart).all() and (with_it.valve == plain.valve).all()
    # every changed voxel is calcium or its blurred edge (cartilage may overlap a rib already there)
    near_calcium = ndimage.binary_dilation(with_it.noncoronary, iterations=3)
    assert (np.abs(with_it.hu.astype(np.int32) - plain.hu.astype(np.int32))[~near_calcium] == 0).all()
    assert with_it.hu[added].max() >= 450  # 600-700 HU drawn, blurred and noisy
    px = with_it.pixel_spacing
    pieces, count = ndimage.label(added)
    for j in range(1, count + 1):
        piece = pieces == j
        slices = np.unique(np.nonzero(piece)[0])
        distances = [ndimage.distance_transform_edt(~with_it.heart[k])[piece[k]].min() * px
                     for k in slices if with_it.heart[k].any()]
        if distances:  # a piece beyond the heart's last slice has no distance on its slice
            assert min(distances) <= 12.0
