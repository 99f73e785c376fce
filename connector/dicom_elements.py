"""Read a few leading top-level elements of a little-endian dataset straight from its bytes.

Why by hand: the receiver files every instance by five UIDs and codes, and the dev registry
indexes about fifteen short elements of every instance it stores. pydicom's element reader costs
more CPU per instance than receiving and storing its half megabyte; walking the element headers
with ``struct`` takes a few microseconds. Both hot paths share this walk.

Only explicit and implicit VR little endian are read (the encapsulated syntaxes are explicit VR
little endian too). Sequences of undefined length are skipped item by item. Anything the walk
cannot vouch for (an implausible VR, a wanted element of undefined length, bytes that end before
the last wanted tag, nesting too deep) returns None, and the caller reads the object with pydicom
instead: an odd object is judged by the slow path, never misread.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Union

from pydicom.uid import UID

Buffer = Union[bytes, bytearray, memoryview]

LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 16
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_IMPLICIT = struct.Struct("<HHHH")  # group, element, 32-bit length as two halves


class _Stop(Exception):
    """The walk cannot be trusted here; the caller falls back to pydicom."""


def tag_at(buf: Buffer, pos: int) -> int:
    group, element = _TAG.unpack_from(buf, pos)
    return group << 16 | element


def _plausible(vr: bytes) -> bool:
    return vr.isalpha() and vr.isupper()


def element_at(buf: Buffer, pos: int, explicit: bool) -> tuple[int, int, int]:
    """(tag, value length, value offset) of the element starting at ``pos``."""
    tag = tag_at(buf, pos)
    if not explicit or tag >> 16 == 0xFFFE:  # item and delimiter tags carry no VR
        return tag, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    vr = bytes(buf[pos + 4: pos + 6])
    if not _plausible(vr):
        raise _Stop
    if vr in LONG_VRS:
        return tag, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    return tag, _U16.unpack_from(buf, pos + 6)[0], pos + 8


def _skip_undefined(buf: Buffer, pos: int, explicit: bool, depth: int) -> int:
    """Skip the items of an undefined-length value starting at ``pos``; the offset after its delimiter."""
    if depth > _MAX_DEPTH:
        raise _Stop
    while True:
        tag, length, pos = element_at(buf, pos, False)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Stop
        if length != _UNDEFINED:
            pos += length
            continue
        while tag_at(buf, pos) != _ITEM_END:
            pos = _skip_element(buf, pos, explicit, depth + 1)
        pos += 8


def _skip_element(buf: Buffer, pos: int, explicit: bool, depth: int) -> int:
    tag, length, start = element_at(buf, pos, explicit)
    if length != _UNDEFINED:
        return start + length
    # An undefined length: a sequence, or UN holding one (whose content is implicit VR).
    unknown = explicit and bytes(buf[pos + 4: pos + 6]) == b"UN"
    return _skip_undefined(buf, start, explicit and not unknown, depth)


def explicit_vr_of(transfer_syntax: str) -> bool | None:
    """Whether the walk reads ``transfer_syntax`` as explicit VR; None if it cannot read it at all.

    None for big endian, deflated, and syntaxes pydicom does not know (private ones): those are
    left to pydicom.
    """
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax or syntax.is_deflated or not syntax.is_little_endian:
        return None
    return not syntax.is_implicit_VR


def text(buf: Buffer, start: int, length: int) -> str:
    """A short string value as single-byte text, without padding (as pydicom's raw reader gives it)."""
    return bytes(buf[start: start + length]).decode("latin-1").strip("\x00 ")


def read_leading(buf: Buffer, pos: int, *, explicit: bool, wanted: Mapping[int, str], last_tag: int,
                 whole: bool = False) -> dict[str, str] | None:
    """{keyword: text} of the ``wanted`` elements present between ``pos`` and ``last_tag``; None: use pydicom.

    ``buf[pos:]`` is the start of a dataset; ``whole`` says it is the entire dataset, so ending
    before ``last_tag`` is not a truncation.
    """
    size = len(memoryview(buf))
    found: dict[str, str] = {}
    element, long_length, keyword_of = (_EXPLICIT if explicit else _IMPLICIT).unpack_from, _U32.unpack_from, wanted.get
    try:
        while True:
            if pos + 8 > size:
                return found if whole and pos == size else None  # else: it goes on past what was given
            group, elem, vr, length = element(buf, pos)
            tag, start = group << 16 | elem, pos + 8
            if tag > last_tag:
                return found
            if explicit:
                if not _plausible(vr):
                    return None
                if vr in LONG_VRS:
                    if pos + 12 > size:
                        return None
                    length, start = long_length(buf, pos + 8)[0], pos + 12
            else:
                length = vr | length << 16  # implicit VR: the two halves of a 32-bit length
            if length == _UNDEFINED:
                if keyword_of(tag) is not None:
                    return None
                pos = _skip_element(buf, pos, explicit, 0)
                continue
            if start + length > size:
                return None
            keyword = keyword_of(tag)
            if keyword is not None:
                found[keyword] = text(buf, start, length)
            pos = start + length
    except (_Stop, struct.error):
        return None
