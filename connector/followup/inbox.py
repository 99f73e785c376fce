"""The coordinators' inbox: a watched folder whose files are imported by the daemon's scheduler.

    <inbox>/deaths-2024Q4.csv                       dropped by a coordinator
    <inbox>/done/20250107T101500Z-deaths-2024Q4.csv                 imported (rows may still be rejected:
    <inbox>/done/20250107T101500Z-deaths-2024Q4.csv.report.csv       the report says which and why)
    <inbox>/failed/...                              the file could not be used at all (unreadable,
                                                    missing column, wrong type), with its report

A file is taken once it has not changed for ``settle_seconds`` (a copy over SMB arrives in pieces;
the inode change time is used too, because Explorer and ``cp -p`` keep the source's modification time). Hidden files, Excel lock files (``~$...``) and ``.part``/``.tmp`` files are left alone.
The report is written into the destination first and the file moved after it, so a crash at any
point leaves the file in the inbox to be imported again next time, which sends nothing twice
(the ledger and the outbox are idempotent). A transient problem (database busy, linkage table
unavailable) leaves the file where it is for the next run. File names are never logged: a
coordinator may well name a file after a patient.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from connector.followup.importer import FollowupImporter, FollowupLinkage
from connector.followup.outcomes import REPORT_SUFFIX, ImportSummary, write_report
from connector.followup.reading import SUPPORTED_SUFFIXES
from connector.linkage.errors import LinkageError
from connector.store.durable import fsync_dir

if TYPE_CHECKING:
    from connector.config import Config
    from connector.outbox import Outbox
    from connector.store.state import StateStore

log = logging.getLogger(__name__)

DONE, FAILED = "done", "failed"
_IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload", REPORT_SUFFIX)


def _candidate(path: Path) -> bool:
    name = path.name
    return not (name.startswith((".", "~$")) or name.lower().endswith(_IGNORED_SUFFIXES))


def pending_files(inbox: Path, settle_seconds: float, now: float | None = None) -> list[Path]:
    """Files in ``inbox`` ready to import (settled), oldest first."""
    now = time.time() if now is None else now
    ready = []
    try:
        entries = list(os.scandir(inbox))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.is_file(follow_symlinks=False) or not _candidate(Path(entry.path)):
            continue
        st = entry.stat(follow_symlinks=False)
        changed = max(st.st_mtime, st.st_ctime)  # ctime: copies that keep the source's mtime still move it
        if now - changed >= settle_seconds:
            ready.append((changed, entry.name, Path(entry.path)))
    return [p for _m, _n, p in sorted(ready)]


def _destination(folder: Path, name: str, stamp: str) -> Path:
    target = folder / f"{stamp}-{name}"
    n = 2
    while target.exists() or (target.parent / (target.name + REPORT_SUFFIX)).exists():
        target = folder / f"{stamp}-{n}-{name}"
        n += 1
    return target


def _ensure_folder(inbox: Path, name: str) -> Path:
    folder = inbox / name
    if not folder.is_dir():
        mode = inbox.stat().st_mode & 0o777
        folder.mkdir(mode=mode, exist_ok=True)
        os.chmod(folder, mode)  # as shared as the inbox (coordinators read their reports), no more
    return folder


def _file_out(path: Path, summary: ImportSummary, inbox: Path, sync: bool) -> None:
    folder = _ensure_folder(inbox, FAILED if summary.failed else DONE)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = _destination(folder, path.name, stamp)
    write_report(summary, target.with_name(target.name + REPORT_SUFFIX), like=path, sync=sync)
    os.replace(path, target)
    if sync:
        fsync_dir(folder)
        fsync_dir(inbox)
    summary.moved_to = target


def process_inbox(config: Config, store: StateStore, provider: FollowupLinkage, outbox: Outbox, *,
                  today: date | None = None, now: float | None = None) -> list[ImportSummary]:
    """Import every settled file in ``[followup] inbox`` and file it under done/ or failed/.

    The daemon's scheduler calls this every ``[followup] poll_seconds`` (with ``max_instances=1``).
    Returns one summary per file handled; [] when no inbox is configured or nothing is ready.
    """
    settings = config.followup
    inbox = settings.inbox
    if inbox is None or not inbox.is_dir():
        if inbox is not None:
            log.warning("followup.inbox.missing")
        return []
    summaries = []
    importer: FollowupImporter | None = None
    for path in pending_files(inbox, settings.settle_seconds, now):
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            summary = ImportSummary(file=path.name, error="unsupported_type",
                                    error_message="unsupported file type: use .csv or .xlsx")
        else:
            importer = importer or FollowupImporter(config, provider, store, outbox, today=today)
            try:
                summary = importer.import_file(path, report=False)
            except (LinkageError, sqlite3.Error, OSError) as exc:  # transient: database busy or closed, table away
                log.warning("followup.inbox.retry_later error=%s", type(exc).__name__)
                continue
            except Exception as exc:  # a bug must not loop on the same file every minute
                log.exception("followup.inbox.internal_error error=%s", type(exc).__name__)
                summary = ImportSummary(file=path.name, error="internal_error",
                                        error_message="the import failed unexpectedly; the connector's log has details")
        try:
            _file_out(path, summary, inbox, config.storage.fsync)
        except OSError as exc:
            log.warning("followup.inbox.move_failed error=%s", type(exc).__name__)
            continue
        log.info("followup.inbox.filed outcome=%s rows=%d queued=%d rejected=%d",
                 FAILED if summary.failed else DONE, summary.rows, summary.queued, summary.rejected_total)
        summaries.append(summary)
    return summaries
