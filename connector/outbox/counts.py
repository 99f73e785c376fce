"""Outbox figures for ``site-connector status`` and the dashboard: counts only, nothing identifying."""

from __future__ import annotations

import time
from typing import Any

from connector.outbox.schema import DONE, FAILED, JOB_STATES, LEASED, PENDING
from connector.store.state import StateStore


def outbox_counts(store: StateStore, now: float | None = None) -> dict[str, Any]:
    """Jobs and instances by state, bytes acknowledged, and the age of the oldest unsent job.

    ``outbox_pending`` counts jobs not yet acknowledged (waiting, backing off or in flight);
    ``pushed`` jobs acknowledged; ``failed`` jobs given up (quarantined with the response);
    ``blocked`` pending jobs waiting on a failed prerequisite; ``oldest_pending_age_s`` is 0.0 when
    nothing is pending.
    """
    now = time.time() if now is None else now
    conn = store.conn
    jobs = {state: 0 for state in JOB_STATES}
    by_kind: dict[str, dict[str, int]] = {}
    for kind, state, n in conn.execute("SELECT kind, state, COUNT(*) FROM outbox_jobs GROUP BY kind, state"):
        jobs[state] = jobs.get(state, 0) + n
        by_kind.setdefault(kind, {s: 0 for s in JOB_STATES})[state] = n
    items = {state: 0 for state in (PENDING, DONE, FAILED)}
    for state, n in conn.execute("SELECT state, COUNT(*) FROM outbox_items GROUP BY state"):
        items[state] = n
    oldest = conn.execute("SELECT MIN(created_at) FROM outbox_jobs WHERE state IN (?, ?)", (PENDING, LEASED)).fetchone()[0]
    blocked = conn.execute(
        "SELECT COUNT(*) FROM outbox_jobs j WHERE j.state=? AND EXISTS (SELECT 1 FROM outbox_deps d "
        "JOIN outbox_jobs n ON n.id=d.needs_id WHERE d.job_id=j.id AND n.state=?)", (PENDING, FAILED)).fetchone()[0]
    retrying = conn.execute("SELECT COUNT(*) FROM outbox_jobs WHERE state=? AND attempts>0", (PENDING,)).fetchone()[0]
    return {
        "outbox_pending": jobs[PENDING] + jobs[LEASED],
        "outbox_in_flight": jobs[LEASED],
        "outbox_retrying": retrying,
        "pushed": jobs[DONE],
        "failed": jobs[FAILED],
        "blocked": blocked,
        "oldest_pending_age_s": round(max(0.0, now - oldest), 1) if oldest is not None else 0.0,
        "instances_pending": items[PENDING],
        "instances_pushed": items[DONE],
        "instances_failed": items[FAILED],
        "bytes_pushed": conn.execute("SELECT COALESCE(SUM(size), 0) FROM outbox_items WHERE state=?",
                                     (DONE,)).fetchone()[0],
        "outbox_by_kind": by_kind,
    }
