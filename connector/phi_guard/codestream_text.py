"""The guard's own look into compressed pixel data: no text segment may be left in a codestream.

Independent of :mod:`connector.deid.codestream` (which removes them): this only reads the marker
segments ahead of each frame's coded data and reports any that can hold text (JPEG COM and APPn
other than a bare JFIF/Adobe/mrfx header; JPEG 2000 COM in the main header or a tile-part header;
a JP2 box wrapper). Findings carry codes, never the text.
"""

from __future__ import annotations

import io
import struct

from connector.phi_guard.scanner_types import Finding

_HARMLESS_APP = ((0xE0, b"JFIF\x00", 16), (0xEE, b"Adobe", 16), (0xE8, b"mrfx", 18))


def _jpeg_header_findings(frame: bytes) -> list[Finding]:
    i, n = 2, len(frame)
    while i + 4 <= n:
        if frame[i] != 0xFF:
            return [Finding("phi-guard:codestream-unreadable", "(7FE0,0010)")]
        marker = frame[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD9, 0xDA):  # EOI, or the first scan: what follows is coded data
            return []
        length = struct.unpack(">H", frame[i + 2:i + 4])[0]
        body = frame[i + 4:i + 2 + length]
        if marker == 0xFE:
            return [Finding("phi-guard:codestream-text", "(7FE0,0010) JPEG COM")]
        if 0xE0 <= marker <= 0xEF and not any(marker == m and body.startswith(sig) and length <= size
                                                for m, sig, size in _HARMLESS_APP):
            return [Finding("phi-guard:codestream-text", f"(7FE0,0010) JPEG APP{marker - 0xE0}")]
        i += 2 + length
    return []


def _j2k_header_findings(frame: bytes) -> list[Finding]:
    if frame[4:8] == b"jP  ":
        return [Finding("phi-guard:codestream-text", "(7FE0,0010) JP2 boxes")]
    i, n = 2, len(frame)
    while i + 4 <= n:
        marker, length = struct.unpack(">HH", frame[i:i + 4])
        if marker == 0xFF64:
            return [Finding("phi-guard:codestream-text", "(7FE0,0010) J2K COM")]
        if marker == 0xFF90:  # SOT: look through this tile-part's header, then jump to the next
            psot = struct.unpack(">I", frame[i + 6:i + 10])[0]
            j = i + 12
            while j + 4 <= n:
                m, length_j = struct.unpack(">HH", frame[j:j + 4])
                if m == 0xFF93:
                    break
                if m == 0xFF64:
                    return [Finding("phi-guard:codestream-text", "(7FE0,0010) J2K COM")]
                j += 2 + length_j
            if psot == 0:
                return []
            i += psot
            continue
        if marker == 0xFFD9:
            return []
        i += 2 + length
    return []


def codestream_findings(pixel_data: bytes, frames: int) -> list[Finding]:
    """Findings for encapsulated ``pixel_data`` (the element's value, items and all)."""
    from pydicom.encaps import generate_frames

    try:
        parts = list(generate_frames(io.BytesIO(pixel_data).getvalue(), number_of_frames=frames))
    except Exception:
        return [Finding("phi-guard:codestream-unreadable", "(7FE0,0010)")]
    for frame in parts:
        head = bytes(frame[:2])
        if head == b"\xff\xd8":
            found = _jpeg_header_findings(bytes(frame))
        elif head == b"\xff\x4f" or bytes(frame[4:8]) == b"jP  ":
            found = _j2k_header_findings(bytes(frame))
        else:
            found = []  # RLE and others: the engine refuses syntaxes it cannot open
        if found:
            return found
    return []
