"""Which tiles of a run's cube stores training reads: the tiles holding training pixels, the
random stream of each, and the subset the readout fit after training samples from.

A run trains on one or more flight lines, each a cube store on its own grid. A tile is passed
around as a plain descriptor dict (``line``, the index of its line in the run's line order;
``row``, ``col``, ``y0``, ``y1``, ``x0``, ``x1`` on that line's grid; ``n_pixels``) so that it
can travel as a Ray Dataset row; :func:`descriptor_tile` turns one back into a
:class:`sscc_core.io.tiling.Tile`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from sscc_core.io.tiling import Tile, tile_grid
from sscc_core.training.trainer import tile_training_mask

READOUT_TILE_FACTOR = 4  # the readout's tiles hold at least this many times its sample size
TILE_FIELDS = ("row", "col", "y0", "y1", "x0", "x1")
TILE_ORDER_STREAM = 2**40 - 1  # the seed-sequence word of the tile order (tile streams use others)


def descriptor_tile(descriptor: Mapping[str, Any]) -> Tile:
    """The :class:`Tile` of a descriptor (its ``row``, ``col``, ``y0``, ``y1``, ``x0``, ``x1``)."""
    return Tile(*(int(descriptor[k]) for k in TILE_FIELDS))


def epoch_tile_order(n_tiles: int, seed: int, epoch: int) -> np.ndarray:
    """The order training reads its tiles in during ``epoch``: a permutation of
    ``range(n_tiles)`` seeded by (run seed, epoch), new every epoch.

    The batches are drawn from a bounded shuffle buffer over the tiles' views, so tiles read in
    grid order would fill each batch from a strip of the mosaic; in this order consecutive tiles
    come from anywhere in the run's lines.
    """
    return np.random.default_rng([seed, epoch, TILE_ORDER_STREAM]).permutation(n_tiles)


def tile_stream(tile: Tile, line: int = 0) -> int:
    """The random stream id of a tile of line ``line`` (distinct for every tile of every line
    of grids up to 2**20 tiles wide and tall; line 0's are those of a one-line run)."""
    return 1 + (tile.row << 20) + tile.col + (line << 40)


def scene_training_tiles(valid: Any, labels: Any | None, protocol: str, tile_size: int,
                         line: int = 0) -> list[dict[str, int]]:
    """Descriptors of the tiles of a scene holding at least one training pixel, each with its
    count of training pixels (``n_pixels``), in grid order.

    Args:
        valid: (H, W) bool array-like (numpy, zarr).
        labels: (H, W) ground truth array-like (0 = unlabelled), or ``None``.
        protocol: ``train.protocol``: ``"labelled"`` (labelled valid pixels) or ``"all"``.
        tile_size: Side of the tiles, in pixels.
        line: The scene's index in the run's line order (the descriptors' ``line``).

    Raises:
        ValueError: Protocol ``labelled`` without labels, or no training pixel.
    """
    if protocol == "labelled" and labels is None:
        raise ValueError("protocol 'labelled' needs a 'labels' variable; use train.protocol=all")
    tiles = []
    for t in tile_grid(*valid.shape, tile_size):
        n_pixels = int(tile_training_mask(valid, labels, t, protocol).sum())
        if n_pixels:
            tiles.append({"line": line, "row": t.row, "col": t.col, "y0": t.y0, "y1": t.y1,
                          "x0": t.x0, "x1": t.x1, "n_pixels": n_pixels})
    if not tiles:
        raise ValueError(f"no training pixel under protocol {protocol!r}")
    return tiles


def training_tiles(store: str, protocol: str, tile_size: int, line: int = 0) -> list[dict[str, int]]:
    """:func:`scene_training_tiles` of a cube store (mask reads only).

    Args:
        store: Canonical cube store (local path or URL zarr opens).

    Raises:
        ValueError: As :func:`scene_training_tiles`, the store named.
    """
    group = zarr.open_group(store, mode="r")
    try:
        return scene_training_tiles(group["valid"], group["labels"] if "labels" in group else None,
                                    protocol, tile_size, line)
    except ValueError as exc:
        raise ValueError(f"{store}: {exc}") from None


def lines_training_tiles(stores: Sequence[str], protocol: str, tile_size: int) -> list[dict[str, int]]:
    """:func:`training_tiles` of every line, line after line (``line`` = index in ``stores``).

    Raises:
        ValueError: As :func:`training_tiles`, for the first line that fails (named).
    """
    return [t for line, store in enumerate(stores) for t in training_tiles(store, protocol, tile_size, line)]


def readout_tiles(tiles: list[dict[str, int]], max_pixels: int, seed: int) -> list[dict[str, int]]:
    """A seeded random subset of the training tiles (of all lines), in line and grid order,
    holding at least ``READOUT_TILE_FACTOR * max_pixels`` training pixels (all tiles when they
    hold fewer).

    The readout fit computes its vectors over every tile its sample touches, so drawing the
    sample from these tiles bounds that pass by the sample size instead of the mosaic size.
    A descriptor without ``line`` is of line 0.
    """
    kept, total = [], 0
    for i in np.random.default_rng(seed).permutation(len(tiles)):
        if total >= READOUT_TILE_FACTOR * max_pixels:
            break
        kept.append(tiles[i])
        total += tiles[i]["n_pixels"]
    return sorted(kept, key=lambda t: (t.get("line", 0), t["row"], t["col"]))
