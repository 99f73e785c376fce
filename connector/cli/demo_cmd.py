"""``site-connector demo``: see the whole chain work on this machine, no PACS or registry needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from connector.cli import exitcodes
from connector.cli.common import CommandError, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the dev registry and the daemon, send a synthetic PET/CT study, report",
                       description="Start the dev registry and the daemon in a temporary folder, send a synthetic "
                       "PET/CT study (CT attenuation series with calcium) by C-STORE, wait until the registry holds "
                       "it, and print what it received. Everything stays on 127.0.0.1; all data is synthetic.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, spool, registry)")
    p.add_argument("--folder", type=Path, help="use this (empty or new) folder instead of a temporary one")
    p.add_argument("--ct-slices", type=int, default=60, help="CT slices in the synthetic study (default 60)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the registry (default 300)")
    p.add_argument("--stay", action="store_true",
                   help="keep the registry and the daemon running (dashboard login printed) until Ctrl-C")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from connector.demo import Demo, summary_text

    if args.folder is not None:
        args.folder.mkdir(parents=True, exist_ok=True)
        if any(args.folder.iterdir()):
            raise CommandError(f"{args.folder} is not empty", exitcodes.USAGE)
    demo = Demo(args.folder, ct_slices=args.ct_slices, timeout=args.timeout)
    kept = bool(args.keep or args.folder)

    def report(result: object) -> None:
        if args.json:
            print_json(result.as_dict())  # type: ignore[attr-defined]
        else:
            print(summary_text(result, kept=kept), flush=True)  # type: ignore[arg-type]

    try:
        result = demo.run(stay=args.stay, on_ready=report)
    except (RuntimeError, TimeoutError) as exc:
        raise CommandError(f"demo failed: {exc} (logs kept in {demo.folder})", exitcodes.FAILURE) from None
    if not args.stay:
        report(result)
    if not kept:
        demo.cleanup()
    return exitcodes.OK
