"""Ray entry point: data-parallel SSCC training with Ray Data tiles and Ray Train (DDP).

A run trains on one or more flight lines (``--store`` takes several stores, globs or manifests,
:func:`sscc_core.io.lines.resolve_lines`), each on its own grid: there is no common mosaic.
Driver: fit the pre-processing (streaming pass over the valid pixels of all lines together, or a
seeded sample across them) or read it from the run's latest checkpoint, list the tiles holding
training pixels on every line, and build a Ray Dataset of the slots of each epoch's tile order
(a seeded permutation, new every epoch) whose ``map_batches`` tasks reopen the tile's line
store, read each tile with its halo, extract standardised PCA patches of its training pixels in
a random order and draw two augmented views of each (seeded by run seed, epoch, line and tile;
the epoch comes from a small clock actor, since Ray Data re-executes the dataset every epoch).
Workers: a ``TorchTrainer`` of N workers trains one objective whatever N is. ``train.batch_size``
is the global batch; rank 0 alone reads the dataset (seeded shuffle buffer, ``drop_last``) and
scatters slice r of every global batch to rank r, so the global batches do not depend on N. The
SSCC loss gathers the cluster outputs of all ranks with gradients and BatchNorm is synchronised
(:class:`sscc_core.model.loss.SSCCLoss`, :class:`sscc_core.model.network.SyncBatchNorm2d`); DDP averages the
gradients. Rank 0 posts every epoch's summary (loss parts, clusters used, assignment entropy) to
the clock, which the driver logs as it arrives, and reports an SSCC checkpoint (with the
pre-processing inside) every epoch; a relaunch with the same run name and storage path resumes
from the latest one, and takes its pre-processing from it.
After training the driver takes the checkpoint Ray Train reports (``Result.checkpoint``), fits
what ``cfg.postprocess`` needs (BatchNorm recalibration, the k-means or spectral readout) on a
sample of the training pixels of all lines as a logged post-step, and writes the product,
``final/``, once.
The reusable steps (tile planning, size checks, the run's pre-processing, the readout fit) are
in :mod:`sscc_core.training`; this module maps them over Ray.

    sscc train --store cube.zarr --run-name ip --storage-path runs/ --set train.epochs=20
    sscc train --store lines/fl01.zarr lines/fl02.zarr --run-name two --storage-path runs/
    sscc train --store 's3://bucket/lines/fl*.zarr' --run-name all-lines --storage-path s3://bucket/runs
    sscc train --store lines.txt --run-name listed   # a manifest: one store path or URL per line
    ray job submit --working-dir . -- python -m pipelines.train --store ... --run-name ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from pipelines.common import (
    add_logging_args, ensure_ray, environment_error, failing_output, log_event, run_stage,
    setup_logging,
)
from pipelines.options import DEFAULT_CONFIG, add_config_args, load_cli_config
from sscc_core import storage
from sscc_core.config import SSCCConfig, dump_config, from_dict, to_dict
from sscc_core.io.lines import resolve_lines
from sscc_core.io.store import cube_identity
from sscc_core.model.checkpoint import (
    Checkpoint, CheckpointError, RunRecord, check_run_record, fallback_warning, load_checkpoint,
    newest_loadable, run_checkpoints, save_checkpoint,
)
from sscc_core.model.preprocess import Preprocessor
from sscc_core.training.final_readout import fit_final_readout, readout_needs_fit
from sscc_core.training.run import final_checkpoint, finished_run, run_preprocessing
from sscc_core.training.sizing import check_scaling, check_training_size
from sscc_core.training.tiles import TILE_FIELDS, descriptor_tile, epoch_tile_order, lines_training_tiles
from sscc_core.training import views
from sscc_core.training.batches import shuffled_batches
from sscc_core.training.trainer import (
    TrainingDiverged, build_training, clusters_warning, epoch_generator, progress_line, train_epoch,
)

log = logging.getLogger("sscc.train")
RANK_SYMMETRIC_ERRORS = (TrainingDiverged, CheckpointError)


class EpochClock:
    """A tiny Ray actor holding the current epoch, read by the data workers, and the epoch
    summaries and warnings rank 0 posts, read by the driver.

    Ray Data re-executes the dataset every epoch; the augmenting workers ask the clock which
    epoch they are producing, so views are new every epoch and identical for a rerun with the
    same seed. Rank 0 advances it only after every rank has drained the previous epoch.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.posted: list[dict[str, Any]] = []
        self.failure: Exception | None = None

    def set(self, epoch: int) -> None:
        """Start producing ``epoch``."""
        self.epoch = epoch

    def get(self) -> int:
        """The epoch being produced."""
        return self.epoch

    def post(self, summary: dict[str, Any]) -> None:
        """Record a finished epoch's summary, or ``{"warning": message}`` (rank 0)."""
        self.posted.append(summary)

    def since(self, n: int) -> list[dict[str, Any]]:
        """The summaries and warnings posted after the first ``n``."""
        return self.posted[n:]

    def fail(self, error: Exception) -> None:
        """Record the user error the run stopped with (rank 0)."""
        self.failure = error

    def failed(self) -> Exception | None:
        """The recorded user error, or ``None``."""
        return self.failure


