"""DICOM images with text drawn into their pixels the way devices burn it in: white, at the top of
the stored range, in ordinary screen fonts. Every identifier is the tests' made-up Planted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from tests.deid.factory import Planted, StudyUids, base_dataset

LOCALIZER = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf")


def fonts() -> tuple[ImageFont.FreeTypeFont, ImageFont.FreeTypeFont]:
    """Two fonts and sizes: Pillow's own (Aileron, 15 px) and DejaVu Sans Mono Bold 19 px when the
    system has it (else Pillow's at 21 px)."""
    first = ImageFont.load_default(size=15)
    second = ImageFont.truetype(str(DEJAVU), 19) if DEJAVU.exists() else ImageFont.load_default(size=21)
    return first, second  # type: ignore[return-value]


def text_mask(size: tuple[int, int], lines: list[tuple[tuple[int, int], str, int]]) -> np.ndarray:
    """Where ``lines`` ((x, y), text, font index 0/1) are drawn on a ``size`` (rows, columns) image."""
    canvas = Image.new("L", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(canvas)
    chosen = fonts()
    for (x, y), text, font in lines:
        draw.text((x, y), text, font=chosen[font], fill=255)
    return np.asarray(canvas) > 127


def localizer_hu(rows: int = 512, cols: int = 512) -> np.ndarray:
    """A CT scout: the body's projection, brighter where it is thicker, air outside, some noise."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    r = ((xx - cols / 2) / (cols * 0.3)) ** 2 + ((yy - rows * 0.55) / (rows * 0.42)) ** 2
    body = np.clip(1 - r, 0, 1)
    noise = np.random.default_rng(3).normal(0, 12, (rows, cols))
    return np.where(r <= 1, -200 + 900 * np.sqrt(body), -1000) + noise


def ct_image(hu: np.ndarray, lines: list[tuple[tuple[int, int], str, int]], *, image_type: list[str] | None = None,
             uids: StudyUids | None = None, instance: int = 1, modality: str = "CT",
             sop_class: str = "1.2.840.10008.5.1.4.1.1.2", p: Planted = Planted()) -> Dataset:
    """A 16-bit image of ``hu`` (rescale intercept -1024) with ``lines`` burned in at the top of the
    range (stored 4095, HU 3071: white in every window)."""
    ds = base_dataset(p, uids, modality=modality, sop_class=sop_class, instance=instance, pixels=False)
    ds.ImageType = image_type or LOCALIZER
    ds.SeriesDescription = "Topogram 0.6 T20f"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    stored = np.clip(np.rint(hu) + 1024, 0, 4095).astype(np.uint16)
    if lines:
        stored[text_mask(hu.shape, lines)] = 4095
    ds.PixelData = stored.tobytes()
    return ds


def name_and_mrn(p: Planted = Planted(), rows: int = 512) -> list[tuple[tuple[int, int], str, int]]:
    """The patient's name and MRN as a scanner writes them: name top left, MRN bottom right."""
    return [((12, 10), f"{p.family}, {p.given}", 0), ((250, rows - 36), f"MRN {p.patient_id}", 1)]
