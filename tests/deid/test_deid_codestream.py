"""Text inside compressed pixel data (issue 25, row 1): removed losslessly per transfer syntax.

Codestreams are made here by real encoders (Pillow's libjpeg, CharLS through pyjpegls, OpenJPEG
through pylibjpeg) and then given what modalities and PACS write beside the image: COM segments,
EXIF (APP1) with names, a JFIF thumbnail, a JPEG 2000 COM in the main and the tile-part header.
After de-identification no canary is left in the bytes, the pixels decode to exactly the same
values, the guard on its own refuses the uncleaned object, and what cannot be opened is refused.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from connector import phi_guard
from connector.deid.codestream import CodestreamRefused, clean_j2k, clean_jpeg
from connector.deid.engine import DeidEngine
from tests.deid.factory import base_dataset, encode, leaks

MR = "1.2.840.10008.5.1.4.1.1.4"
CANARIES = [b"OPERATORIUS", b"ZEBRAFISH", b"SYN48151623", b"SCANROOM9"]


def _segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body


def pixels(frames: int = 1) -> np.ndarray:
    rng = np.random.default_rng(3)
    base = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)
    return np.stack([base + rng.integers(0, 8, base.shape, dtype=np.uint8) for _ in range(frames)])


def mr_dataset(frames: np.ndarray) -> pydicom.Dataset:
    ds = base_dataset(modality="MR", sop_class=MR, pixels=False)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = frames.tobytes() if len(frames) > 1 else frames[0].tobytes()
    return ds


def with_jpeg_text(frame: bytes) -> bytes:
    """A real JPEG plus COM, EXIF and JFIF-thumbnail text after SOI, and a COM between scan and EOI."""
    assert frame[:2] == b"\xff\xd8" and frame[-2:] == b"\xff\xd9"
    exif = b"Exif\x00\x00MM\x00*" + b"Artist=OPERATORIUS^ANNA ZEBRAFISH SYN48151623"
    jfif_thumb = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x02\x01" + b"SCANROOM9" * 2 + b"\x00" * 6  # 2x1 RGB
    extra = (_segment(0xE0, jfif_thumb) + _segment(0xFE, b"operator OPERATORIUS, SCANROOM9")
             + _segment(0xE1, exif))
    return frame[:2] + extra + frame[2:-2] + _segment(0xFE, b"ZEBRAFISH") + frame[-2:]


def with_j2k_text(frame: bytes) -> bytes:
    """A real J2K codestream plus a COM in the main header and one in the first tile-part header."""
    sot = frame.index(b"\xff\x90")
    com = _segment(0x64, b"\x00\x01" + b"OPERATORIUS SCANROOM9")
    psot = struct.unpack(">I", frame[sot + 6:sot + 10])[0]
    tile = frame[sot:sot + 12]
    tile = tile[:6] + struct.pack(">I", psot + len(com) if psot else 0) + tile[10:]
    return frame[:sot] + com + tile + _segment(0x64, b"\x00\x01ZEBRAFISH SYN48151623") + frame[sot + 12:]


def jpeg_object(n_frames: int = 1) -> tuple[pydicom.Dataset, np.ndarray, str]:
    arr = pixels(n_frames)
    ds = mr_dataset(arr)
    encoded = []
    for frame in arr:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95, progressive=n_frames > 1)
        encoded.append(with_jpeg_text(buf.getvalue()))
    ds.PixelData = encapsulate(encoded, has_bot=n_frames > 1)
    ds["PixelData"].VR = "OB"
    return ds, arr, JPEGBaseline8Bit


def compressed_object(syntax: str) -> tuple[pydicom.Dataset, np.ndarray, str]:
    arr = pixels(1)
    ds = mr_dataset(arr)
    ds.compress(syntax, arr[0])
    [frame] = list(generate_frames(ds.PixelData, number_of_frames=1))
    if syntax == JPEGLSLossless:
        frame = frame[:2] + _segment(0xFE, b"OPERATORIUS") + _segment(0xE1, b"XMP ZEBRAFISH SCANROOM9") + frame[2:]
    else:
        frame = with_j2k_text(frame)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds, arr, syntax


def decoded(data: bytes) -> np.ndarray:
    out = pydicom.dcmread(io.BytesIO(data))
    arr = out.pixel_array
    return arr if arr.ndim == 3 else arr[None]


@pytest.mark.parametrize("make", [lambda: jpeg_object(1), lambda: jpeg_object(3),
                                  lambda: compressed_object(JPEGLSLossless),
                                  lambda: compressed_object(JPEG2000Lossless)],
                         ids=["jpeg-baseline", "jpeg-progressive-3-frames", "jpeg-ls", "jpeg-2000"])
def test_text_segments_are_removed_and_pixels_unchanged(engine: DeidEngine, make) -> None:
    ds, arr, syntax = make()
    data = encode(ds, syntax)
    assert all(c in data for c in CANARIES[:2])  # the input does carry them
    before = decoded(data)
    if syntax == JPEGBaseline8Bit:
        assert before.shape == arr.shape  # lossy: compare with what the original codestream decodes to
    else:
        np.testing.assert_array_equal(before, arr)
    result = engine.process_bytes(data)
    assert result.status == "ok", (result.reason, result.details)
    assert result.data is not None
    assert [c for c in CANARIES if c in result.data] == [] and not leaks(result.data)
    np.testing.assert_array_equal(decoded(result.data), before)  # lossless: not one pixel changed
    assert result.details["privacy"]["codestream_segments_removed"] >= 2
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert out.file_meta.TransferSyntaxUID == syntax


def test_the_guard_alone_refuses_text_left_in_a_codestream() -> None:
    for ds, _arr, _syntax in (jpeg_object(1), compressed_object(JPEG2000Lossless), compressed_object(JPEGLSLossless)):
        assert [f.code for f in phi_guard.codestream_findings(ds.PixelData, 1)] == ["phi-guard:codestream-text"]


def test_rle_passes_and_unknown_codestreams_are_refused(engine: DeidEngine) -> None:
    arr = pixels(1)
    ds = mr_dataset(arr)
    ds.compress(RLELossless, arr[0])
    result = engine.process_bytes(encode(ds, RLELossless))
    assert result.status == "ok" and result.details["privacy"]["codestream_segments_removed"] == 0
    np.testing.assert_array_equal(decoded(result.data), arr)
    mpeg = mr_dataset(arr)
    mpeg.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"user data OPERATORIUS" * 4])
    mpeg["PixelData"].VR = "OB"
    result = engine.process_bytes(encode(mpeg, "1.2.840.10008.1.2.4.100"))  # MPEG2 Main Profile
    assert result.status == "quarantine" and result.reason == "codestream-unsupported-syntax"


def test_malformed_and_jp2_wrapped_codestreams_are_refused() -> None:
    with pytest.raises(CodestreamRefused, match="codestream-truncated"):
        clean_jpeg(b"\xff\xd8" + _segment(0xFE, b"x") + b"\xff\xda\x00\x02abc")
    with pytest.raises(CodestreamRefused, match="codestream-not-jpeg"):
        clean_jpeg(b"GIF89a")
    with pytest.raises(CodestreamRefused, match="codestream-jp2-boxes"):
        clean_j2k(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 20)
