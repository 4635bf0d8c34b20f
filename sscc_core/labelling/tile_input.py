"""The CPU half of labelling a tile: read its input window with every halo it needs and map it
to standardised PCA features, so the network half (:meth:`sscc_core.labelling.inference.Labeller.label_inputs`)
can run in another process or on a GPU.

Windows, innermost first: the ``tile``; the ``window`` the labels are computed over (the tile
grown by the mode filter's reach); the ``grown`` window the readout's input is computed over (the
window grown by the smoothing's reach); and the features read with the model's patch ``halo``
around ``grown`` (reflect-padded beyond the scene). All growths are clipped to the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sscc_core.io.tiling import Tile, tile_valid
from sscc_core.model.patches import tile_features
from sscc_core.model.preprocess import Preprocessor


@dataclass(frozen=True)
class TileInput:
    """One tile's network input, read and pre-processed.

    Attributes:
        tile: The tile to label.
        window: The tile grown by the mode filter's reach (labels are computed over it).
        grown: ``window`` grown by the smoothing's reach (the readout input is computed over it).
        mask: (gh, gw) bool validity of ``grown``.
        feats: (C, gh + 2 halo, gw + 2 halo) float32 standardised PCA features of ``grown`` read
            with the patch halo (0 at nodata); ``None`` when ``grown`` has no valid pixel.
    """

    tile: Tile
    window: Tile
    grown: Tile
    mask: np.ndarray
    feats: np.ndarray | None


@dataclass(frozen=True)
class TileReader:
    """Reads tiles for a model: its pre-processing and the reaches of its halo and post-processing.

    Attributes:
        pre: The pre-processing fitted at training time.
        halo: The model's patch halo, ``patch_size // 2`` pixels.
        smooth_reach: Pixels the readout's smoothing reaches (0: off).
        mode_reach: Pixels the mode filter reaches (0: off).
    """

    pre: Preprocessor
    halo: int
    smooth_reach: int
    mode_reach: int

    @property
    def context(self) -> int:
        """Pixels around a tile its labels depend on (the input window a tile's fingerprint
        must cover)."""
        return self.halo + self.smooth_reach + self.mode_reach

    def read(self, cube: Any, valid: Any, tile: Tile) -> TileInput:
        """Read and pre-process what labelling ``tile`` needs.

        Args:
            cube: (B, H, W) array-like (numpy, zarr, or a :class:`~sscc_core.labelling.chunk_cache.ChunkCache`).
            valid: (H, W) bool array-like.
            tile: The tile to label.

        Raises:
            ValueError: The cube's band count is not the model's.
        """
        window = tile.grown(self.mode_reach, int(cube.shape[-2]), int(cube.shape[-1]))
        return replace(self.read_window(cube, valid, window), tile=tile)

    def read_window(self, cube: Any, valid: Any, window: Tile) -> TileInput:
        """Read and pre-process ``window`` grown by the smoothing's reach (no mode filter
        growth: the input's ``tile`` is ``window``).

        Raises:
            ValueError: The cube's band count is not the model's.
        """
        self.pre.check_bands(int(cube.shape[0]))
        grown = window.grown(self.smooth_reach, int(cube.shape[-2]), int(cube.shape[-1]))
        mask = tile_valid(valid, grown)
        feats = tile_features(cube, valid, grown, self.pre, self.halo) if mask.any() else None
        return TileInput(window, window, grown, mask, feats)
