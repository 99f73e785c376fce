"""Quarantine: where objects that must not go on are parked, with a machine-readable reason.

Every stage quarantines through this one function so that the layout is the same everywhere:
``<quarantine_dir>/<stage>/<id>.bin`` holds the bytes exactly as they were, and ``<id>.json`` the
reason. Both are written to a temporary name, fsync'd and renamed, so a reader never sees half an
entry. File names are random: they never carry a patient identifier. The reason text must not
either; callers pass codes and generic descriptions, never values taken from the object.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.store.durable import fsync_dir, write_file_durably


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
