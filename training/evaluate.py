"""Held-out evaluation of a CAC model on synthetic phantoms (numpy only; used by training and tests).

    python -m training.evaluate MODEL_DIR [--count 30] [--independent 12] [--json]

reports three columns: the original generator's held-out phantoms, the wide test split (ranges and
seeds training never drew), and the independent phantoms of ``training.independent`` (another
generator altogether).

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
from connector.synthetic.phantoms import NOISE_WIDE, WIDE_TEST, Phantom, make_phantom

HELD_OUT_SEED_BASE = 900_000  # training uses seeds below this
WIDE_TEST_SEED_BASE = 800_000  # the wide test split: its own seeds, and ranges training never drew from
WIDE_TEST_SPACINGS = (0.65, 0.74, 0.83, 0.92)  # mm; training spreads 0.6-1.0 at other values


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
    return score_phantom_with(runner, ph, seed)[0]


def score_phantom_with(runner: object, ph: Phantom, seed: int) -> tuple[PhantomScore, np.ndarray]:
    """:func:`score_phantom`, and the model's scored mask (per-lesion sensitivity reads it)."""
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
    ), scored.mask


def held_out_phantom(index: int, **kw: object) -> tuple[int, Phantom]:
    """The index-th held-out phantom: noisy, slice increment cycling through 2.5-5 mm."""
    seed = HELD_OUT_SEED_BASE + index
    increment = (2.5, 3.0, 3.75, 4.0, 5.0)[index % 5]
    return seed, make_phantom(seed, increment=increment, **kw)


def held_out_wide(index: int, **kw: object) -> tuple[int, Phantom]:
    """The index-th phantom of the wide test split: WIDE_TEST ranges (bigger and denser plaques, more
    metal), noise 15-40 HU, pixel spacings and seeds training never used, increments 2.5-5 mm."""
    seed = WIDE_TEST_SEED_BASE + index
    increment = (2.5, 3.0, 3.75, 4.0, 5.0)[index % 5]
    spacing = WIDE_TEST_SPACINGS[index % len(WIDE_TEST_SPACINGS)]
    return seed, make_phantom(seed, increment=increment, spacing=spacing, ranges=WIDE_TEST,
                              noise_hu=(15.0, NOISE_WIDE[1] + 5.0), **kw)


def summarise(kappa: float, scores: list[PhantomScore]) -> dict[str, float | int | None]:
    """What the closing note reports: kappa, agreement, median absolute error over 400, misscoring."""
    big = [abs(s.predicted - s.truth) for s in scores if s.truth > 400]
    return {
        "linear_weighted_kappa": round(kappa, 4),
        "category_agreement": sum(s.truth_category == s.predicted_category for s in scores),
        "phantoms": len(scores),
        "scores_over_400": len(big),
        "median_abs_error_over_400": round(float(np.median(big)), 1) if big else None,
        "noncoronary_score_total": round(sum(s.noncoronary_scored for s in scores), 2),
        "bone_aorta_score_total": round(sum(s.bone_aorta_scored for s in scores), 2),
    }


def evaluate(runner: object, count: int, maker: object = None, **kw: object) -> tuple[float, list[PhantomScore]]:
    """Linear weighted kappa of categories over ``count`` held-out phantoms, and the details."""
    make = held_out_phantom if maker is None else maker
    scores = []
    for i in range(count):
        seed, ph = make(i, **kw)  # type: ignore[operator]
        scores.append(score_phantom(runner, ph, seed))
    kappa = linear_weighted_kappa([s.truth_category for s in scores], [s.predicted_category for s in scores])
    return kappa, scores


def evaluate_splits(runner: object, count: int, independent: int) -> dict[str, dict[str, float | int | None]]:
    """The three columns: original held-out, wide test split, independent phantoms."""
    from training.independent import independent_phantom

    report = {}
    for name, maker, n in (("original", held_out_phantom, count), ("wide_test", held_out_wide, count),
                           ("independent", independent_phantom, independent)):
        if n:
            kappa, scores = evaluate(runner, n, maker=maker)
            report[name] = summarise(kappa, scores)
    return report


def print_splits(report: dict[str, dict[str, float | int | None]]) -> None:
    """One line per column, as the training and ensemble scripts log them."""
    import json

    for name, summary in report.items():
        print(f"  {name}: {json.dumps(summary)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    from connector.infer.runner import CacRunner

    parser = argparse.ArgumentParser(description="Evaluate a CAC model folder on the three synthetic test sets.")
    parser.add_argument("model", type=Path, help="model folder (manifest.json + model file)")
    parser.add_argument("--count", type=int, default=30, help="phantoms in each generator split (default 30)")
    parser.add_argument("--independent", type=int, default=12, help="independent phantoms (default 12)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    runner = CacRunner.load(args.model, threads=args.threads)
    report = evaluate_splits(runner, args.count, args.independent)
    if args.json:
        print(json.dumps(report))
    else:
        for name, summary in report.items():
            print(f"{name}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
