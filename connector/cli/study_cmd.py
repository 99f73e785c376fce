"""``site-connector study KEY``: one study's journey, series, quarantine, pseudonym and CAC result.

The same view as the dashboard's study page (:func:`connector.web.study.study_view`), read from
the state database; ``--png DIR`` also writes the CAC picture(s). No patient identifier is shown.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option, config_from_args, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="one study: journey with times, series, quarantine, pseudonym, CAC result",
        description="Show one study by its key (as 'status' and the dashboard list it; a unique prefix of 6 "
        "or more characters is enough): when it was received, became stable, was de-identified, scored, "
        "pushed (each registry job) and verified; its series (modality, instance count), quarantined "
        "objects with their reasons, the pseudonym and the CAC result. Patient identifiers are not shown.",
        epilog="Exit codes: 0 shown; 1 no such study; 2 usage or configuration error; 3 no state database.")
    add_config_option(p)
    p.add_argument("key", help="study key (20 hex characters, or a unique prefix of at least 6)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--png", metavar="DIR", type=Path,
                   help="also write the CAC picture of each scored series as DIR/KEY-cac-N.png")
    p.add_argument("--retry", action="store_true",
                   help="run the study's failed optional stages (CAC) again now, even after automatic retries "
                        "gave up (the running daemon takes it within seconds)")
    p.set_defaults(func=run)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _print(view: dict[str, Any], pictures: list[Path]) -> None:
    print(f"study {view['study']}  state {view['state']}  instances {view['instances']}")
    print(f"pseudonym {view['pseudonym'] or '(not yet)'}")
    print(view["summary"])
    for f in view["stage_failures"]:
        retry = (f"retried automatically at {_when(f['next_attempt_at'])}" if f["next_attempt_at"]
                 else "given up: fix the cause, then restart the service or use --retry")
        print(f"{f['stage']} failed (attempt {f['attempts']}): {f['reason']}; {retry}")
    for r in view["cac"]:
        if r["status"] == "ok":
            print(f"CAC: Agatston {r['agatston']} ({r['category']}), {r['lesions']} lesion(s), "
                  f"{r['volume_mm3']} mm3, model {r['model']}{'' if r['sent'] else ', not yet sent'}")
        else:
            print(f"CAC: {r['status']}")
    print("\njourney:")
    for s in view["journey"]:
        print(f"  {_when(s['at'])}  {s['what']}" + (f"  ({s['detail']})" if s["detail"] else ""))
    print("\nseries:")
    for s in view["series"]:
        print(f"  {s['number']:>3}  {s['modality']:<4} {s['instances']:>5} instance(s)")
    if view["waiting"]:
        print("\nstill waiting for the registry:")
        for j in view["waiting"]:
            print(f"  {j['kind']} {j['state']} attempts {j['attempts']} {j['last_error']}".rstrip())
    print("\nquarantined:" + ("" if view["quarantined"] else " none"))
    for q in view["quarantined"]:
        print(f"  {q['id']}  {q['stage']}  {q['reason']}")
    if view["cac_maps"] and not pictures:
        print(f"\nCAC picture: {len(view['cac_maps'])} scored series (--png DIR writes them; or the dashboard)")
    for path in pictures:
        print(f"CAC picture written: {path}")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from connector.store.layout import SiteLayout
    from connector.site_db import open_state
    from connector.web.study import find_key, study_view

    layout = SiteLayout.from_config(config)
    if not layout.state_db.exists():
        raise CommandError(f"no state database in {config.storage.data_dir} (has the daemon run there?)",
                           exitcodes.UNAVAILABLE)
    store = open_state(layout.state_db)
    try:
        key = find_key(store, args.key)
        view = study_view(store, layout, key) if key else None
        if view is None:
            raise CommandError(f"no study with key {args.key!r} (or the prefix is not unique): "
                               "'site-connector status' and the dashboard list them", exitcodes.FAILURE)
        if args.retry:
            from connector.store.stage_failures import retry_now

            with store.write() as conn:
                again = retry_now(conn, view["study"])
            if not again:
                raise CommandError(f"study {view['study']} has no failed optional stage to retry", exitcodes.FAILURE)
            print(f"study {view['study']}: {again} failed stage(s) to be retried now by the running daemon")
            return exitcodes.OK
        pictures: list[Path] = []
        if args.png is not None:
            from connector.infer.scored_calcium import load_scored_calcium
            from connector.web.cac_picture import render_png

            args.png.mkdir(parents=True, exist_ok=True, mode=0o700)
            for n in view["cac_maps"]:
                out = args.png / f"{view['study']}-cac-{n}.png"
                out.write_bytes(render_png(load_scored_calcium(layout.scored_calcium_path(view["study"], n))))
                pictures.append(out)
        if args.json:
            print_json({**view, "pictures": [str(p) for p in pictures]})
        else:
            _print(view, pictures)
    finally:
        store.close()
    return exitcodes.OK
