"""``sscc predict``: label a cube store out of core, tile by tile, in two Ray Data stages.

Usage::

    sscc predict --checkpoint runs/ip/model.pt --store runs/ip.zarr --out runs/ip_labels.zarr \\
        [--tile-size 256] [--actors 2] [--confidence] [--mode auto|dense|patch] [--batch-size 2048]
        [--recheck] [--use-gpu [--gpus-per-actor 1]] [--tiles-per-batch N]

The driver loads the checkpoint, checks the cube's bands
(:meth:`sscc_core.labelling.inference.Labeller.check_cube`), creates (or reopens) the label store
(:mod:`sscc_core.labelling.labelstore`) and plans the run
(:func:`sscc_core.labelling.plan.plan_labelling`): the non-empty tiles not yet done, so a rerun
after a crash, or after new tiles gained data, labels only the rest; done tiles whose chunks are
missing, unreadable or do not hold what their records say are labelled again. With
``--recheck`` the done tiles are kept in the list: their input window is re-read and only those
whose fingerprint differs from their record's are relabelled (``sscc reprocess``). An existing
store made from another input (its recorded :func:`sscc_core.io.store.cube_identity` differs)
is refused without ``--recheck``; with it, the new input is recorded once every tile has been
rechecked.

The tiles, grouped into locality-aware read segments
(:func:`sscc_core.labelling.plan.read_segments`: stripes of a few tile columns, swept row by
row), go through ``ray.data.from_items(segments)``, then

1. ``map_batches(read_segment)``: CPU tasks (as many as the cluster's free CPUs allow) that
   fingerprint each tile's input window and read and pre-process it with its halos, through a
   chunk cache spanning the stripe (:func:`sscc_core.labelling.tile_work.read_tiles`), so each
   input chunk is decoded about once;
2. ``map_batches(LabelReads)`` on an actor pool (``--actors``; with ``--use-gpu`` each actor
   holds ``--gpus-per-actor`` GPUs and gets ``--tiles-per-batch`` tiles per batch, equally
   shaped ones in one forward pass): the network and readout, and the tile's whole chunk written
   (:class:`sscc_core.labelling.tile_work.TileWriter`).

Reading thus scales with CPUs while the network runs on its actors. The driver, the only writer
of the store's tile records, records finished tiles after their chunks, in batches (at most
every ``RECORD_SECONDS``), and marks the store complete last, once every non-empty tile is done.
With one tile per batch (the CPU default) labels and confidence equal the single-process
:func:`sscc_core.labelling.inference.label_scene` bit for bit; tiles sharing a dense forward
pass may differ in the last float bits. An unreadable input tile or a failed write fails the
run with an error naming the tile, after the other tiles are done. ``--use-gpu`` on a cluster
without GPUs is refused before anything is read or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import zarr

from pipelines.common import add_logging_args, ensure_ray, log_event, run_stage, setup_logging
from sscc_core import storage
from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.config import to_dict
from sscc_core.io.store import cube_identity, open_cube
from sscc_core.io.tiling import Tile
from sscc_core.labelling.inference import Labeller
from sscc_core.labelling.labelstore import LabelStore, LabelStoreSpec, TileRecord, prepare_label_store
from sscc_core.labelling.plan import STRIPE_TILES, plan_labelling, read_segments
from sscc_core.labelling.tile_input import TileReader
from sscc_core.labelling.tile_work import TileOutcome, TileWriter, read_tiles

OUTCOME_FIELDS = tuple(f.name for f in dataclasses.fields(TileOutcome))
GPU_TILES_PER_BATCH = 4  # default tiles per label-actor batch on a GPU
TILE_BLOCK_BYTES = 1  # output block bound of both stages: each tile its own block, so read
# tiles reach the label actors, and results the driver, as each is done
RECORD_SECONDS = 1.0  # the driver records finished tiles at most this often (and at the end)


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the predict stage."""
    p = argparse.ArgumentParser(
        prog="sscc predict",
        description="Label a Zarr cube store with a trained SSCC checkpoint, tile by tile on Ray "
        "actors, into a Zarr label store on the same grid (resumable).",
    )
    p.add_argument("--out", required=True, help="output label store (.zarr); an existing one made "
                   "by the same model is resumed")
    p.add_argument("--recheck", action="store_true",
                   help="also re-read the tiles already done and relabel those whose input window "
                   "changed since (fingerprint in the tile record)")
    add_labelling_args(p)
    return p


