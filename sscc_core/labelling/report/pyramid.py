"""A tile pyramid of PNG images of a label map, for the report's zoomable map viewer.

Level ``z`` of ``0..Z`` shows every ``f = 2**(Z - z)``-th pixel (nearest decimation, so every
shown pixel is a real label, as in the COG's overviews); level ``Z`` is full resolution and level
0 fits one tile. Tiles are ``tiles/<z>/<row>_<col>.png`` of at most ``tile x tile`` pixels.

The map is read once, in blocks of ``tile * 2**m`` pixels (``m`` <= :data:`BLOCK_LEVELS`): each
block gives the tiles of the ``m + 1`` finest levels and its contribution to an in-memory
overview holding every ``2**m``-th pixel of the map, from which the coarser levels are cut. The
memory is one block plus the overview (1/256 of the map's pixel count with the defaults), and
the output never holds one full-resolution image of the map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TILE = 256
BLOCK_LEVELS = 4

Reader = Callable[[slice, slice], np.ndarray]
"""``read(rows, cols) -> (h, w)`` integer codes of a full-resolution window (indices into the
colour table)."""


@dataclass(frozen=True)
class Pyramid:
    """Where a written pyramid lies and how it is cut (read by the viewer).

    Attributes:
        path: Folder of the tiles, relative to the report (``<path>/<z>/<row>_<col>.png``).
        height: Map rows at full resolution.
        width: Map columns at full resolution.
        tile: Tile side in pixels.
        levels: Number of levels (``Z + 1``).
    """

    path: str
    height: int
    width: int
    tile: int
    levels: int

    def as_dict(self) -> dict[str, int | str]:
        """The fields as a JSON-able dict."""
        return {"path": self.path, "height": self.height, "width": self.width,
                "tile": self.tile, "levels": self.levels}


def n_levels(height: int, width: int, tile: int = TILE) -> int:
    """Levels needed for the coarsest one to fit one ``tile``."""
    return 1 + max(0, math.ceil(math.log2(max(height, width) / tile)))


def _save(codes: np.ndarray, lut: np.ndarray, path: Path) -> None:
    """Write ``lut[codes]`` as an RGBA PNG."""
    Image.fromarray(lut[codes], "RGBA").save(path, compress_level=3)


def _cut(image: np.ndarray, lut: np.ndarray, folder: Path, tile: int, row0: int, col0: int) -> None:
    """Write the tiles of one level-image region whose top-left is tile ``(row0, col0)``."""
    for y in range(0, image.shape[0], tile):
        for x in range(0, image.shape[1], tile):
            name = f"{row0 + y // tile}_{col0 + x // tile}.png"
            _save(image[y : y + tile, x : x + tile], lut, folder / name)


def write_pyramid(
    read: Reader, height: int, width: int, lut: np.ndarray, out: Path, name: str,
    *, tile: int = TILE,
) -> Pyramid:
    """Write the tile pyramid of a ``height x width`` map.

    Args:
        read: Reader of full-resolution windows of integer codes.
        height: Map rows.
        width: Map columns.
        lut: ``(n_codes, 4)`` uint8 RGBA colour of each code.
        out: The report folder; tiles go to ``out/name``.
        name: Folder of this pyramid inside the report.
        tile: Tile side in pixels.

    Returns:
        The :class:`Pyramid` written.
    """
    levels = n_levels(height, width, tile)
    top = levels - 1
    m = min(BLOCK_LEVELS, top)
    block, step = tile << m, 1 << m
    for z in range(levels):
        (out / name / str(z)).mkdir(parents=True, exist_ok=True)
    overview = np.zeros((-(-height // step), -(-width // step)), np.int32)
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            codes = read(slice(y0, min(y0 + block, height)), slice(x0, min(x0 + block, width)))
            for d in range(m + 1):  # level top - d keeps every 2**d-th pixel of the block
                f = 1 << d
                _cut(codes[::f, ::f], lut, out / name / str(top - d), tile,
                     y0 // f // tile, x0 // f // tile)
            overview[y0 // step : -(-min(y0 + block, height) // step),
                     x0 // step : -(-min(x0 + block, width) // step)] = codes[::step, ::step]
    for z in range(top - m):
        f = 1 << (top - m - z)
        _cut(overview[::f, ::f], lut, out / name / str(z), tile, 0, 0)
    return Pyramid(path=name, height=height, width=width, tile=tile, levels=levels)
