"""One CT slice file: its header read once, its pixels read straight from the file when stored plainly.

Why: scoring a series parsed every file's header twice (once to choose the series, once to load it)
and decoded every slice through pydicom's pixel machinery: together about a quarter of a 100-slice
run outside the model. Now the header read that chooses the series also serves its load, and a slice
stored as plain 16-bit little-endian monochrome (what scanners and PACS write uncompressed) is read
with one ``readinto`` at the offset where that header read stopped. The values are what pydicom's
``pixel_array`` gives, unused high bits corrected the same way (``tests/infer/test_slice_file.py``
checks it against pydicom). Anything else (compressed or big-endian data, 8 or 32 bits, colour, a
length other than Rows x Columns x 2) goes through pydicom as before, and so does a file replaced
after its header was read (another inode, size or modification time): its header is read again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from connector.dicom_elements import element_at

_PIXEL_DATA = 0x7FE00010
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class SliceHeader:
    """A file's header (no pixel data), where that header read stopped, and the file it was read from."""

    path: Path
    dataset: Dataset
    pixel_offset: int  # the file position after the header: the pixel data element, if any
    stamp: tuple[int, int, int]  # (inode, size, mtime ns) of the file when its header was read


def read_slice_header(path: Path) -> SliceHeader:
    """Parse the header up to the pixel data. Raises what ``pydicom.dcmread`` raises for a bad file."""
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        return SliceHeader(Path(path), ds, fh.tell(), _stamp(fh))


def read_plain_pixels(header: SliceHeader) -> np.ndarray | None:
    """The stored values of a plainly stored slice, as ``pixel_array`` gives them; None for any other
    storage, or when the file is no longer the one whose header was read (pydicom's to decode then).
    Raises OSError when the file cannot be read at all."""
    layout = _plain_layout(header.dataset)
    if layout is None:
        return None
    rows, columns, signed, unused_bits, explicit = layout
    with open(header.path, "rb") as fh:
        if _stamp(fh) != header.stamp:
            return None
        fh.seek(header.pixel_offset)
        head = fh.read(12 if explicit else 8)
        if len(head) < (12 if explicit else 8) or (explicit and head[4:6] not in (b"OW", b"OB")):
            return None
        tag, length, _ = element_at(head, 0, explicit)  # the receiver's element walk
        if tag != _PIXEL_DATA:
            return None
        size = rows * columns * 2
        if length != size:  # undefined (encapsulated), padded or short: pydicom's to judge
            return None
        buffer = bytearray(size)
        if fh.readinto(buffer) != size:
            return None
    values = np.frombuffer(buffer, dtype="<i2" if signed else "<u2").reshape(rows, columns)
    if unused_bits:
        np.left_shift(values, unused_bits, out=values)
        np.right_shift(values, unused_bits, out=values)  # arithmetic for signed: the sign extends
    return values


def _stamp(fh: BinaryIO) -> tuple[int, int, int]:
    st = os.fstat(fh.fileno())
    return st.st_ino, st.st_size, st.st_mtime_ns


def _plain_layout(ds: Dataset) -> tuple[int, int, bool, int, bool] | None:
    """(rows, columns, signed, unused bits, explicit VR) of 16-bit little-endian monochrome; else None."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        if int(ds.SamplesPerPixel) != 1 or int(ds.BitsAllocated) != 16:
            return None
        stored, representation = int(ds.BitsStored), int(ds.PixelRepresentation)
        if str(ds.PhotometricInterpretation).strip() not in _MONOCHROME:
            return None
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            return None
    except (AttributeError, KeyError, TypeError, ValueError):  # absent or malformed: pydicom decides
        return None
    if not 1 <= stored <= 16 or representation not in (0, 1) or rows < 1 or columns < 1:
        return None
    return rows, columns, representation == 1, 16 - stored, syntax == ExplicitVRLittleEndian
