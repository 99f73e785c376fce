"""Text hidden inside compressed pixel data: removed losslessly, or the object is refused.

Why: a JPEG codestream carries its own metadata beside the image: COM segments (free text) and
APPn segments (EXIF and XMP with operator, device and patient fields, thumbnails). A modality or
PACS that compresses writes them, and a de-identifier that never opens the pixel data passes them
on byte for byte (an MR in JPEG Baseline came out with the operator's name in a COM segment).

What is done per frame of encapsulated pixel data, without decoding a single pixel:

- JPEG (baseline, extended, lossless; every scan of a progressive image): COM segments and APPn
  segments are dropped, except those decoding needs, kept in a minimal form: APP0 "JFIF" (its
  thumbnail removed), APP14 "Adobe" (colour transform), and for JPEG-LS APP8 "mrfx" (HP colour
  transform). The entropy-coded data and every other segment are copied as they are.
- JPEG 2000 codestreams: COM marker segments of the main header and of every tile-part header
  are dropped (each tile-part's length, Psot, is corrected). A JP2 file wrapped around the
  codestream (boxes that can hold XML and UUID metadata) is refused.
- RLE Lossless holds no metadata: nothing to do. Any other encapsulated transfer syntax (video,
  HTJ2K variants, deflated image frames) is refused: nothing is sent that was not opened.

Refusal raises :class:`CodestreamRefused` with a reason code; the engine quarantines the object.
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

JPEG_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS lossless, near-lossless
})
J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                          "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
NOTHING_INSIDE = frozenset({"1.2.840.10008.1.2.5"})  # RLE Lossless: runs of bytes, no metadata

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
_COM = 0xFE


class CodestreamRefused(Exception):
    """The pixel data's codestream cannot be checked or cleaned; ``code`` is the quarantine reason."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _kept_app(marker: int, body: bytes, jpeg_ls: bool) -> bytes | None:
    """The APPn payload to keep (possibly reduced), or None to drop the segment."""
    if marker == 0xE0 and body.startswith(b"JFIF\x00") and len(body) >= 14:
        return body[:12] + b"\x00\x00"  # version, units, density; thumbnail size 0x0, no thumbnail
    if marker == 0xEE and body.startswith(b"Adobe") and len(body) in (12, 14):
        return body  # version, flags, colour transform: numbers only
    if jpeg_ls and marker == 0xE8 and body.startswith(b"mrfx") and len(body) <= 16:
        return body
    return None


def clean_jpeg(data: bytes, jpeg_ls: bool = False) -> tuple[bytes, int]:
    """``data`` without COM and non-essential APPn segments; returns (codestream, segments removed)."""
    if data[:2] != b"\xff\xd8":
        raise CodestreamRefused("codestream-not-jpeg")
    out = bytearray(b"\xff\xd8")
    i, n, removed = 2, len(data), 0
    while i < n:
        if data[i] != 0xFF:
            raise CodestreamRefused("codestream-malformed")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            raise CodestreamRefused("codestream-truncated")
        marker = data[i]
        i += 1
        if marker == _EOI:
            out += b"\xff\xd9"
            return bytes(out), removed  # anything after EOI is dropped
        if marker in _STANDALONE:
            out += bytes((0xFF, marker))
            continue
        if i + 2 > n:
            raise CodestreamRefused("codestream-truncated")
        length = struct.unpack(">H", data[i:i + 2])[0]
        if length < 2 or i + length > n:
            raise CodestreamRefused("codestream-malformed")
        body = data[i + 2:i + length]
        segment_end = i + length
        if marker == _COM or 0xE0 <= marker <= 0xEF:
            kept = None if marker == _COM else _kept_app(marker, body, jpeg_ls)
            if kept is None:
                removed += 1
            else:
                removed += kept != body
                out += bytes((0xFF, marker)) + struct.pack(">H", len(kept) + 2) + kept
            i = segment_end
            continue
        out += data[i - 2:segment_end]
        i = segment_end
        if marker == _SOS:
            i = _copy_entropy(data, i, out)
    raise CodestreamRefused("codestream-truncated")  # no EOI


