"""List every value inside an encoded (not yet parsed) sequence, at every depth.

pydicom parses a defined-length sequence only when it is accessed, building a Dataset per item;
for an Enhanced CT's thousands of per-frame elements that costs far more than the check itself.
This reader walks the encoded items directly and returns (path, tag, VR, value bytes) for every
non-sequence element. It is the guard's own reader (the guard shares no code with the rule
engine, whose sequence rewriter solves a similar problem); on anything unusual it raises
:class:`EncodedWalkError` and the caller parses the sequence with pydicom instead.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from pydicom.datadict import dictionary_VR

_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_FOUR_BYTE_LENGTH = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                               b"UV"})
_HEAD = struct.Struct("<HHI")
_SHORT_LENGTH = struct.Struct("<H")
_MAX_DEPTH = 32

Value = tuple[str, int, str, bytes]  # (path of the enclosing items, tag, VR, encoded value)


class EncodedWalkError(Exception):
    pass


@lru_cache(maxsize=4096)
def _implicit_vr(tag: int) -> str:
    if tag & 0x10000:
        return "UN"
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


_IMPLICIT_LE = "1.2.840.10008.1.2"
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def part10_values(data: bytes) -> tuple[list[Value], list[Value], tuple[int, int] | None]:
    """(file meta values, data set values at every depth, pixel data byte span) of a Part 10 file.

    The pixel data value is not returned (it is an image); its span lets the byte scan skip it.
    Deflated and big endian files raise :class:`EncodedWalkError` (the caller uses pydicom).
    """
    if len(data) < 144 or data[128:132] != b"DICM":
        raise EncodedWalkError("not part 10")
    meta: list[Value] = []
    pos = 132
    while pos + 8 <= len(data) and _HEAD.unpack_from(data, pos)[0] == 0x0002:
        pos = _elements(data, pos, len(data), False, "meta:", meta, 0, limit=1)
    syntax = next((v for _p, tag, _vr, v in meta if tag == 0x00020010), b"").decode("ascii", "replace").strip(" \x00")
    if syntax not in (_IMPLICIT_LE, "1.2.840.10008.1.2.1") and not syntax.startswith("1.2.840.10008.1.2.4") \
            and syntax != "1.2.840.10008.1.2.5":
        raise EncodedWalkError("transfer syntax")  # deflated, big endian or private: pydicom decides
    values: list[Value] = []
    spans: list[tuple[int, int]] = []
    _elements(data, pos, len(data), syntax == _IMPLICIT_LE, "", values, 0, pixel_spans=spans)
    return meta, values, spans[0] if spans else None


def encoded_values(buf: bytes, implicit: bool, prefix: str) -> list[Value]:
    """Every value inside the sequence value ``buf`` (little endian), with its item path."""
    out: list[Value] = []
    _items(buf, 0, len(buf), implicit, prefix, out, 0)
    return out


def _items(buf: bytes, pos: int, end: int | None, implicit: bool, prefix: str, out: list[Value], depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise EncodedWalkError("too deep")
    index = 0
    while end is None or pos < end:
        if pos + 8 > len(buf):
            raise EncodedWalkError("truncated")
        group, number, length = _HEAD.unpack_from(buf, pos)
        tag = group << 16 | number
        if tag == _SEQ_END and end is None:
            return pos + 8
        if tag != _ITEM:
            raise EncodedWalkError("not an item")
        item_prefix = f"{prefix}[{index}]>"
        if length == _UNDEFINED:
            pos = _elements(buf, pos + 8, None, implicit, item_prefix, out, depth)
        else:
            _elements(buf, pos + 8, pos + 8 + length, implicit, item_prefix, out, depth)
            pos += 8 + length
        index += 1
    return pos


def _elements(buf: bytes, pos: int, end: int | None, implicit: bool, prefix: str, out: list[Value],
              depth: int, *, limit: int = -1, pixel_spans: list[tuple[int, int]] | None = None) -> int:
    """Elements from ``pos`` to ``end`` (None: to the item delimiter); at most ``limit`` if >= 0.
    With ``pixel_spans``, top-level pixel data is recorded there instead of returned."""
    size = len(buf)
    while (end is None or pos < end) and limit != 0:
        limit -= 1
        if pos + 8 > size:
            raise EncodedWalkError("truncated")
        group, number, length = _HEAD.unpack_from(buf, pos)
        tag = group << 16 | number
        if tag == _ITEM_END and end is None:
            return pos + 8
        if implicit:
            vr = _implicit_vr(tag)
            start = pos + 8
        else:
            raw_vr = buf[pos + 4:pos + 6]
            if raw_vr in _FOUR_BYTE_LENGTH:
                length = struct.unpack_from("<I", buf, pos + 8)[0]
                start = pos + 12
            else:
                length = _SHORT_LENGTH.unpack_from(buf, pos + 6)[0]
                start = pos + 8
            vr = raw_vr.decode("latin-1")
        if length == _UNDEFINED:
            if pixel_spans is not None and tag in _PIXEL_TAGS:
                pos = _skip_fragments(buf, start)
                pixel_spans.append((start, pos))
            elif vr in ("SQ", "UN") or implicit:
                pos = _items(buf, start, None, implicit, f"{prefix}({group:04X},{number:04X})", out, depth + 1)
            else:
                pos = _skip_fragments(buf, start)
            continue
        value_end = start + length
        if value_end > size:
            raise EncodedWalkError("truncated")
        if vr == "SQ":
            _items(buf, start, value_end, implicit, f"{prefix}({group:04X},{number:04X})", out, depth + 1)
        elif pixel_spans is not None and tag in _PIXEL_TAGS:
            pixel_spans.append((start, value_end))
        else:
            out.append((prefix, tag, vr, buf[start:value_end]))
        pos = value_end
    if end is not None and pos != end and limit != 0:
        raise EncodedWalkError("overrun")
    return pos


def _skip_fragments(buf: bytes, pos: int) -> int:
    """Past an undefined-length encapsulated value (pixel data fragments): image bytes, not text."""
    while True:
        if pos + 8 > len(buf):
            raise EncodedWalkError("truncated")
        group, number, length = _HEAD.unpack_from(buf, pos)
        tag = group << 16 | number
        if tag == _SEQ_END:
            return pos + 8
        if tag != _ITEM or length == _UNDEFINED:
            raise EncodedWalkError("bad fragment")
        pos += 8 + length
