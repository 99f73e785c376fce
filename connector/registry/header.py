"""The few header elements the dev registry indexes, read straight from a part's first bytes.

Why by hand: the registry needs about fifteen short elements from the start of every instance it
receives. Building them with pydicom's element reader costs more CPU than receiving and storing the
instance's half megabyte; walking the element headers with ``struct`` costs a few microseconds.
Only the common encodings are read here (Part 10 file, explicit or implicit VR little endian, and
the encapsulated syntaxes, which are explicit VR little endian too); anything else (big endian,
deflated, a header longer than the bytes given, a malformed element) returns None and the caller
reads the file with pydicom instead, so an odd object is judged by the slow path, never misread.
"""

from __future__ import annotations

import struct
from typing import Union

Buffer = Union[bytes, bytearray, memoryview]

# Indexed elements, by tag; (0020,0013) Instance Number is the last, nothing after it is read.
INDEXED_TAGS: dict[int, str] = {
    0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x00080020: "StudyDate",
    0x00080030: "StudyTime", 0x00080050: "AccessionNumber", 0x00080060: "Modality",
    0x0008103E: "SeriesDescription", 0x00100010: "PatientName", 0x00100020: "PatientID",
    0x00120062: "PatientIdentityRemoved", 0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber", 0x00200013: "InstanceNumber",
}
LAST_TAG = max(INDEXED_TAGS)
REQUIRED = ("SOPInstanceUID", "StudyInstanceUID", "PatientIdentityRemoved")
TRANSFER_SYNTAX_TAG = 0x00020010

_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_HERE = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated: pydicom reads those
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_IMPLICIT = struct.Struct("<HHHH")  # group, element, 32-bit length as two halves
_U32 = struct.Struct("<I")


class _Stop(Exception):
    """The header cannot be read here (truncated, malformed or unusual): let pydicom decide."""


def _tag_at(buf: Buffer, pos: int) -> int:
    group, element = _TAG.unpack_from(buf, pos)
    return group << 16 | element


def _element_at(buf: Buffer, pos: int, explicit: bool) -> tuple[int, int, int]:
    """(tag, value length, value offset) of the element starting at ``pos``."""
    tag = _tag_at(buf, pos)
    if not explicit or tag >> 16 == 0xFFFE:  # item and delimiter tags carry no VR
        return tag, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    vr = bytes(buf[pos + 4: pos + 6])
    if vr in _LONG_VRS:
        return tag, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    return tag, _U16.unpack_from(buf, pos + 6)[0], pos + 8


def _skip_undefined(buf: Buffer, pos: int, explicit: bool, depth: int = 0) -> int:
    """Skip the items of an undefined-length value starting at ``pos``; the offset after its delimiter."""
    if depth > 16:
        raise _Stop
    while True:
        tag, length, pos = _element_at(buf, pos, False)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Stop
        if length != _UNDEFINED:
            pos += length
            continue
        while (tag := _tag_at(buf, pos)) != _ITEM_END:
            pos = _skip_element(buf, pos, explicit, depth + 1)
        pos += 8


def _skip_element(buf: Buffer, pos: int, explicit: bool, depth: int) -> int:
    tag, length, start = _element_at(buf, pos, explicit)
    if length != _UNDEFINED:
        return start + length
    # An undefined length: a sequence, or UN holding one (whose content is implicit VR).
    unknown = explicit and bytes(buf[pos + 4: pos + 6]) == b"UN"
    return _skip_undefined(buf, start, explicit and not unknown, depth)


def _text(buf: Buffer, start: int, length: int) -> str:
    return bytes(buf[start: start + length]).decode("latin-1").strip("\x00 ")


def index_header(head: Buffer) -> dict[str, str] | None:
    """The indexed elements as text (missing ones as ""), plus ``TransferSyntaxUID``; None: use pydicom.

    ``head`` is the start of a Part 10 file. The values are de-identified UIDs, codes, dates and
    pseudonyms, read as single-byte text, as pydicom's raw reader would give them.
    """
    size = len(memoryview(head))
    out = dict.fromkeys(INDEXED_TAGS.values(), "")
    try:
        if bytes(head[128:132]) != b"DICM":
            return None
        pos, syntax = 132, ""
        while pos + 8 <= size and _tag_at(head, pos) >> 16 == 0x0002:
            tag, length, start = _element_at(head, pos, True)
            if tag == TRANSFER_SYNTAX_TAG:
                syntax = _text(head, start, length)
            pos = start + length
        if not syntax.startswith(_IMPLICIT_LE) or syntax in _NOT_HERE:
            return None
        explicit = syntax != _IMPLICIT_LE
        out["TransferSyntaxUID"] = syntax
        # The walk below is _element_at inlined: it runs for every element of every instance.
        element, long_length = (_EXPLICIT if explicit else _IMPLICIT).unpack_from, _U32.unpack_from
        wanted, long_vrs = INDEXED_TAGS.get, _LONG_VRS
        while True:
            if pos + 12 > size:
                return None  # the header goes on past what was given
            group, elem, vr, length = element(head, pos)
            tag, start = group << 16 | elem, pos + 8
            if tag > LAST_TAG:
                break
            if explicit:
                if vr in long_vrs:
                    length, start = long_length(head, pos + 8)[0], pos + 12
            else:
                length = vr | length << 16  # implicit VR: the two halves of a 32-bit length
            if length == _UNDEFINED:
                if wanted(tag) is not None:
                    return None
                pos = _skip_element(head, pos, explicit, 0)
                continue
            keyword = wanted(tag)
            if keyword is not None:
                if start + length > size:
                    return None
                out[keyword] = bytes(head[start: start + length]).decode("latin-1").strip("\x00 ")
            pos = start + length
    except (_Stop, struct.error):
        return None
    return out if all(out[k] for k in REQUIRED) else None
