"""``site-connector status``: what the site holds and where work stands, read from the state DB."""

from __future__ import annotations

import argparse
from typing import Any

from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option, config_from_args, print_json
from connector.followup.source_counts import read_counts
from connector.outbox import outbox_counts
from connector.store.layout import SiteLayout
from connector.store.quarantine import count_quarantine
from connector.store.stage_failures import failure_counts, recent_failures
from connector.site_db import open_state
from connector.outbox.delivery import waiting_for_registry
from connector.push.reconcile_runs import last_reconciliation


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="counts of instances, studies, quarantine and outbox",
                       description="Read the state database and print counts. Works while the daemon runs.")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def collect(layout: SiteLayout) -> dict[str, Any]:
    store = open_state(layout.state_db)
    try:
        out = store.counts()
        out.update(outbox_counts(store))
        out["waiting_for_registry"] = waiting_for_registry(store)
        out["last_reconciliation"] = last_reconciliation(store)
        out["optional_stage_failures"] = failure_counts(store.conn)
        out["failed_optional_stages"] = recent_failures(store.conn)
        out["followup_sources"] = read_counts(store.conn)  # per source: counts only
    finally:
        store.close()
    out["quarantined"] = count_quarantine(layout.quarantine)
    return out


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    layout = SiteLayout.from_config(config)
    if not layout.state_db.exists():
        raise CommandError(f"no state database in {config.storage.data_dir} (has the daemon run there?)",
                           exitcodes.UNAVAILABLE)
    status = collect(layout)
    if args.json:
        print_json(status)
        return exitcodes.OK
    print(f"instances received: {status['instances_received']} ({status['bytes_received'] / 1e6:.1f} MB)")
    print("studies:            " + ", ".join(f"{k} {v}" for k, v in status["studies"].items() if v) or "none")
    print(f"quarantined:        {status['quarantined']}")
    print(f"outbox pending:     {status['outbox_pending']} (oldest {status['oldest_pending_age_s']:.0f} s)")
    print(f"pushed:             {status['pushed']} jobs")
    print(f"failed:             {status['failed']} jobs (see quarantine/push)")
    for stage, n in status["optional_stage_failures"].items():
        print(f"{stage + ' failed:':<20}{n['retrying']} studies retrying, {n['given_up']} given up "
              "(images delivered regardless; 'site-connector study KEY' says why)")
    for source, n in sorted(status["followup_sources"].items()):
        print(f"{'follow-up ' + source + ':':<20}{n['received']} received, {n['matched']} matched, "
              f"{n['unmatched_dropped']} unknown dropped, {n['sent']} sent, {n['errors']} errors")
    last = status["last_reconciliation"]
    if last is not None:
        import datetime as dt

        when = dt.datetime.fromtimestamp(last["at"]).strftime("%Y-%m-%d %H:%M")
        what = ("registry unreachable" if last.get("registry_unreachable") else
                f"{last['checked']} checked: {last['verified']} verified, {last['requeued']} re-queued, "
                f"{last['unresolved']} unresolved, {last['errors']} errors")
        print(f"reconciled:         {when}, {what}")
    for failed in status["failed_optional_stages"]:
        delivered = {"pushed": "delivered", "verified": "delivered and verified", "queued": "being delivered"}
        stage = "CAC" if failed["stage"] == "cac" else failed["stage"]
        retry = "retrying" if failed["next_attempt_at"] else "gave up"
        print(f"  study {failed['study']} {delivered.get(failed['state'], failed['state'])}, {stage} failed: "
              f"{failed['reason']} (attempt {failed['attempts']}, {retry})")
    for study in status["waiting_for_registry"]:
        waiting = ", ".join(f"{kind} {'/'.join(f'{n} {st}' for st, n in states.items())}"
                            for kind, states in study["waiting"].items()) or "the manifest"
        error = f" (last error: {study['last_error']})" if study["last_error"] else ""
        print(f"  study {study['study']} waits for {waiting}{error}")
    return exitcodes.OK
