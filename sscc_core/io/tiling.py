"""Tile grid, halo reads, patch extraction and nodata masks for streaming stages.

A scene is cut into a grid of tiles; each tile is read with a halo of ``patch_size // 2`` pixels
so that every pixel of the tile gets its full patch. Beyond the scene edge the halo is filled
with the same convention as :func:`numpy.pad` applied to the *whole* scene, so a tile read with
halo is exactly the matching window of ``np.pad(scene, halo, mode)`` and tiled patch extraction
equals whole-scene patch extraction, for every pixel, edge tiles included.

Arrays are channel-first ``(band, y, x)`` array-likes that support numpy basic slicing (a numpy
array, a ``zarr.Array``, a dask array); only the window a tile needs is ever read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

PadMode = Literal["reflect", "symmetric", "edge"]


@dataclass(frozen=True)
class Tile:
    """One tile of a scene grid: rows ``y0:y1`` and columns ``x0:x1`` (half-open, pixels).

    Attributes:
        row: Tile row index in the grid.
        col: Tile column index in the grid.
        y0: First scene row of the tile.
        y1: One past the last scene row.
        x0: First scene column.
        x1: One past the last scene column.
    """

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        """Rows in the tile."""
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        """Columns in the tile."""
        return self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices of the tile in the scene."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def grown(self, reach: int, height: int, width: int) -> Tile:
        """This tile grown by ``reach`` pixels on every side, clipped to a ``height x width`` scene."""
        return Tile(self.row, self.col, max(0, self.y0 - reach), min(height, self.y1 + reach),
                    max(0, self.x0 - reach), min(width, self.x1 + reach))

    def within(self, outer: Tile) -> tuple[slice, slice]:
        """``(rows, cols)`` slices that crop this tile out of an array covering ``outer``."""
        return (slice(self.y0 - outer.y0, self.y1 - outer.y0),
                slice(self.x0 - outer.x0, self.x1 - outer.x0))


def tile_grid(
    height: int, width: int, tile_size: int, chunks: tuple[int, int] | None = None
) -> list[Tile]:
    """Cut a ``height x width`` scene into square tiles, row-major; edge tiles are smaller.

    Args:
        height: Scene rows, in pixels.
        width: Scene columns, in pixels.
        tile_size: Side of a full tile, in pixels.
        chunks: Spatial chunk shape ``(cy, cx)`` of the store the tiles will be read from or
            written to; when given, ``tile_size`` must be a multiple of both so that every tile
            covers whole chunks (concurrent chunk-misaligned writes lose data).

    Returns:
        Tiles in row-major order.

    Raises:
        ValueError: Non-positive sizes, or ``tile_size`` not a multiple of the chunk shape.
    """
    if height < 1 or width < 1:
        raise ValueError(f"scene shape must be positive, got {height} x {width}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    if chunks is not None and any(tile_size % c for c in chunks):
        raise ValueError(
            f"tile_size {tile_size} is not a multiple of the store chunk shape {tuple(chunks)}"
        )
    return [
        Tile(r, c, y0, min(y0 + tile_size, height), x0, min(x0 + tile_size, width))
        for r, y0 in enumerate(range(0, height, tile_size))
        for c, x0 in enumerate(range(0, width, tile_size))
    ]


def pad_index(index: np.ndarray, size: int, mode: PadMode = "reflect") -> np.ndarray:
    """Map coordinates outside ``[0, size)`` to the source index :func:`numpy.pad` would use.

    ``reflect`` mirrors without repeating the edge (period ``2 * (size - 1)``), ``symmetric``
    mirrors with the edge repeated (period ``2 * size``), ``edge`` clamps. Pads wider than the
    axis repeat the mirroring exactly as ``np.pad`` does.

    Args:
        index: Integer coordinates along one axis, any shape; may be negative or ``>= size``.
        size: Length of the axis in the unpadded array.
        mode: Padding convention.

    Returns:
        Indices into ``[0, size)``, same shape as ``index``.
    """
    if mode not in ("reflect", "symmetric", "edge"):
        raise ValueError(f"pad mode must be 'reflect', 'symmetric' or 'edge', got {mode!r}")
    index = np.asarray(index)
    if mode == "edge" or size == 1:
        return np.clip(index, 0, size - 1)
    if mode == "reflect":
        period = 2 * (size - 1)
        i = np.mod(index, period)
        return np.where(i >= size, period - i, i)
    period = 2 * size
    i = np.mod(index, period)
    return np.where(i >= size, period - 1 - i, i)


def read_with_halo(arr: Any, tile: Tile, halo: int, mode: PadMode = "reflect") -> np.ndarray:
    """Read a tile plus ``halo`` pixels on each side, padding beyond the scene like ``np.pad``.

    Only the window of ``arr`` that the padded tile needs is read (the tile plus whatever halo
    lies inside the scene). For a ``(band, H, W)`` array the result equals
    ``np.pad(arr[:], ((0, 0), (halo, halo), (halo, halo)), mode)[:, tile.y0:tile.y1 + 2 * halo,
    tile.x0:tile.x1 + 2 * halo]`` exactly, also when the halo is wider than the scene; a
    ``(H, W)`` mask is padded the same way over its two axes.

    Args:
        arr: ``(band, H, W)`` or ``(H, W)`` array-like supporting numpy slicing (numpy, zarr, dask).
        tile: The tile to read; must lie inside the ``H x W`` scene.
        halo: Pixels added on each side, ``>= 0``.
        mode: Padding convention beyond the scene edge (see :func:`pad_index`).

    Returns:
        ``(band, tile.height + 2 * halo, tile.width + 2 * halo)`` numpy array (no band axis for a
        2-D input), dtype of ``arr``.

    Raises:
        ValueError: ``arr`` is not 2-D or 3-D, ``halo`` is negative or the tile is outside the scene.
    """
    if len(arr.shape) not in (2, 3):
        raise ValueError(f"expected a (band, y, x) or (y, x) array, got shape {tuple(arr.shape)}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    height, width = arr.shape[-2:]
    if not (0 <= tile.y0 < tile.y1 <= height and 0 <= tile.x0 < tile.x1 <= width):
        raise ValueError(f"{tile} lies outside the {height} x {width} scene")
    rows = pad_index(np.arange(tile.y0 - halo, tile.y1 + halo), height, mode)
    cols = pad_index(np.arange(tile.x0 - halo, tile.x1 + halo), width, mode)
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    window = np.asarray(arr[..., r0:r1, c0:c1])
    if np.array_equal(rows, np.arange(r0, r1)) and np.array_equal(cols, np.arange(c0, c1)):
        return window if window.flags.owndata else window.copy()  # inside: nothing to gather
    return window[..., (rows - r0)[:, None], (cols - c0)[None, :]]


def tile_valid(valid: Any, tile: Tile) -> np.ndarray:
    """The nodata mask of one tile.

    Args:
        valid: ``(H, W)`` bool array-like, True where the pixel has data.
        tile: The tile.

    Returns:
        ``(tile.height, tile.width)`` bool numpy array.
    """
    return np.asarray(valid[tile.y0 : tile.y1, tile.x0 : tile.x1], dtype=bool)


def nonempty_tiles(valid: Any, tiles: list[Tile]) -> list[Tile]:
    """The tiles holding at least one valid pixel (the others need no work at all).

    Args:
        valid: ``(H, W)`` bool array-like, True where the pixel has data.
        tiles: Candidate tiles, e.g. from :func:`tile_grid`.

    Returns:
        The subset of ``tiles`` with a valid pixel, in the input order.
    """
    return [t for t in tiles if tile_valid(valid, t).any()]


def _patch_view(block: np.ndarray, patch_size: int) -> np.ndarray:
    """Read-only ``(C, h, w, P, P)`` sliding view of a ``(C, h + P - 1, w + P - 1)`` block."""
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd number, got {patch_size}")
    block = np.asarray(block)
    if block.ndim != 3:
        raise ValueError(f"expected a (channel, y, x) block, got shape {block.shape}")
    if min(block.shape[1:]) < patch_size:
        raise ValueError(
            f"block of spatial shape {block.shape[1:]} is smaller than patch_size {patch_size}"
        )
    return np.lib.stride_tricks.sliding_window_view(block, (patch_size, patch_size), axis=(1, 2))


def extract_patches(block: np.ndarray, patch_size: int) -> np.ndarray:
    """Every pixel's square patch from a block read with halo ``patch_size // 2``.

    Args:
        block: ``(C, h + P - 1, w + P - 1)`` block (e.g. from :func:`read_with_halo` with
            ``halo = P // 2``), ``P = patch_size``.
        patch_size: Odd patch side ``P``, in pixels.

    Returns:
        ``(h * w, C, P, P)`` contiguous array; patch ``i`` is centred on tile pixel
        ``divmod(i, w)`` (row-major), dtype of ``block``.
    """
    view = _patch_view(block, patch_size)
    c, h, w = view.shape[:3]
    patches = np.ascontiguousarray(view.transpose(1, 2, 0, 3, 4))
    return patches.reshape(h * w, c, patch_size, patch_size)


def extract_patches_at(block: np.ndarray, coords: np.ndarray, patch_size: int) -> np.ndarray:
    """The patches of selected pixels only (e.g. the labelled or valid ones).

    Args:
        block: ``(C, h + P - 1, w + P - 1)`` block read with halo ``P // 2``.
        coords: ``(N, 2)`` integer ``(row, col)`` pixel coordinates in the tile frame
            (without halo), e.g. ``np.argwhere(mask)``.
        patch_size: Odd patch side ``P``, in pixels.

    Returns:
        ``(N, C, P, P)`` array, patch ``n`` centred on ``coords[n]``.

    Raises:
        ValueError: ``coords`` is not ``(N, 2)`` or points outside the tile.
    """
    view = _patch_view(block, patch_size)
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must have shape (N, 2), got {coords.shape}")
    h, w = view.shape[1:3]
    if len(coords) and (
        coords.min() < 0 or coords[:, 0].max() >= h or coords[:, 1].max() >= w
    ):
        raise ValueError(f"coords fall outside the {h} x {w} tile")
    return np.ascontiguousarray(view[:, coords[:, 0], coords[:, 1]].transpose(1, 0, 2, 3))
