#!/usr/bin/env python3
"""Benchmark: de-identification files/s against dicognito, pydicom/deid and the pydicom floor.

Two corpora are written to a temporary folder:

* ``ct-small``: pydicom's ``CT_small.dcm`` copied N times (default 500);
* ``enhanced-ct``: synthetic Enhanced CT multi-frame objects (default 40 x 60 frames) whose
  per-frame functional groups nest sequences four levels deep, with dates and UID references inside,
  encoded with defined lengths (as pydicom writes them: pydicom then never parses them on a plain
  read + write, which makes this floor very low);
* ``enhanced-undef``: the same objects with undefined-length sequences and items, as most
  modalities write them (pydicom parses those on every read).

Each tool reads every file and writes one output file per input, in one process:

* ``floor``: pydicom read + write, no change (the least any pydicom-based tool can do);
* ``site-connector``: ``DeidEngine.process_path`` with the shipped registry default (rules, PHI
  guard re-parse and scan included, and the study's person-name check as the daemon does it)
  and a plain write (no fsync, like the others);
* ``dicognito``: ``Anonymizer().anonymize(ds)`` between read and write (its CLI's loop);
* ``deid``: ``deid.dicom.replace_identifiers`` with its default recipe over the file list.

Tools run round-robin for ``--rounds`` rounds and the best round counts. Ratios are given on the
process's CPU time (on a shared box wall time also counts other people's jobs) and on wall time.
Bar (issue 3): site-connector >= 3x dicognito's files/s and <= 1.5x the floor's time.

    pip install dicognito deid      # benchmark-only peers, not runtime dependencies
    python tests/benchmarks/bench_deid.py [--ct 500] [--enhanced 40] [--frames 60] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pydicom import dcmread
from pydicom.data import get_testdata_file

from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider
from connector.deid.study import StudyNameCheck
from tests.deid.factory import enhanced_ct, undefined_lengths


def make_corpora(root: Path, ct: int, enhanced: int, frames: int) -> dict[str, list[Path]]:
    (root / "ct-small").mkdir(parents=True)
    source = Path(get_testdata_file("CT_small.dcm"))
    ct_files = []
    for i in range(ct):
        target = root / "ct-small" / f"CT{i:05d}.dcm"
        shutil.copyfile(source, target)
        ct_files.append(target)
    corpora = {"ct-small": ct_files}
    for name, undefined in (("enhanced-ct", False), ("enhanced-undef", True)):
        (root / name).mkdir()
        corpora[name] = []
        for i in range(enhanced):
            target = root / name / f"MF{i:05d}.dcm"
            ds = enhanced_ct(i, frames)
            if undefined:
                undefined_lengths(ds)
            ds.save_as(target, enforce_file_format=True)
            corpora[name].append(target)
    return corpora


# -- the tools ------------------------------------------------------------------------------------


def floor(files: list[Path], out: Path) -> int:
    for f in files:
        dcmread(f).save_as(out / f.name)
    return len(files)


def make_ours() -> Callable[[list[Path], Path], int]:
    engine = DeidEngine.from_rules(None, EphemeralIdentityProvider(secret=bytes(range(32))), fsync=False)

    def ours(files: list[Path], out: Path) -> int:
        done = 0
        names = StudyNameCheck()  # as the daemon does per study: person names learned on the way
        for f in files:
            result = engine.process_path(f, names.names)
            names.learn(result, f)
            if result.status == "ok":
                # Named like the input, as the other tools do: the CT_small copies share one SOP
                # Instance UID, and rewriting one file 500 times measures the file system instead.
                (out / f.name).write_bytes(result.data or b"")
                done += 1
        return done - len(names.late_hits())

    return ours


def make_dicognito() -> Callable[[list[Path], Path], int] | None:
    try:
        from dicognito.anonymizer import Anonymizer
    except ImportError:
        return None

    def run(files: list[Path], out: Path) -> int:
        anonymizer = Anonymizer()
        for f in files:
            ds = dcmread(f)
            anonymizer.anonymize(ds)
            ds.save_as(out / f.name)
        return len(files)

    return run


def make_deid() -> Callable[[list[Path], Path], int] | None:
    try:
        from deid.dicom import replace_identifiers
    except ImportError:
        return None
    from deid.logger import bot

    bot.level = 0  # its default recipe warning would otherwise print once per call

    def run(files: list[Path], out: Path) -> int:
        written = replace_identifiers(dicom_files=[str(f) for f in files], save=True, overwrite=True,
                                      output_folder=str(out))
        return len(written)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=500, help="copies of CT_small.dcm (default 500)")
    parser.add_argument("--enhanced", type=int, default=40, help="Enhanced CT objects (default 40)")
    parser.add_argument("--frames", type=int, default=60, help="frames per Enhanced CT object (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best counts (default 3)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)

    tools: dict[str, Callable[[list[Path], Path], int]] = {"floor": floor, "site-connector": make_ours()}
    for name, factory in (("dicognito", make_dicognito), ("deid", make_deid)):
        tool = factory()
        if tool is None:
            print(f"note: {name} is not installed (pip install {name}); skipped", file=sys.stderr)
        else:
            tools[name] = tool

    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        root = Path(tmp)
        corpora = make_corpora(root / "in", args.ct, args.enhanced, args.frames)
        for corpus, files in corpora.items():
            if not files:
                continue
            best: dict[str, float] = {}
            best_cpu: dict[str, float] = {}
            done: dict[str, int] = {}
            for _round in range(args.rounds):
                for name, tool in tools.items():
                    out = root / "out" / corpus / name
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                    gc.collect()
                    start, start_cpu = time.perf_counter(), time.process_time()
                    done[name] = tool(files, out)
                    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                    best[name] = min(best.get(name, elapsed), elapsed)
                    best_cpu[name] = min(best_cpu.get(name, cpu), cpu)
            results[corpus] = {name: {"files": len(files), "written": done[name], "seconds": round(best[name], 3),
                                      "cpu_seconds": round(best_cpu[name], 3),
                                      "files_per_s": round(len(files) / best[name], 1),
                                      "files_per_cpu_s": round(len(files) / best_cpu[name], 1)} for name in tools}

    # Ratios on CPU time (the box is shared: wall time also counts other people's jobs) and on wall time.
    ratios = {}
    for corpus, r in results.items():
        ours = r["site-connector"]
        ratios[corpus] = {"time_vs_floor": round(ours["cpu_seconds"] / r["floor"]["cpu_seconds"], 2),
                          "wall_time_vs_floor": round(ours["seconds"] / r["floor"]["seconds"], 2)}
        for peer in ("dicognito", "deid"):
            if peer in r:
                ratios[corpus][f"speed_vs_{peer}"] = round(r[peer]["cpu_seconds"] / ours["cpu_seconds"], 2)
                ratios[corpus][f"wall_speed_vs_{peer}"] = round(r[peer]["seconds"] / ours["seconds"], 2)
    if args.json:
        print(json.dumps({"results": results, "ratios": ratios}, indent=2))
        return 0
    print(f"{'corpus':<15} {'tool':<15} {'files':>6} {'wall s':>8} {'cpu s':>8} {'files/s':>9} {'files/cpu-s':>12}")
    for corpus, r in results.items():
        for name, m in r.items():
            print(f"{corpus:<15} {name:<15} {m['files']:>6} {m['seconds']:>8.3f} {m['cpu_seconds']:>8.3f} "
                  f"{m['files_per_s']:>9.1f} {m['files_per_cpu_s']:>12.1f}")
    print()
    for corpus, rr in ratios.items():
        parts = [f"time vs floor {rr['time_vs_floor']:.2f}x cpu / {rr['wall_time_vs_floor']:.2f}x wall (bar <= 1.5x)"]
        if "speed_vs_dicognito" in rr:
            parts.append(f"vs dicognito {rr['speed_vs_dicognito']:.2f}x cpu / {rr['wall_speed_vs_dicognito']:.2f}x "
                         "wall (bar >= 3x)")
        if "speed_vs_deid" in rr:
            parts.append(f"vs deid {rr['speed_vs_deid']:.2f}x cpu")
        print(f"{corpus}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
