"""The CAC picture: the axial slices that carry scored calcium, scored pixels coloured by density weight.

Drawn locally from the scored-calcium map the inference stage writes
(:func:`connector.infer.scored_calcium.load_scored_calcium`), as one PNG: the kept slices side by
side, in scan order, each in a grey CT window; every pixel of a scored lesion is painted in the
colour of its Agatston density weight. Every slice is cut to the same box around all the scored
calcium (plus a margin of anatomy, ``MARGIN_MM``) and enlarged by a whole factor without
smoothing, so a lesion of a few pixels is visible and its pixels keep their exact colour. Nothing else in the picture has colour (grey pixels have
R = G = B), so what is coloured is exactly what was scored. No text or header value is drawn.

Colours (the legend the study page shows):

    weight 1  130-199 HU   yellow   #FFDD00
    weight 2  200-299 HU   orange   #FF8C00
    weight 3  300-399 HU   red      #E6261E
    weight 4  >= 400 HU    magenta  #C800C8
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from connector.infer.scored_calcium import ScoredCalcium

WINDOW_LEVEL, WINDOW_WIDTH = 40.0, 400.0  # mediastinal CT window (HU)
WEIGHT_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (0xFF, 0xDD, 0x00),
    2: (0xFF, 0x8C, 0x00),
    3: (0xE6, 0x26, 0x1E),
    4: (0xC8, 0x00, 0xC8),
}
WEIGHT_LABELS = {1: "130-199 HU", 2: "200-299 HU", 3: "300-399 HU", 4: "400 HU and above"}
COLUMNS = 4  # slices per row of the picture
GAP = 4  # pixels between slices (black)
MAX_SLICES = 16  # a series with more scored slices shows the 16 with the most scored pixels
MARGIN_MM = 60.0  # anatomy kept around the scored calcium
TARGET_TILE = 250  # pixels: a slice is enlarged (whole factor, at most 6) towards this size (4 fit the page)


@dataclass(frozen=True)
class Tile:
    """Where kept slice ``index`` (position in the map) sits in the picture."""

    index: int
    slice_index: int  # position in the scanned volume (0 = first slice in scan order)
    x: int
    y: int
    crop: tuple[int, int, int, int]  # (row0, col0, rows, cols) of the slice that is drawn
    scale: int  # each slice pixel is drawn as scale x scale picture pixels


def crop_box(scored: ScoredCalcium) -> tuple[int, int, int, int]:
    """(row0, col0, rows, cols): the box around all scored calcium plus the margin, inside the slice."""
    rows, cols = scored.hu.shape[1:]
    hit = scored.weights > 0
    if not hit.any():
        return 0, 0, rows, cols
    r = np.flatnonzero(hit.any(axis=(0, 2)))
    c = np.flatnonzero(hit.any(axis=(0, 1)))
    mr = int(round(MARGIN_MM / max(scored.pixel_spacing_mm[0], 1e-3)))
    mc = int(round(MARGIN_MM / max(scored.pixel_spacing_mm[1], 1e-3)))
    r0, r1 = max(0, int(r[0]) - mr), min(rows, int(r[-1]) + 1 + mr)
    c0, c1 = max(0, int(c[0]) - mc), min(cols, int(c[-1]) + 1 + mc)
    return r0, c0, r1 - r0, c1 - c0

def shown_slices(scored: ScoredCalcium, limit: int = MAX_SLICES) -> list[int]:
    """Positions (in the map) of the slices drawn: all of them, or the ``limit`` with most calcium, in scan order."""
    n = scored.weights.shape[0]
    if n <= limit:
        return list(range(n))
    amount = (scored.weights > 0).reshape(n, -1).sum(axis=1)
    best = sorted(range(n), key=lambda i: (-int(amount[i]), i))[:limit]
    return sorted(best)


def layout_tiles(scored: ScoredCalcium, limit: int = MAX_SLICES) -> tuple[list[Tile], tuple[int, int]]:
    """The tiles and the picture's (width, height)."""
    box = crop_box(scored)
    scale = max(1, min(6, TARGET_TILE // max(box[2], box[3])))
    rows, cols = box[2] * scale, box[3] * scale
    chosen = shown_slices(scored, limit)
    per_row = min(COLUMNS, max(1, len(chosen)))
    grid_rows = max(1, -(-len(chosen) // per_row))
    tiles = [Tile(i, scored.slice_indices[i], (k % per_row) * (cols + GAP), (k // per_row) * (rows + GAP), box, scale)
             for k, i in enumerate(chosen)]
    return tiles, (per_row * cols + (per_row - 1) * GAP, grid_rows * rows + (grid_rows - 1) * GAP)


def _crop(tile: Tile, plane: np.ndarray) -> np.ndarray:
    r0, c0, h, w = tile.crop
    part = plane[r0:r0 + h, c0:c0 + w]
    return np.repeat(np.repeat(part, tile.scale, axis=0), tile.scale, axis=1)


def grey(hu: np.ndarray) -> np.ndarray:
    """HU to 0-255 through the CT window."""
    low = WINDOW_LEVEL - WINDOW_WIDTH / 2
    scaled = (hu.astype(np.float32) - low) * (255.0 / WINDOW_WIDTH)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def expand(tile: Tile, plane: np.ndarray) -> np.ndarray:
    """A slice-sized array as the tile draws it (cut and enlarged): for checking a picture."""
    return _crop(tile, plane)


def render_rgb(scored: ScoredCalcium, limit: int = MAX_SLICES) -> np.ndarray:
    """The picture as an (height, width, 3) uint8 array."""
    tiles, (width, height) = layout_tiles(scored, limit)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for tile in tiles:
        g = grey(_crop(tile, scored.hu[tile.index]))
        rgb = np.repeat(g[:, :, None], 3, axis=2)
        weights = _crop(tile, scored.weights[tile.index])
        for weight, colour in WEIGHT_COLOURS.items():
            rgb[weights == weight] = colour
        canvas[tile.y:tile.y + rgb.shape[0], tile.x:tile.x + rgb.shape[1]] = rgb
    return canvas


def render_png(scored: ScoredCalcium, limit: int = MAX_SLICES) -> bytes:
    """The picture as PNG bytes (lossless, so the colours are exactly those of the legend)."""
    out = io.BytesIO()
    Image.fromarray(render_rgb(scored, limit)).save(out, format="PNG", optimize=False)
    return out.getvalue()
