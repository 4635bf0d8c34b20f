"""The training samples of one tile: the standardised PCA patches of its training pixels, in a
random order, and two augmented views of each, seeded by (run seed, epoch, line, tile) so that a
tile's views depend on nothing else, whichever process draws them (the Ray Data tasks of
``pipelines.train``).

The random order matters: the training batches are drawn from a bounded shuffle buffer over the
stream of tiles, and a tile's pixels in row-major order would fill each batch from a few image
rows (a strip of one field or two), whose negatives and cluster balance are not those of the
scene."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sscc_core.config import SSCCConfig
from sscc_core.io.tiling import Tile, extract_patches_at
from sscc_core.model.augment import two_views
from sscc_core.model.patches import tile_features
from sscc_core.model.preprocess import Preprocessor
from sscc_core.training.tiles import tile_stream
from sscc_core.training.trainer import epoch_generator, tile_training_mask


def tile_patches(cube: Any, valid: Any, labels: Any | None, pre: Preprocessor, cfg: SSCCConfig,
                 tile: Tile) -> np.ndarray:
    """The tile's training pixels' patches, read with the tile's halo.

    Args:
        cube: ``(B, H, W)`` array-like (``zarr.Array``, numpy).
        valid: ``(H, W)`` bool array-like.
        labels: ``(H, W)`` ground truth (0 = unlabelled), or ``None`` (protocol ``all``).
        pre: The run's pre-processing.
        cfg: Run configuration (``preprocess.patch_size``, ``train.protocol``).
        tile: The tile.

    Returns:
        ``(N, C, P, P)`` float32 standardised PCA patches of the N training pixels, row-major.
    """
    p = cfg.preprocess.patch_size
    coords = np.argwhere(tile_training_mask(valid, labels, tile, cfg.train.protocol))
    if not len(coords):
        return np.zeros((0, pre.n_components, p, p), np.float32)
    return extract_patches_at(tile_features(cube, valid, tile, pre, p // 2), coords, p)


def shuffled_views(patches: torch.Tensor, cfg: SSCCConfig, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The patches in the random order ``torch.randperm(N, generator=gen)``, then two augmented
    views of each (:func:`sscc_core.model.augment.two_views`, same generator).

    Args:
        patches: ``(N, C, P, P)`` patches.
        cfg: Run configuration (``augment``).
        gen: The tile's generator, consumed by the order first.

    Returns:
        ``(view_a, view_b)``, each ``(N, C, P, P)``, row i the views of ``patches[order[i]]``.
    """
    order = torch.randperm(len(patches), generator=gen)
    return two_views(patches[order], cfg.augment, gen)


def tile_views(cube: Any, valid: Any, labels: Any | None, pre: Preprocessor, cfg: SSCCConfig,
               tile: Tile, epoch: int, line: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`shuffled_views` of :func:`tile_patches`, drawn with the generator of
    ``(train.seed, epoch, tile_stream(tile, line))``.

    Args:
        line: Index of the tile's flight line in the run (0 for a one-line run), so that the
            same tile position on two lines draws different views.

    Returns:
        ``(view_a, view_b)``, each ``(N, C, P, P)``.
    """
    patches = torch.from_numpy(tile_patches(cube, valid, labels, pre, cfg, tile))
    return shuffled_views(patches, cfg, epoch_generator(cfg.train.seed, epoch, tile_stream(tile, line)))
