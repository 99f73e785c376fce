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
from connector.cli.common import CommandError, add_config_option, config_from_args, print_json

log = logging.getLogger(__name__)


USAGE = ("site-connector cac SERIES_DIR [--model DIR] [--provider NAME] [--no-select] [--json]\n"
         "       site-connector cac validate REFERENCE.csv [--model DIR] [--provider NAME] [--json] [--html DIR] "
         "[--min-kappa K] [--show-accession]")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cac",
        usage=USAGE,
        help="score coronary artery calcium on a folder of CT DICOM files (offline), or validate the model "
        "against the site's own reads ('cac validate REFERENCE.csv')",
        description="Select the CT attenuation-correction / calcium series in SERIES_DIR (searched recursively), "
        "run the CAC model and print the Agatston score, volume, lesion count and category. "
        "'cac validate REFERENCE.csv' scores the site's studies named in the file (rows: accession number or "
        "study key, reference Agatston score from the site's own reads) with the configured model, as the "
        "daemon does, and reports agreement: linear-weighted kappa of the categories 0 / 1-100 / 101-400 / >400, "
        "the 4x4 category table, Bland-Altman bias and 95 %% limits, Spearman's rho and each disagreement by "
        "study key and reference-file line; the run is recorded in the state database (dashboard: /cac/validation).",
        epilog="Exit codes (cac SERIES_DIR): 0 scored, 1 no eligible series or it could not be scored, "
        "2 bad folder, configuration or model (including a model whose SHA-256 does not match its manifest). "
        "Exit codes (cac validate): 0 every reference row was compared (and kappa >= --min-kappa when given), "
        "1 some rows could not be compared (not found on this site, not scored), fewer than 2 compared, or "
        "kappa below --min-kappa; 2 bad reference file, configuration or model; 3 no state database.",
    )
    add_config_option(parser)
    parser.add_argument("series_dir", metavar="SERIES_DIR", type=Path, help="folder with the series' DICOM files "
                        "(or the word 'validate', followed by REFERENCE.csv)")
    parser.add_argument("reference", metavar="REFERENCE.csv", type=Path, nargs="?", default=None,
                        help="cac validate: the site's reference reads (CSV: accession number or study key, "
                        "reference Agatston)")
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
    parser.add_argument("--html", metavar="DIR", type=Path, default=None,
                        help="cac validate: also write a report (index.html, Bland-Altman and scatter plots as PNG)")
    parser.add_argument("--min-kappa", metavar="K", type=float, default=None,
                        help="cac validate: exit 1 when the linear-weighted kappa is below K")
    parser.add_argument("--show-accession", action="store_true",
                        help="cac validate: show the accession number of each row matched by one in the text and "
                        "JSON output (identifiers: only when you need them; never in --html or the state database)")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from connector.infer.errors import ModelError
    from connector.infer.runner import CacRunner
    from connector.infer.study import score_study

    folder: Path = args.series_dir
    if str(folder) == "validate" and (args.reference is not None or not folder.is_dir()):
        if args.reference is None:
            raise CommandError("cac validate needs REFERENCE.csv (rows: accession number or study key, "
                               "reference Agatston score)", exitcodes.USAGE)
        return validate_handler(args)
    if args.reference is not None:
        raise CommandError("cac takes one SERIES_DIR (or: cac validate REFERENCE.csv)", exitcodes.USAGE)
    if args.html is not None or args.min_kappa is not None or args.show_accession:
        raise CommandError("--html, --min-kappa and --show-accession belong to 'cac validate'", exitcodes.USAGE)
    if not folder.is_dir():
        raise CommandError(f"not a folder: {folder}", exitcodes.USAGE)
    cac = _cac_settings(config_from_args(args).cac, args)
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


def _cac_settings(cac: Any, args: argparse.Namespace) -> Any:
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
    return dataclasses.replace(cac, **overrides)


def validate_handler(args: argparse.Namespace) -> int:
    """``cac validate REFERENCE.csv``: score the referenced studies of this site and report agreement."""
    from connector.infer.errors import ModelError
    from connector.infer.runner import CacRunner
    from connector.infer.validation import ReferenceFileError, format_text, read_reference_file, record, validate
    from connector.store.layout import SiteLayout
    from connector.site_db import open_state

    if args.min_kappa is not None and not -1.0 <= args.min_kappa <= 1.0:
        raise CommandError("--min-kappa must be between -1 and 1", exitcodes.USAGE)
    try:
        rows = read_reference_file(args.reference)
    except ReferenceFileError as exc:
        raise CommandError(f"reference file {args.reference}: {exc}", exitcodes.USAGE) from None
    config = config_from_args(args)
    layout = SiteLayout.from_config(config)
    if not layout.state_db.exists():
        raise CommandError(f"no state database in {config.storage.data_dir} (has the daemon run there?)",
                           exitcodes.UNAVAILABLE)
    cac = _cac_settings(config.cac, args)
    try:
        runner = CacRunner.from_config(cac)
    except ModelError as exc:
        raise CommandError(f"model refused: {exc}", exitcodes.USAGE) from None
    if args.html is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError("--html needs matplotlib (pip install matplotlib)", exitcodes.USAGE) from None
    store = open_state(layout.state_db)
    try:
        report = validate(rows, store, layout, runner)
        if report.stats is not None:
            record(store, report)
    finally:
        store.close()
    html_index = None
    if args.html is not None:
        from connector.infer.validation_report import write_html

        try:
            html_index = write_html(report, args.html)
        except OSError as exc:
            raise CommandError(f"cannot write the report to {args.html}: {exc.strerror or exc}",
                               exitcodes.USAGE) from None
    log.info("cac validation done", extra={"event": "cac_validation", "references": len(report.outcomes),
                                           "compared": len(report.scored), "disagreements": len(report.disagreements),
                                           "kappa": report.stats.kappa if report.stats else None})
    if args.json:
        payload = report.to_json(show_accession=args.show_accession)
        payload["html"] = str(html_index) if html_index else None
        print_json(payload)
    else:
        sys.stdout.write(format_text(report, show_accession=args.show_accession))
        if html_index is not None:
            sys.stdout.write(f"report: {html_index}\n")
    kappa = report.stats.kappa if report.stats is not None else None
    if len(report.scored) < 2 or len(report.scored) < len(report.outcomes):
        return exitcodes.FAILURE
    if args.min_kappa is not None and (kappa is None or kappa < args.min_kappa):
        return exitcodes.FAILURE
    return exitcodes.OK


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
