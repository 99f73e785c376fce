"""Quarantine: where objects that must not go on are parked, with a machine-readable reason.

Every stage quarantines through this one function so that the layout is the same everywhere:
``<quarantine_dir>/<stage>/<id>.bin`` holds the bytes exactly as they were, and ``<id>.json`` the
reason. Both are written to a temporary name, fsync'd and renamed, so a reader never sees half an
entry. File names are random: they never carry a patient identifier. The reason text must not
either; callers pass codes and generic descriptions, never values taken from the object.

Purging an entry (:func:`purge_entry`) removes every copy of its object the site holds, not just the
entry: de-identification quarantines a *copy* of the original, which stays on the spool with its
instances row, and re-processing the study would otherwise bring the object back.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from connector.store.durable import fsync_dir, write_file_durably
from connector.store.layout import SiteLayout
from connector.store.digests import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantineEntry:
    id: str
    stage: str
    reason: str
    data_path: Path
    meta_path: Path


def quarantine(
    quarantine_dir: Path,
    stage: str,
    reason: str,
    *,
    data: bytes | None = None,
    source_path: Path | None = None,
    move: bool = False,
    details: dict[str, Any] | None = None,
) -> QuarantineEntry:
    """Park ``data`` (or the file at ``source_path``) under ``stage`` with ``reason``.

    ``reason`` is a short machine-readable code (e.g. ``not-dicom``, ``phi-guard:name``);
    ``details`` may add non-identifying context (sizes, tags, rule names). With ``move`` the source
    file is renamed into quarantine when it is on the same disk (no copy, no window with zero copies).
    """
    if (data is None) == (source_path is None):
        raise ValueError("pass exactly one of data or source_path")
    folder = quarantine_dir / stage
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    entry_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(6)
    data_path = folder / f"{entry_id}.bin"
    meta_path = folder / f"{entry_id}.json"
    if data is not None:
        write_file_durably(data_path, data)
    else:
        assert source_path is not None
        tmp = folder / f".{entry_id}.bin.part"
        if move:
            try:
                os.replace(source_path, tmp)
            except OSError:
                shutil.copyfile(source_path, tmp)
                os.unlink(source_path)
        else:
            shutil.copyfile(source_path, tmp)
        os.chmod(tmp, 0o600)  # a copy gets the umask's mode; PHI is the service user's alone
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, data_path)
    meta = {
        "id": entry_id,
        "stage": stage,
        "reason": reason,
        "details": details or {},
        "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bytes": data_path.stat().st_size,
    }
    write_file_durably(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
    fsync_dir(folder)
    return QuarantineEntry(entry_id, stage, reason, data_path, meta_path)


def list_quarantine(quarantine_dir: Path) -> list[dict[str, Any]]:
    """Every complete entry's reason record (entries without their JSON are still being written)."""
    entries = []
    if not quarantine_dir.exists():
        return entries
    for meta in sorted(quarantine_dir.glob("*/*.json")):
        try:
            entries.append(json.loads(meta.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return entries


def count_quarantine(quarantine_dir: Path) -> int:
    if not quarantine_dir.exists():
        return 0
    return sum(1 for _ in quarantine_dir.glob("*/*.json"))


# -- purge -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeReport:
    """What a purge removed: counts and the study key (a hash), safe to log."""

    entry_files: int = 0
    spool_originals: int = 0
    instance_rows: int = 0
    result_files: int = 0
    study: str = ""


def purge_entry(data_path: Path, meta_path: Path) -> PurgeReport:
    """Delete a quarantine entry and every other copy of its object on the site; log what went.

    Copies are recognised by content (same SHA-256), never by a UID alone, so another object that
    carries the same SOP Instance UID (a corrected re-send) is left alone. What goes:

    * the original on the spool and its instances row (so re-processing the study, e.g. after
      another entry of it was released, does not quarantine the object again);
    * identical copies under ``results/<study>/`` (a CAC SR or SEG original is quarantined from there);
    * the scored-calcium maps of the study when the object is a CT image (they may hold its pixels;
      they are made again if the study is processed again);
    * the entry itself (reason file first, so a listing never shows an entry without its data).

    What went is logged (``quarantine_object_removed``: entry id, study key, counts), not kept in
    the database: a record there would keep the purged object's UID.

    The spool file goes before its row: a crash in between leaves a row whose file is missing, which
    start-up recovery drops, never a file that recovery would register again.
    """
    layout = SiteLayout.of_quarantine(meta_path.parent.parent)
    found = _object_of(data_path)
    spool_originals = instance_rows = result_files = 0
    study = ""
    if found is not None:
        digest, sop_uid, study_uid = found
        spool_originals, instance_rows, study, modality = _purge_original(layout, digest, sop_uid)
        study = study or (_study_key(study_uid) if study_uid else "")
        if study:
            result_files = _purge_results(layout.results / study, digest, maps=modality == "CT")
    entry_files = 0
    for path in (meta_path, data_path):
        if path.exists():
            path.unlink()
            entry_files += 1
    fsync_dir(meta_path.parent)
    report = PurgeReport(entry_files, spool_originals, instance_rows, result_files, study)
    log.info("quarantined object removed from the site", extra={"event": "quarantine_object_removed",
                                                                "entry": meta_path.stem, **asdict(report)})
    return report



def _study_key(study_uid: str) -> str:
    from connector.store.state import study_key

    return study_key(study_uid)


def _object_of(data_path: Path) -> tuple[str, str, str] | None:
    """(SHA-256, SOP Instance UID, Study Instance UID) of a DICOM entry; None for anything else
    (a push job record, bytes that never were DICOM: they have no other copy)."""
    if not data_path.is_file():
        return None
    try:
        import pydicom

        ds = pydicom.dcmread(data_path, stop_before_pixels=True, force=True,
                             specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
    except Exception:  # unreadable: not an object the spool can hold
        return None
    if not sop_uid:
        return None
    return file_sha256(data_path), sop_uid, study_uid


def _purge_original(layout: SiteLayout, digest: str, sop_uid: str) -> tuple[int, int, str, str]:
    """Remove the spool original with these bytes and its instances row:
    (files removed, rows removed, study key, modality)."""
    from connector.store.state import StateStore, instance_key

    if not layout.state_db.exists():
        return 0, 0, "", ""
    store = StateStore(layout.state_db)
    try:
        row = store.conn.execute("SELECT path, study_key, modality FROM instances WHERE sop_instance_uid=?",
                                 (sop_uid,)).fetchone()
        rel = row[0] if row is not None else layout.incoming_relpath(instance_key(sop_uid))
        study, modality = (row[1], row[2] or "") if row is not None else ("", "")
        original = layout.spool / rel
        try:
            same = original.is_file() and file_sha256(original) == digest
        except OSError:
            same = False
        if not same:
            return 0, 0, study, modality  # no copy, or another version of the object: left alone
        original.unlink()
        fsync_dir(original.parent)
        rows = 0
        if row is not None:
            rows = store.forget_instance(sop_uid, study)
        return 1, rows, study, modality
    finally:
        store.close()



def _purge_results(folder: Path, digest: str, *, maps: bool) -> int:
    """Identical copies in the study's results folder, and its scored-calcium maps when ``maps``."""
    if not folder.is_dir():
        return 0
    removed = 0
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if (maps and path.suffix == ".npz") or (path.suffix == ".dcm" and file_sha256(path) == digest):
            path.unlink()
            removed += 1
    if removed:
        fsync_dir(folder)
    return removed
