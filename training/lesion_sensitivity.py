"""Per-lesion sensitivity of CAC models on every synthetic split, with the small faint lesions apart.

    python -m training.lesion_sensitivity MODEL_DIR [MODEL_DIR ...] [--count 30] [--independent 12] [--json]

Why: a category table hides the lesion that decides CAC 0 against CAC 1-100. Issue 29's adoption
criteria ask for per-lesion sensitivity on every split, and separately for lesions of 1-10 mm² at
130-400 HU, the ones a model trained on big dense plaques misses. Each phantom is rendered once and
scored by every model named, so the columns compare on the same lesions.

A lesion is a connected piece of the phantom's coronary label (the vessel generator's own lesion
ids where it has them). It **counts** when some slice holds >= 1 mm² of it at >= 130 HU (otherwise
Agatston scoring cannot see it either); it is **found** when any of those voxels is in the model's
scored mask. It is **small and faint** when its largest slice holds 1-10 mm² at >= 130 HU and its
peak is under 400 HU. The phantom-level columns (kappa, categories right, non-coronary calcium
scored) come from :mod:`training.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.evaluate import (
    held_out_phantom,
    held_out_wide,
    linear_weighted_kappa,
    score_phantom_with,
    summarise,
)

MIN_AREA_MM2 = 1.0
SMALL_AREA_MM2 = 10.0
FAINT_PEAK_HU = 400.0
CALCIUM_HU = 130


@dataclass(frozen=True)
class Lesion:
    """One ground-truth lesion: its voxels at >= 130 HU, size and peak."""

    voxels: tuple[np.ndarray, np.ndarray, np.ndarray]
    max_area_mm2: float
    peak_hu: float

    @property
    def small_faint(self) -> bool:
        return self.max_area_mm2 <= SMALL_AREA_MM2 and self.peak_hu < FAINT_PEAK_HU


def lesions_of(ph: object) -> list[Lesion]:
    """The phantom's countable lesions (>= 1 mm² at >= 130 HU on some slice)."""
    ids = getattr(ph, "lesion_ids", None)
    if ids is None:
        ids, _ = ndimage.label(ph.coronary)  # type: ignore[attr-defined]
    hu = ph.hu  # type: ignore[attr-defined]
    px_mm2 = float(ph.pixel_spacing) ** 2  # type: ignore[attr-defined]
    out = []
    calc = hu >= CALCIUM_HU
    for k, where in enumerate(ndimage.find_objects(ids), start=1):
        if where is None:
            continue
        part = (ids[where] == k) & calc[where]
        if not part.any():
            continue
        per_slice = part.sum(axis=(1, 2)) * px_mm2
        if per_slice.max() < MIN_AREA_MM2:
            continue
        zz, yy, xx = np.nonzero(part)
        voxels = (zz + where[0].start, yy + where[1].start, xx + where[2].start)
        out.append(Lesion(voxels, float(per_slice.max()), float(hu[voxels].max())))
    return out


def found(lesion: Lesion, scored_mask: np.ndarray) -> bool:
    return bool(scored_mask[lesion.voxels].any())



def splits(count: int, independent: int) -> list[tuple[str, Callable[[int], tuple[int, object]], int]]:
    """Every split a model is reported on: name, maker, count (the vessel generator's validation split
    is for choosing, its test split for reporting)."""
    from training.independent import independent_phantom
    from training.vessel_phantoms import test_phantom, validation_phantom

    return [("original", held_out_phantom, count), ("wide_test", held_out_wide, count),
            ("independent", independent_phantom, independent), ("vessel_validation", validation_phantom, count),
            ("vessel_test", test_phantom, count)]


def evaluate_models(runners: dict[str, object], count: int, independent: int, only: tuple[str, ...] = (),
                    offset: int = 0, independent_offset: int = 0) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """{split: {model: summary + lesion sensitivity}} for every split (or those in ``only``); phantom
    indices start at ``offset`` (``independent_offset`` for the independent split), so a report can use
    phantoms no earlier choice looked at."""
    report: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for name, maker, n in splits(count, independent):
        if not n or (only and name not in only):
            continue
        per_model: dict[str, list] = {m: [] for m in runners}
        hits: dict[str, list[tuple[bool, bool]]] = {m: [] for m in runners}
        first = independent_offset if name == "independent" else offset
        for i in range(first, first + n):
            seed, ph = maker(i)
            truth_lesions = lesions_of(ph)
            for model, runner in runners.items():
                score, mask = score_phantom_with(runner, ph, seed)
                per_model[model].append(score)
                hits[model].extend((les.small_faint, found(les, mask)) for les in truth_lesions)
            print(f"  {name} {i}: {len(truth_lesions)} lesions", file=sys.stderr, flush=True)
        report[name] = {}
        for model, scores in per_model.items():
            kappa = linear_weighted_kappa([s.truth_category for s in scores], [s.predicted_category for s in scores])
            row = summarise(kappa, scores)
            all_hits = hits[model]
            small = [f for s, f in all_hits if s]
            row.update({
                "lesions": len(all_hits),
                "lesions_found": sum(f for _, f in all_hits),
                "sensitivity": round(sum(f for _, f in all_hits) / len(all_hits), 3) if all_hits else None,
                "small_faint_lesions": len(small),
                "small_faint_found": sum(small),
                "small_faint_sensitivity": round(sum(small) / len(small), 3) if small else None,
            })
            report[name][model] = row
    return report


def main(argv: list[str] | None = None) -> int:
    from connector.infer.runner import CacRunner

    parser = argparse.ArgumentParser(description="Per-lesion sensitivity of CAC model folders on every synthetic split.")
    parser.add_argument("models", type=Path, nargs="+", help="model folders (manifest.json + model file)")
    parser.add_argument("--count", type=int, default=30, help="phantoms in each generator split (default 30)")
    parser.add_argument("--independent", type=int, default=12, help="independent phantoms (default 12)")
    parser.add_argument("--only", nargs="*", default=(), help="split names to run (default: all)")
    parser.add_argument("--offset", type=int, default=0, help="first phantom index of the generator splits")
    parser.add_argument("--independent-offset", type=int, default=0, help="first independent phantom index")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    runners = {m.name: CacRunner.load(m, threads=args.threads) for m in args.models}
    report = evaluate_models(runners, args.count, args.independent, tuple(args.only), args.offset,
                             args.independent_offset)
    if args.json:
        print(json.dumps(report))
    else:
        for split, rows in report.items():
            for model, row in rows.items():
                print(f"{split:18s} {model:24s} sensitivity {row['lesions_found']}/{row['lesions']} "
                      f"small-faint {row['small_faint_found']}/{row['small_faint_lesions']} "
                      f"categories {row['category_agreement']}/{row['phantoms']} kappa {row['linear_weighted_kappa']} "
                      f"non-coronary {row['noncoronary_score_total']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