def _copy_entropy(data: bytes, i: int, out: bytearray) -> int:
    """Copy entropy-coded data up to the next marker; returns the marker's index.

    In JPEG a 0xFF in coded data is followed by 0x00 (stuffing) or a restart marker; in JPEG-LS by a
    byte below 0x80 (bit stuffing). Markers are 0xFF followed by 0x80 or more (after fill 0xFFs).
    """
    n = len(data)
    start = i
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= n:
            raise CodestreamRefused("codestream-truncated")
        following = data[j + 1]
        if following < 0x80 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            i = j + 1 if following == 0xFF else j + 2  # stuffing, restart marker, or a fill byte
            continue
        out += data[start:j]
        return j


def clean_j2k(data: bytes) -> tuple[bytes, int]:
    """A JPEG 2000 codestream without COM marker segments; returns (codestream, segments removed)."""
    if data[:4] == b"\x00\x00\x00\x0c" or data[4:8] == b"jP  ":
        raise CodestreamRefused("codestream-jp2-boxes")
    if data[:2] != b"\xff\x4f":
        raise CodestreamRefused("codestream-not-j2k")
    out = bytearray(b"\xff\x4f")
    i, n, removed = 2, len(data), 0
    while i + 2 <= n:
        marker = struct.unpack(">H", data[i:i + 2])[0]
        if marker == 0xFFD9:  # EOC (what follows, e.g. the fragment's padding byte, is dropped)
            out += data[i:i + 2]
            return bytes(out), removed
        if i + 4 > n:
            break
        if marker == 0xFF90:  # SOT: a tile-part; its header runs to SOD, then the data to Psot's end
            lsot = struct.unpack(">H", data[i + 2:i + 4])[0]
            if lsot != 10 or i + 12 > n:
                raise CodestreamRefused("codestream-malformed")
            psot = struct.unpack(">I", data[i + 6:i + 10])[0]
            end = n if psot == 0 else i + psot
            if end > n:
                raise CodestreamRefused("codestream-truncated")
            header = bytearray()
            j = i + 12
            while True:
                if j + 2 > end:
                    raise CodestreamRefused("codestream-malformed")
                m = struct.unpack(">H", data[j:j + 2])[0]
                if m == 0xFF93:  # SOD: the rest of the tile-part is coded data
                    break
                length = struct.unpack(">H", data[j + 2:j + 4])[0]
                if length < 2 or j + 2 + length > end:
                    raise CodestreamRefused("codestream-malformed")
                if m == 0xFF64:
                    removed += 1
                else:
                    header += data[j:j + 2 + length]
                j += 2 + length
            body = data[j:end]
            new_psot = 0 if psot == 0 else 12 + len(header) + len(body)
            out += data[i:i + 6] + struct.pack(">I", new_psot) + data[i + 10:i + 12] + header + body
            i = end
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if length < 2 or i + 2 + length > n:
            raise CodestreamRefused("codestream-malformed")
        if marker == 0xFF64:  # COM in the main header
            removed += 1
        else:
            out += data[i:i + 2 + length]
        i += 2 + length
    raise CodestreamRefused("codestream-truncated")


def clean_pixel_codestreams(ds: Dataset, transfer_syntax: str) -> int:
    """Clean every frame of ``ds``'s encapsulated pixel data in place; returns segments removed.

    Native (uncompressed) pixel data holds no codestream: 0. Raises :class:`CodestreamRefused`.
    """
    if "PixelData" not in ds:
        return 0
    if not getattr(ds.file_meta, "TransferSyntaxUID", None) or not _encapsulated(transfer_syntax):
        return 0
    if transfer_syntax in NOTHING_INSIDE:
        return 0
    if transfer_syntax in JPEG_SYNTAXES:
        def clean(frame: bytes) -> tuple[bytes, int]:
            return clean_jpeg(frame, jpeg_ls=transfer_syntax.endswith((".80", ".81")))
    elif transfer_syntax in J2K_SYNTAXES:
        clean = clean_j2k
    else:
        raise CodestreamRefused("codestream-unsupported-syntax")
    frames_n = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=frames_n))
    except Exception:
        raise CodestreamRefused("codestream-unreadable") from None
    if len(frames) != frames_n:
        raise CodestreamRefused("codestream-frame-count")
    removed = 0
    cleaned = []
    for frame in frames:
        new, n = clean(bytes(frame))
        cleaned.append(new)
        removed += n
    if removed:
        ds.PixelData = encapsulate(cleaned, has_bot=len(cleaned) > 1)
        ds["PixelData"].VR = "OB"
    return removed


def _encapsulated(transfer_syntax: str) -> bool:
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    return bool(uid.is_transfer_syntax and uid.is_encapsulated)
