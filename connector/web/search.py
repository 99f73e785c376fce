"""Finding a patient's studies by MRN (with issuer) or accession number: coordinators only.

The identifiers typed in are resolved through the linkage table, never through the state DB
(which holds no patient identifier): MRN and issuer through the table's keyed blind index, an
accession number by decrypting the stored accession numbers of the linked studies. That gives the
pseudonym, whose de-identified study UIDs (kept in clear in the linkage table) lead to the site's
study keys through ``study_outputs``. Every search, found or not, is written to the linkage audit
log with the user's name and source address (never the identifier; see
:mod:`connector.web.linkage_access`); results are shown only once that entry is written. Every
route here is declared for coordinators only (:mod:`connector.web.permissions`).

The form is a POST so that no identifier reaches a URL, a proxy log or the browser history.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, flash, g, request

from connector.web.linkage_access import for_request
from connector.web.permissions import COORDINATORS, allow
from connector.web.rendering import page, site
from connector.web.study import study_keys_for_pseudonym

log = logging.getLogger(__name__)

search_bp = Blueprint("search", __name__)
MAX_IDENTIFIER = 64


def _unavailable() -> str | None:
    provider = site().provider
    if provider is None or not hasattr(provider, "lookup_accession"):
        return "The search needs the linkage table, which this server was not given."
    return None


@search_bp.get("/search")
@allow(*COORDINATORS)
def search_form() -> Any:
    return page("search.html", "Find patient", "/search", unavailable=_unavailable(), results=None)


@search_bp.post("/search")
@allow(*COORDINATORS)
def search() -> Any:
    why_not = _unavailable()
    if why_not:
        return page("search.html", "Find patient", "/search", unavailable=why_not, results=None)
    web = site()
    provider = for_request(web.provider)
    kind = request.form.get("by", "patient")
    patient_id = request.form.get("patient_id", "").strip()[:MAX_IDENTIFIER]
    issuer = request.form.get("issuer", "").strip()[:MAX_IDENTIFIER]
    accession = request.form.get("accession", "").strip()[:MAX_IDENTIFIER]
    if (kind == "patient" and not patient_id) or (kind == "accession" and not accession) or \
            kind not in ("patient", "accession"):
        flash("Type a patient ID (MRN) with its issuer, or an accession number.", "error")
        return page("search.html", "Find patient", "/search", status=400, unavailable=None, results=None)
    try:
        if kind == "patient":
            subject = provider.lookup_patient(patient_id, issuer, audit=False)
            pseudonyms = [subject.pseudonym] if subject is not None else []
            matched_uids: set[str] = set()
            provider.audit("web.search.patient_id", with_issuer=bool(issuer),
                           found=bool(pseudonyms), pseudonym=pseudonyms[0] if pseudonyms else None)
        else:
            found = provider.lookup_accession(accession, audit=False)
            pseudonyms = sorted({p for p, _ in found})
            matched_uids = {uid for _, uid in found}
            provider.audit("web.search.accession", found=len(found),
                           pseudonym=",".join(pseudonyms) or None)
    except Exception as exc:  # the audit log or the table failed: show nothing
        log.error("identifier search failed", extra={"event": "web_search_failed", "user": g.user,
                                                     "error": type(exc).__name__})
        flash(f"The search could not be done or recorded ({type(exc).__name__}); nothing is shown. "
              "See the service log.", "error")
        return page("search.html", "Find patient", "/search", status=500, unavailable=None, results=None)
    log.info("identifier search", extra={"event": "web_search", "user": g.user, "by": kind,
                                         "found": len(pseudonyms)})
    results = []
    for pseudonym in pseudonyms:
        uids = provider.study_uids_of(pseudonym)
        keys = study_keys_for_pseudonym(web.store, uids)
        matched = set(study_keys_for_pseudonym(web.store, sorted(matched_uids & set(uids)))) if matched_uids else set()
        studies = []
        for key in keys:
            row = web.store.study(key) or {}
            studies.append({"key": key, "state": row.get("state"), "instances": row.get("instance_count"),
                            "first_received_at": row.get("first_received_at"), "matched": key in matched})
        studies.sort(key=lambda s: s["first_received_at"] or 0, reverse=True)
        results.append({"pseudonym": pseudonym, "studies": studies, "linked": len(uids)})
    return page("search.html", "Find patient", "/search", unavailable=None, results=results, by=kind)


@search_bp.post("/studies/<key>/identifiers")
@allow(*COORDINATORS)
def show_identifiers(key: str) -> Any:
    """The patient's identifiers on this study's page, once, for a coordinator; audited before reading.

    Nothing is stored or redirected: the identifiers are in this one response only (no-store).
    """
    from connector.web import cac_picture
    from connector.web.study import KEY_RE, study_view

    web = site()
    view = study_view(web.store, web.layout, key, web.quarantine_index) if KEY_RE.match(key) else None
    if view is None:
        abort(404)
    values = dict(v=view, colours=cac_picture.WEIGHT_COLOURS, labels=cac_picture.WEIGHT_LABELS,
                  window=(cac_picture.WINDOW_LEVEL, cac_picture.WINDOW_WIDTH))
    why_not = _unavailable()
    if why_not or not view["pseudonym"]:
        flash(why_not or "This study has no pseudonym yet (not de-identified and queued).", "error")
        return page("study.html", f"Study {key}", "/studies", **values)
    try:
        subject = for_request(web.provider).identifiers_of(view["pseudonym"], study=key)
    except Exception as exc:
        log.error("identifier display failed", extra={"event": "web_identifiers_failed", "user": g.user,
                                                      "error": type(exc).__name__})
        flash(f"The identifiers could not be read or the reading recorded ({type(exc).__name__}).", "error")
        return page("study.html", f"Study {key}", "/studies", **values)
    log.info("identifiers shown", extra={"event": "web_show_identifiers", "user": g.user, "study": key})
    return page("study.html", f"Study {key}", "/studies", identifiers=subject, **values)
