"""A tile's training views: its training pixels' patches (equal to the whole-scene patches of the
same pixels) in the random order and under the augmentation of (seed, epoch, tile), new every
epoch."""

from __future__ import annotations

import numpy as np
import torch

from sscc_core.config import load_config
from sscc_core.io.tiling import tile_grid
from sscc_core.model.augment import two_views
from sscc_core.model.patches import gather_patches
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.training.tiles import tile_stream
from sscc_core.training.trainer import epoch_generator, training_mask
from sscc_core.training.views import tile_patches, tile_views


def test_tile_views_are_the_seeded_views_of_the_whole_scene_patches() -> None:
    rng = np.random.default_rng(2)
    cube = rng.normal(100, 10, (6, 18, 22)).astype(np.float32)
    valid = np.ones((18, 22), bool)
    valid[2:5, 3:9] = False
    labels = np.zeros((18, 22), np.int16)
    labels[0:7, 0:12] = 1 + rng.integers(0, 3, (7, 12))  # tiles (0, 0) and (0, 1) only
    cfg = load_config(overrides={"preprocess.n_components": 4, "preprocess.patch_size": 5})
    pre = fit_preprocessor(cube, valid, cfg.preprocess)
    mask = training_mask(valid, labels, "labelled")
    whole, _ = gather_patches(cube, valid, mask, pre, 5, tile_size=8)
    start = 0
    for tile in tile_grid(18, 22, 8):
        got = tile_patches(cube, valid, labels, pre, cfg, tile)
        n = int(mask[tile.y0 : tile.y1, tile.x0 : tile.x1].sum())
        assert got.shape == (n, 4, 5, 5)
        np.testing.assert_array_equal(got, whole[start : start + n])
        start += n
        if not n:  # training_tiles never lists such a tile
            continue
        va, vb = tile_views(cube, valid, labels, pre, cfg, tile, epoch=3)
        gen = epoch_generator(cfg.train.seed, 3, tile_stream(tile))
        order = torch.randperm(n, generator=gen)
        ea, eb = two_views(torch.from_numpy(got)[order], cfg.augment, gen)
        assert torch.equal(va, ea) and torch.equal(vb, eb) and not torch.equal(va, vb)
        if n > 8:  # the tile's pixels come in a random order, not row-major
            assert not torch.equal(order, torch.arange(n))
        assert not torch.equal(tile_views(cube, valid, labels, pre, cfg, tile, epoch=4)[0], va)
    assert start == len(whole) == mask.sum()
