"""A read-only view of a Zarr array that decodes each spatial chunk once while a reader sweeps
neighbouring tiles (:class:`ChunkCache`).

Reading a tile with its halo touches up to 3 x 3 chunks of which it uses a few rows; tiles read
in stripe order (:func:`sscc_core.labelling.plan.read_segments`) share those chunks with their
neighbours, so a cache holding one stripe's band of chunk rows decodes each chunk about once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np

CHUNK_CACHE_BYTES = 768 * 2**20  # per reader and array: bound of the decoded-chunk cache


def cache_capacity(chunks: tuple[int, int], tile_size: int, stripe_tiles: int = 1) -> int:
    """Chunks a sweep of ``stripe_tiles``-wide stripes needs to decode each chunk once: the
    chunk rows of one tile row plus one above and below, over the stripe's chunk columns plus
    one each side.

    Args:
        chunks: Spatial chunk shape ``(cy, cx)``, pixels.
        tile_size: Tile side, pixels.
        stripe_tiles: Tiles across a stripe (1: a single tile and its neighbours).
    """
    cy, cx = chunks
    return (tile_size // cy + 2) * (stripe_tiles * tile_size // cx + 2)


class ChunkCache:
    """Read-only view of a Zarr array that decodes each spatial chunk once and keeps the most
    recently used ones, so the fingerprint read and the label read of a tile, and the overlapping
    halo windows of neighbouring tiles of one reader, do not decode the same chunks again.

    Only ``arr[..., y0:y1, x0:x1]`` / ``arr[y0:y1, x0:x1]`` reads (what the tiling helpers do) go
    through the cache; any other key is passed to the array. Values are identical to the array's.

    Args:
        array: ``(..., H, W)`` Zarr array (all leading axes in one chunk, as in the cube store).
        tile_size: Tile side in pixels.
        stripe_tiles: Width in tiles of the stripes the reader sweeps; the cache holds
            :func:`cache_capacity` chunks, at most ``CHUNK_CACHE_BYTES``.
    """

    def __init__(self, array: Any, tile_size: int, stripe_tiles: int = 1) -> None:
        self.array, self.shape, self.dtype = array, tuple(array.shape), array.dtype
        self.cy, self.cx = array.chunks[-2:]
        lead = math.prod(self.shape[:-2])
        chunk_bytes = lead * self.cy * self.cx * np.dtype(self.dtype).itemsize
        wanted = cache_capacity((self.cy, self.cx), tile_size, stripe_tiles)
        self.capacity = max(1, min(wanted, CHUNK_CACHE_BYTES // max(chunk_bytes, 1)))
        self.chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.decoded = 0  # chunks decoded so far (a chunk evicted and read again counts twice)

    def _chunk(self, i: int, j: int) -> np.ndarray:
        """Decoded spatial chunk ``(i, j)``, ``(..., cy, cx)`` (smaller at the scene edge)."""
        if (i, j) in self.chunks:
            self.chunks.move_to_end((i, j))
            return self.chunks[(i, j)]
        block = np.asarray(self.array[..., i * self.cy : (i + 1) * self.cy,
                                      j * self.cx : (j + 1) * self.cx])
        self.decoded += 1
        self.chunks[(i, j)] = block
        if len(self.chunks) > self.capacity:
            self.chunks.popitem(last=False)
        return block

    def __getitem__(self, key: Any) -> np.ndarray:
        parts = key if isinstance(key, tuple) else (key,)
        parts = parts[1:] if parts and parts[0] is Ellipsis else parts
        plain = (len(parts) == 2 and all(isinstance(k, slice) and k.step in (None, 1) for k in parts)
                 and (len(self.shape) == 2 or key[0] is Ellipsis))
        if not plain:
            return np.asarray(self.array[key])
        (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(parts, self.shape[-2:]))
        out = np.empty((*self.shape[:-2], max(y1 - y0, 0), max(x1 - x0, 0)), dtype=self.dtype)
        for i in range(y0 // self.cy, (y1 - 1) // self.cy + 1 if y1 > y0 else y0 // self.cy):
            for j in range(x0 // self.cx, (x1 - 1) // self.cx + 1 if x1 > x0 else x0 // self.cx):
                block = self._chunk(i, j)
                ya, yb = max(y0, i * self.cy), min(y1, (i + 1) * self.cy)
                xa, xb = max(x0, j * self.cx), min(x1, (j + 1) * self.cx)
                out[..., ya - y0 : yb - y0, xa - x0 : xb - x0] = block[
                    ..., ya - i * self.cy : yb - i * self.cy, xa - j * self.cx : xb - j * self.cx]
        return out
