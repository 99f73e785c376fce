"""Helpers to compare what was sent with what was stored."""

from __future__ import annotations

import hashlib
from pathlib import Path

from connector.ingest.intake import read_header


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset, without preamble and file meta (which each hop may rewrite)."""
    offset = read_header(path).dataset_offset
    return path.read_bytes()[offset:]


def dataset_digest(path: Path) -> str:
    return hashlib.sha256(dataset_bytes(path)).hexdigest()


def stored_by_sop(spool: Path) -> dict[str, Path]:
    """SOP Instance UID -> stored file, for every object in the incoming spool."""
    return {read_header(p).sop_instance_uid: p for p in spool.glob("incoming/*/*.dcm")}
