"""Patches of pixels read tile by tile: a tile's standardised PCA features with their halo, and
the patches of any set of pixels gathered tile by tile (training, readout fitting, labelling).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sscc_core.model.preprocess import Preprocessor
from sscc_core.io.tiling import Tile, extract_patches_at, read_with_halo, tile_grid, tile_valid


def tile_features(cube: Any, valid: Any, tile: Tile, pre: Preprocessor, halo: int) -> np.ndarray:
    """Standardised PCA features of one tile read with its halo.

    Args:
        cube: (B, H, W) array-like (numpy or zarr).
        valid: (H, W) bool array-like.
        tile: The tile.
        pre: Fitted pre-processing.
        halo: Pixels of context on each side (``patch_size // 2``).

    Returns:
        (n_components, h + 2 halo, w + 2 halo) float32; nodata pixels are 0.
    """
    block = read_with_halo(cube, tile, halo)
    mask = read_with_halo(valid, tile, halo).astype(bool)
    return pre.transform(block, mask)


def gather_patches(
    cube: Any, valid: Any, mask: np.ndarray, pre: Preprocessor, patch_size: int, tile_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Patches of the pixels in ``mask``, read tile by tile with a halo.

    Args:
        cube: (B, H, W) array-like.
        valid: (H, W) bool array-like.
        mask: (H, W) bool, the pixels wanted (e.g. :func:`sscc_core.training.trainer.training_mask`).
        pre: Fitted pre-processing.
        patch_size: Odd patch side P.
        tile_size: Tile side used to read the cube.

    Returns:
        ``(patches, coords)``: (N, C, P, P) float32 and (N, 2) int scene (row, col), row-major
        within tiles, tiles row-major.
    """
    halo = patch_size // 2
    patches, coords = [], []
    for tile in tile_grid(mask.shape[0], mask.shape[1], tile_size):
        local = np.argwhere(tile_valid(mask, tile))
        if not len(local):
            continue
        feats = tile_features(cube, valid, tile, pre, halo)
        patches.append(extract_patches_at(feats, local, patch_size))
        coords.append(local + [tile.y0, tile.x0])
    n_channels = pre.n_components
    if not patches:
        return np.zeros((0, n_channels, patch_size, patch_size), np.float32), np.zeros((0, 2), int)
    return np.concatenate(patches), np.concatenate(coords)
