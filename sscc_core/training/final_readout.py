"""The step after training: fit what ``cfg.postprocess`` needs (BatchNorm recalibration, the
k-means or spectral readout, or the label-free choice among them) on a seeded sample of the
training pixels of the run's cube stores (one or more flight lines), and put it into the run's
checkpoint.

The sample is drawn from :func:`sscc_core.training.tiles.readout_tiles` of the training tiles of
all lines, and the fit is :func:`sscc_core.training.readout_fit.fit_lines_readout` (with one line,
:func:`sscc_core.training.readout_fit.fit_readout`, as in the accuracy harness).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zarr

from sscc_core.config import SSCCConfig
from sscc_core.model.checkpoint import Checkpoint
from sscc_core.model.network import SSCCNet
from sscc_core.model.preprocess import Preprocessor
from sscc_core.training.readout_fit import LineArrays, fit_lines_readout
from sscc_core.training.tiles import descriptor_tile, readout_tiles
from sscc_core.training.trainer import tile_training_mask


def readout_needs_fit(cfg: SSCCConfig) -> bool:
    """Whether ``cfg.postprocess`` asks for anything fitted after training (a readout other than
    the cluster head, or BatchNorm recalibration)."""
    return cfg.postprocess.readout != "head" or cfg.postprocess.bn_recalibrate


def fit_final_readout(
    ckpt: Checkpoint,
    stores: Sequence[str],
    tiles: list[dict[str, int]],
    log: Callable[[dict[str, Any]], None] | None = None,
) -> Checkpoint:
    """Fit the readout of a trained checkpoint from its cube stores.

    Args:
        ckpt: The checkpoint training ended with (weights and pre-processing are read from it).
        stores: Cube stores trained on (the run's flight lines, in order).
        tiles: :func:`sscc_core.training.tiles.lines_training_tiles` descriptors (the tiles
            holding training pixels, ``line`` indexing ``stores``); the sample is drawn from
            :func:`sscc_core.training.tiles.readout_tiles` of them, across lines.
        log: Called with one row per candidate of a ``readout: auto`` choice.

    Returns:
        ``ckpt`` with the recalibrated weights, the fitted ``readout_state`` and
        ``extra["readout"]`` (``n_pixels`` of the sample, fitting ``seconds``). With
        ``postprocess.readout: auto`` its config holds the chosen readout, smoothing and
        spectra scale, and ``extra["selection"]`` the label-free choice with every candidate's
        criterion value.
    """
    start = time.perf_counter()
    cfg = ckpt.config
    post = cfg.postprocess
    chosen = readout_tiles(tiles, max(post.readout_sample, post.select_sample or 0), cfg.train.seed)
    lines = []
    for index in sorted({int(t["line"]) for t in chosen}):
        group = zarr.open_group(stores[index], mode="r")
        labels = group["labels"] if "labels" in group else None
        mask = np.zeros(group["valid"].shape, dtype=bool)
        for descriptor in (t for t in chosen if t["line"] == index):
            tile = descriptor_tile(descriptor)
            mask[tile.y0 : tile.y1, tile.x0 : tile.x1] = tile_training_mask(
                group["valid"], labels, tile, cfg.train.protocol)
        lines.append(LineArrays(group["reflectance"], group["valid"], mask))
    model = SSCCNet(cfg.model, ckpt.in_channels, cfg.preprocess.patch_size)
    model.load_state_dict(ckpt.model_state)
    pre = Preprocessor.from_state(ckpt.preprocess_state)
    readout = fit_lines_readout(model, pre, lines, cfg, tile_size=cfg.tile.tile_size, log=log)
    n_pixels = min(sum(int(line.train_mask.sum()) for line in lines), cfg.postprocess.readout_sample)
    extra = {**(ckpt.extra or {}),
             "readout": {"n_pixels": n_pixels, "seconds": time.perf_counter() - start}}
    if readout.selection is not None:
        extra["selection"] = readout.selection
        post = dataclasses.replace(cfg.postprocess, readout=readout.kind, smooth_sigma=readout.smooth_sigma,
                                   spectra_scale=readout.selection["choice"]["spectra_scale"])
        cfg = dataclasses.replace(cfg, postprocess=post)
    return dataclasses.replace(ckpt, config=cfg, model_state=model.state_dict(),
                               readout_state=readout.state, extra=extra)
