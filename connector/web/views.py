"""The dashboard's pages and actions, and the unauthenticated health and metrics endpoints.

Pages show study keys (hashes), states, counts and reason codes, never a patient identifier or an
original UID. Actions are POSTs (CSRF checked in :mod:`connector.web.app`) that redirect back with
a one-time message (Flask's ``flash``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, flash, g, redirect, request, session

from connector.store.quarantine import count_quarantine
from connector.store.state import STUDY_STATES
from connector.web import cac_picture, integrations
from connector.web import quarantine_actions as qa
from connector.web.health import disk_free_bytes
from connector.web.linkage_access import for_request
from connector.web.metrics import CONTENT_TYPE
from connector.web.permissions import COORDINATORS, STAFF, allow, public
from connector.web.rendering import page, site
from connector.web.study import KEY_RE, study_view

log = logging.getLogger(__name__)

STUDIES_PER_PAGE = 50
UPLOAD_SUFFIXES = (".csv", ".xlsx")
PREVIEW_COLUMNS = ("pseudonym", "event", "event_date", "days_from_index", "source", "version", "retracted")
_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")

health_bp = Blueprint("health", __name__)
dashboard_bp = Blueprint("dashboard", __name__)


def _back(location: str) -> Response:
    return redirect(location, code=303)  # type: ignore[return-value]


# -- health and metrics (no login) ----------------------------------------------------------------


@health_bp.get("/healthz")
@public
def healthz() -> Response:
    report = site().health()
    return Response(json.dumps(report.to_json(), sort_keys=True), 200 if report.ok else 503,
                    content_type="application/json")


@health_bp.get("/metrics")
@public
def metrics() -> Response:
    return Response(site().metrics_text(), 200, content_type=CONTENT_TYPE)


@health_bp.get("/favicon.ico")
@public
def favicon() -> Response:
    return Response(b"", 204, content_type="image/x-icon")


# -- pages ----------------------------------------------------------------------------------------


@dashboard_bp.get("/")
@allow(*STAFF)
def overview() -> Any:
    web = site()
    figures = integrations.outbox_figures(web.store)
    try:
        free: float | None = disk_free_bytes(web.layout.data_dir)
    except OSError:
        free = None
    counts = web.store.counts()
    studies = counts.get("studies", {})
    return page("overview.html", "Overview", "/", report=web.health(), counts=counts,
                in_progress=sum(studies.get(s, 0) for s in ("receiving", "stable", "processing")),
                outbox=figures, quarantined=count_quarantine(web.layout.quarantine), disk_free=free,
                min_free=web.config.storage.min_free_bytes, cac_runs=integrations.cac_runs(figures))


@dashboard_bp.get("/studies")
@allow(*STAFF)
def studies() -> Any:
    state = request.args.get("state", "")
    if state not in STUDY_STATES:
        state = ""
    try:
        page_no = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page_no = 1
    where, args = ("WHERE state=?", [state]) if state else ("", [])
    conn = site().store.conn
    total = conn.execute(f"SELECT COUNT(*) FROM studies {where}", args).fetchone()[0]
    cur = conn.execute(
        "SELECT study_key, state, instance_count, first_received_at, last_received_at, updated_at "
        f"FROM studies {where} ORDER BY last_received_at DESC LIMIT ? OFFSET ?",
        [*args, STUDIES_PER_PAGE + 1, (page_no - 1) * STUDIES_PER_PAGE])
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur]
    return page("studies.html", "Studies", "/studies", rows=rows[:STUDIES_PER_PAGE], states=STUDY_STATES,
                current_state=state, page=page_no, has_more=len(rows) > STUDIES_PER_PAGE, total=total)


@dashboard_bp.get("/studies/<key>")
@allow(*STAFF)
def study(key: str) -> Any:
    web = site()
    view = study_view(web.store, web.layout, key, web.quarantine_index) if KEY_RE.match(key) else None
    if view is None:
        abort(404)
    return page("study.html", f"Study {key}", "/studies", v=view, colours=cac_picture.WEIGHT_COLOURS,
                labels=cac_picture.WEIGHT_LABELS, window=(cac_picture.WINDOW_LEVEL, cac_picture.WINDOW_WIDTH))


@dashboard_bp.get("/studies/<key>/cac-<int:number>.png")
@allow(*STAFF)
def study_cac_picture(key: str, number: int) -> Response:
    """The picture of one scored series, drawn from its scored-calcium map at each request."""
    from connector.infer.scored_calcium import load_scored_calcium

    web = site()
    path = web.layout.scored_calcium_path(key, number) if KEY_RE.match(key) else None
    if path is None or not path.exists():
        abort(404)
    try:
        png = cac_picture.render_png(load_scored_calcium(path))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("scored-calcium map unreadable", extra={"event": "cac_picture_failed", "study": key,
                                                            "error": type(exc).__name__})
        abort(404)
    return Response(png, 200, content_type="image/png")


@dashboard_bp.get("/quarantine")
@allow(*STAFF)
def quarantine() -> Any:
    return page("quarantine.html", "Quarantine", "/quarantine", entries=qa.list_entries(site().layout.quarantine))


@dashboard_bp.get("/outbox")
@allow(*STAFF)
def outbox() -> Any:
    store = site().store
    return page("outbox.html", "Outbox", "/outbox", figures=integrations.outbox_figures(store),
                jobs=integrations.outbox_jobs(store), now=time.time())


@dashboard_bp.get("/followup")
@allow(*STAFF)
def followup() -> Any:
    """The upload form for coordinators; role ``it`` is told who may import (the preview resolves MRNs)."""
    web = site()
    return page("followup.html", "Follow-up", "/followup", unavailable=integrations.followup_available(web.provider),
                may_import=g.role in COORDINATORS, max_bytes=web.config.http.max_upload_bytes,
                sources=integrations.followup_sources(web.store))


# -- actions (POST, CSRF checked) -----------------------------------------------------------------


@dashboard_bp.post("/quarantine/release")
@allow(*STAFF)
def quarantine_release() -> Response:
    web = site()
    try:
        key = qa.release(web.layout.quarantine, request.form.get("id", ""), web.intake, web.store, user=g.user)
    except qa.QuarantineActionError as exc:
        flash(f"Release failed: {exc}", "error")
    else:
        flash(f"Released for re-processing (study {key}).", "ok")
        web.notify("studies")
    return _back("/quarantine")


@dashboard_bp.post("/quarantine/purge")
@allow(*STAFF)
def quarantine_purge() -> Response:
    if request.form.get("confirm") != "yes":
        flash("Tick 'delete for good' to purge an entry.", "error")
        return _back("/quarantine")
    try:
        qa.purge(site().layout.quarantine, request.form.get("id", ""), user=g.user)
    except qa.QuarantineActionError as exc:
        flash(f"Purge failed: {exc}", "error")
    else:
        flash("Entry purged.", "ok")
    return _back("/quarantine")


@dashboard_bp.post("/outbox/retry")
@allow(*STAFF)
def outbox_retry() -> Response:
    web = site()
    try:
        n = integrations.outbox_retry_now(web.store)
    except LookupError as exc:
        flash(str(exc), "error")
    else:
        log.info("outbox retry requested", extra={"event": "outbox_retry_now", "jobs": n, "user": g.user})
        flash(f"{n} job(s) will be retried now.", "ok")
        web.notify("outbox")
    return _back("/outbox")


def _linkage() -> Any:
    """The provider for this user's import: its audit entry names the user and the source address."""
    provider = site().provider
    return None if provider is None else for_request(provider)


