"""One study's story, read from the state DB, the outbox and the quarantine folder.

Shared by the dashboard's study page and ``site-connector study KEY``. Every time comes from what
the stages already record, so nothing new is written for it:

    first / last instance received   studies.first_received_at / last_received_at (ingest)
    stable                           studies.stable_at (assemble)
    de-identified                    privacy_reports.at (de-identification, its latest run)
    CAC                              outbox "result" jobs: created when the score was queued
    each push                        outbox jobs of the de-identified study UIDs (study_outputs) and
                                     of its subject: created_at, done_at (the registry's acknowledgement)
    pushed                           the last acknowledgement, once the study is pushed
    verified                         studies.verified_at (reconciliation)

What is shown: the study key, states, times, counts, modalities, reason codes, the pseudonym and
the CAC figures. Never a patient identifier, an original UID or a file name from the PACS; series
are numbered in the order they arrived.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.store.layout import SiteLayout
from connector.store.stage_failures import failures_of
from connector.store.state import StateStore, study_key

log = logging.getLogger(__name__)

KEY_RE = re.compile(r"^[0-9a-f]{20}$")
MAX_MAPS = 32  # scored-calcium maps looked for per study (one per scored series)


@dataclass(frozen=True)
class JourneyStep:
    what: str
    at: float | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "at": self.at, "detail": self.detail}


class QuarantineIndex:
    """Which study each quarantine entry belongs to, learned once per entry (entries never change).

    De-identification parks the original object, so its Study Instance UID (read from the header
    only, in memory, never shown) gives the study key; a refused registry job names its outbox job,
    whose group is a de-identified study UID. Ingest entries (unreadable objects) belong to no study.
    """

    def __init__(self) -> None:
        self._keys: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def cached(self, meta_path: Path) -> tuple[bool, str | None]:
        """(known, study key) for an entry, without reading anything."""
        with self._lock:
            entry = meta_path.stem
            return (entry in self._keys, self._keys.get(entry))

    def study_of(self, meta_path: Path, meta: dict[str, Any], store: StateStore) -> str | None:
        known, key = self.cached(meta_path)
        if known:
            return key
        key = self._find(meta_path, meta, store)
        with self._lock:
            if len(self._keys) > 100_000:  # bounded: purged entries' ids are never asked again
                self._keys.clear()
            self._keys[meta_path.stem] = key
        return key

    @staticmethod
    def _find(meta_path: Path, meta: dict[str, Any], store: StateStore) -> str | None:
        details = meta.get("details") or {}
        if meta_path.parent.name == "push" and isinstance(details, dict) and details.get("job") is not None:
            row = store.conn.execute(
                "SELECT o.study_key FROM outbox_jobs j JOIN study_outputs o ON o.study_uid = j.grp WHERE j.id = ?",
                (int(details["job"]),)).fetchone()
            return str(row[0]) if row else None
        if meta_path.parent.name == "ingest":
            return None
        data = meta_path.with_suffix(".bin")
        try:
            import pydicom

            ds = pydicom.dcmread(data, stop_before_pixels=True, specific_tags=["StudyInstanceUID"], force=True)
            uid = str(ds.get("StudyInstanceUID", "") or "")
        except Exception:  # unreadable: it belongs to no study we can name
            return None
        return study_key(uid) if uid else None


def find_key(store: StateStore, text: str) -> str | None:
    """A full study key, or a unique prefix of at least 6 characters, to the full key."""
    text = text.strip().lower()
    if KEY_RE.match(text):
        return text if store.study(text) is not None else None
    if not re.match(r"^[0-9a-f]{6,19}$", text):
        return None
    rows = store.conn.execute("SELECT study_key FROM studies WHERE study_key >= ? AND study_key < ? LIMIT 2",
                              (text, text + "g")).fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None


def scored_maps(layout: SiteLayout, key: str) -> list[int]:
    """Numbers of the scored-calcium maps the inference stage left for this study."""
    return [n for n in range(MAX_MAPS) if layout.scored_calcium_path(key, n).exists()]


def _jobs(store: StateStore, key: str) -> list[dict[str, Any]]:
    """Every registry job of the study: those grouped under its de-identified study UIDs, and its subject."""
    uids = [r[0] for r in store.conn.execute("SELECT study_uid FROM study_outputs WHERE study_key=?", (key,))]
    if not uids:
        return []
    marks = ",".join("?" * len(uids))
    cur = store.conn.execute(
        f"SELECT id, kind, state, attempts, created_at, done_at, last_status, last_error, payload, grp "
        f"FROM outbox_jobs WHERE grp IN ({marks}) ORDER BY id", uids)
    cols = [d[0] for d in cur.description]
    jobs = [dict(zip(cols, r)) for r in cur]
    pseudonyms = set()
    for job in jobs:
        if job["kind"] == "manifest":
            pseudonyms.add(_payload(job).get("pseudonym"))
    pseudonyms.discard(None)
    if pseudonyms:
        marks = ",".join("?" * len(pseudonyms))
        cur = store.conn.execute(
            f"SELECT id, kind, state, attempts, created_at, done_at, last_status, last_error, payload, grp "
            f"FROM outbox_jobs WHERE kind='subject' AND grp IN ({marks}) ORDER BY id", sorted(pseudonyms))
        jobs = sorted(jobs + [dict(zip(cols, r)) for r in cur], key=lambda j: j["id"])
    return jobs


def _payload(job: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(job.get("payload") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _job_detail(job: dict[str, Any]) -> str:
    payload = _payload(job)
    if job["kind"] == "stow":
        return f"{payload.get('instances', '?')} instance(s)"
    if job["kind"] == "manifest":
        return f"{payload.get('instance_count', '?')} instance(s) listed"
    if job["kind"] == "result":
        return f"Agatston {payload.get('agatston')}"
    return ""


def study_view(store: StateStore, layout: SiteLayout, key: str,
               quarantine_index: QuarantineIndex | None = None) -> dict[str, Any] | None:
    """Everything the study page shows, JSON-ready; None when there is no such study."""
    study = store.study(key)
    if study is None:
        return None
    conn = store.conn
    series = []
    for i, row in enumerate(conn.execute(
            "SELECT modality, sop_class_uid, COUNT(*), COALESCE(SUM(size), 0), MIN(received_at), MAX(received_at) "
            "FROM instances WHERE study_key=? GROUP BY series_uid ORDER BY MIN(received_at), MIN(path)", (key,)), 1):
        series.append({"number": i, "modality": row[0] or "", "sop_class_uid": row[1] or "", "instances": row[2],
                       "bytes": row[3], "first_received_at": row[4], "last_received_at": row[5]})
    report_row = conn.execute("SELECT at, report FROM privacy_reports WHERE study_key=?", (key,)).fetchone()
    jobs = _jobs(store, key)
    results = []
    pseudonym = None
    for job in jobs:
        payload = _payload(job)
        if job["kind"] == "manifest" and payload.get("pseudonym"):
            pseudonym = str(payload["pseudonym"])
        if job["kind"] == "result":
            pseudonym = pseudonym or payload.get("pseudonym")
            results.append({
                "status": payload.get("status"), "agatston": payload.get("agatston"),
                "volume_mm3": payload.get("volume_mm3"), "lesions": payload.get("lesions"),
                "category": payload.get("category"), "model": (payload.get("model") or {}).get("name")
                if isinstance(payload.get("model"), dict) else payload.get("model"),
                "slices": (payload.get("series") or {}).get("slices") if isinstance(payload.get("series"), dict)
                else None, "at": job["created_at"], "sent": job["state"] == "done"})

    journey = [JourneyStep("first instance received", study.get("first_received_at")),
               JourneyStep("last instance received", study.get("last_received_at"),
                           f"{study.get('instance_count', 0)} instance(s)")]
    if study.get("stable_at"):
        journey.append(JourneyStep("stable", study["stable_at"]))
    if report_row:
        journey.append(JourneyStep("de-identified", report_row[0]))
    for r in results:
        journey.append(JourneyStep("CAC scored", r["at"], f"Agatston {r['agatston']} ({r['category']})"
                                   if r["status"] == "ok" else str(r["status"])))
    for job in jobs:
        if job["done_at"]:
            journey.append(JourneyStep(f"pushed: {job['kind']}", job["done_at"], _job_detail(job)))
    done = [j["done_at"] for j in jobs if j["done_at"]]
    if study["state"] in ("pushed", "verified") and done:
        journey.append(JourneyStep("study pushed (every job acknowledged)", max(done)))
    if study.get("verified_at"):
        journey.append(JourneyStep("verified with the registry", study["verified_at"]))
    failures = failures_of(conn, key)
    for f in failures:
        journey.append(JourneyStep(f"{stage_label(f['stage'])} failed", f["last_failed_at"],
                                   f"{f['reason']} (attempt {f['attempts']})"))
    journey.sort(key=lambda s: (s.at is None, s.at or 0))

    quarantined = []
    index = quarantine_index or QuarantineIndex()
    if layout.quarantine.exists():
        for meta_path in sorted(layout.quarantine.glob("*/*.json"), key=lambda p: p.name):
            known, owner = index.cached(meta_path)
            if known and owner != key:
                continue  # another study's (or none): its file is not read again
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if index.study_of(meta_path, meta, store) == key:
                quarantined.append({"id": str(meta.get("id", meta_path.stem)), "stage": meta_path.parent.name,
                                    "reason": str(meta.get("reason", "")),
                                    "quarantined_at": str(meta.get("quarantined_at", ""))})

    pending = [{"kind": j["kind"], "state": j["state"], "attempts": j["attempts"], "last_status": j["last_status"],
                "last_error": (j["last_error"] or "")[:200]} for j in jobs if j["state"] != "done"]
    return {
        "study": key,
        "state": study["state"],
        "instances": study.get("instance_count", 0),
        "pseudonym": pseudonym,
        "journey": [s.as_dict() for s in journey],
        "series": series,
        "quarantined": quarantined,
        "cac": results,
        "cac_maps": scored_maps(layout, key),
        "waiting": pending,
        "privacy": json.loads(report_row[1]) if report_row else None,
        "stage_failures": failures,
        "summary": delivery_summary(study["state"], failures),
    }


def stage_label(stage: str) -> str:
    return "CAC" if stage == "cac" else stage


def delivery_summary(state: str, failures: list[dict[str, Any]]) -> str:
    """One line for the study, e.g. "delivered, CAC failed: AttributeError: ..." (images first)."""
    delivered = {"pushed": "delivered", "verified": "delivered and verified", "queued": "being delivered"}
    head = delivered.get(state, state)
    tails = [f"{stage_label(f['stage'])} failed: {f['reason']}" for f in failures]
    return ", ".join([head, *tails])


def study_keys_for_pseudonym(store: StateStore, deid_study_uids: list[str]) -> list[str]:
    """The site's study keys that became these de-identified study UIDs (from the linkage table)."""
    if not deid_study_uids:
        return []
    marks = ",".join("?" * len(deid_study_uids))
    return sorted({str(r[0]) for r in store.conn.execute(
        f"SELECT DISTINCT study_key FROM study_outputs WHERE study_uid IN ({marks})", deid_study_uids)})
