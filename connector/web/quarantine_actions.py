"""Operator actions on quarantined objects: release (re-process) and purge (delete).

Release feeds the parked bytes back through the same intake as a C-STORE (durable write, state DB
row), then sends the study round the pipeline again: a re-opened study waits for its quiet period,
an already known object puts its study back to "stable". The entry is removed only after that
succeeded, so a crash in between leaves, at worst, a harmless duplicate. An object that is still
unreadable stays in quarantine and the operator is told why (reason code only).

Entry ids come from the browser, so they are checked against the id pattern and looked up only
inside the quarantine folder: no path from a request ever reaches the file system.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.ingest.intake import DiskFull, Intake, UnreadableObject
from connector.store.durable import fsync_dir
from connector.store.quarantine import purge_entry
from connector.store.state import PROCESSING, RECEIVING, STABLE, StateStore

log = logging.getLogger(__name__)

ENTRY_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{12}$")
STAGE_RE = re.compile(r"^[a-z0-9_-]{1,32}$")


class QuarantineActionError(Exception):
    """Shown to the operator as is: never contains anything from the object."""


@dataclass(frozen=True)
class QuarantineView:
    id: str
    stage: str
    reason: str
    quarantined_at: str
    bytes: int


def list_entries(quarantine_dir: Path, limit: int = 500) -> list[QuarantineView]:
    """Newest first. Only the reason code, stage, time and size: details stay on disk."""
    out: list[QuarantineView] = []
    if not quarantine_dir.exists():
        return out
    metas = sorted(quarantine_dir.glob("*/*.json"), key=lambda p: p.name, reverse=True)
    for meta_path in metas[:limit]:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        out.append(QuarantineView(str(meta.get("id", meta_path.stem)), meta_path.parent.name,
                                  str(meta.get("reason", "")), str(meta.get("quarantined_at", "")),
                                  int(meta.get("bytes", 0) or 0)))
    return out


def _find(quarantine_dir: Path, entry_id: str) -> tuple[Path, Path, dict[str, Any]]:
    if not ENTRY_ID_RE.match(entry_id or ""):
        raise QuarantineActionError("no such quarantine entry")
    for stage_dir in quarantine_dir.iterdir() if quarantine_dir.exists() else []:
        if not stage_dir.is_dir() or not STAGE_RE.match(stage_dir.name):
            continue
        meta_path = stage_dir / f"{entry_id}.json"
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = {}
            return stage_dir / f"{entry_id}.bin", meta_path, meta
    raise QuarantineActionError("no such quarantine entry")


def purge(quarantine_dir: Path, entry_id: str, *, user: str) -> None:
    """Delete an entry for good (reason file first, so a listing never shows an entry without data)."""
    data_path, meta_path, meta = _find(quarantine_dir, entry_id)
    purge_entry(data_path, meta_path)  # and every other copy of the object: spool original, its row, results
    log.info("quarantine entry purged", extra={"event": "quarantine_purged", "entry": entry_id,
                                                "stage": meta_path.parent.name, "reason": meta.get("reason"),
                                                "user": user})


def release(quarantine_dir: Path, entry_id: str, intake: Intake, store: StateStore, *, user: str) -> str:
    """Send an entry back for re-processing; returns the study key it went to."""
    data_path, meta_path, meta = _find(quarantine_dir, entry_id)
    if not data_path.exists():
        raise QuarantineActionError("the entry has no data file; purge it instead")
    try:
        outcome = intake.ingest_external(data_path, source="quarantine-release")
    except UnreadableObject as exc:
        raise QuarantineActionError(f"still not acceptable ({exc.code}); left in quarantine") from None
    except DiskFull:
        raise QuarantineActionError("disk below the free-space floor; try again later") from None
    if not outcome.reopened and outcome.action == "duplicate":
        study = store.study(outcome.study_key)
        if study is not None and study["state"] not in (RECEIVING, STABLE, PROCESSING):
            store.set_study_state(outcome.study_key, STABLE)
    meta_path.unlink(missing_ok=True)
    data_path.unlink(missing_ok=True)
    fsync_dir(meta_path.parent)
    log.info("quarantine entry released", extra={"event": "quarantine_released", "entry": entry_id,
                                                  "stage": meta_path.parent.name, "reason": meta.get("reason"),
                                                  "study": outcome.study_key, "user": user})
    return outcome.study_key
