"""Load one CT series into a HU volume sorted along the slice normal, with its spacing checked.

Why sort by geometry: instance numbers and file order are unreliable across scanners and PACS; the
only trustworthy order is the position of each slice along the normal of its orientation. The
Agatston slice-increment correction then needs the real distance between slices, so gaps (missing
slices) and uneven spacing are measured and reported rather than assumed away.

Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE, deflate) decode through pydicom's pixel
backends: the pylibjpeg plugins are runtime dependencies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from connector.infer.errors import SeriesError
from connector.infer.slice_file import SliceHeader, read_plain_pixels, read_slice_header

log = logging.getLogger(__name__)

DUPLICATE_TOLERANCE_MM = 0.01
UNEVEN_TOLERANCE = 0.05  # relative deviation from the median increment that counts as uneven
GAP_FACTOR = 1.5
DEFER_BYTES = 64 * 1024  # element values this large (the pixel data) are read from the file when used  # a step this many times the median increment means missing slices


@dataclass(frozen=True)
class SpacingReport:
    """How regular the slice positions are. ``warnings`` are codes for the result."""

    increment_mm: float
    min_step_mm: float
    max_step_mm: float
    uniform: bool
    gaps: int  # steps longer than GAP_FACTOR x increment
    duplicates_removed: int

    @property
    def warnings(self) -> tuple[str, ...]:
        codes = []
        if not self.uniform:
            codes.append("uneven_spacing")
        if self.gaps:
            codes.append("slice_gaps")
        if self.duplicates_removed:
            codes.append("duplicate_positions")
        return tuple(codes)


@dataclass(frozen=True)
class CtVolume:
    """A CT series as HU voxels (slices, rows, columns), ordered inferior to superior along the normal."""

    hu: np.ndarray  # int16 when the HU are whole numbers (integer rescale), else float32; or a SliceStack
    pixel_spacing: tuple[float, float]  # (row, column) mm
    positions_mm: np.ndarray  # slice centre along the normal, ascending
    spacing: SpacingReport
    slice_thickness_mm: float | None
    study_uid: str = field(repr=False)
    series_uid: str = field(repr=False)
    # The file of each kept slice, in the volume's order: what a DICOM SEG or SR built from the
    # result references (the original instances on the site's spool).
    source_paths: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def slice_increment_mm(self) -> float:
        return self.spacing.increment_mm


def slice_normal(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """Unit normal of an ImageOrientationPatient (row cosines x column cosines)."""
    values = np.asarray([float(v) for v in orientation], dtype=np.float64)
    if values.shape != (6,):
        raise SeriesError("bad_orientation", "ImageOrientationPatient must have 6 values")
    normal = np.cross(values[:3], values[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise SeriesError("bad_orientation", "row and column directions are parallel")
    return normal / norm


def load_volume(paths: Sequence[Path], max_resident_mb: float = float("inf"),
                headers: Sequence[SliceHeader] | None = None) -> CtVolume:
    """Read, decode, rescale and sort the slices of one series. Raises :class:`SeriesError`.

    A series whose HU (2 bytes a pixel) would take more than ``max_resident_mb`` is not held: ``hu``
    is then a :class:`SliceStack`, which decodes slices from their files when asked. ``headers``: the
    files' headers as the series selection read them (same order as ``paths``), so they are not parsed
    again."""
    if len(paths) < 2:
        raise SeriesError("too_few_slices", f"{len(paths)} slice(s); at least 2 are needed")
    # Headers now, each slice's pixel data only when it is decoded, one slice at a time below.
    if headers is None or len(headers) != len(paths):
        headers = [_read_header(Path(p)) for p in paths]
    datasets = [h.dataset for h in headers]
    first = datasets[0]
    series_uid, study_uid = str(first.get("SeriesInstanceUID", "")), str(first.get("StudyInstanceUID", ""))
    if any(str(ds.get("SeriesInstanceUID", "")) != series_uid for ds in datasets):
        raise SeriesError("mixed_series", "the files belong to more than one series")
    for ds in datasets:
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise SeriesError("multiframe_unsupported", "multi-frame (enhanced) CT is not supported")
        for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            if keyword not in ds:
                raise SeriesError("missing_geometry", f"{keyword} is missing on a slice")

    orientation = np.asarray([float(v) for v in first.ImageOrientationPatient])
    normal = slice_normal(orientation)
    spacing = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    shape = (int(first.Rows), int(first.Columns))
    for ds in datasets[1:]:
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise SeriesError("inconsistent_geometry", "slices differ in size")
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-3):
            raise SeriesError("inconsistent_geometry", "slices differ in orientation")
        if not np.allclose([float(v) for v in ds.PixelSpacing], spacing, rtol=1e-3):
            raise SeriesError("inconsistent_geometry", "slices differ in pixel spacing")

    positions = np.array([float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in datasets])
    order = np.argsort(positions, kind="stable")
    keep, duplicates = _drop_duplicates(positions, order)
    if len(keep) < 2:
        raise SeriesError("too_few_slices", "fewer than 2 distinct slice positions")
    report = _spacing_report(positions[keep], duplicates)

    kept = [headers[i] for i in keep]
    if len(keep) * shape[0] * shape[1] * 2 > max_resident_mb * 1024 * 1024:
        hu: np.ndarray | SliceStack = SliceStack.scan(kept, shape, spacing)
    else:
        hu = _read_pixels(kept, shape)
    thickness = first.get("SliceThickness")
    if report.warnings:
        log.info("series spacing warnings: %s (slices=%d)", ",".join(report.warnings), len(keep))
    return CtVolume(
        hu=hu,
        pixel_spacing=spacing,
        positions_mm=positions[keep],
        spacing=report,
        slice_thickness_mm=float(thickness) if thickness not in (None, "") else None,
        study_uid=study_uid,
        series_uid=series_uid,
        source_paths=tuple(Path(paths[i]) for i in keep),
    )


def _read_pixels(kept: Sequence[SliceHeader], shape: tuple[int, int]) -> np.ndarray:
    """The kept slices' HU, decoded one at a time, so only one slice's pixel data and decoded array
    live at once. int16 while every value is a whole number in int16's range (integer rescale slope
    and intercept, the usual case): the same values as float32 in half the memory; otherwise float32."""
    hu: np.ndarray = np.empty((len(kept), *shape), dtype=np.int16)
    for index, header in enumerate(kept):
        pixels = _slice_hu(header, shape)
        if hu.dtype == np.int16 and pixels.dtype != np.int16:
            hu = hu.astype(np.float32)
        hu[index] = pixels
    return hu


def _read_header(path: Path) -> SliceHeader:
    try:
        return read_slice_header(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError) as exc:
        raise SeriesError("unreadable_file", f"a slice could not be read ({type(exc).__name__})") from None


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise SeriesError("unreadable_file", f"a slice could not be read ({type(exc).__name__})") from None


def _slice_hu(header: SliceHeader, shape: tuple[int, int]) -> np.ndarray:
    """HU of one slice: straight from the file when stored plainly, else through pydicom's decoders."""
    try:
        pixels = read_plain_pixels(header)
    except OSError as exc:
        raise SeriesError("unreadable_file", f"a slice could not be read ({type(exc).__name__})") from None
    if pixels is not None:
        if pixels.shape != shape:
            raise SeriesError("inconsistent_geometry", "pixel data does not match Rows/Columns")
        return _to_hu(pixels, header.dataset)
    return _hu_pixels(_read(header.path), shape)  # compressed, unusual, or replaced since its header was read


