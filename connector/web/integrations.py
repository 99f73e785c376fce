"""Optional stages the dashboard talks to: the outbox and the follow-up import.

Why a seam: the web server is useful (health, metrics, studies, quarantine) in a build where
those stages are missing or older, so every call goes through here and degrades to "not
available in this build" instead of failing the whole page. Only counts and non-identifying
fields cross this seam.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.store.state import StateStore

log = logging.getLogger(__name__)


def _optional_module(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _table_exists(store: StateStore, table: str) -> bool:
    return store.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone() is not None


# -- outbox ------------------------------------------------------------------------------------


def outbox_available(store: StateStore) -> bool:
    return _optional_module("connector.outbox") is not None and _table_exists(store, "outbox_jobs")


def outbox_figures(store: StateStore) -> dict[str, Any] | None:
    """``connector.outbox.outbox_counts(store)`` plus the last acknowledgement time; None without an outbox."""
    module = _optional_module("connector.outbox")
    if module is None or not hasattr(module, "outbox_counts") or not _table_exists(store, "outbox_jobs"):
        return None
    figures = dict(module.outbox_counts(store))
    row = store.conn.execute("SELECT MAX(done_at) FROM outbox_jobs WHERE state='done'").fetchone()
    figures["last_push_at"] = float(row[0]) if row and row[0] is not None else None
    return figures


CAC_JOB_KINDS = ("result",)  # connector.push.queueing queues one "result" job per scored series


def cac_runs(figures: dict[str, Any] | None) -> int:
    """CAC results produced = result jobs queued for the registry, whatever their state."""
    if not figures:
        return 0
    by_kind = figures.get("outbox_by_kind") or {}
    return sum(sum(states.values()) for kind, states in by_kind.items() if kind in CAC_JOB_KINDS)


@dataclass(frozen=True)
class OutboxJobView:
    id: int
    kind: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_status: int | None
    last_error: str


def outbox_jobs(store: StateStore, *, unsent_only: bool = True, limit: int = 200) -> list[OutboxJobView]:
    """Jobs for the dashboard: kind, state and retry timing. Keys and payloads are not shown."""
    if not outbox_available(store):
        return []
    where = "WHERE state != 'done'" if unsent_only else ""
    rows = store.conn.execute(
        f"SELECT id, kind, state, attempts, created_at, next_attempt_at, last_status, last_error "
        f"FROM outbox_jobs {where} ORDER BY created_at LIMIT ?", (limit,))
    return [OutboxJobView(int(r[0]), str(r[1]), str(r[2]), int(r[3] or 0), float(r[4]),
                          float(r[5]) if r[5] is not None else None, r[6], str(r[7] or "")[:200]) for r in rows]


def outbox_retry_now(store: StateStore) -> int:
    """Operator's "retry now": failed jobs are due again, and waiting jobs lose their backoff.

    Uses the outbox's own methods where it has them (``retry_now``, ``retry_failed``).
    """
    module = _optional_module("connector.outbox")
    if module is None or not _table_exists(store, "outbox_jobs"):
        raise LookupError("the outbox is not available in this build")
    outbox = module.Outbox(store)
    if hasattr(outbox, "retry_now"):
        return int(outbox.retry_now())
    count = int(outbox.retry_failed())
    # Until the outbox offers retry_now: pending jobs backing off become due now. Only the retry
    # timer changes; leases, attempts and payloads are the outbox's and stay as they are.
    now = time.time()
    with store.write() as conn:
        count += conn.execute("UPDATE outbox_jobs SET next_attempt_at=? WHERE state='pending' AND next_attempt_at>?",
                              (now, now)).rowcount
    return count


# -- follow-up import --------------------------------------------------------------------------


@dataclass
class FollowupOutcome:
    ok: bool
    summary: dict[str, Any] = field(default_factory=dict)  # counts: rows, matched, queued, rejected by reason...
    preview: list[dict[str, Any]] = field(default_factory=list)  # the exact event bodies (pseudonymised)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # row numbers and reason codes only
    message: str = ""
    report: Path | None = None


def followup_available(provider: Any | None) -> str | None:
    """None when the dashboard can import follow-up files, else why not."""
    if _optional_module("connector.followup") is None:
        return "Follow-up import is not available in this build."
    if provider is None:
        return "Follow-up import needs the linkage table, which this server was not given."
    return None


def followup_sources(store: StateStore) -> dict[str, dict[str, int]]:
    """Per-source follow-up counts (file, hl7, fhir): received, matched, unmatched dropped, sent, errors."""
    module = _optional_module("connector.followup.source_counts")
    if module is None or not _table_exists(store, "followup_source_counts"):
        return {}
    return dict(module.read_counts(store.conn))


def run_followup_import(config: Any, store: StateStore, provider: Any | None, path: Path, *, dry_run: bool,
                        report: Path | None = None) -> FollowupOutcome:
    """``connector.followup.import_file`` in dry-run or real mode, reduced to what the page shows.

    The summary's per-row report (row number, status, reason code) goes to ``report`` on a real run.
    """
    why_not = followup_available(provider)
    if why_not is not None:
        return FollowupOutcome(False, message=why_not)
    followup = importlib.import_module("connector.followup")
    outbox_module = _optional_module("connector.outbox")
    outbox = outbox_module.Outbox(store) if outbox_module is not None and not dry_run else None
    if outbox is None and not dry_run:
        return FollowupOutcome(False, message="Follow-up events cannot be queued: no outbox in this build.")
    try:
        summary = followup.import_file(config, path, provider, store, outbox, dry_run=dry_run,
                                       report=report if (report is not None and not dry_run) else False)
    except Exception as exc:
        log.warning("follow-up import failed", extra={"event": "followup_web_failed", "error": type(exc).__name__})
        return FollowupOutcome(False, message=f"The import failed ({type(exc).__name__}); see the service log.")
    if getattr(summary, "error", ""):
        reason = followup.REASONS.get(summary.error, "") if hasattr(followup, "REASONS") else ""
        return FollowupOutcome(False, message=f"The file could not be used: {summary.error}"
                                              + (f" ({reason})" if reason else ""))
    rejected = [{"row": o.number, "reason": o.reason} for o in summary.outcomes if o.status == "rejected"]
    counts = summary.as_dict()
    shown = {k: counts[k] for k in ("rows", "matched", "queued", "unchanged", "rejected_total") if k in counts}
    shown["rejected by reason"] = counts.get("rejected", {})
    if dry_run:
        shown["would queue"] = shown.pop("queued", 0)
    return FollowupOutcome(True, summary=shown, preview=[dict(e) for e in summary.events], rejected=rejected,
                           report=getattr(summary, "report", None))
