"""The dashboard's Backfill page: each job's progress and failures, and pause/resume/cancel.

Data come from :func:`connector.backfill.summary.job_summaries` (study keys, counts and reasons;
no identifier). The actions are the same as ``site-connector backfill pause|resume|cancel JOB``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, flash, g, redirect

from connector.backfill.summary import job_summaries
from connector.backfill.worklist import JobNotFound, Worklist
from connector.web.permissions import STAFF, allow
from connector.web.rendering import page, site

log = logging.getLogger(__name__)

backfill_bp = Blueprint("backfill", __name__)
ACTIONS = ("pause", "resume", "cancel")


@backfill_bp.get("/backfill")
@allow(*STAFF)
def backfill() -> Any:
    web = site()
    return page("backfill.html", "Backfill", "/backfill", jobs=job_summaries(web.store),
                pacs=web.config.pacs, window=web.config.backfill.window)


@backfill_bp.post("/backfill/<int:job>/<action>")
@allow(*STAFF)
def backfill_action(job: int, action: str) -> Response:
    if action not in ACTIONS:
        flash("Unknown action.", "error")
        return redirect("/backfill", code=303)  # type: ignore[return-value]
    try:
        state = Worklist(site().store).set_job_state(job, action)
    except JobNotFound:
        flash(f"No backfill job {job}.", "error")
    except ValueError as exc:
        flash(f"Cannot {action}: {exc}.", "error")
    else:
        log.info("backfill job changed from dashboard", extra={"event": "backfill_job_state", "job": job,
                                                               "state": state, "user": g.user})
        flash(f"Job {job}: {state}.", "ok")
    return redirect("/backfill", code=303)  # type: ignore[return-value]