def add_labelling_args(p: argparse.ArgumentParser) -> None:
    """The options shared by ``sscc predict`` and ``sscc reprocess`` (all but the output)."""
    p.add_argument("--checkpoint", required=True, help="model.pt (or the directory holding it)")
    p.add_argument("--store", required=True, help="input cube store (sscc ingest output)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile (= output chunk) side in pixels (default: the checkpoint config's "
                   "tile.tile_size, 256)")
    p.add_argument("--actors", type=int, default=2, help="labelling actors (default 2)")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="Ray CPUs reserved per actor (default: min(1, (cluster CPUs - 0.5) / "
                   "actors), fractional on small machines)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per actor (default 1)")
    p.add_argument("--confidence", action="store_true",
                   help="also write the max cluster probability per pixel")
    p.add_argument("--mode", choices=("auto", "dense", "patch"), default="auto",
                   help="dense (fully convolutional, fcn backbone) or per-patch inference; auto "
                   "picks dense when the backbone allows it")
    p.add_argument("--batch-size", type=int, default=2048,
                   help="patches per forward pass in patch mode (default 2048)")
    p.add_argument("--use-gpu", action="store_true",
                   help="run the network on GPU actors (refused when the Ray cluster has no GPU); "
                   "reading and pre-processing stay on CPU read tasks")
    p.add_argument("--gpus-per-actor", type=float, default=1.0,
                   help="Ray GPUs per label actor with --use-gpu (default 1)")
    p.add_argument("--tiles-per-batch", type=int, default=None,
                   help=f"tiles per label-actor batch; equally shaped tiles share one dense "
                   f"forward pass (default {GPU_TILES_PER_BATCH} with --use-gpu, else 1)")
    add_logging_args(p, beside="OUT")


