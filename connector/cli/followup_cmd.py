"""``site-connector followup``: send coordinators' outcome files (deaths, MACE) to the registry.

    site-connector followup import FILE [--dry-run] [--json]
    site-connector followup inbox [--json]          import the settled files of [followup] inbox now
    site-connector followup fhir-poll [--dry-run] [--json]   ask [fhir] base_url about linked patients' deaths
    site-connector followup import bundle.json      a FHIR Bundle of Patients (deceasedDateTime)

Exit codes: 0 every row was queued or unchanged; 1 the file, or some of its rows, were rejected
(see the report next to the file); 2 configuration or key problem (nothing was read).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from connector.cli import exitcodes
from connector.cli.common import (
    CommandError,
    add_config_option,
    config_from_args,
    print_json,
)

_EPILOG = ("Exit codes: 0 all rows queued or unchanged, 1 file or rows rejected (see the report), "
           "2 configuration or key problem.")


def _open(config: Any, *, need_store: bool) -> tuple[Any, Any, Any]:
    """(linkage provider, state store or None, outbox or None)."""
    from connector.linkage.provider import OpenOptions, open_linkage
    from connector.outbox import Outbox
    from connector.store.layout import SiteLayout
    from connector.site_db import open_state

    prompt = getpass.getpass if sys.stdin.isatty() else None
    provider = open_linkage(config, OpenOptions(prompt=prompt, create=False, role="cli"))
    db = SiteLayout.from_config(config).state_db
    if not need_store and not db.exists():
        return provider, None, None  # a dry run on a site that never sent anything: all events are new
    store = open_state(db)
    return provider, store, Outbox(store)


def _guarded(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from connector.linkage.errors import LinkageError, LinkageKeyError

        try:
            return int(handler(args))
        except LinkageKeyError as exc:
            raise CommandError(f"followup: {exc}", exitcodes.USAGE) from None
        except LinkageError as exc:
            raise CommandError(f"followup: {exc}", exitcodes.FAILURE) from None

    return run


def _print_summary(summary: Any) -> None:
    if summary.error:
        print(f"file not imported: {summary.error_message}")
    else:
        blank = f" ({summary.blank} blank skipped)" if summary.blank else ""
        verb = "would be queued" if summary.dry_run else "queued"
        print(f"{summary.rows} rows{blank}: {summary.matched} matched, {summary.queued} {verb}, "
              f"{summary.unchanged} unchanged, {summary.rejected_total} rejected")
        for reason, n in sorted(summary.rejected.items()):
            print(f"  rejected {reason}: {n}")
    if summary.report:
        print(f"report: {summary.report}")
    if summary.moved_to:
        print(f"moved to: {summary.moved_to}")


def _exit_code(summaries: list[Any]) -> int:
    return exitcodes.FAILURE if any(s.failed or s.rejected_total for s in summaries) else exitcodes.OK


def _feed_exit_code(summary: Any) -> int:
    """A feed (FHIR) run: patients the site does not know are expected, not a failure."""
    if summary.error:
        return exitcodes.FAILURE
    s = summary.import_summary
    expected = ("unknown_patient", "nothing_to_retract")
    bad = sum(n for reason, n in (s.rejected.items() if s else ()) if reason not in expected)
    return exitcodes.FAILURE if bad or summary.extra.get("invalid_resources") else exitcodes.OK


def _print_feed(summary: Any, what: str, dry_run: bool) -> None:
    d = summary.as_dict()
    verb = "would be queued" if dry_run else "queued"
    print(f"{what}: {d['patients']} patients received, {d['deaths']} dated deaths, {d['matched']} matched, "
          f"{d['queued']} {verb}, {d['unchanged']} unchanged")
    for reason, n in sorted(d["rejected"].items()):
        print(f"  not sent, {reason}: {n}")
    if d.get("invalid_resources"):
        print(f"  invalid Patient resources: {d['invalid_resources']}")


def _import_bundle(args: argparse.Namespace, path: Path) -> int:
    from connector.fhir.deaths import BundleError, import_bundle

    config = config_from_args(args)
    provider, store, outbox = _open(config, need_store=True)
    try:
        summary = import_bundle(config, path, provider, store, outbox, dry_run=args.dry_run)
    except BundleError as exc:
        raise CommandError(f"followup import: {exc}", exitcodes.FAILURE) from None
    finally:
        provider.close()
        store.close()
    if args.json:
        out = summary.as_dict()
        if args.dry_run and summary.import_summary:
            out["events"] = summary.import_summary.events
        print_json(out)
    else:
        _print_feed(summary, "FHIR Bundle", args.dry_run)
    return _feed_exit_code(summary)


def _fhir_poll(args: argparse.Namespace) -> int:
    from connector.fhir.client import FhirAuthError, FhirError
    from connector.fhir.deaths import poll

    config = config_from_args(args)
    if not config.fhir.enabled:
        raise CommandError("followup fhir-poll: no [fhir] base_url is configured", exitcodes.USAGE)
    provider, store, outbox = _open(config, need_store=True)
    try:
        summary = poll(config, provider, store, outbox, dry_run=args.dry_run)
    except FhirAuthError as exc:
        raise CommandError(f"followup fhir-poll: {exc}", exitcodes.USAGE) from None
    except FhirError as exc:
        raise CommandError(f"followup fhir-poll: {exc}", exitcodes.FAILURE) from None
    finally:
        provider.close()
        store.close()
    if args.json:
        print_json(summary.as_dict())
    else:
        _print_feed(summary, f"FHIR poll ({summary.asked} linked patients asked, {summary.requests} requests)",
                    args.dry_run)
    return _feed_exit_code(summary)


def _import(args: argparse.Namespace) -> int:
    from connector.followup.importer import FollowupImporter

    path = Path(args.file)
    if not path.is_file():
        raise CommandError("followup import: the file does not exist or is not a regular file", exitcodes.USAGE)
    if path.suffix.lower() == ".json":
        return _import_bundle(args, path)
    config = config_from_args(args)
    provider, store, outbox = _open(config, need_store=not args.dry_run)
    try:
        summary = FollowupImporter(config, provider, store, outbox).import_file(path, dry_run=args.dry_run)
    finally:
        provider.close()
        if store is not None:
            store.close()
    if args.json:
        print_json(summary.as_dict(with_events=args.dry_run))
    else:
        if args.dry_run:
            print("DRY RUN: nothing was queued and no report was written.")
        _print_summary(summary)
        if args.dry_run and summary.events:
            print(f"these {len(summary.events)} events would be sent to POST /api/v1/events:")
            for event in summary.events:
                print(json.dumps(event, sort_keys=True))
    return _exit_code([summary])


def _inbox(args: argparse.Namespace) -> int:
    from connector.followup.inbox import process_inbox

    config = config_from_args(args)
    if config.followup.inbox is None:
        raise CommandError("followup inbox: no [followup] inbox folder is configured", exitcodes.USAGE)
    provider, store, outbox = _open(config, need_store=True)
    try:
        summaries = process_inbox(config, store, provider, outbox)
    finally:
        provider.close()
        store.close()
    if args.json:
        print_json({"files": [s.as_dict() for s in summaries]})
    else:
        if not summaries:
            print("no settled file in the inbox")
        for s in summaries:
            _print_summary(s)
    return _exit_code(summaries)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "followup",
        help="send coordinators' follow-up files (deaths, MACE) to the registry under the pseudonym",
        description="Import site coordinators' CSV/XLSX files of deaths and major adverse cardiac events. "
        "Patients are matched through the linkage table; events leave under the pseudonym with shifted "
        "dates; nothing free-text leaves unless [followup] allowed_free_text says so.",
        epilog=_EPILOG,
    )
    add_config_option(parser)
    sub = parser.add_subparsers(dest="followup_command", metavar="ACTION")
    sub.required = True

    imp = sub.add_parser(
        "import", help="import one CSV or XLSX file",
        description="Validate every row, queue the new and changed events, and write a per-row report "
        "(FILE.report.csv) next to the file. Re-importing a file sends nothing that was already sent.",
        epilog=_EPILOG,
    )
    add_config_option(imp)
    imp.add_argument("file", metavar="FILE", help="the coordinator's .csv or .xlsx file, or a FHIR Bundle of "
                     "Patients (.json; patients the site does not know are skipped, exit 0)")
    imp.add_argument("--dry-run", action="store_true",
                     help="queue nothing, write nothing; print exactly the events that would be sent")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON (with the events in a dry run)")
    imp.set_defaults(func=_guarded(_import))

    inbox = sub.add_parser(
        "inbox", help="import the settled files of the [followup] inbox folder now",
        description="What the daemon does every [followup] poll_seconds: import each settled file and move it, "
        "with its report, to done/ or failed/.",
        epilog=_EPILOG,
    )
    add_config_option(inbox)
    inbox.add_argument("--json", action="store_true", help="print the summaries as JSON")
    inbox.set_defaults(func=_guarded(_inbox))

    fhir = sub.add_parser(
        "fhir-poll", help="ask the hospital's FHIR server ([fhir] base_url) about the linked patients' deaths",
        description="Search Patient?identifier=system|value,... in batches, for linked patients only, and queue "
        "every dated death (deceasedDateTime) as a follow-up death. What the daemon does every [fhir] "
        "interval_minutes.",
        epilog="Exit codes: 0 done, 1 the server failed or some deaths could not be used, "
        "2 configuration or credentials problem (no base_url, 401/403, unsafe token file).",
    )
    add_config_option(fhir)
    fhir.add_argument("--dry-run", action="store_true", help="ask the server, queue nothing")
    fhir.add_argument("--json", action="store_true", help="print the counts as JSON")
    fhir.set_defaults(func=_guarded(_fhir_poll))
