"""STOW-RS on the wire: the multipart request body streamed from disk, and the response read back.

Why streamed: a batch is up to 64 MB and several are in flight; the body is produced chunk by
chunk from the files (``multipart/related; type="application/dicom"``, PS3.18 10.5), so memory
stays at a few chunks per request however large the study. The exact length is known up front, so
the request carries ``Content-Length`` (no chunked encoding, which some DICOMweb servers refuse),
unless compression is on.

The response (``application/dicom+json``) lists stored instances in ReferencedSOPSequence
(0008,1199) and failed ones in FailedSOPSequence (0008,1198) with a FailureReason (0008,1197);
:func:`parse_stow_response` turns it into UID sets so only what failed is sent again.
"""

from __future__ import annotations

import json
import secrets
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"

# FailureReason codes (PS3.18 Table I.2-1 / PS3.4 Annex GG) and what the uploader does with them.
DUPLICATE_SOP_INSTANCE = 0x0111  # another object already holds this UID: compare content hashes
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = range(0xA700, 0xA800)
RETRYABLE_REASONS = {PROCESSING_FAILURE, 0x0213, 0x0212}  # processing failure, resource limitation


def is_retryable_reason(code: int | None) -> bool:
    return code is None or code in OUT_OF_RESOURCES or code in RETRYABLE_REASONS


class UploadAborted(Exception):
    """Raised inside the body stream when the worker is stopping: the job goes back to the queue."""


@dataclass(frozen=True)
class MultipartBody:
    """The files of one STOW-RS request, ready to stream."""

    paths: Sequence[Path]
    boundary: str = field(default_factory=lambda: "stow-" + secrets.token_hex(16))

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def _part_header(self) -> bytes:
        return f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()

    def _closing(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def content_length(self) -> int:
        """Exact body length from the file sizes (the files must not change while sending)."""
        head = len(self._part_header())
        return sum(head + p.stat().st_size + 2 for p in self.paths) + len(self._closing())

    def stream(self, *, chunk_size: int = CHUNK, on_chunk: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The body, chunk by chunk; ``on_chunk(n)`` runs before each file chunk is handed on (throttle, stop)."""
        head = self._part_header()
        between = b"\r\n" + head  # the end of one part and the start of the next go out together
        for i, path in enumerate(self.paths):
            yield between if i else head
            with open(path, "rb") as fh:
                while chunk := fh.read(chunk_size):
                    if on_chunk is not None:
                        on_chunk(len(chunk))
                    yield chunk
        yield b"\r\n" + self._closing()


def gzip_stream(chunks: Iterator[bytes], level: int = 1) -> Iterator[bytes]:
    """Lossless ``Content-Encoding: gzip`` of a stream, chunk by chunk (level 1: cheap, still ~2x on CT)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    for chunk in chunks:
        out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()


@dataclass
class StowResult:
    stored: set[str] = field(default_factory=set)
    failed: dict[str, int | None] = field(default_factory=dict)  # SOP Instance UID -> FailureReason
    parsed: bool = False  # a DICOM JSON body with at least one of the two sequences was found


def _uids(items: Any) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        uid_values = (item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or []
        reason_values = (item.get(FAILURE_REASON) or {}).get("Value") or []
        if uid_values and isinstance(uid_values[0], str):
            reason = reason_values[0] if reason_values and isinstance(reason_values[0], int) else None
            out.append((uid_values[0], reason))
    return out


def parse_stow_response(body: bytes) -> StowResult:
    """Stored and failed SOP Instance UIDs from a STOW-RS ``application/dicom+json`` response."""
    result = StowResult()
    try:
        doc = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return result
    if isinstance(doc, list) and len(doc) == 1:  # some servers wrap the response dataset in a list
        doc = doc[0]
    if not isinstance(doc, dict):
        return result
    for key in (REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE):
        if key in doc:
            result.parsed = True
    for uid, _ in _uids((doc.get(REFERENCED_SOP_SEQUENCE) or {}).get("Value")):
        result.stored.add(uid)
    for uid, reason in _uids((doc.get(FAILED_SOP_SEQUENCE) or {}).get("Value")):
        result.failed[uid] = reason
    return result