def warn(message: str, **fields: Any) -> None:
    """A warning of the run: a ``warning`` record in the log (with ``fields``) and a
    ``warning: ...`` line on stdout, beside the progress lines."""
    log.warning(message, extra={"fields": fields} if fields else None)
    print(f"warning: {message}", flush=True)


class EpochMonitor:
    """Driver side: while ``fit()`` runs, log every epoch summary posted to the clock as a JSON
    event (``epoch``) and a progress line on stdout (epoch k/N, loss, clusters, elapsed, ETA),
    and every warning as a ``warning:`` line and a warning event.

    Args:
        clock: The :class:`EpochClock` actor.
        n_clusters: K, for the progress line.
        epochs: ``train.epochs``, for the progress line.
        interval: Seconds between polls.
    """

    def __init__(self, clock: Any, n_clusters: int, epochs: int, interval: float = 1.0) -> None:
        self.clock = clock
        self.n_clusters = n_clusters
        self.epochs = epochs
        self.interval = interval
        self.seen = 0
        self.epochs_seen = 0
        self.start = time.perf_counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sscc-epoch-monitor", daemon=True)

    def __enter__(self) -> "EpochMonitor":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.drain()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.drain()

    def drain(self) -> None:
        """Log the summaries posted since the last call."""
        import ray

        for summary in ray.get(self.clock.since.remote(self.seen)):
            self.seen += 1
            if "warning" in summary:
                warn(summary["warning"])
                continue
            self.epochs_seen += 1
            log_event(log, "epoch", **summary)
            print(progress_line(summary, self.n_clusters, self.epochs,
                                time.perf_counter() - self.start, self.epochs_seen), flush=True)


class TilePatches:
    """Ray Data UDF: tile descriptors of one line -> two augmented views of each training
    pixel's patch.

    Each worker reopens the line's Zarr store itself (nothing large crosses the object store);
    the views of a tile are
    :func:`sscc_core.training.views.tile_views`, which depend on nothing but the run seed, the
    epoch, the line and the tile.

    Args:
        store: The line's cube store.
        pre_state: The run's pre-processing (:meth:`Preprocessor.to_state`).
        cfg: The run configuration (:func:`sscc_core.config.to_dict`).
        line: The line's index in the run (its tiles' random streams).
    """

    def __init__(self, store: str, pre_state: dict[str, Any], cfg: dict[str, Any], line: int = 0) -> None:
        import zarr

        group = zarr.open_group(store, mode="r")
        self.cube = group["reflectance"]
        self.valid = group["valid"]
        self.labels = group["labels"] if "labels" in group else None
        self.pre = Preprocessor.from_state(pre_state)
        self.cfg = from_dict(SSCCConfig, cfg)
        self.line = line

    def __call__(self, batch: dict[str, np.ndarray], epoch: int) -> dict[str, np.ndarray]:
        """Map tile descriptors (columns row, col, y0, y1, x0, x1) to rows ``view_a``, ``view_b``
        (:func:`sscc_core.training.views.tile_views` of each tile in ``epoch``)."""
        views_a, views_b = [], []
        for i in range(len(batch["row"])):
            tile = descriptor_tile({k: v[i] for k, v in batch.items()})
            va, vb = views.tile_views(self.cube, self.valid, self.labels, self.pre, self.cfg, tile, epoch,
                                      self.line)
            views_a.append(va.numpy())
            views_b.append(vb.numpy())
        return {"view_a": np.concatenate(views_a), "view_b": np.concatenate(views_b)}


