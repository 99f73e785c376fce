"""The head of every received file: 128-byte preamble, ``DICM`` and the File Meta group (PS3.10 7.1).

A C-STORE carries only the dataset; the receiver writes this head before streaming the dataset
behind it, so the spool holds ordinary Part 10 files any tool can open. The six short elements are
built directly as bytes (a pydicom Dataset and writer cost ~0.5 ms per object, a tenth of the
per-object budget); a test checks the output is byte-identical to pynetdicom + pydicom's.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = bytes(128) + b"DICM"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # explicit VR little endian, long form
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta group (0002,eeee) exactly as pynetdicom + pydicom would write it."""
    body = b"".join((
        _element(2, 0x0001, b"OB", b"\x00\x01"),
        _element(2, 0x0002, b"UI", _padded(str(sop_class_uid), b"\x00")),
        _element(2, 0x0003, b"UI", _padded(str(sop_instance_uid), b"\x00")),
        _element(2, 0x0010, b"UI", _padded(str(transfer_syntax), b"\x00")),
        _element(2, 0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _element(2, 0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    return _element(2, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def part10_head(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and File Meta: what precedes the dataset in a stored file."""
    return PREAMBLE + encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax)
