"""Held-out evaluation of a CAC model on synthetic phantoms (numpy only; used by training and tests).

Ground truth for a phantom is the exact Agatston score of its noisy HU volume inside the phantom's
own coronary-plaque labels, computed by the same scorer the connector uses; the model's score uses
the mask the model produces. Category agreement is summarised by the linear weighted kappa, the
statistic the CTAC CAC papers report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from connector.infer.agatston import CATEGORIES, agatston, category_for
from connector.phantoms import Phantom, make_phantom

HELD_OUT_SEED_BASE = 900_000  # training uses seeds below this


@dataclass(frozen=True)
class PhantomScore:
    seed: int
    truth: float
    predicted: float
    truth_category: str
    predicted_category: str
    noncoronary_scored: float  # score the model gave to voxels labelled non-coronary calcium
    bone_aorta_scored: float  # ... of which in the spine, ribs, sternum or aorta (the rest: valves)


def linear_weighted_kappa(
    truth: Iterable[str], predicted: Iterable[str], categories: tuple[str, ...] = CATEGORIES
) -> float:
    """Cohen's kappa with linear weights over ordered categories."""
    index = {c: i for i, c in enumerate(categories)}
    t = np.array([index[c] for c in truth])
    p = np.array([index[c] for c in predicted])
    k = len(categories)
    observed = np.zeros((k, k))
    np.add.at(observed, (t, p), 1)
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((k, k))
    weights = np.abs(i - j) / (k - 1)
    denominator = (weights * expected).sum()
    return 1.0 if denominator == 0 else float(1.0 - (weights * observed).sum() / denominator)


def truth_score(ph: Phantom) -> float:
    spacing = (ph.pixel_spacing, ph.pixel_spacing)
    return agatston(ph.hu.astype(np.float32), ph.coronary, spacing, ph.increment).score


def score_phantom(runner: object, ph: Phantom, seed: int) -> PhantomScore:
    """Score one phantom with a :class:`connector.infer.runner.CacRunner`."""
    hu = ph.hu.astype(np.float32)
    spacing = (ph.pixel_spacing, ph.pixel_spacing)
    scored = runner.score_hu(hu, spacing, ph.increment)  # type: ignore[attr-defined]
    truth = truth_score(ph)
    wrong = scored.mask & ph.noncoronary & ~ph.coronary
    noncoronary = agatston(hu, wrong, spacing, ph.increment).score
    bone_aorta = agatston(hu, wrong & ~ph.valve, spacing, ph.increment).score
    return PhantomScore(
        seed=seed,
        truth=truth,
        predicted=scored.agatston.score,
        truth_category=category_for(truth),
        predicted_category=scored.agatston.category,
        noncoronary_scored=noncoronary,
        bone_aorta_scored=bone_aorta,
    )


def held_out_phantom(index: int, **kw: object) -> tuple[int, Phantom]:
    """The index-th held-out phantom: noisy, slice increment cycling through 2.5-5 mm."""
    seed = HELD_OUT_SEED_BASE + index
    increment = (2.5, 3.0, 3.75, 4.0, 5.0)[index % 5]
    return seed, make_phantom(seed, increment=increment, **kw)


def evaluate(runner: object, count: int, **kw: object) -> tuple[float, list[PhantomScore]]:
    """Linear weighted kappa of categories over ``count`` held-out phantoms, and the details."""
    scores = []
    for i in range(count):
        seed, ph = held_out_phantom(i, **kw)
        scores.append(score_phantom(runner, ph, seed))
    kappa = linear_weighted_kappa([s.truth_category for s in scores], [s.predicted_category for s in scores])
    return kappa, scores
