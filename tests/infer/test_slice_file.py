"""A slice's pixels read straight from its file give exactly pydicom's ``pixel_array``; anything else
goes through pydicom, and a series loads the same with the selection's headers as without."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from connector.infer.select import select_series
from connector.infer.slice_file import read_plain_pixels, read_slice_header
from connector.infer.volume import load_volume
from connector.settings.cac import CacConfig
from connector.synthetic.phantom_series import write_phantom_series


def _slice_file(path: Path, words: np.ndarray, *, bits_stored: int, signed: bool, syntax: str,
                photometric: str = "MONOCHROME2", samples: int = 1, padding: bytes = b"") -> Path:
    """A CT image as a scanner writes it, with whatever sits in the unused high bits of ``words``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = words.shape
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = words.astype("<u2").tobytes() + padding
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return path


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 9), columns=st.integers(1, 9), bits_stored=st.integers(1, 16), signed=st.booleans(),
       explicit=st.booleans(), photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2"]), seed=st.integers(0, 2**32 - 1))
def test_plain_read_equals_pydicom(tmp_path: Path, rows: int, columns: int, bits_stored: int, signed: bool,
                                   explicit: bool, photometric: str, seed: int) -> None:
    words = np.random.default_rng(seed).integers(0, 2**16, size=(rows, columns), dtype=np.uint32)
    path = _slice_file(tmp_path / f"{seed}.dcm", words, bits_stored=bits_stored, signed=signed,
                       syntax=ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian, photometric=photometric)
    ours = read_plain_pixels(read_slice_header(path))
    theirs = pydicom.dcmread(path).pixel_array
    assert ours is not None and ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


@pytest.mark.parametrize("case", ["rle", "padded", "colour", "eight_bits"])
def test_other_storage_is_left_to_pydicom(tmp_path: Path, case: str) -> None:
    words = np.arange(16, dtype=np.uint32).reshape(4, 4) * 100
    path = tmp_path / "x.dcm"
    if case == "rle":
        _slice_file(path, words, bits_stored=16, signed=False, syntax=ExplicitVRLittleEndian)
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
    elif case == "padded":  # longer than Rows x Columns x 2: what the extra bytes mean is pydicom's call
        _slice_file(path, words, bits_stored=16, signed=False, syntax=ExplicitVRLittleEndian, padding=b"\0\0")
    elif case == "colour":
        _slice_file(path, words, bits_stored=16, signed=False, syntax=ExplicitVRLittleEndian, samples=3)
    else:
        _slice_file(path, words, bits_stored=16, signed=False, syntax=ExplicitVRLittleEndian)
        ds = pydicom.dcmread(path)
        ds.BitsAllocated = 8
        ds.save_as(path, enforce_file_format=True)
    assert read_plain_pixels(read_slice_header(path)) is None
    if case in ("rle", "padded"):  # pydicom decodes these: the load falls back to it
        assert np.array_equal(pydicom.dcmread(path).pixel_array, words)


def _series(tmp_path: Path, name: str, **kw: object) -> list[Path]:
    rng = np.random.default_rng(5)
    hu = rng.integers(-1000, 1500, size=(6, 48, 48)).astype(np.int16)
    return write_phantom_series(hu, [3.0 * k for k in range(6)], 0.8, tmp_path / name, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [{}, {"extra": {"BitsStored": 12, "HighBit": 11}}, {"transfer_syntax": RLELossless},
                                {"extra": {"RescaleSlope": 0.5}}])
def test_series_loads_the_same_with_the_selection_headers(tmp_path: Path, kw: dict[str, object]) -> None:
    paths = _series(tmp_path, "s", **kw)
    cfg = CacConfig(min_slices=3, min_coverage_mm=10.0)
    candidate = select_series(paths, cfg).eligible[0]
    assert len(candidate.headers) == len(candidate.paths)
    fresh = load_volume(candidate.paths)
    shared = load_volume(candidate.paths, headers=candidate.headers)
    streamed = load_volume(candidate.paths, headers=candidate.headers, max_resident_mb=0.0)  # a SliceStack
    assert fresh.hu.dtype == shared.hu.dtype and np.array_equal(fresh.hu, shared.hu)
    assert np.array_equal(fresh.positions_mm, shared.positions_mm)
    assert np.array_equal(np.stack([streamed.hu[k] for k in range(len(streamed.hu))]), fresh.hu)


def test_a_file_replaced_after_its_header_was_read_is_read_again(tmp_path: Path) -> None:
    """A re-sent instance replaces its file (os.replace: a new inode); its new pixels count, never the
    old offset applied to new bytes."""
    paths = _series(tmp_path, "s")
    cfg = CacConfig(min_slices=3, min_coverage_mm=10.0)
    candidate = select_series(paths, cfg).eligible[0]
    target = candidate.paths[2]
    ds = pydicom.dcmread(target)
    ds.ImageComments = "a longer header moves the pixel data" * 3
    ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(str(target) + ".new", enforce_file_format=True)
    os.replace(str(target) + ".new", target)
    stale = candidate.headers[2]
    assert read_plain_pixels(stale) is None
    assert np.array_equal(load_volume(candidate.paths, headers=candidate.headers).hu, load_volume(candidate.paths).hu)


def test_slices_without_rescale_or_thickness_load_the_same(tmp_path: Path) -> None:
    """Rescale Slope/Intercept absent and Slice Thickness (type 2) empty, as some writers leave them:
    the plain read and pydicom agree, and the stored values are the HU."""
    paths = _series(tmp_path, "s")
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.SliceThickness = None
        ds.save_as(path, enforce_file_format=True)
    cfg = CacConfig(min_slices=3, min_coverage_mm=10.0)
    candidate = select_series(paths, cfg).eligible[0]
    shared = load_volume(candidate.paths, headers=candidate.headers)
    fresh = load_volume(candidate.paths)
    assert shared.slice_thickness_mm is None and np.array_equal(shared.hu, fresh.hu)
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in shared.source_paths])
    assert np.array_equal(shared.hu, stored)