_WORKER_UDFS: dict[tuple[tuple[str, ...], str], dict[int, TilePatches]] = {}
_WORKER_ORDER: dict[tuple[int, int, int], np.ndarray] = {}


def tile_views(
    batch: dict[str, np.ndarray], stores: list[str], pre_state: dict[str, Any], cfg: dict[str, Any],
    epoch: int,
) -> dict[str, np.ndarray]:
    """A batch of tiles (column ``line`` indexing ``stores``) through the :class:`TilePatches`
    of each tile's line in ``epoch``, built once per line and worker process; rows keep their
    order.

    Plain tasks run in Ray's pooled worker processes, which stay warm across epochs; an actor
    pool would be started anew every time Ray Data re-executes the dataset (every epoch).
    """
    key = (tuple(stores), json.dumps(cfg, sort_keys=True))
    if key not in _WORKER_UDFS:
        _WORKER_UDFS.clear()
        _WORKER_UDFS[key] = {}
    udfs = _WORKER_UDFS[key]
    lines = batch["line"]
    cuts = [0, *(np.flatnonzero(np.diff(lines)) + 1), len(lines)]  # runs of one line
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        line = int(lines[a])
        if line not in udfs:
            udfs[line] = TilePatches(stores[line], pre_state, cfg, line)
        parts.append(udfs[line]({k: v[a:b] for k, v in batch.items()}, epoch))
    return {k: np.concatenate([part[k] for part in parts]) for k in ("view_a", "view_b")}


def ordered_tile_views(
    batch: dict[str, np.ndarray], tiles: np.ndarray, stores: list[str], pre_state: dict[str, Any],
    cfg: dict[str, Any], clock: Any,
) -> dict[str, np.ndarray]:
    """Ray Data task: slots of the epoch's tile order (column ``slot`` of :func:`tile_slots`) ->
    :func:`tile_views` of the tiles in those slots, in slot order.

    The dataset lists slots, not tiles, so that Ray Data re-executing it every epoch reads the
    tiles in :func:`sscc_core.training.tiles.epoch_tile_order` of that epoch. The epoch comes
    from the clock, read once per task.

    Args:
        tiles: ``(n_tiles, 7)`` int64 descriptors, columns ``line`` then :data:`TILE_FIELDS`.
        clock: The :class:`EpochClock` actor.
    """
    import ray

    epoch = int(ray.get(clock.get.remote()))
    key = (len(tiles), int(cfg["train"]["seed"]), epoch)
    if key not in _WORKER_ORDER:
        _WORKER_ORDER.clear()
        _WORKER_ORDER[key] = epoch_tile_order(len(tiles), key[1], epoch)
    rows = tiles[_WORKER_ORDER[key][batch["slot"]]]
    descriptors = {name: rows[:, i] for i, name in enumerate(("line", *TILE_FIELDS))}
    return tile_views(descriptors, stores, pre_state, cfg, epoch)


def tile_slots(n_tiles: int) -> Any:
    """Ray Dataset of the slots ``0 .. n_tiles - 1`` (int64 column ``slot``), in order.

    The blocks (at most 200) are made on the driver by ``ray.data.from_items``, with no Ray
    task: ``ray.data.range``'s read tasks, like ``from_arrow``'s metadata tasks, each need a
    whole CPU, and beside training workers that hold all but a fraction of the cluster's CPUs
    (2 workers at 0.75 CPU on 2 CPUs) they never ran and training waited for ever.
    """
    import ray

    return ray.data.from_items([{"slot": slot} for slot in range(n_tiles)],
                               override_num_blocks=min(n_tiles, 200))


def tile_table(tiles: list[dict[str, int]]) -> np.ndarray:
    """``(n_tiles, 7)`` int64 array of descriptors (``line``, then :data:`TILE_FIELDS`) for
    :func:`ordered_tile_views`."""
    return np.array([[t["line"], *(t[k] for k in TILE_FIELDS)] for t in tiles], dtype=np.int64)


def inject_failure(config: dict[str, Any], epoch: int, rank: int) -> None:
    """Fault injection for tests and drills: kill this worker process once, mid-epoch.

    Called after the first step of every epoch; acts at epoch index ``fail_at_epoch``.

    A marker file in the run directory makes the failure happen only once, so the restarted
    worker group carries on from the last checkpoint.
    """
    marker = config.get("fail_marker")
    if marker and rank == 0 and epoch == config.get("fail_at_epoch") and not storage.exists(marker):
        storage.write_bytes(marker, f"worker killed during epoch {epoch}\n".encode())
        log.warning("injected failure: killing worker rank %d at epoch %d", rank, epoch)
        os._exit(1)


