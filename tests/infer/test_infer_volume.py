"""Volume loading: geometric sort, spacing checks, rescale to HU, compressed transfer syntaxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

from connector.infer.errors import SeriesError
from connector.infer.volume import load_volume
from connector.synthetic.phantom_series import write_phantom_series


def ramp_volume(n: int = 8, size: int = 32) -> np.ndarray:
    """Each slice filled with a distinct HU value (its index x 100 - 900) plus a gradient."""
    vol = np.zeros((n, size, size), dtype=np.int16)
    for k in range(n):
        vol[k] = k * 100 - 900 + np.arange(size, dtype=np.int16)[None, :]
    return vol


def test_slices_sorted_by_position_not_file_order(tmp_path: Path) -> None:
    hu = ramp_volume()
    z = 3.0 * np.arange(len(hu)) - 40.0
    paths = write_phantom_series(hu, z, 0.8, tmp_path, shuffle_seed=3)
    vol = load_volume(list(reversed(paths)))
    assert np.array_equal(vol.hu, hu.astype(np.float32))  # rescale intercept -1024 undone
    assert np.allclose(vol.positions_mm, z)
    assert vol.slice_increment_mm == pytest.approx(3.0)
    assert vol.spacing.uniform and vol.spacing.warnings == ()
    assert vol.pixel_spacing == (0.8, 0.8)
    assert vol.slice_thickness_mm == pytest.approx(3.0)


def test_sort_follows_the_slice_normal_for_other_orientations(tmp_path: Path) -> None:
    hu = ramp_volume(6)
    z = 2.5 * np.arange(6)
    # Rows along -x, columns along y: normal = (-1,0,0) x (0,1,0) = (0,0,-1); higher z comes first.
    paths = write_phantom_series(hu, z, 1.0, tmp_path, extra={"ImageOrientationPatient": [-1, 0, 0, 0, 1, 0]})
    vol = load_volume(paths)
    assert np.array_equal(vol.hu, hu[::-1].astype(np.float32))
    assert vol.slice_increment_mm == pytest.approx(2.5)


def test_gaps_uneven_spacing_and_duplicates_are_reported(tmp_path: Path) -> None:
    hu = ramp_volume(10)
    z = np.array([0, 3, 6, 9, 18, 21, 24, 27.6, 30.6, 33.6], dtype=float)  # a 9 mm gap and a 3.6 mm step
    paths = write_phantom_series(hu, z, 1.0, tmp_path / "a")
    vol = load_volume(paths)
    assert vol.spacing.gaps == 1
    assert not vol.spacing.uniform
    assert set(vol.spacing.warnings) == {"uneven_spacing", "slice_gaps"}
    assert vol.slice_increment_mm == pytest.approx(3.0)

    dup = write_phantom_series(hu[:3], [0.0, 3.0, 3.0], 1.0, tmp_path / "b")
    vol = load_volume(dup)
    assert vol.hu.shape[0] == 2
    assert vol.spacing.duplicates_removed == 1
    assert "duplicate_positions" in vol.spacing.warnings


def test_rescale_slope_and_intercept(tmp_path: Path) -> None:
    hu = ramp_volume(3)
    paths = write_phantom_series(hu, [0.0, 3.0, 6.0], 1.0, tmp_path, extra={"RescaleSlope": 2, "RescaleIntercept": -2048})
    vol = load_volume(paths)
    stored = hu.astype(np.float32) + 1024  # the writer stores HU + 1024
    assert np.array_equal(vol.hu, stored * 2 - 2048)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_decode_to_the_same_hu(tmp_path: Path, syntax: str) -> None:
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 1500, size=(4, 64, 64)).astype(np.int16)
    z = [0.0, 3.0, 6.0, 9.0]
    plain = load_volume(write_phantom_series(hu, z, 0.9, tmp_path / "plain"))
    paths = write_phantom_series(hu, z, 0.9, tmp_path / "packed", transfer_syntax=syntax)
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    packed = load_volume(paths)
    assert np.array_equal(packed.hu, plain.hu)
    assert np.array_equal(packed.hu, hu.astype(np.float32))


@pytest.mark.parametrize(
    ("reference", "compressed"),
    [
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("MR_small.dcm", "MR_small_RLE.dcm"),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ],
)
def test_pixel_decoders_installed_for_lossless_syntaxes(reference: str, compressed: str) -> None:
    ref = pydicom.dcmread(get_testdata_file(reference)).pixel_array
    arr = pydicom.dcmread(get_testdata_file(compressed)).pixel_array
    assert np.array_equal(arr, ref)


@pytest.mark.parametrize(
    "name", ["JPGExtended.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_jpeg_dcmtk.dcm", "693_J2KI.dcm"]
)
def test_pixel_decoders_installed_for_jpeg_family(name: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    arr = ds.pixel_array
    assert arr.shape[:2] == (ds.Rows, ds.Columns)
    assert arr.std() > 0  # real image content, not zeros


def test_inconsistent_series_are_refused(tmp_path: Path) -> None:
    hu = ramp_volume(3)
    a = write_phantom_series(hu, [0.0, 3.0, 6.0], 1.0, tmp_path / "a")
    b = write_phantom_series(hu, [9.0, 12.0, 15.0], 0.5, tmp_path / "b")
    with pytest.raises(SeriesError) as err:
        load_volume(a + b)
    assert err.value.code == "mixed_series"
    c = write_phantom_series(hu, [9.0, 12.0, 15.0], 0.5, tmp_path / "c", series_uid=pydicom.dcmread(a[0]).SeriesInstanceUID)
    with pytest.raises(SeriesError) as err:
        load_volume(a + c)
    assert err.value.code == "inconsistent_geometry"
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(SeriesError) as err:
        load_volume(a + [junk])
    assert err.value.code == "unreadable_file"


def test_error_messages_carry_no_identifiers(tmp_path: Path) -> None:
    hu = ramp_volume(3)
    a = write_phantom_series(hu, [0.0, 3.0, 6.0], 1.0, tmp_path / "a")
    b = write_phantom_series(hu, [9.0, 12.0, 15.0], 1.0, tmp_path / "b")
    with pytest.raises(SeriesError) as err:
        load_volume(a + b)
    ds = pydicom.dcmread(a[0], stop_before_pixels=True)
    for value in (ds.SeriesInstanceUID, ds.StudyInstanceUID, str(ds.PatientName), ds.PatientID):
        assert value not in str(err.value)
