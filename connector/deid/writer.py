"""Encode a de-identified dataset as a Part 10 file, copying still-encoded elements as they are.

After de-identification most elements are still the encoded bytes read from the input. pydicom's
writer handles each through a general path (a buffer, a context manager, VR checks) that costs
more than copying the bytes; here an encoded element in the output's encoding is written as
header + value directly, and every other element goes through pydicom's own
``write_data_element``. Anything outside the simple case (deflate, big endian, a change of
encoding or character set) is left to ``dcmwrite`` entirely. A test checks that the bytes equal
``dcmwrite``'s for pydicom's whole test corpus.
"""

from __future__ import annotations

import io
import struct

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

_UNDEFINED = 0xFFFFFFFF
_TAG = struct.Struct("<HH")
_EXPLICIT_LONG = struct.Struct("<HH2sHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHI")
_LONG_VRS = frozenset(EXPLICIT_VR_LENGTH_32)


def encode_file(ds: Dataset) -> bytes:
    """The Part 10 encoding of ``ds`` (128-byte preamble, file meta, data set)."""
    syntax = ds.file_meta.TransferSyntaxUID
    implicit = syntax.is_implicit_VR
    simple = (
        syntax.is_little_endian
        and not syntax.is_deflated
        and getattr(ds, "original_encoding", (None, None)) == (implicit, True)
        and ds.original_character_set == getattr(ds, "_character_set", None)
        and not getattr(ds, "preamble", None)
    )
    if not simple:
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    meta = _meta_bytes(ds)
    if meta is None:
        write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    else:
        fp.write(meta)
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    charset = ds.get("SpecificCharacterSet", None)
    parts: list[bytes] = []
    for key in sorted(ds.keys()):
        tag = int(key)
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue  # retired group lengths are not written (as pydicom does)
        elem = ds.get_item(key)
        if type(elem) is RawDataElement and elem.length != _UNDEFINED and elem.is_implicit_VR == implicit \
                and elem.is_little_endian:
            value = elem.value or b""
            if implicit:
                parts.append(_IMPLICIT.pack(tag >> 16, tag & 0xFFFF, len(value)))
            elif elem.VR in _LONG_VRS:
                parts.append(_EXPLICIT_LONG.pack(tag >> 16, tag & 0xFFFF, elem.VR.encode(), 0, len(value)))
            elif elem.VR and len(elem.VR) == 2 and len(value) <= 0xFFFF:
                parts.append(_EXPLICIT_SHORT.pack(tag >> 16, tag & 0xFFFF, elem.VR.encode(), len(value)))
            else:
                _flush(fp, parts)
                write_data_element(fp, elem, charset)
                continue
            parts.append(value)
        else:
            _flush(fp, parts)
            write_data_element(fp, elem, charset)
    _flush(fp, parts)
    return fp.getvalue()


_META_KEYWORDS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID",
                  "ImplementationClassUID", "ImplementationVersionName")


def _meta_bytes(ds: Dataset) -> bytes | None:
    """The file meta group for the meta the engine builds (those five values, nothing else), encoded
    as ``write_file_meta_info`` encodes it; None for anything else."""
    meta = ds.file_meta
    if sorted(meta.dir()) != sorted(_META_KEYWORDS):
        return None
    values = [str(meta.get(k) or "") for k in _META_KEYWORDS]
    if not all(values[:4]) or not all(v.isascii() for v in values):
        return None
    body = [_EXPLICIT_LONG.pack(0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"]
    for element, value in zip((0x0002, 0x0003, 0x0010, 0x0012, 0x0013), values, strict=True):
        data = value.encode("ascii")
        if len(data) % 2:
            data += b"\x00" if element != 0x0013 else b" "
        vr = b"SH" if element == 0x0013 else b"UI"
        body.append(_EXPLICIT_SHORT.pack(0x0002, element, vr, len(data)) + data)
    content = b"".join(body)
    return _EXPLICIT_SHORT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<I", len(content)) + content


def _flush(fp: DicomBytesIO, parts: list[bytes]) -> None:
    if parts:
        fp.write(b"".join(parts))
        parts.clear()
