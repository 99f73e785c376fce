"""The bundled model on held-out noisy phantoms: category agreement and no non-coronary calcium scored.

The held-out phantoms here (index 500 onwards) were used neither for training (seeds < 900000) nor
for the training script's own evaluation (indices 0-29), so they also guard against tuning to it.
"""

from __future__ import annotations

import numpy as np
import pytest

from connector.infer.agatston import agatston
from connector.infer.runner import CacRunner
from connector.settings.cac import CacConfig
from training.evaluate import held_out_phantom, linear_weighted_kappa, score_phantom
from connector.synthetic.phantoms import make_phantom

TEST_OFFSET = 500
COUNT = 30


@pytest.fixture(scope="module")
def runner() -> CacRunner:
    return CacRunner.from_config(CacConfig(threads=2))


def test_linear_weighted_kappa_reference_values() -> None:
    assert linear_weighted_kappa(["0", "1-100", ">400"], ["0", "1-100", ">400"]) == pytest.approx(1.0)
    truth = ["0", "0", "1-100", "1-100", "101-400", ">400"]
    pred = ["0", "1-100", "1-100", "101-400", "101-400", ">400"]
    # Hand computation: observed weighted disagreement 2/18, chance-expected 14/36 -> kappa 5/7.
    assert linear_weighted_kappa(truth, pred) == pytest.approx(5 / 7, abs=1e-9)


def test_held_out_category_agreement_and_no_noncoronary_scoring(runner: CacRunner) -> None:
    scores = []
    for i in range(COUNT):
        seed, ph = held_out_phantom(TEST_OFFSET + i)
        scores.append(score_phantom(runner, ph, seed))
    truth = [s.truth_category for s in scores]
    predicted = [s.predicted_category for s in scores]
    kappa = linear_weighted_kappa(truth, predicted)
    assert len(set(truth)) == 4, "the held-out set must span all four categories"
    assert kappa >= 0.9, list(zip(truth, predicted, strict=True))
    # Calcium in the spine, ribs, sternum and aorta never enters the score; nor does valve calcium.
    assert [s.bone_aorta_scored for s in scores] == [0.0] * COUNT
    assert [s.noncoronary_scored for s in scores] == [0.0] * COUNT


def test_heavy_noncoronary_calcium_alone_scores_zero(runner: CacRunner) -> None:
    for seed in (910_001, 910_002, 910_003, 910_004, 910_005):
        ph = make_phantom(seed, plaque_count=0, noncoronary_load=2.5)
        hu = ph.hu.astype(np.float32)
        spacing = (ph.pixel_spacing, ph.pixel_spacing)
        assert agatston(hu, ph.noncoronary, spacing, ph.increment).score > 100  # there is plenty to mis-score
        scored = runner.score_hu(hu, spacing, ph.increment)
        assert not (scored.mask & ph.noncoronary).any()
        assert scored.agatston.score == 0.0
        assert scored.agatston.category == "0"