def _hu_pixels(ds: Dataset, shape: tuple[int, int]) -> np.ndarray:
    """HU of one slice decoded by pydicom."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; report the syntax, never the content
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise SeriesError("decode_failed", f"pixel data could not be decoded ({name}, {type(exc).__name__})") from None
    if pixels.shape != shape:
        raise SeriesError("inconsistent_geometry", "pixel data does not match Rows/Columns")
    return _to_hu(pixels, ds)


def _to_hu(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values to HU: int16 when they are whole numbers within int16 (exactly the float32
    values), else float32."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if pixels.dtype.kind in "iu" and slope.is_integer() and intercept.is_integer() and pixels.size:
        low, high = float(pixels.min()), float(pixels.max())
        ends = (low * slope + intercept, high * slope + intercept)
        if -32768 <= min(ends) and max(ends) <= 32767:
            if slope == 1.0 and -32768 <= low and high <= 32767 and -32768 <= intercept <= 32767:
                whole = pixels.astype(np.int16)  # every stored value fits, and so does every sum (its ends do)
                if intercept != 0.0:
                    whole += np.int16(intercept)
                return whole
            whole = pixels.astype(np.int32)
            if slope != 1.0:
                whole *= int(slope)
            if intercept != 0.0:
                whole += int(intercept)
            return whole.astype(np.int16)
    out = pixels.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _drop_duplicates(positions: np.ndarray, order: np.ndarray) -> tuple[list[int], int]:
    keep: list[int] = []
    for index in order:
        if keep and abs(positions[index] - positions[keep[-1]]) <= DUPLICATE_TOLERANCE_MM:
            continue
        keep.append(int(index))
    return keep, len(order) - len(keep)


def _spacing_report(sorted_positions: np.ndarray, duplicates: int) -> SpacingReport:
    steps = np.diff(sorted_positions)
    increment = float(np.median(steps))
    return SpacingReport(
        increment_mm=increment,
        min_step_mm=float(steps.min()),
        max_step_mm=float(steps.max()),
        uniform=bool(np.all(np.abs(steps - increment) <= UNEVEN_TOLERANCE * increment)),
        gaps=int(np.count_nonzero(steps > GAP_FACTOR * increment)),
        duplicates_removed=duplicates,
    )


class SliceStack:
    """The HU of a long series without holding it: slices are decoded from their files when indexed,
    the few most recent kept. What scoring asks of a volume besides single slices and slabs (the
    heart search's coarse grid, the maximum over slices for the model's crop) is computed in one
    pass at the start, so memory does not grow with the slice count (about 60 kB a slice at 512²).

    Supports what the CAC runtime uses of a (slices, rows, columns) array: ``shape``, ``ndim``,
    ``dtype``, ``len``, ``stack[k]``, ``stack[a:b]``, ``stack[indices]``, ``stack[:, ::s, ::s]`` for the
    heart search's step and ``stack.max(axis=0)``.
    """

    RECENT = 12  # decoded slices kept (a model batch and its neighbours)

    def __init__(self, headers: Sequence[SliceHeader], shape: tuple[int, int], dtype: np.dtype, step: int,
                 coarse: np.ndarray, maximum: np.ndarray) -> None:
        self.headers = tuple(headers)
        self.shape = (len(self.headers), *shape)
        self.ndim = 3
        self.dtype = dtype
        self._step, self._coarse, self._maximum = step, coarse, maximum
        self._recent: dict[int, np.ndarray] = {}

    @classmethod
    def scan(cls, kept: Sequence[SliceHeader], shape: tuple[int, int], spacing: tuple[float, float]) -> SliceStack:
        """Decode every kept slice once, keeping only the coarse grid and the running maximum."""
        from connector.infer.heart_region import grid_step

        step = grid_step(spacing)
        coarse: np.ndarray | None = None
        maximum: np.ndarray | None = None
        dtype = np.dtype(np.int16)
        for index, header in enumerate(kept):
            pixels = _slice_hu(header, shape)
            if coarse is None or maximum is None:
                coarse = np.empty((len(kept), *pixels[::step, ::step].shape), dtype=np.int16)
                maximum = pixels.copy()
            if pixels.dtype != np.int16 and dtype == np.int16:
                dtype = np.dtype(np.float32)
                coarse, maximum = coarse.astype(np.float32), maximum.astype(np.float32)
            coarse[index] = pixels[::step, ::step]
            np.maximum(maximum, pixels, out=maximum)
        assert coarse is not None and maximum is not None
        return cls(kept, shape, dtype, step, coarse, maximum)

    def __len__(self) -> int:
        return self.shape[0]

    def slice(self, k: int) -> np.ndarray:
        if k not in self._recent:
            if len(self._recent) >= self.RECENT:
                self._recent.pop(next(iter(self._recent)))
            pixels = _slice_hu(self.headers[k], self.shape[1:])
            self._recent[k] = pixels.astype(self.dtype, copy=False)
        return self._recent[k]

    def __getitem__(self, key: object) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            k = int(key)
            return self.slice(k + len(self) if k < 0 else k)
        if isinstance(key, slice):
            indices = range(*key.indices(len(self)))
            out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
            for i, k in enumerate(indices):
                out[i] = self.slice(k)
            return out
        if isinstance(key, np.ndarray) and key.ndim == 1 and key.dtype.kind in "iu":
            out = np.empty((len(key), *self.shape[1:]), dtype=self.dtype)
            for i, k in enumerate(key):
                out[i] = self.slice(int(k))
            return out
        if (isinstance(key, tuple) and len(key) == 3 and key[0] == slice(None)
                and key[1] == key[2] == slice(None, None, self._step)):
            return self._coarse
        raise TypeError(f"SliceStack does not support indexing with {key!r}")

    def max(self, axis: int | None = None) -> np.ndarray:
        if axis != 0:
            raise TypeError("SliceStack.max supports axis=0 only")
        return self._maximum