def read_segment(batch: dict[str, np.ndarray], store: str, reader: TileReader, tile_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data task of the read stage: fingerprint, read and pre-process the tiles of read
    segments (:func:`sscc_core.labelling.tile_work.read_tiles`), one output row per tile.

    Args:
        batch: Rows of one or more segments: ``tiles`` (each a list of
            :class:`sscc_core.io.tiling.Tile` field tuples) and ``recorded`` (their recorded
            fingerprints, "" when not done).
        store: Input cube store.
        reader: The model's tile reader.
        tile_size: Tile side, pixels.

    Yields:
        ``{"read": (1,) object}`` holding one :class:`sscc_core.labelling.tile_work.TileRead`.
    """
    for tiles, recorded in zip(batch["tiles"], batch["recorded"]):
        pairs = [(Tile(*(int(v) for v in t)), str(fp)) for t, fp in zip(tiles, recorded)]
        for read in read_tiles(store, reader, pairs, tile_size, STRIPE_TILES):
            yield {"read": np.array([read], dtype=object)}


class LabelReads:
    """Ray Data actor of the label stage: runs the network on tiles already read (on a GPU with
    ``use_gpu``) and writes their chunks into the label store; the driver records them.

    Args:
        checkpoint: Checkpoint path (loaded once per actor).
        out: Label store path (created by the driver).
        mode: Inference mode of :class:`sscc_core.labelling.inference.Labeller`.
        batch_size: Patches per forward pass in patch mode.
        threads: torch intra-op threads of this actor.
        use_gpu: Put the model on this actor's GPU.
    """

    def __init__(self, checkpoint: str, out: str, mode: str, batch_size: int, threads: int,
                 use_gpu: bool) -> None:
        torch.set_num_threads(threads)
        labeller = Labeller.from_checkpoint(load_checkpoint(checkpoint), mode, batch_size)
        labeller.model.to("cuda" if use_gpu else "cpu")
        self.writer = TileWriter(labeller, LabelStore(out))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Label a batch of read tiles.

        Args:
            batch: ``read``: ``(n,)`` :class:`sscc_core.labelling.tile_work.TileRead` objects.

        Returns:
            The :class:`sscc_core.labelling.tile_work.TileOutcome` fields as columns, each
            ``(n,)``: ``row``, ``col``, ``n_valid``, ``seconds`` (read + label time),
            ``labelled`` (False for a tile skipped as unchanged or failed), ``error`` ("" on
            success) and ``fingerprint`` (of the input window).
        """
        outcomes = self.writer.write(list(batch["read"]))
        return {name: np.asarray([getattr(o, name) for o in outcomes]) for name in OUTCOME_FIELDS}


def actor_cpus(actors: int, cluster_cpus: float) -> float:
    """Default CPUs per actor: one each when the cluster has room, else an equal share of the
    cluster minus half a CPU for the driver and Ray Data (rounded down to 0.05, at least 0.05)."""
    share = (cluster_cpus - 0.5) / actors
    return 1.0 if share >= 1.0 else max(0.05, math.floor(share * 20) / 20)


MIN_READ_CPUS = 0.05  # the least CPU a read task is given


def read_cpus(free_cpus: float) -> float:
    """CPUs per read task: one when at least two are left beside the label actors, else half
    of what is left (rounded down to 0.05, at least :data:`MIN_READ_CPUS`), so two read tasks
    run at once."""
    return 1.0 if free_cpus >= 2.0 else max(MIN_READ_CPUS, math.floor(free_cpus / 2 * 20) / 20)


def check_gpus(args: argparse.Namespace) -> None:
    """With ``--use-gpu``, join Ray and refuse unless the cluster has the GPUs one label actor
    needs (before anything is read or written).

    Raises:
        ValueError: ``--gpus-per-actor`` out of range, or too few GPUs in the cluster.
    """
    if not args.use_gpu:
        return
    if args.gpus_per_actor <= 0:
        raise ValueError(f"--gpus-per-actor must be > 0, got {args.gpus_per_actor}")
    import ray

    ensure_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus < args.gpus_per_actor:
        raise ValueError(f"--use-gpu: the Ray cluster has {gpus:g} GPUs, a label actor needs "
                         f"{args.gpus_per_actor:g}; drop --use-gpu to label on CPU")


def _label_on_ray(
    todo: list[Tile], recorded: dict[tuple[int, int], str], out: LabelStore, reader: TileReader,
    args: argparse.Namespace, log: Any,
) -> tuple[int, int, float]:
    """Run the two stages over ``todo`` (read tasks, then the label actor pool), logging each
    tile as its result arrives and recording the labelled tiles in ``out`` (in batches, at most
    every ``RECORD_SECONDS``, and at the end).

    Args:
        todo: Tiles to label (or, with a recorded fingerprint, to check).
        recorded: Recorded fingerprints of done tiles, by ``(row, col)``.
        out: The label store (the driver is the only writer of its records).
        reader: The model's tile reader (sent to the read tasks).
        args: The parsed command line.
        log: The run's logger.

    Returns:
        ``(tiles labelled, labelled pixels, summed per-tile read + label seconds)``; tiles found
        unchanged are logged (``tile_unchanged``) but not counted.

    Raises:
        ValueError: Some tiles failed (each is logged as ``tile_failed``); the others were
            labelled and recorded, so a rerun after the fix does only the failed ones.
    """
    import ray

    ensure_ray()
    actors = min(args.actors, len(todo))  # an actor without a tile would only delay the start
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    cpus = args.cpus_per_actor or (1.0 if args.use_gpu else actor_cpus(actors, cluster_cpus))
    free_cpus = max(cluster_cpus - actors * cpus, 0.0)
    if free_cpus < MIN_READ_CPUS:  # the read tasks could never be scheduled: a silent hang
        raise ValueError(f"--actors {actors} x --cpus-per-actor {cpus:g} take all {cluster_cpus:g} "
                         "CPUs of the Ray cluster and leave none for the read tasks; lower "
                         "--actors or --cpus-per-actor")
    task_cpus = read_cpus(free_cpus)
    tiles_per_batch = args.tiles_per_batch or (GPU_TILES_PER_BATCH if args.use_gpu else 1)
    segments = read_segments(todo, min_segments=max(1, int(free_cpus / task_cpus)))
    items = [{"tiles": [dataclasses.astuple(t) for t in segment],
              "recorded": [recorded.get((t.row, t.col), "") for t in segment]}
             for segment in segments]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds.context.target_max_block_size = TILE_BLOCK_BYTES
    ds = ds.map_batches(
        read_segment, fn_kwargs=dict(store=storage.resolve(args.store), reader=reader,
                                     tile_size=out.tile_size),
        batch_size=1, batch_format="numpy", num_cpus=task_cpus,
    )
    ds = ds.map_batches(
        LabelReads,
        fn_constructor_kwargs=dict(
            checkpoint=storage.resolve(args.checkpoint), out=storage.resolve(args.out),
            mode=args.mode, batch_size=args.batch_size, threads=args.threads,
            use_gpu=args.use_gpu,
        ),
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=tiles_per_batch,
        batch_format="numpy",
        num_cpus=cpus,
        num_gpus=args.gpus_per_actor if args.use_gpu else 0,
    )
    log_event(log, "actors_started", actors=actors, cpus_per_actor=cpus, use_gpu=args.use_gpu,
              tiles_per_batch=tiles_per_batch, read_segments=len(segments),
              cpus_per_read_task=task_cpus, tiles=len(todo))
    every = max(1, len(todo) // 10)
    n_seen = n_tiles = n_pixels = 0
    busy = 0.0
    failed: list[str] = []
    pending: list[TileRecord] = []
    last_record = time.monotonic()
    for row in ds.iter_rows():
        n_seen += 1
        fields = dict(row=int(row["row"]), col=int(row["col"]), n_valid=int(row["n_valid"]),
                      seconds=round(float(row["seconds"]), 4), done=n_seen, total=len(todo))
        if row["error"]:
            failed.append(str(row["error"]))
            log_event(log, "tile_failed", error=str(row["error"]), **fields)
            print(f"predict: error: {row['error']}", file=sys.stderr, flush=True)
        elif not row["labelled"]:
            log_event(log, "tile_unchanged", **fields)
        else:
            n_tiles += 1
            n_pixels += int(row["n_valid"])
            busy += float(row["seconds"])
            pending.append(TileRecord(fields["row"], fields["col"], float(row["seconds"]),
                                      fields["n_valid"], str(row["fingerprint"])))
            log_event(log, "tile_done", **fields)
        if pending and (time.monotonic() - last_record >= RECORD_SECONDS or n_seen == len(todo)):
            out.record_tiles(pending)
            pending, last_record = [], time.monotonic()
        if n_seen % every == 0 or n_seen == len(todo):
            print(f"predict: {n_seen}/{len(todo)} tiles checked, {n_tiles} labelled, "
                  f"{len(failed)} failed", flush=True)
    out.record_tiles(pending)
    if failed:
        raise ValueError(f"{len(failed)} of {len(todo)} tiles failed, label store {args.out} left "
                         f"incomplete (rerun the same command after fixing the cause); first: "
                         f"{failed[0]}")
    return n_tiles, n_pixels, busy


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed command line; returns the run summary.

    Raises:
        ValueError: Bad arguments, band-count or wavelength mismatch, an incompatible existing
            label store, an unreadable input tile, or a failed write.
        FileNotFoundError: Missing checkpoint or cube store.
    """
    log = setup_logging("predict", args.log_file, output=args.out)
    for name in ("actors", "threads", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tiles_per_batch is not None and args.tiles_per_batch < 1:
        raise ValueError(f"--tiles-per-batch must be >= 1, got {args.tiles_per_batch}")
    for url in (args.checkpoint, args.store, args.out):
        storage.check_url(url)
    check_gpus(args)
    ckpt = load_checkpoint(args.checkpoint)
    labeller = Labeller.from_checkpoint(ckpt, args.mode, args.batch_size)
    dense = labeller.dense  # raises for --mode dense with a patch-only backbone
    cube = open_cube(args.store)
    cube_wl = cube["wavelength"].values if "wavelength" in cube.coords else ()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            labeller.check_cube(int(cube.sizes["band"]), cube_wl)
        except ValueError as exc:
            raise ValueError(f"{args.store} vs checkpoint {args.checkpoint}: {exc}") from exc
    for warning in caught:
        print(f"predict: warning: {warning.message}", file=sys.stderr, flush=True)
        log_event(log, "wavelengths_unchecked", message=str(warning.message))
    spec = LabelStoreSpec(
        model_version=ckpt.model_version, n_clusters=ckpt.config.model.n_clusters,
        tile_size=args.tile_size or ckpt.config.tile.tile_size, confidence=args.confidence,
        config=to_dict(ckpt.config), input_store=storage.resolve(args.store),
        input_identity=cube_identity(cube),
    )
    out = prepare_label_store(args.out, cube, spec, relabel=args.recheck)
    valid = zarr.open_group(args.store, mode="r")["valid"]
    plan = plan_labelling(out, valid, args.recheck)
    for problem in plan.damaged.values():
        print(f"predict: warning: {out.path}: {problem}; relabelling it", file=sys.stderr,
              flush=True)
        log_event(log, "tile_damaged", problem=problem)
    nonempty, todo, n_done = plan.nonempty, plan.todo, len(plan.done)
    print(f"predict: model {ckpt.model_version} ({'dense' if dense else 'patch'} inference), "
          f"{len(nonempty)} non-empty {spec.tile_size}px tiles, {n_done} already done, "
          f"{len(todo)} to {'check' if args.recheck else 'label'} -> {args.out}", flush=True)
    log_event(log, "plan", model_version=ckpt.model_version, store=args.store, out=args.out,
              tiles=len(nonempty), done=n_done, todo=len(todo), recheck=args.recheck)
    start = time.perf_counter()
    n_tiles = n_pixels = 0
    busy = 0.0
    if todo:
        out.mark_incomplete()
        n_tiles, n_pixels, busy = _label_on_ray(todo, plan.recorded, out, labeller.reader,
                                                args, log)
    seconds = time.perf_counter() - start
    out.mark_complete(valid, spec)
    summary = {
        "out": str(args.out), "model_version": ckpt.model_version, "tiles": len(nonempty),
        "tiles_labelled": n_tiles, "tiles_unchanged": len(todo) - n_tiles,
        "pixels_labelled": n_pixels, "seconds": round(seconds, 3),
        "pixels_per_s": round(n_pixels / seconds, 1) if n_tiles else 0.0,
        "pixels_per_actor_s": round(n_pixels / busy, 1) if busy > 0 else 0.0,
    }
    log_event(log, "summary", **summary)
    print(f"summary: labelled {n_tiles} tiles ({n_pixels} pixels) in {seconds:.1f} s "
          f"({summary['pixels_per_s']:.0f} pixels/s end to end, "
          f"{summary['pixels_per_actor_s']:.0f} pixels/s per busy actor); all {len(nonempty)} non-empty tiles done, store complete: "
          f"{args.out}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc predict``; returns the process exit code (2 on user errors)."""
    return run_stage("predict", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
