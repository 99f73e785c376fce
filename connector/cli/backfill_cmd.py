"""``site-connector backfill``: query the PACS for past studies and retrieve them, throttled and resumable."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import threading
from pathlib import Path
from typing import Any

from connector.cli import exitcodes
from connector.cli.common import (
    CommandError,
    add_config_option,
    config_from_args,
    print_json,
)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def _modality(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{2,4}", text):
        raise argparse.ArgumentTypeError(f"expected a modality code such as PT or CT, got {text!r}")
    return text.upper()


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a valid regular expression: {exc}") from None
    return text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backfill", help="retrieve past studies from the PACS (query, worklist, throttled retrieval)",
        description="Retrospective backfill from the PACS configured in [pacs]: 'add' asks the PACS which "
        "studies match (study-level C-FIND over the whole range, split only where the PACS cuts the answer "
        "short) and keeps them as a worklist in the state "
        "database; the daemon retrieves them (C-MOVE to our own AE title, or C-GET: [pacs] retrieve) only "
        "inside [backfill] window, at most [backfill] max_concurrent at once; 'run' retrieves a job now, in "
        "the foreground. Retrieved instances go through the same durable ingest as C-STORE, so the rest of "
        "the pipeline is unchanged. Studies already received are not retrieved again.",
        epilog="Exit codes: 0 done; 1 a query or some retrievals failed; 2 usage or configuration error "
        "(e.g. no [pacs]); 3 the PACS (or the state database) could not be reached.")
    bsub = p.add_subparsers(dest="backfill_command", metavar="ACTION")
    bsub.required = True

    a = bsub.add_parser("add", help="query the PACS and queue the matching studies as a new job",
                        description="Study-level C-FIND over the whole date range, asked again in halves (by date, "
                        "then by time of day) only where the PACS cuts the answer short (a non-success status, "
                        "or [pacs] max_results answers); one per day with [pacs] range_queries = false; or "
                        "one per accession number. Then the "
                        "modality and description filters. Matching studies become a job the daemon works "
                        "through inside [backfill] window (or 'backfill run JOB' now).")
    add_config_option(a)
    a.add_argument("--from", dest="date_from", type=_date, metavar="YYYY-MM-DD", help="first study date")
    a.add_argument("--to", dest="date_to", type=_date, metavar="YYYY-MM-DD", help="last study date (inclusive)")
    a.add_argument("--modality", action="append", type=_modality, default=[], metavar="CODE",
                   help="only studies with this modality in ModalitiesInStudy (repeatable: --modality PT "
                   "--modality CT means either)")
    a.add_argument("--description", type=_regex, default="", metavar="REGEX",
                   help="only studies whose Study Description matches (case-insensitive search)")
    a.add_argument("--accessions", type=Path, metavar="FILE",
                   help="a file of accession numbers, one a line: one C-FIND each (with --from/--to, the "
                   "dates filter the answers)")
    a.add_argument("--dry-run", action="store_true", help="query and print the counts; queue nothing")
    a.add_argument("--json", action="store_true", help="print one JSON object (studies_found, job, ...)")
    a.set_defaults(func=run_add)

    s = bsub.add_parser("status", help="per job: found, retrieved, already present, failed (with reasons)")
    add_config_option(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_status)

    for action, text in (("pause", "stop retrieving a job's studies (a study in flight finishes)"),
                         ("resume", "retrieve a paused job's studies again"),
                         ("cancel", "give up a job: its queued studies are not retrieved (final)")):
        c = bsub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        add_config_option(c)
        c.add_argument("job", type=int, metavar="JOB", help="job number, as 'backfill status' shows it")
        c.add_argument("--json", action="store_true", help="print one JSON object")
        c.set_defaults(func=run_state, action=action)

    r = bsub.add_parser("run", help="retrieve a job now, in the foreground (ignores the window)",
                        description="Retrieve the queued studies of JOB now, whatever [backfill] window says, "
                        "with a progress bar and an ETA; [backfill] max_concurrent and instances_per_minute "
                        "still apply. Studies waiting for a retry are waited for. With [pacs] retrieve = "
                        "\"move\" the daemon's receiver must be running (the PACS sends to it). Ctrl-C stops; "
                        "unfinished studies stay queued.")
    add_config_option(r)
    r.add_argument("job", type=int, metavar="JOB", help="job number, as 'backfill status' shows it")
    r.add_argument("--json", action="store_true", help="no progress bar; print one JSON object at the end")
    r.set_defaults(func=run_run)


def _open_store(config: Any, create: bool = False) -> Any:
    from connector.store.layout import SiteLayout
    from connector.site_db import open_state

    layout = SiteLayout.from_config(config)
    if not layout.state_db.exists() and not create:
        raise CommandError(f"no state database in {config.storage.data_dir} (has the daemon run there?)",
                           exitcodes.UNAVAILABLE)
    if create:
        layout.ensure()
    return layout, open_state(layout.state_db)


def _require_pacs(config: Any) -> None:
    from connector.logsetup import quiet_libraries

    quiet_libraries()  # pydicom and pynetdicom messages may quote values from the PACS's answers
    if not config.pacs.configured:
        raise CommandError("no PACS configured: set [pacs] host and ae_title (and retrieve = \"move\" or "
                           "\"get\")", exitcodes.USAGE)


def _read_accessions(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read the accession list: {exc.strerror}", exitcodes.USAGE) from None
    values = tuple(dict.fromkeys(v.strip() for v in lines if v.strip() and not v.lstrip().startswith("#")))
    bad = [i + 1 for i, v in enumerate(values) if len(v) > 16 or "\\" in v or "*" in v or "?" in v]
    if bad:  # never echo the value itself: it identifies a patient's examination
        raise CommandError(f"accession list entry {bad[0]} is not a valid accession number (at most 16 "
                           "characters, no wildcard or backslash)", exitcodes.USAGE)
    if not values:
        raise CommandError("the accession list is empty", exitcodes.USAGE)
    return values


def run_add(args: argparse.Namespace) -> int:
    from connector.backfill.query import (
        PacsUnavailable,
        QueryFailed,
        StudyFilter,
        find_studies,
    )
    from connector.backfill.worklist import Worklist

    config = config_from_args(args)
    _require_pacs(config)
    accessions = _read_accessions(args.accessions) if args.accessions else ()
    if not accessions and (args.date_from is None or args.date_to is None):
        raise CommandError("give --from and --to (or --accessions FILE)", exitcodes.USAGE)
    if args.date_from and args.date_to and args.date_from > args.date_to:
        raise CommandError("--from is after --to", exitcodes.USAGE)
    flt = StudyFilter(date_from=args.date_from, date_to=args.date_to, modalities=tuple(args.modality),
                      description=args.description, accessions=accessions)
    from connector.pacs.scu import PacsTlsError

    bar: Any = None
    if not args.json:
        from tqdm import tqdm

        total = len(accessions) if accessions else (args.date_to - args.date_from).days + 1
        bar = tqdm(total=total, unit="acc" if accessions else "day", desc="C-FIND", dynamic_ncols=True,
                   file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} {unit}s [{elapsed}]")

    def progress(done: float, total: float) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()

    try:
        report = find_studies(config, flt, progress=progress)
    except PacsTlsError as exc:
        raise CommandError(str(exc), exitcodes.USAGE) from None
    except PacsUnavailable as exc:
        raise CommandError(f"{exc}; check with 'site-connector echo --pacs'", exitcodes.UNAVAILABLE) from None
    except QueryFailed as exc:
        raise CommandError(f"{exc}; nothing was queued", exitcodes.FAILURE) from None
    finally:
        if bar is not None:
            bar.close()
    result: dict[str, Any] = {"studies_found": len(report.studies), "instances": report.instances,
                              "queries": report.queries, "matched_before_filters": report.matched,
                              "split_days": report.split_days, "splits": len(report.splits),
                              "query_mode": report.mode, "query_seconds": round(report.seconds, 3),
                              "dry_run": bool(args.dry_run), "job": None, "filters": flt.as_dict()}
    if not args.dry_run:
        _, store = _open_store(config, create=True)
        try:
            created = Worklist(store).create_job(report.studies, flt.as_dict(), query=report.record())
        finally:
            store.close()
        result.update(job=created["job"], queued=created["queued"], already_present=created["present"])
    if args.json:
        print_json(result)
    else:
        print(f"{len(report.studies)} studies found ({report.instances} instances) with {report.queries} "
              f"C-FIND queries in {report.seconds:.1f} s"
              + (f"; {len(report.splits)} range(s) cut short by the PACS and asked again in halves"
                 if report.splits else "")
              + (f" ({report.split_days} day(s) split by time of day)" if report.split_days else ""))
        if args.dry_run:
            print("dry run: nothing queued")
        else:
            print(f"job {result['job']}: {result['queued']} queued, {result['already_present']} already present; "
                  f"the daemon retrieves them inside [backfill] window ({config.backfill.window or 'any time'}), "
                  f"or now: site-connector backfill run {result['job']}")
    return exitcodes.OK


def run_status(args: argparse.Namespace) -> int:
    from connector.backfill.summary import job_summaries

    config = config_from_args(args)
    _, store = _open_store(config)
    try:
        jobs = job_summaries(store)
    finally:
        store.close()
    if args.json:
        print_json({"jobs": jobs, "window": config.backfill.window, "retrieve": config.pacs.retrieve})
        return exitcodes.OK
    if not jobs:
        print("no backfill jobs")
        return exitcodes.OK
    for j in jobs:
        f = j["filters"]
        what = " ".join(part for part in (
            f"{f['from']}..{f['to']}" if f.get("from") else "", "/".join(f.get("modalities") or []),
            f"/{f['description']}/" if f.get("description") else "",
            f"{f['accessions']} accession numbers" if f.get("accessions") else "") if part)
        q = f.get("query") or {}
        if q:
            what += f" [{q['queries']} C-FIND" + (f", {q['splits']} range(s) split" if q.get("splits") else "") + "]"
        print(f"job {j['job']} ({j['kind']}{' ' + j['label'] if j['label'] else ''}, {j['state']}) {what.strip()}: "
              f"found {j['found']}, retrieved {j['retrieved']}, already present {j['already_present']}, "
              f"failed {j['failed']}, queued {j['queued'] + j['retrieving']}"
              + (f", cancelled {j['cancelled']}" if j["cancelled"] else "")
              + f" ({j['progress'] * 100:.0f}% done, {j['instances_retrieved']} instances, "
                f"{j['bytes_retrieved'] / 1e6:.1f} MB)")
        for p in j["failures"]:
            tag = "failed" if p["state"] == "failed" else "retrying"
            print(f"  study {p['study']}: {tag} after {p['attempts']} attempt(s): {p['reason']}")
    return exitcodes.OK


def run_state(args: argparse.Namespace) -> int:
    from connector.backfill.worklist import JobNotFound, Worklist

    config = config_from_args(args)
    _, store = _open_store(config)
    try:
        new = Worklist(store).set_job_state(args.job, args.action)
    except JobNotFound:
        raise CommandError(f"no backfill job {args.job} ('site-connector backfill status' lists them)",
                           exitcodes.USAGE) from None
    except ValueError as exc:
        raise CommandError(f"cannot {args.action}: {exc}", exitcodes.FAILURE) from None
    finally:
        store.close()
    if args.json:
        print_json({"job": args.job, "state": new})
    else:
        print(f"job {args.job}: {new}")
    return exitcodes.OK


def run_run(args: argparse.Namespace) -> int:
    from connector.backfill.runner import Runner
    from connector.backfill.worklist import JobNotFound, Worklist

    config = config_from_args(args)
    _require_pacs(config)
    layout, store = _open_store(config)
    stop = threading.Event()
    bar: Any = None
    try:
        worklist = Worklist(store)
        try:
            job = worklist.job(args.job)
        except JobNotFound:
            raise CommandError(f"no backfill job {args.job} ('site-connector backfill status' lists them)",
                               exitcodes.USAGE) from None
        if job["state"] in ("cancelled", "paused"):
            raise CommandError(f"job {args.job} is {job['state']}" +
                               (f"; 'site-connector backfill resume {args.job}' first" if job["state"] == "paused"
                                else ""), exitcodes.FAILURE)
        worklist.release_orphans()
        _, instances, _ = worklist.pending(args.job)
        if not args.json:
            from tqdm import tqdm

            bar = tqdm(total=instances or None, unit="inst", desc=f"job {args.job}", dynamic_ncols=True,
                       file=sys.stderr)

        def on_study(study: Any, state: str, reason: str | None) -> None:
            if bar is not None and state != "retrieved":
                bar.write(f"study {study.study_key}: {state if state == 'failed' else 'will retry'}: {reason}")

        runner = Runner(config, store, layout, stop=stop, job_id=args.job, respect_window=False,
                        on_progress=(bar.update if bar is not None else None), on_study=on_study)
        try:
            report = runner.run_until_done()
        except KeyboardInterrupt:
            stop.set()
            raise
        counts = worklist.counts(args.job)
    finally:
        if bar is not None:
            bar.close()
        store.close()
    result = {"job": args.job, "retrieved": report.retrieved, "failed": report.failed, "retried": report.retried,
              "instances": report.instances, "bytes": report.bytes, "seconds": round(report.seconds, 3),
              "studies": counts}
    if args.json:
        print_json(result)
    else:
        mb = report.bytes / 1e6
        rate = f", {mb / report.seconds:.1f} MB/s" if report.seconds > 0 else ""
        print(f"job {args.job}: retrieved {report.retrieved} studies ({report.instances} instances, {mb:.1f} MB"
              f"{rate}) in {report.seconds:.1f} s; failed {counts['failed']}, still queued {counts['queued']}")
    return exitcodes.FAILURE if counts["failed"] else exitcodes.OK
