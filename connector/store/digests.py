"""SHA-256 of a file's bytes, read in blocks: the one helper every stage that compares files uses."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1024 * 1024


def file_sha256(path: Path, offset: int = 0) -> str:
    """Hex SHA-256 of ``path`` from byte ``offset`` on (e.g. past a DICOM preamble and file meta)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
