"""Read one object defensively: junk, truncated files and DICOMDIRs become reason codes, not crashes.

pydicom stops silently at a truncated element, so we check that the last element ends where the
file ends and that native pixel data is as long as the image needs. Anything we cannot vouch for is
refused here and quarantined by the caller.
"""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from connector.deid.rawseq import define_sequence_lengths

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010


class Unreadable(Exception):
    """The object cannot be processed; ``code`` says why (never a value from the object)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def read_dataset(data: bytes) -> Dataset:
    """Parse ``data`` into a dataset whose every element is known to be complete."""
    if len(data) < 8:
        raise Unreadable("not-dicom")
    data = define_sequence_lengths(data)
    try:
        ds = dcmread(io.BytesIO(data))
    except InvalidDicomError:
        # No preamble: accept a bare dataset only if it parses into a real instance.
        try:
            ds = dcmread(io.BytesIO(data), force=True)
        except Exception:
            raise Unreadable("not-dicom") from None
        if Tag(0x00080016) not in ds or Tag(0x00080018) not in ds:
            raise Unreadable("not-dicom") from None
    except Exception:
        raise Unreadable("unreadable") from None
    try:
        _check_complete(ds, len(data))
        sop_class = _text(ds, 0x00080016)
        media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "")) if ds.file_meta is not None else ""
        if MEDIA_STORAGE_DIRECTORY in (sop_class, media_class) or Tag(0x00041220) in ds:
            raise Unreadable("dicomdir")
        if not sop_class or not _text(ds, 0x00080018):
            raise Unreadable("missing-uid" if len(ds) else "truncated")
    except Unreadable:
        raise
    except Exception:
        raise Unreadable("unreadable") from None
    return ds


def _text(ds: Dataset, tag: int) -> str:
    elem = ds.get(tag)
    if elem is None or elem.value is None:
        return ""
    return str(elem.value).strip(" \x00")


def _check_complete(ds: Dataset, size: int) -> None:
    keys = list(ds.keys())
    if not keys:
        return
    last = ds.get_item(keys[-1])
    if getattr(last, "is_raw", False) and last.length != UNDEFINED_LENGTH and last.value_tell is not None:
        value = last.value or b""
        deflated = ds.file_meta is not None and ds.file_meta.get("TransferSyntaxUID") == DEFLATED
        # In a deflated file, offsets count in the inflated stream, so only the length can be checked.
        if len(value) != last.length or (not deflated and last.value_tell + last.length != size):
            raise Unreadable("truncated")
    if _PIXEL_DATA in ds and ds.get_item(_PIXEL_DATA).length != UNDEFINED_LENGTH:
        _check_native_pixels(ds)


def _check_native_pixels(ds: Dataset) -> None:
    raw = ds.get_item(_PIXEL_DATA)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return  # not an image we can size; the last-element check still applies
    pixels = rows * cols * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "YBR_FULL_422":
        expected = expected // 3 * 2
    if len(raw.value or b"") < expected:
        raise Unreadable("truncated")
