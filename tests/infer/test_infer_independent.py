"""The independent chest phantoms (training/independent.py) and the three-column evaluation CLI.

The independent phantoms are the only CAC test set not drawn from ``connector.synthetic.phantoms``; the closing
notes compare models on them, so their labels must mean what the evaluation assumes: lesion counts by
index, coronary labels disjoint from non-coronary ones, and bone/aortic calcium that a scorer given the
non-coronary label would score.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from connector.infer.agatston import HU_THRESHOLD, agatston
from training.independent import SEED_BASE, independent_phantom

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("index", "has_lesions"), [(0, True), (5, True), (8, False)])
def test_independent_phantom_labels(index: int, has_lesions: bool) -> None:
    seed, ph = independent_phantom(index)
    assert seed == SEED_BASE + index
    spacing = (ph.pixel_spacing, ph.pixel_spacing)
    assert 0.6 <= ph.pixel_spacing <= 1.0 and ph.increment in (2.5, 3.0, 5.0)
    assert not (ph.coronary & ph.noncoronary).any()
    assert (ph.valve <= ph.noncoronary).all()  # the valve is part of the non-coronary label
    truth = agatston(ph.hu.astype(np.float32), ph.coronary, spacing, ph.increment)
    assert (truth.score > 0) == has_lesions
    if has_lesions:
        # The coronary label holds calcium, not only its partial-volume margin.
        calcified = ph.coronary & (ph.hu >= HU_THRESHOLD)
        assert calcified.any()
    # Bone and aortic calcium are present in every phantom and are labelled non-coronary.
    bone = agatston(ph.hu.astype(np.float32), ph.noncoronary, spacing, ph.increment)
    assert bone.score > 1000


def test_independent_phantoms_are_deterministic() -> None:
    _, a = independent_phantom(3)
    _, b = independent_phantom(3)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.coronary, b.coronary)


def test_evaluate_cli_reports_three_columns_for_the_v1_model() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "training.evaluate", str(ROOT / "models" / "cac-synthetic-v1"),
         "--count", "2", "--independent", "2", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert set(report) == {"original", "wide_test", "independent"}
    assert report["original"]["phantoms"] == 2 and report["independent"]["phantoms"] == 2
    for summary in report.values():
        assert -1.0 <= summary["linear_weighted_kappa"] <= 1.0
        assert summary["noncoronary_score_total"] >= 0
