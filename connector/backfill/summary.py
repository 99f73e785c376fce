"""Backfill progress per job, for ``backfill status`` and the dashboard (study keys only, no identifiers)."""

from __future__ import annotations

from typing import Any

from connector.backfill.schema import (
    CANCELLED,
    FAILED,
    PRESENT,
    QUEUED,
    RETRIEVED,
    RETRIEVING,
)
from connector.backfill.worklist import Worklist
from connector.store.state import StateStore


def job_summaries(store: StateStore, *, failures_per_job: int = 50) -> list[dict[str, Any]]:
    """One dict per job, newest first: counts by outcome, instances and bytes retrieved, the
    studies that failed or are waiting for a retry with their reasons, and the share done."""
    worklist = Worklist(store)
    out = []
    for job in reversed(worklist.jobs()):
        counts = worklist.counts(job["id"])
        studies = worklist.studies(job["id"])
        found = len(studies)
        settled = counts[RETRIEVED] + counts[PRESENT] + counts[FAILED] + counts[CANCELLED]
        problems = [{"study": s["study_key"], "state": s["state"], "attempts": s["attempts"], "reason": s["reason"]}
                    for s in studies
                    if s["state"] == FAILED or (s["state"] == QUEUED and s["attempts"] and s["reason"])]
        out.append({
            "job": job["id"], "kind": job["kind"], "label": job["label"], "state": job["state"],
            "filters": job["filters"], "created_at": job["created_at"], "finished_at": job["finished_at"],
            "found": found, "queued": counts[QUEUED], "retrieving": counts[RETRIEVING],
            "retrieved": counts[RETRIEVED], "already_present": counts[PRESENT], "failed": counts[FAILED],
            "cancelled": counts[CANCELLED],
            "expected_instances": sum(s["expected_instances"] or 0 for s in studies),
            "instances_retrieved": sum(s["retrieved_instances"] for s in studies if s["state"] == RETRIEVED),
            "bytes_retrieved": sum(s["retrieved_bytes"] for s in studies if s["state"] == RETRIEVED),
            "requests": sum(s["requests"] for s in studies),
            "progress": round(settled / found, 4) if found else 1.0,
            "failures": problems[:failures_per_job],
        })
    return out
