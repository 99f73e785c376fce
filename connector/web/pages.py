"""Server-rendered HTML for the dashboard: plain functions returning strings.

Why no template engine: a handful of small pages, no dependency to keep patched, and one escape
helper (:func:`e`) that every value goes through. Pages show study keys (hashes), states, counts
and reason codes; they never show a patient identifier or an original UID.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

from connector import __version__
from connector.web.health import HealthReport
from connector.web.integrations import FollowupOutcome, OutboxJobView
from connector.web.quarantine_actions import QuarantineView

NAV = (("/", "Overview"), ("/studies", "Studies"), ("/quarantine", "Quarantine"), ("/outbox", "Outbox"),
       ("/followup", "Follow-up"))


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(token)}">'


def layout(title: str, body: str, *, user: str | None = None, csrf: str = "", current: str = "",
           site: str = "", flashes: Sequence[tuple[str, str]] = ()) -> str:
    nav = ""
    if user:
        links = "".join(f'<a href="{href}"{" class=current" if href == current else ""}>{e(label)}</a>'
                        for href, label in NAV)
        nav = (f"<nav>{links}</nav><span class=user>{e(user)}</span>"
               f'<form method="post" action="/logout">{csrf_field(csrf)}<button type="submit">Log out</button></form>')
    flash_html = "".join(f'<div class="flash {e(kind)}" role="status">{e(text)}</div>' for kind, text in flashes)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · site-connector</title>"
        '<link rel="stylesheet" href="/static/style.css"></head><body>'
        f'<header><span class="brand">site-connector</span><span class="site">{e(site)}</span>{nav}</header>'
        f"<main>{flash_html}{body}</main>"
        f"<footer>site-connector {e(__version__)}</footer></body></html>"
    )


def login_page(token: str, error: str = "") -> str:
    err = f'<div class="flash error" role="alert">{e(error)}</div>' if error else ""
    return (
        f'<div class="login"><h1>Sign in</h1>{err}'
        '<form method="post" action="/login" autocomplete="off">'
        f"{csrf_field(token)}"
        '<label for="username">User name</label><input id="username" name="username" required autofocus>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" required autocomplete="current-password">'
        '<button type="submit">Sign in</button></form></div>'
    )


def card(label: str, value: str, ident: str = "") -> str:
    id_attr = f' id="{e(ident)}"' if ident else ""
    return f'<div class="card"{id_attr}><div class="label">{e(label)}</div><div class="value">{e(value)}</div></div>'


def health_box(report: HealthReport) -> str:
    if report.ok:
        return '<div class="health ok" id="health"><span class="badge ok">healthy</span> every check passes</div>'
    items = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in report.failing.items())
    return f'<div class="health failing" id="health"><span class="badge failing">attention</span><ul>{items}</ul></div>'


def overview_page(report: HealthReport, counts: dict[str, Any], outbox: dict[str, Any] | None,
                  quarantined: int, disk_free: float | None, min_free: int, cac_runs: int) -> str:
    studies = counts.get("studies", {})
    cards = [
        card("Instances received", f"{counts.get('instances_received', 0):,}", "instances"),
        card("Data received", fmt_bytes(counts.get("bytes_received", 0))),
        card("Studies in progress", str(sum(studies.get(s, 0) for s in ("receiving", "stable", "processing")))),
        card("Quarantined objects", str(quarantined), "quarantined"),
        card("Disk free", fmt_bytes(disk_free) + ("" if disk_free is None or disk_free >= min_free else " (low)")),
    ]
    if outbox is not None:
        cards += [
            card("Waiting for the registry", str(outbox.get("outbox_pending", 0)), "outbox-pending"),
            card("Oldest waiting", fmt_age(outbox.get("oldest_pending_age_s")) if outbox.get("outbox_pending") else "-"),
            card("Sent to the registry", str(outbox.get("pushed", 0)), "pushed"),
            card("Last successful push", fmt_time(outbox.get("last_push_at"))),
            card("CAC results", str(cac_runs)),
        ]
    rows = "".join(f'<tr><td><a href="/studies?state={e(s)}"><span class="badge {e(s)}">{e(s)}</span></a></td>'
                   f'<td class="num">{n}</td></tr>' for s, n in studies.items())
    outbox_note = "" if outbox is not None else '<p class="notice">The registry outbox is not available in this build.</p>'
    return (
        f"<h1>Overview</h1>{health_box(report)}<div class=cards>{''.join(cards)}</div>{outbox_note}"
        f'<h2>Studies by state</h2><table id="study-states"><tr><th>State</th><th class=num>Studies</th></tr>{rows}</table>'
    )


def studies_page(rows: Iterable[dict[str, Any]], states: Sequence[str], current_state: str, page: int,
                 has_more: bool, total: int) -> str:
    filters = ['<a href="/studies"' + (" class=current" if not current_state else "") + ">all</a>"]
    filters += [f'<a href="/studies?state={e(s)}"{" class=current" if s == current_state else ""}>{e(s)}</a>'
                for s in states]
    body_rows = "".join(
        f'<tr><td class="key">{e(r["study_key"])}</td><td><span class="badge {e(r["state"])}">{e(r["state"])}</span></td>'
        f'<td class="num">{e(r["instance_count"])}</td><td>{e(fmt_time(r["first_received_at"]))}</td>'
        f'<td>{e(fmt_time(r["last_received_at"]))}</td><td>{e(fmt_time(r["updated_at"]))}</td></tr>'
        for r in rows
    )
    if not body_rows:
        body_rows = '<tr><td colspan=6 class="notice">No studies.</td></tr>'
    qs = f"&state={e(current_state)}" if current_state else ""
    pager = []
    if page > 1:
        pager.append(f'<a href="/studies?page={page - 1}{qs}">&larr; newer</a>')
    if has_more:
        pager.append(f'<a href="/studies?page={page + 1}{qs}">older &rarr;</a>')
    return (
        f"<h1>Studies <span class=notice>({total})</span></h1>"
        f'<p class="filters">{" ".join(filters)}</p>'
        '<table id="studies"><tr><th>Study key</th><th>State</th><th class=num>Instances</th>'
        f"<th>First received</th><th>Last received</th><th>Updated</th></tr>{body_rows}</table>"
        f'<div class="pager">{"".join(pager)}</div>'
        '<p class="notice">Studies are shown by their key, a hash of the study UID; patient details never appear here.</p>'
    )


def quarantine_page(entries: Sequence[QuarantineView], csrf: str) -> str:
    rows = []
    for q in entries:
        rows.append(
            f'<tr data-entry="{e(q.id)}"><td class="key">{e(q.id)}</td><td>{e(q.stage)}</td><td><code>{e(q.reason)}</code></td>'
            f'<td>{e(q.quarantined_at)}</td><td class="num">{e(fmt_bytes(q.bytes))}</td><td>'
            f'<form class="inline" method="post" action="/quarantine/release">{csrf_field(csrf)}'
            f'<input type="hidden" name="id" value="{e(q.id)}"><button type="submit" class="secondary">Release</button></form>'
            f'<form class="inline" method="post" action="/quarantine/purge">{csrf_field(csrf)}'
            f'<input type="hidden" name="id" value="{e(q.id)}">'
            f'<label class="confirm"><input type="checkbox" name="confirm" value="yes" required> delete for good</label>'
            '<button type="submit" class="danger">Purge</button></form></td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan=6 class="notice">Nothing in quarantine.</td></tr>'
    return (
        f"<h1>Quarantine <span class=notice>({len(entries)})</span></h1>"
        "<p>Objects that must not go on, with the reason code. <b>Release</b> sends the object through the "
        "pipeline again (after a rule or configuration fix); <b>Purge</b> deletes it.</p>"
        '<table id="quarantine"><tr><th>Entry</th><th>Stage</th><th>Reason</th><th>Quarantined</th>'
        f"<th class=num>Size</th><th>Action</th></tr>{body}</table>"
    )


def outbox_page(figures: dict[str, Any] | None, jobs: Sequence[OutboxJobView], csrf: str) -> str:
    if figures is None:
        return '<h1>Outbox</h1><p class="notice" id="outbox-absent">The registry outbox is not available in this build.</p>'
    now = time.time()
    cards = "".join([
        card("Waiting", str(figures.get("outbox_pending", 0)), "outbox-pending"),
        card("Retrying", str(figures.get("outbox_retrying", 0))),
        card("Refused (failed)", str(figures.get("failed", 0)), "outbox-failed"),
        card("Oldest waiting", fmt_age(figures.get("oldest_pending_age_s")) if figures.get("outbox_pending") else "-"),
        card("Sent", str(figures.get("pushed", 0))),
        card("Last successful push", fmt_time(figures.get("last_push_at"))),
    ])
    rows = "".join(
        f'<tr><td class="num">{j.id}</td><td>{e(j.kind)}</td><td><span class="badge {e(j.state)}">{e(j.state)}</span></td>'
        f'<td class="num">{j.attempts}</td><td>{e(fmt_age(now - j.created_at))}</td>'
        f'<td>{e("now" if not j.next_attempt_at or j.next_attempt_at <= now else "in " + fmt_age(j.next_attempt_at - now))}</td>'
        f'<td>{e(j.last_status or "")} <span class="notice">{e(j.last_error)}</span></td></tr>'
        for j in jobs
    ) or '<tr><td colspan=7 class="notice">Nothing waiting.</td></tr>'
    return (
        f"<h1>Outbox</h1><div class=cards>{cards}</div>"
        f'<h2>Unsent jobs</h2><form method="post" action="/outbox/retry">{csrf_field(csrf)}'
        '<p>Jobs wait with growing pauses while the registry is unreachable. <button type="submit" id="retry-now">'
        "Retry now</button></p></form>"
        '<table id="outbox"><tr><th class=num>Job</th><th>Kind</th><th>State</th><th class=num>Attempts</th>'
        f"<th>Age</th><th>Next attempt</th><th>Last answer</th></tr>{rows}</table>"
    )


def followup_form(csrf: str, unavailable: str | None, max_bytes: int) -> str:
    if unavailable:
        return f'<h1>Follow-up</h1><p class="notice" id="followup-absent">{e(unavailable)}</p>'
    return (
        "<h1>Follow-up events</h1>"
        "<p>Upload the coordinator's CSV or XLSX file (columns <code>patient_id</code>, <code>issuer</code>, "
        "<code>event</code>, <code>event_date</code>, ...). You will see exactly what would be sent, under "
        "pseudonyms and shifted dates, before anything is queued.</p>"
        f'<form class="upload" method="post" action="/followup/preview" enctype="multipart/form-data">{csrf_field(csrf)}'
        '<label for="file">File</label><br><input id="file" type="file" name="file" accept=".csv,.xlsx" required>'
        f'<br><button type="submit" id="preview">Preview (dry run)</button> <span class="notice">at most {e(fmt_bytes(max_bytes))}</span>'
        "</form>"
    )


PREVIEW_COLUMNS = ("pseudonym", "event", "event_date", "days_from_index", "source", "version", "retracted")


def _cell(value: Any) -> Any:
    return ("yes" if value else "no") if isinstance(value, bool) else value


def _summary_table(summary: dict[str, Any]) -> str:
    rows = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "0"
        rows.append(f"<tr><th>{e(key.replace('_', ' '))}</th><td>{e(value)}</td></tr>")
    return f'<table id="followup-summary">{"".join(rows)}</table>'


def followup_preview(outcome: FollowupOutcome, token: str, csrf: str) -> str:
    events = "".join(
        "<tr>" + "".join(f"<td>{e(_cell(ev.get(k, '')))}</td>" for k in PREVIEW_COLUMNS) + "</tr>"
        for ev in outcome.preview
    ) or f'<tr><td colspan={len(PREVIEW_COLUMNS)} class="notice">Nothing new would be sent.</td></tr>'
    rejected = "".join(f'<tr><td class="num">{e(r.get("row"))}</td><td><code>{e(r.get("reason"))}</code></td></tr>'
                       for r in outcome.rejected)
    rejected_html = (f'<h2>Rejected rows</h2><table id="followup-rejected"><tr><th class=num>Row</th><th>Reason</th></tr>'
                     f"{rejected}</table>") if rejected else ""
    return (
        "<h1>Follow-up: preview</h1><p>Dry run: nothing has been queued yet.</p>"
        f"{_summary_table(outcome.summary)}"
        '<h2>Would be sent</h2><table id="followup-events"><tr><th>Pseudonym</th><th>Event</th>'
        "<th>Event date (shifted)</th><th>Days from index</th><th>Source</th><th>Version</th><th>Retracted</th>"
        f"</tr>{events}</table>{rejected_html}"
        f'<p><form class="inline" method="post" action="/followup/commit">{csrf_field(csrf)}'
        f'<input type="hidden" name="token" value="{e(token)}"><button type="submit" id="queue">Queue these events</button></form>'
        f'<form class="inline" method="post" action="/followup/cancel">{csrf_field(csrf)}'
        f'<input type="hidden" name="token" value="{e(token)}"><button type="submit" class="secondary">Cancel</button></form></p>'
    )


def message_page(title: str, text: str) -> str:
    return f"<h1>{e(title)}</h1><p>{e(text)}</p>"
