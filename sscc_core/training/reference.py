"""The single-process reference trainer (the accuracy suite's): ``sscc train``'s training, run in
one process on in-memory arrays.

Every epoch it draws each training tile's views exactly as the Ray Data tasks of
``pipelines.train`` do (:func:`sscc_core.training.views.tile_views`: the tile's pixels in a
random order, two augmented views, all seeded by (seed, epoch, line, tile)), streams them in the
epoch's tile order (:func:`sscc_core.training.tiles.epoch_tile_order`) through the same shuffle
buffer (:func:`sscc_core.training.batches.shuffled_batches`, generator
``epoch_generator(seed, epoch)``) and steps on each batch
(:func:`sscc_core.training.trainer.train_epoch`).
With one thread on both sides, a scene trained here and the same scene trained by ``sscc train``
on one worker end with the same weights (a test pins it), so the suite's figures are those of
the production path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from sscc_core.config import SSCCConfig
from sscc_core.model.checkpoint import Checkpoint
from sscc_core.model.loss import SSCCLoss
from sscc_core.model.network import TwinForward
from sscc_core.model.preprocess import Preprocessor
from sscc_core.training.batches import Views, shuffled_batches
from sscc_core.training.tiles import descriptor_tile, epoch_tile_order, scene_training_tiles
from sscc_core.training.trainer import Training, build_training, clusters_warning, epoch_generator, train_epoch
from sscc_core.training.views import shuffled_views, tile_views

EpochCallback = Callable[[int, dict[str, float]], None]
EpochViews = Callable[[int], Iterable[Views]]  # epoch -> its views, in stream order

log = logging.getLogger(__name__)


def scene_views(cube: Any, valid: Any, labels: Any | None, pre: Preprocessor, cfg: SSCCConfig) -> EpochViews:
    """The epoch views of a scene held in memory, tile after tile in the epoch's order
    (:func:`sscc_core.training.tiles.epoch_tile_order`: the stream ``sscc train`` reads from the
    scene's cube store).

    Args:
        cube: ``(B, H, W)`` array-like.
        valid: ``(H, W)`` bool array-like.
        labels: ``(H, W)`` ground truth (0 = unlabelled), or ``None`` (protocol ``all``).
        pre: The run's pre-processing.
        cfg: Run configuration (``train.protocol``, ``tile.tile_size``, ``augment``, seeds).

    Raises:
        ValueError: No training pixel under ``train.protocol``.
    """
    tiles = [descriptor_tile(t) for t in
             scene_training_tiles(valid, labels, cfg.train.protocol, cfg.tile.tile_size)]

    def views(epoch: int) -> Iterator[Views]:
        for i in epoch_tile_order(len(tiles), cfg.train.seed, epoch):
            yield tile_views(cube, valid, labels, pre, cfg, tiles[i], epoch)

    return views


def patch_views(patches: Tensor, cfg: SSCCConfig) -> EpochViews:
    """The epoch views of in-memory patches (a pixel sample: benchmarks, tests): one chunk, the
    patches in a random order with two augmented views each, seeded by (seed, epoch), drawn when
    the epoch reads it (inside the epoch's time)."""

    def views(epoch: int) -> Iterator[Views]:
        yield shuffled_views(patches, cfg, epoch_generator(cfg.train.seed, epoch, 1))

    return views


def train_reference(
    views: EpochViews,
    in_channels: int,
    cfg: SSCCConfig,
    resume: Checkpoint | None = None,
    on_epoch: EpochCallback | None = None,
    device: torch.device | str = "cpu",
) -> Training:
    """Train SSCC for ``cfg.train.epochs`` epochs on the views of :func:`scene_views` or
    :func:`patch_views`.

    Args:
        views: The views of each epoch.
        in_channels: Input channels (PCA components).
        cfg: Run configuration.
        resume: Continue from this checkpoint's epoch.
        on_epoch: Called after every epoch with ``(epoch, summary)`` (logging, checkpoints).
        device: Where the network trains (``"cuda"`` on a GPU); the views are drawn on the CPU
            as in ``sscc train`` and each batch is moved there by the epoch. The trained model
            stays there.

    A run whose last epoch used fewer than K clusters logs :func:`clusters_warning` (logger
    ``sscc_core.training.reference``).
    """
    training = build_training(cfg, in_channels, resume, device=device)
    twin, loss = TwinForward(training.model), SSCCLoss(cfg.loss)
    while training.epoch < cfg.train.epochs:
        batches = shuffled_batches(views(training.epoch), cfg.train.batch_size, cfg.train.shuffle_buffer,
                                   epoch_generator(cfg.train.seed, training.epoch))
        summary = train_epoch(training, twin, loss, batches, cfg)
        if on_epoch is not None:
            on_epoch(training.epoch, summary)
    if training.history:
        warning = clusters_warning(training.history[-1], cfg.model.n_clusters)
        if warning:
            log.warning(warning)
    return training

