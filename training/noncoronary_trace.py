"""Where a model's non-coronary calcium lies: each scored piece of it, located against the heart label.

    python -m training.noncoronary_trace MODEL_DIR [MODEL_DIR ...] --split independent [--offset 84]
        [--count 12] [--min-score 5] [--json]

Why: ``training.lesion_sensitivity`` says how much non-coronary calcium a model scored on a split,
not what it was. Round 3 (docs/cac.md) needed to know before the next round could be aimed: on the
independent chests it was costal cartilage 2-8 mm from the heart, on the wide split coronary stents.

Each piece is a 3-D connected part of the model's scored mask that lies on the phantom's
non-coronary label and not on its coronary one (what ``training.evaluate`` counts as non-coronary).
Reported per piece: phantom, model, slices (and the heart label's), inside the heart label or the
distance to it in mm, its centroid from the heart's centre in mm (rows: negative is anterior;
columns), peak HU, voxels, whether it touches the valve label, and its Agatston score. Peak HU
tells the kinds apart: metal (stents, wires) above about 1,500 HU, bone and cartilage below.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from connector.infer.agatston import agatston
from training.lesion_sensitivity import splits


def trace(runners: dict[str, object], ph: object, min_score: float) -> list[dict[str, object]]:
    """The scored non-coronary pieces of one phantom, for each model."""
    hu = ph.hu.astype(np.float32)  # type: ignore[attr-defined]
    px = float(ph.pixel_spacing)  # type: ignore[attr-defined]
    spacing, heart = (px, px), ph.heart  # type: ignore[attr-defined]
    heart_slices = np.flatnonzero(heart.any(axis=(1, 2)))
    heart_rows, heart_cols = (float(x.mean()) for x in np.nonzero(heart.any(axis=0)))
    valve = getattr(ph, "valve", None)
    out: list[dict[str, object]] = []
    for name, runner in runners.items():
        scored = runner.score_hu(hu, spacing, ph.increment)  # type: ignore[attr-defined]
        wrong = scored.mask & ph.noncoronary & ~ph.coronary  # type: ignore[attr-defined]
        labels, count = ndimage.label(wrong)
        for j in range(1, count + 1):
            piece = labels == j
            score = agatston(hu, piece, spacing, ph.increment).score  # type: ignore[attr-defined]
            if score < min_score:
                continue
            z, rr, cc = np.nonzero(piece)
            inside = bool((piece & heart).any())
            distance: float | None = 0.0
            if not inside:  # nearest approach on a slice that has heart (None: no such slice)
                near = [float(ndimage.distance_transform_edt(~heart[k])[piece[k]].min()) * px
                        for k in np.unique(z) if heart[k].any()]
                distance = round(min(near), 1) if near else None
            out.append({
                "model": name, "slices": [int(z.min()), int(z.max())],
                "heart_slices": [int(heart_slices.min()), int(heart_slices.max())] if len(heart_slices) else None,
                "in_heart": inside, "distance_mm": distance,
                "rows_mm": round((float(rr.mean()) - heart_rows) * px, 1),
                "columns_mm": round((float(cc.mean()) - heart_cols) * px, 1),
                "peak_hu": float(hu[piece].max()), "voxels": int(piece.sum()),
                "valve": bool((piece & valve).any()) if valve is not None else None,
                "score": round(float(score), 1),
            })
    return out


def main(argv: list[str] | None = None) -> int:
    from connector.infer.runner import CacRunner

    makers = {name: maker for name, maker, _ in splits(1, 1)}
    parser = argparse.ArgumentParser(description="Locate each piece of non-coronary calcium CAC models score "
                                                 "on a synthetic split.")
    parser.add_argument("models", type=Path, nargs="+", help="model folders (manifest.json + model file)")
    parser.add_argument("--split", choices=list(makers), required=True)
    parser.add_argument("--offset", type=int, default=0, help="first phantom index")
    parser.add_argument("--count", type=int, default=12, help="phantoms (default 12)")
    parser.add_argument("--min-score", type=float, default=5.0, help="leave out pieces scoring less (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    args = parser.parse_args(argv)
    maker = makers[args.split]
    runners = {m.name: CacRunner.load(m, threads=args.threads) for m in args.models}
    rows: list[dict[str, object]] = []
    for i in range(args.offset, args.offset + args.count):
        _, ph = maker(i)
        for row in trace(runners, ph, args.min_score):
            row["phantom"] = i
            rows.append(row)
            if not args.json:
                where = "in the heart" if row["in_heart"] else f"{row['distance_mm']} mm from the heart"
                print(f"{args.split} {i} {row['model']}: slices {row['slices']}, {where}, rows {row['rows_mm']:+} mm, "
                      f"columns {row['columns_mm']:+} mm, peak {row['peak_hu']:.0f} HU, {row['voxels']} voxels, "
                      f"score {row['score']}", flush=True)
    if args.json:
        print(json.dumps(rows))
    else:
        totals: dict[str, float] = {}
        for row in rows:
            totals[str(row["model"])] = totals.get(str(row["model"]), 0.0) + float(row["score"])  # type: ignore[arg-type]
        print("totals: " + ", ".join(f"{m} {t:,.0f}" for m, t in totals.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
