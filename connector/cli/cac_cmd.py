"""``site-connector cac SERIES_DIR``: score coronary calcium offline on a folder of DICOM files.

Why: lets a site check the model and its scanners' series on a few local scans before enabling the
stage in the daemon, and gives scripts the same JSON the registry receives (minus the original UIDs,
which are identifiers and are never printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

from connector.cli import exitcodes
from connector.cli.common import CommandError, config_from_args, print_json

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cac",
        help="score coronary artery calcium on a folder of CT DICOM files (offline)",
        description="Select the CT attenuation-correction / calcium series in SERIES_DIR (searched recursively), "
        "run the CAC model and print the Agatston score, volume, lesion count and category.",
        epilog="Exit codes: 0 scored, 1 no eligible series or it could not be scored, "
        "2 bad folder, configuration or model (including a model whose SHA-256 does not match its manifest).",
    )
    parser.add_argument("series_dir", metavar="SERIES_DIR", type=Path, help="folder with the series' DICOM files")
    parser.add_argument(
        "--model",
        metavar="DIR",
        type=Path,
        default=None,
        help="model folder (model.onnx + manifest.json); default: [cac] model_dir, else the bundled model",
    )
    parser.add_argument(
        "--provider",
        action="append",
        default=None,
        metavar="NAME",
        help="ONNX Runtime execution provider (repeatable), e.g. CPUExecutionProvider",
    )
    parser.add_argument(
        "--no-select", action="store_true", help="skip the series selection rules and score every CT series found"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from connector.infer.errors import ModelError
    from connector.infer.runner import CacRunner
    from connector.infer.study import score_study

    folder: Path = args.series_dir
    if not folder.is_dir():
        raise CommandError(f"not a folder: {folder}", exitcodes.USAGE)
    cac = config_from_args(args).cac
    overrides: dict[str, Any] = {}
    if args.model is not None:
        overrides["model_dir"] = args.model.resolve()
    if args.provider:
        overrides["providers"] = list(args.provider)
    if args.no_select:
        overrides.update(
            min_slices=3,
            min_coverage_mm=0.0,
            min_slice_thickness_mm=1e-6,
            max_slice_thickness_mm=1e6,
            max_tilt_degrees=45.0,
            require_emission_series=False,
            require_description_match=False,
            exclude_description_keywords=[],
        )
    cac = dataclasses.replace(cac, **overrides)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))

    t0 = time.perf_counter()
    try:
        runner = CacRunner.from_config(cac)
    except ModelError as exc:
        raise CommandError(f"model refused: {exc}", exitcodes.USAGE) from None
    session_s = time.perf_counter() - t0
    results = score_study(files, runner)
    if not results:
        from connector.infer.select import select_series

        reasons = select_series(files, cac).reason_counts()
        detail = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "no DICOM series found"
        raise CommandError(
            f"no eligible CT series in {folder} ({detail}); --no-select skips the rules", exitcodes.FAILURE
        )
    best = results[0]
    payload = best.to_json(include_uids=False)
    payload["session_seconds"] = round(session_s, 4)
    if len(results) > 1:
        payload["additional_series"] = [r.to_json(include_uids=False) for r in results[1:]]
    if args.json:
        print_json(payload)
    else:
        _print_human(payload, runner.manifest.intended_use)
    return exitcodes.OK if best.ok else exitcodes.FAILURE


def _print_human(payload: dict, intended_use: str) -> None:
    out = sys.stdout
    model = payload["model"]
    if payload["status"] != "ok":
        out.write(f"not scored: {payload['error']}\n")
        return
    out.write(
        f"Agatston {payload['agatston']:.1f} (category {payload['category']}), volume {payload['volume_mm3']:.1f} mm3, "
        f"{payload['lesions']} lesion(s)\n"
        f"series: {payload['series']['slices']} slices, increment {payload['series']['slice_increment_mm']} mm\n"
        f"model: {model['name']} {model['version']} sha256 {model['sha256'][:16]}..., provider {payload['provider']}\n"
        f"time: {payload['seconds']:.2f} s (load {payload['timings']['load']:.2f}, inference "
        f"{payload['timings']['inference']:.2f}, scoring {payload['timings']['scoring']:.2f})\n"
    )
    for warning in payload["warnings"]:
        out.write(f"warning: {warning}\n")
    if not model.get("validated_for_clinical_use"):
        out.write(f"note: {intended_use}\n")