def advance_clock(clock: Any, epoch: int, rank: int, world_size: int) -> None:
    """Tell the data workers which epoch to produce, once every rank has drained the last one."""
    import ray
    import torch.distributed as dist

    distributed = world_size > 1 and dist.is_initialized()
    if distributed:
        dist.barrier()
    if rank == 0:
        ray.get(clock.set.remote(epoch))
    if distributed:
        dist.barrier()


def rank_batches(
    shard: Any, cfg: SSCCConfig, config: dict[str, Any], epoch: int, rank: int, world_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's rows of every global batch of one epoch, in order.

    Rank 0 alone iterates the (unsplit) dataset, the tiles' views in tile order, composes the
    global batches of ``train.batch_size`` with the seeded shuffle buffer the reference trainer
    uses (:func:`sscc_core.training.batches.shuffled_batches`, generator
    ``epoch_generator(seed, epoch)``) and scatters slice r of each to rank r, so the global
    batches, and with the gathered loss the whole training, do not depend on the number of
    workers. The batches are composed on the CPU, as the reference trainer composes them; with
    several ranks the scattered rows land on each rank's training device
    (``ray.train.torch.get_device()``).

    Args:
        shard: This worker's iterator of the whole dataset (only rank 0 reads it).
        cfg: Run configuration.
        config: The loop's config (``n_batches``, ``in_channels``).
        epoch: The epoch (mixed into the shuffle seed).
        rank: This worker's rank.
        world_size: Ranks.

    Yields:
        ``(view_a, view_b)``, each (batch_size / world_size, C, P, P).
    """
    import ray.train.torch
    import torch.distributed as dist

    local = cfg.train.batch_size // world_size
    device = ray.train.torch.get_device()
    source = shuffled_batches(
        ((b["view_a"], b["view_b"])
         for b in shard.iter_torch_batches(batch_size=cfg.train.batch_size, device="cpu")),
        cfg.train.batch_size, cfg.train.shuffle_buffer, epoch_generator(cfg.train.seed, epoch),
    ) if rank == 0 else None
    p = cfg.preprocess.patch_size
    for i in range(config["n_batches"]):
        batch = next(source, None) if rank == 0 else None
        if rank == 0 and batch is None:
            raise RuntimeError(f"epoch {epoch}: the dataset gave {i} of {config['n_batches']} batches")
        if world_size == 1:
            yield batch  # train_epoch moves it to the model's device
            continue
        pairs = torch.stack(batch, dim=1).to(device) if rank == 0 else None
        mine = torch.empty((local, 2, config["in_channels"], p, p), device=device)
        dist.scatter(mine, list(pairs.split(local)) if rank == 0 else None, src=0)
        yield mine[:, 0], mine[:, 1]


TRAINING_LEFT = ("the run keeps its last whole checkpoint; free space and relaunch the same "
                 "command to resume from it")
"""What a run stopped by a full disk (or another environment OS error) leaves behind."""


def train_loop(config: dict[str, Any]) -> None:
    """The per-worker training function (runs inside Ray Train workers).

    User errors that every rank raises at the same point (:data:`RANK_SYMMETRIC_ERRORS`: a
    diverged loss, a checkpoint that cannot be resumed) end every worker normally and rank 0
    records the error on the clock, for the driver to raise: raised from the workers they would
    be retried ``max_failures`` times from the same checkpoint, to the same end.

    An OS error of the environment (a full disk or read-only volume while writing a
    checkpoint, :data:`pipelines.common.ENVIRONMENT_ERRNOS`) is recorded the same way and then
    raised; a retried worker group of this launch finds it recorded and ends at once, so Ray
    Train's retries do not train the epoch again into the same full disk.
    """
    import ray.train

    clock = config["clock"]
    if ray.get(clock.failed.remote()) is not None:
        return
    rank = ray.train.get_context().get_world_rank()
    try:
        run_epochs(config)
    except RANK_SYMMETRIC_ERRORS as exc:
        if rank == 0:
            ray.get(clock.fail.remote(exc))
    except Exception as exc:
        error = environment_error(exc)
        if error is not None:
            ray.get(clock.fail.remote(error))
        raise


def run_epochs(config: dict[str, Any]) -> None:
    """The per-worker training loop: resume, then train and checkpoint epoch by epoch."""
    import ray.train
    import ray.train.torch
    import torch

    from sscc_core.model.loss import SSCCLoss
    from sscc_core.model.network import TwinForward

    torch.set_num_threads(config["threads"])
    cfg = from_dict(SSCCConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    resume = resumed_state(ray.train.get_checkpoint(), config, rank)
    training = build_training(cfg, config["in_channels"], resume, sync_batchnorm=world_size > 1,
                              device=ray.train.torch.get_device())
    twin = ray.train.torch.prepare_model(TwinForward(training.model))
    loss = SSCCLoss(cfg.loss, gather_distributed=True)
    shard = ray.train.get_dataset_shard("train")
    while training.epoch < cfg.train.epochs:
        advance_clock(config["clock"], training.epoch, rank, world_size)
        epoch = training.epoch

        def after_step(step: int) -> None:
            if step == 1:
                inject_failure(config, epoch, rank)

        summary = train_epoch(training, twin, loss, rank_batches(shard, cfg, config, epoch, rank, world_size),
                              cfg, after_step)
        summary["workers"] = world_size
        with report_folder(config["local_dir"]) as folder:
            checkpoint = None
            if rank == 0:
                config["clock"].post.remote(summary)
                save_checkpoint(snapshot(training, cfg, config), folder)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(summary, checkpoint=checkpoint)


def resumed_state(reported: Any, config: dict[str, Any], rank: int) -> Checkpoint | None:
    """The checkpoint to resume from: the newest loadable one up to the one Ray Train reports
    (``None`` for a new run). Rank 0 posts a warning naming each newer one that did not load
    (:func:`sscc_core.model.checkpoint.newest_loadable`), so a truncated or corrupt per-epoch
    checkpoint costs an epoch, not a hand-deleted file."""
    if reported is None:
        return None
    paths = run_checkpoints(config["run_dir"], newest=Path(reported.path).name)
    resume, errors = newest_loadable(paths)
    if errors and rank == 0:
        resumed = paths[len(errors)] if resume is not None else None
        warning = fallback_warning(errors, resumed, resume.epoch if resume is not None else 0)
        config["clock"].post.remote({"warning": warning})
    return resume


def snapshot(training: Any, cfg: SSCCConfig, config: dict[str, Any]) -> Checkpoint:
    """The SSCC checkpoint of a training state (model, optimiser, scheduler, history)."""
    return Checkpoint(
        config=cfg,
        in_channels=config["in_channels"],
        n_bands=config["n_bands"],
        model_state=training.model.state_dict(),
        preprocess_state=config["pre_state"],
        epoch=training.epoch,
        optimizer_state=training.optimizer.state_dict(),
        scheduler_state=training.scheduler.state_dict(),
        wavelength=tuple(config["wavelength"]),
        extra={"history": training.history, "store": config["store"],
               **({"lines": config["lines"]} if config["lines"] else {})},
    )


def check_gpus(num_workers: int) -> None:
    """Refuse ``--use-gpu`` when the Ray cluster has fewer GPUs than workers, counting the GPUs
    its autoscaler may add (a GPU node group scaled from zero counts at its maximum size).

    Raises:
        ValueError: Names the GPUs found and the workers asking for one each.
    """
    import ray

    found = ray.cluster_resources().get("GPU", 0)
    try:  # the autoscaler's node groups; a private API, absent on a fixed cluster
        from ray._private.state import state

        found = max(found, (state.get_max_resources_from_cluster_config() or {}).get("GPU", 0))
    except (ImportError, AttributeError):
        pass
    needed = max(1, num_workers)
    if found < needed:
        raise ValueError(f"--use-gpu: the Ray cluster has {found:g} GPUs (autoscaling included) but "
                         f"--num-workers={num_workers} needs {needed}; drop --use-gpu to train on CPUs")


DATA_TASK_CPUS = 0.25  # logical CPUs of each Ray Data task reading and augmenting tiles


def cpu_shortfall(total_cpus: float, num_workers: int, cpus_per_worker: float) -> str | None:
    """The warning for a cluster whose CPUs cannot hold the training workers and one data task
    at once (then the tiles are never read and training waits until the cluster grows), else
    ``None``. A warning, not an error: an autoscaling cluster adds the CPUs when asked."""
    needed = num_workers * cpus_per_worker + DATA_TASK_CPUS  # local mode (0 workers) trains in the driver
    if total_cpus >= needed:
        return None
    return (f"the Ray cluster has {total_cpus:g} CPUs but {num_workers} training worker(s) at "
            f"--cpus-per-worker={cpus_per_worker:g} and one {DATA_TASK_CPUS:g}-CPU data task need "
            f"{needed:g}: training waits until the cluster grows (lower --cpus-per-worker or "
            f"--num-workers)")


def preprocessing(stores: Sequence[str], cfg: SSCCConfig, run_dir: str) -> Preprocessor:
    """The run's pre-processing (:func:`sscc_core.training.run.run_preprocessing`: from its
    latest checkpoint, else fitted on the stores of all lines together), logged as
    ``preprocessing from checkpoint`` or ``fit preprocessing``."""
    found = run_preprocessing(stores, cfg, run_dir)
    if found.checkpoint is not None:
        log_event(log, "preprocessing from checkpoint", path=found.checkpoint)
    else:
        log_event(log, "fit preprocessing", method=found.method, n_valid=found.n_valid,
                  n_lines=len(stores))
    return found.preprocessor


def reported_checkpoint(result: Any, run_dir: str) -> tuple[str, Checkpoint]:
    """The SSCC checkpoint Ray Train reports at the end of ``fit()`` (``Result.checkpoint``: the
    last one reported, or on a relaunch with nothing left to train the one it resumed from),
    and where Ray Train keeps it (in the run's storage; in local mode, the folder rank 0 wrote).
    """
    if result.checkpoint is None:  # every run reports at least one epoch or resumes from one
        raise RuntimeError(f"{run_dir}: Ray Train ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        return result.checkpoint.path, load_checkpoint(folder)


@contextlib.contextmanager
def report_folder(local_dir: str | None) -> Iterator[str]:
    """The folder rank 0 writes an epoch's checkpoint to before reporting it: a temporary one,
    which Ray Train copies into the run's storage; in local mode (``--num-workers 0``: no copy,
    ``Result.checkpoint`` is the reported folder itself) ``local_dir``, which outlives ``fit()``.
    """
    if local_dir is not None:
        yield local_dir
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp


@contextlib.contextmanager
def driver_threads(threads: int) -> Iterator[None]:
    """This process's torch and BLAS/OpenMP thread pools limited to ``threads``, restored after.

    The driver fits the readout after training (:func:`readout_post_step`) with the run's
    ``--threads``, as each accuracy-suite run fits its readout with one thread: the spectral
    readout's eigensolver and logistic regression round differently with another BLAS thread
    count, and a last-digit difference can move the readout choice's stabilities and a label.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def readout_post_step(ckpt: Checkpoint, stores: Sequence[str], tiles: list[dict[str, int]]) -> Checkpoint:
    """The explicit step after training: fit what ``cfg.postprocess`` needs
    (:func:`sscc_core.training.final_readout.fit_final_readout`, on a sample across the lines
    ``stores``) and log what was chosen as a
    ``readout`` event (a cluster head without BatchNorm recalibration needs no fit and keeps
    ``ckpt`` as it is); ``readout: auto`` also prints and logs its label-free choice."""
    cfg = ckpt.config
    if not readout_needs_fit(cfg):
        log_event(log, "readout", readout=cfg.postprocess.readout, fitted=False)
        return ckpt
    post = cfg.postprocess
    compared = (f", comparing candidates on up to {post.select_sample}"
                if post.readout == "auto" and post.select_sample is not None else "")
    print(f"train: fitting the readout ({post.readout}) on up to {post.readout_sample} training "
          f"pixels{compared}", flush=True)
    ckpt = fit_final_readout(ckpt, stores, tiles, log=lambda row: log_event(log, "readout candidate", **row))
    post = ckpt.config.postprocess
    log_event(log, "readout", readout=post.readout, fitted=True, smooth_sigma=post.smooth_sigma,
              spectra_scale=post.spectra_scale, bn_recalibrate=post.bn_recalibrate,
              **ckpt.extra["readout"])
    selection = ckpt.extra.get("selection")
    if selection is not None:
        choice, rows = selection["choice"], selection["candidates"]
        competed = sum(1 for row in rows if row.get("eligible", True))
        left_out = ("" if competed == len(rows) else
                    f"; {len(rows) - competed} spectral below graph gain {selection['graph_gain']:g} left out")
        print(f"readout chosen from the data: {post.readout}, smoothing {post.smooth_sigma:g} px, "
              f"{choice['spectra_scale']} spectra (most stable of {competed} candidates{left_out})", flush=True)
        log_event(log, "readout chosen", **choice, criterion=selection["criterion"])
    return ckpt