def _staged(token: str) -> Path | None:
    """The staged upload of this session for ``token`` (the session lists its own tokens)."""
    uploads = session.get("uploads") or {}
    suffix = uploads.get(token) if isinstance(uploads, dict) else None
    if not _TOKEN_RE.match(token or "") or suffix not in UPLOAD_SUFFIXES:
        return None
    return site().uploads_dir / f"{token}{suffix}"


def _forget(token: str) -> None:
    uploads = dict(session.get("uploads") or {})
    if uploads.pop(token, None) is not None:
        session["uploads"] = uploads


@dashboard_bp.post("/followup/preview")
@allow(*COORDINATORS)
def followup_preview() -> Any:
    web = site()
    upload = request.files.get("file")
    suffix = Path(upload.filename or "").suffix.lower() if upload else ""
    data = upload.read() if upload else b""
    if upload is None or not data:
        flash("Choose a file to upload.", "error")
        return _back("/followup")
    if suffix not in UPLOAD_SUFFIXES:
        flash("Upload a .csv or .xlsx file.", "error")
        return _back("/followup")
    token, path = web.stage_upload(data, suffix)
    outcome = integrations.run_followup_import(web.config, web.store, _linkage(), path, dry_run=True)
    if not outcome.ok:
        path.unlink(missing_ok=True)
        flash(outcome.message, "error")
        return _back("/followup")
    session["uploads"] = {**(session.get("uploads") or {}), token: suffix}
    return page("followup_preview.html", "Follow-up preview", "/followup", outcome=outcome, token=token,
                columns=PREVIEW_COLUMNS)


@dashboard_bp.post("/followup/commit")
@allow(*COORDINATORS)
def followup_commit() -> Response:
    web = site()
    token = request.form.get("token", "")
    path = _staged(token)
    _forget(token)
    if path is None or not path.exists():
        flash("That preview has expired; upload the file again.", "error")
        return _back("/followup")
    web.reports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = web.reports_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{path.stem[:8]}.report.csv"
    try:
        outcome = integrations.run_followup_import(web.config, web.store, _linkage(), path, dry_run=False,
                                                   report=report)
    finally:
        path.unlink(missing_ok=True)
    if outcome.ok:
        summary = ", ".join(f"{k} {v}" for k, v in outcome.summary.items() if not isinstance(v, dict))
        log.info("follow-up file imported from dashboard",
                 extra={"event": "followup_web_import", "user": g.user,
                        **{k: v for k, v in outcome.summary.items() if isinstance(v, int)}})
        flash(f"Follow-up imported: {summary}. Row report: {report.name}.", "ok")
        web.notify("outbox")
    else:
        flash(outcome.message, "error")
    return _back("/followup")


@dashboard_bp.post("/followup/cancel")
@allow(*COORDINATORS)
def followup_cancel() -> Response:
    token = request.form.get("token", "")
    path = _staged(token)
    _forget(token)
    if path is not None:
        path.unlink(missing_ok=True)
    flash("Nothing was queued.", "ok")
    return _back("/followup")
