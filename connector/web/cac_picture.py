"""The CAC picture: the axial slices that carry scored calcium, scored pixels coloured by density weight.

Drawn locally from the scored-calcium map the inference stage writes
(:func:`connector.infer.scored_calcium.load_scored_calcium`), as one PNG: the kept slices side by
side, in scan order, each in a grey CT window; every pixel of a scored lesion is painted in the
colour of its Agatston density weight. Nothing else in the picture has colour (grey pixels have
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


@dataclass(frozen=True)
class Tile:
    """Where kept slice ``index`` (position in the map) sits in the picture."""

    index: int
    slice_index: int  # position in the scanned volume (0 = first slice in scan order)
    x: int
    y: int


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
    rows, cols = scored.hu.shape[1:]
    chosen = shown_slices(scored, limit)
    per_row = min(COLUMNS, max(1, len(chosen)))
    grid_rows = max(1, -(-len(chosen) // per_row))
    tiles = [Tile(i, scored.slice_indices[i], (k % per_row) * (cols + GAP), (k // per_row) * (rows + GAP))
             for k, i in enumerate(chosen)]
    return tiles, (per_row * cols + (per_row - 1) * GAP, grid_rows * rows + (grid_rows - 1) * GAP)


def grey(hu: np.ndarray) -> np.ndarray:
    """HU to 0-255 through the CT window."""
    low = WINDOW_LEVEL - WINDOW_WIDTH / 2
    scaled = (hu.astype(np.float32) - low) * (255.0 / WINDOW_WIDTH)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def render_rgb(scored: ScoredCalcium, limit: int = MAX_SLICES) -> np.ndarray:
    """The picture as an (height, width, 3) uint8 array."""
    tiles, (width, height) = layout_tiles(scored, limit)
    rows, cols = scored.hu.shape[1:]
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for tile in tiles:
        g = grey(scored.hu[tile.index])
        rgb = np.repeat(g[:, :, None], 3, axis=2)
        weights = scored.weights[tile.index]
        for weight, colour in WEIGHT_COLOURS.items():
            rgb[weights == weight] = colour
        canvas[tile.y:tile.y + rows, tile.x:tile.x + cols] = rgb
    return canvas


def render_png(scored: ScoredCalcium, limit: int = MAX_SLICES) -> bytes:
    """The picture as PNG bytes (lossless, so the colours are exactly those of the legend)."""
    out = io.BytesIO()
    Image.fromarray(render_rgb(scored, limit)).save(out, format="PNG", optimize=False)
    return out.getvalue()