def run_training(
    store: str | Sequence[str],
    cfg: SSCCConfig,
    run_name: str,
    storage_path: str,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 2,
    threads: int = 1,
    fail_at_epoch: int | None = None,
    data_tasks: int = 1,
) -> str:
    """Train on one or more cube stores (flight lines) with Ray Train; returns the final SSCC
    checkpoint file (path or URL).

    Args:
        store: Canonical cube store, or ``--store`` values naming several (stores, globs,
            manifests: :func:`sscc_core.io.lines.resolve_lines`), checked before any Ray work.
            Training reads the tiles of every line on its own grid; one line trains exactly
            as a single store.
        cfg: Run configuration.
        run_name: Ray Train run name; relaunching with the same name and storage path resumes.
        storage_path: Directory (local or object storage URI) for checkpoints.
        num_workers: Data-parallel workers (0 = Ray Train local mode, no DDP); the training is
            the same for any count that divides ``train.batch_size`` (the global batch).
        use_gpu: One GPU per worker.
        cpus_per_worker: Logical CPUs per worker (fractional works on small machines).
        max_failures: Worker-group restarts from the last checkpoint before giving up.
        threads: torch intra-op threads per worker, and the driver's torch and BLAS threads
            while it fits the readout (:func:`driver_threads`).
        data_tasks: Concurrent Ray Data tasks reading and augmenting tiles.
        fail_at_epoch: Fault drill: kill worker rank 0 once, mid-way through this epoch (0-based).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    check_scaling(cfg, num_workers)
    specs = [store] if isinstance(store, str) else [str(s) for s in store]
    lines = resolve_lines(specs)
    storage.check_url(storage_path)
    if use_gpu:
        ensure_ray()
        check_gpus(num_workers)
    # the driver reads a single store by the path given (its records and messages as before
    # several lines existed); Ray tasks get resolved paths
    stores = specs if len(lines) == 1 and storage.resolve(specs[0]) == lines[0].store else \
        [line.store for line in lines]
    cubes = [line.cube for line in lines]
    identities = [cube_identity(c) for c in cubes]
    n_bands = int(cubes[0].sizes["band"])
    wavelength = [float(w) for w in cubes[0]["wavelength"].values] if "wavelength" in cubes[0].coords else []
    if not storage.is_url(storage_path):
        storage_path = str(Path(storage_path).resolve())
    run_dir = storage.join(storage_path, run_name)
    progress = bool(run_checkpoints(run_dir)) or storage.exists(final_checkpoint(run_dir))
    if check_run_record(run_dir, RunRecord.of_lines(stores, identities, cfg), progress):
        print(f"train: run {run_name} has no checkpoint from its earlier launch (refused, "
              f"diverged or stopped before epoch 1 ended); starting it again with these settings",
              flush=True)
    finished = finished_run(run_dir, cfg)
    if finished is not None:
        print(f"train: run {run_name} already finished (train.epochs={cfg.train.epochs} reached); "
              f"kept {finished} (raise train.epochs to continue it)", flush=True)
        return finished
    pre = preprocessing(stores, cfg, run_dir)
    tiles = lines_training_tiles(stores, cfg.train.protocol, cfg.tile.tile_size)
    n_train = sum(t["n_pixels"] for t in tiles)
    log_event(log, "training tiles", n_tiles=len(tiles), n_pixels=n_train, protocol=cfg.train.protocol,
              n_lines=len(lines))
    for i, line in enumerate(lines):
        mine = [t["n_pixels"] for t in tiles if t["line"] == i]
        log_event(log, "training line", line=line.name, store=line.store, identity=identities[i],
                  n_tiles=len(mine), n_pixels=sum(mine))
    check_training_size(n_train, cfg, " + ".join(stores))
    ensure_ray()
    shortfall = None if use_gpu else cpu_shortfall(ray.cluster_resources().get("CPU", 0.0), num_workers,
                                                    cpus_per_worker)
    if shortfall:
        warn(shortfall)
    clock = ray.remote(num_cpus=0)(EpochClock).remote()
    dataset = tile_slots(len(tiles)).map_batches(  # slots of each epoch's tile order
        ordered_tile_views,
        fn_kwargs={
            "tiles": tile_table(tiles),
            "stores": [line.store for line in lines],
            "pre_state": pre.to_state(),
            "cfg": to_dict(cfg),
            "clock": clock,
        },
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=data_tasks),
        num_cpus=DATA_TASK_CPUS,
    )
    resources = {"CPU": cpus_per_worker}
    local_dir = tempfile.TemporaryDirectory(prefix="sscc-train-")  # see report_folder
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": to_dict(cfg),
            "in_channels": pre.n_components,
            "n_bands": n_bands,
            "pre_state": pre.to_state(),
            "wavelength": wavelength,
            "store": " + ".join(stores),
            "lines": [{"name": line.name, "store": line.store, "identity": identity}
                      for line, identity in zip(lines, identities)] if len(lines) > 1 else None,
            "threads": threads,
            "clock": clock,
            "run_dir": run_dir,
            "local_dir": local_dir.name if num_workers == 0 else None,
            "n_batches": n_train // cfg.train.batch_size,
            "fail_at_epoch": fail_at_epoch,
            "fail_marker": storage.join(run_dir, "injected_failure") if fail_at_epoch is not None else None,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu else resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(  # rank 0 reads everything: see rank_batches
            datasets_to_split=[], execution_options=ray.data.ExecutionOptions(preserve_order=True)),
    )
    with local_dir:
        with failing_output(run_dir, "training", lambda: TRAINING_LEFT):
            with EpochMonitor(clock, cfg.model.n_clusters, cfg.train.epochs):
                result = trainer.fit()
            failure = ray.get(clock.failed.remote())
            if failure is not None:
                raise failure
        reported, ckpt = reported_checkpoint(result, run_dir)
    with driver_threads(threads):
        ckpt = readout_post_step(ckpt, stores, tiles)
    path = save_checkpoint(ckpt, final_checkpoint(run_dir))
    log_event(log, "final checkpoint", path=path, reported=reported, model_version=ckpt.model_version,
              epoch=ckpt.epoch)
    history_list = (ckpt.extra or {}).get("history", [])
    warning = clusters_warning(history_list[-1], cfg.model.n_clusters) if history_list else None
    if warning:
        warn(warning, clusters_used=history_list[-1]["clusters_used"], n_clusters=cfg.model.n_clusters)
    history = json.dumps(history_list, indent=1)
    storage.write_bytes(storage.join(run_dir, "history.json"), history.encode())
    storage.write_bytes(storage.join(run_dir, "config.yaml"), dump_config(cfg).encode())
    return path


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``sscc train``."""
    p = argparse.ArgumentParser(prog="sscc train", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, nargs="+",
                   help="cube store(s) from sscc ingest: one or more flight lines, as stores, globs "
                        "over stores or manifest files listing one store per line")
    p.add_argument("--run-name", required=True, help="run name; relaunching with it resumes")
    p.add_argument("--storage-path", default="runs", help="checkpoint storage (default: runs)")
    p.add_argument("--num-workers", type=int, default=1, help="data-parallel workers (0 = local mode)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="logical CPUs per worker")
    p.add_argument("--max-failures", type=int, default=2, help="restarts from the last checkpoint")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker, and the driver's threads while it fits the readout")
    p.add_argument("--data-tasks", type=int, default=1,
                   help="concurrent Ray Data tasks reading and augmenting tiles (default 1)")
    add_config_args(p, DEFAULT_CONFIG)
    add_logging_args(p, beside="STORAGE_PATH/RUN_NAME")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``sscc train``."""

    def run(args: argparse.Namespace) -> None:
        setup_logging("train", args.log_file, output=storage.join(args.storage_path, args.run_name))
        cfg = load_cli_config(args)
        path = run_training(
            args.store, cfg, args.run_name, args.storage_path, args.num_workers, args.use_gpu,
            args.cpus_per_worker, args.max_failures, args.threads, data_tasks=args.data_tasks,
        )
        print(f"checkpoint: {path}")

    return run_stage("train", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
