"""``site-connector reconcile``: ask the registry what it holds for each pushed study, mend what it lacks."""

from __future__ import annotations

import argparse
from typing import Any

from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option, config_from_args, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconcile", help="check that the registry holds every pushed study; re-send what it lacks",
        description="For each study in state 'pushed' (with --all, 'verified' ones too), ask the registry "
        "what it holds (QIDO-RS instance lists per series, and the stored manifest when the registry has the "
        "JSON API) and compare with what the site sent. A matching study becomes 'verified' with the time; "
        "instances the registry lacks are de-identified again from the originals on the spool and queued "
        "for the running daemon to send (the study goes back to 'queued'). Works while the daemon runs; "
        "the daemon also does this every [registry] reconcile_interval_minutes.",
        epilog="Exit codes: 0 every study checked is verified or re-queued; 1 a study could not be checked or "
        "mended (details in the output); 2 configuration error; 3 the registry (or the state database) "
        "could not be reached, nothing was changed.")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (counts and study keys only)")
    p.add_argument("--study", action="append", metavar="KEY", default=None,
                   help="only this study (its key, as 'status' shows it; repeatable); checked even if verified")
    p.add_argument("--all", action="store_true", help="check 'verified' studies again too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from connector.push.reconcile import Reconciler
    from connector.push.registry_reader import ReconcileError, RegistryUnreachable
    from connector.store.layout import SiteLayout
    from connector.site_db import open_state

    layout = SiteLayout.from_config(config)
    if not layout.state_db.exists():
        raise CommandError(f"no state database in {config.storage.data_dir} (has the daemon run there?)",
                           exitcodes.UNAVAILABLE)
    store = open_state(layout.state_db)
    providers: list[Any] = []

    def engine() -> Any:
        from connector.deid.engine import DeidEngine
        from connector.linkage import LinkageError, open_identity_provider

        try:
            providers.append(open_identity_provider(config))
        except LinkageError as exc:
            raise CommandError(f"cannot open the site's linkage table to re-send: {exc}",
                               exitcodes.UNAVAILABLE) from None
        return DeidEngine.from_config(config, providers[-1])

    try:
        if args.study:
            unknown = [k for k in args.study if store.study(k) is None]
            if unknown:
                raise CommandError(f"no study with key {unknown[0]} ('site-connector status' lists keys)",
                                   exitcodes.USAGE)
        try:
            report = Reconciler(config, store, layout, engine_factory=engine).run(
                include_verified=args.all, study_keys=args.study)
        except RegistryUnreachable as exc:
            raise CommandError(f"registry not reachable at {config.registry.resolved_dicomweb_url} ({exc}); "
                               "nothing was changed", exitcodes.UNAVAILABLE) from None
        except ReconcileError as exc:
            raise CommandError(f"the registry refused the reconciliation's queries ({exc}); nothing was changed",
                               exitcodes.FAILURE) from None
    finally:
        store.close()
        for provider in providers:
            provider.close()
    if args.json:
        print_json(report.as_dict())
    else:
        s = report.summary()
        scope = ("" if not s["checked"] else
                 " (instances and manifests)" if report.api else " (instances only: the registry has no JSON API)")
        print(f"checked {s['checked']} studies in {s['seconds']:.1f} s{scope}: "
              f"{s['verified']} verified, {s['requeued']} re-queued, {s['unresolved']} unresolved, "
              f"{s['errors']} errors")
        for r in report.results:
            if r.outcome == "verified":
                continue
            line = f"  study {r.study}: {r.outcome}"
            if r.missing:
                line += f", registry lacks {r.missing} instance(s), {r.requeued} re-queued"
            if r.manifest in ("missing", "different"):
                line += f", manifest {r.manifest} ({r.manifests_requeued} re-queued)"
            if r.error:
                line += f" ({r.error})"
            print(line)
    return exitcodes.OK if report.ok else exitcodes.FAILURE
