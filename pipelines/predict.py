"""``sscc predict``: label a cube store out of core, tile by tile, in two Ray Data stages.

Usage::

    sscc predict --checkpoint runs/ip/model.pt --store runs/ip.zarr --out runs/ip_labels.zarr \\
        [--tile-size 256] [--actors 2] [--confidence] [--mode auto|dense|patch] [--batch-size 2048]
        [--recheck] [--use-gpu [--gpus-per-actor 1]] [--tiles-per-batch N]
    sscc predict --checkpoint runs/lines/model.pt --store fl01.zarr fl02.zarr --out runs/labels/
    sscc predict --checkpoint ... --store 'runs/lines/fl*.zarr' --out s3://bucket/labels/
    sscc predict --checkpoint ... --store lines.txt --out runs/labels/   # a manifest of stores

``--store`` takes one or more flight lines (stores, globs over stores, manifest files listing
one store per line; :func:`sscc_core.io.lines.resolve_lines` checks them all first). With one
line ``--out`` is its label store. With several, ``--out`` is a folder and line ``L`` (its
store's stem) is labelled into ``OUT/L.zarr`` on its own grid and CRS (no common mosaic grid);
every line is checked, its store created or reopened and planned
(:func:`sscc_core.labelling.plan.prepare_lines`) before any tile is read, and all lines' tiles
go through one Ray Data job with one progress line; each store is marked complete once its
own tiles are all done.

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
   shaped ones of a line in one forward pass): the network and readout, and the tile's whole
   chunk written into its line's label store (:class:`sscc_core.labelling.tile_work.TileWriter`,
   one per line, opened on first use).

Reading thus scales with CPUs while the network runs on its actors. The driver, the only writer
of the stores' tile records, records finished tiles after their chunks, in batches (at most
every ``RECORD_SECONDS``), and marks each store complete last, once every non-empty tile of its
line is done.
With one tile per batch (the CPU default) labels and confidence equal the single-process
:func:`sscc_core.labelling.inference.label_scene` bit for bit; tiles sharing a dense forward
pass may differ in the last float bits. An unreadable input tile or a failed write fails the
run with an error naming the tile, after the other tiles are done (the stores of the other
lines are completed). ``--use-gpu`` on a cluster
without GPUs is refused before anything is read or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.common import (
    add_logging_args, ensure_ray, failing_output, log_event, run_stage, setup_logging,
)
from pipelines.stderr_filter import RAY_DATA_ACTOR_ARGS, dropping_lines
from sscc_core import storage
from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.config import to_dict
from sscc_core.io.lines import Line, resolve_lines
from sscc_core.io.tiling import Tile
from sscc_core.labelling.inference import Labeller
from sscc_core.labelling.labelstore import LabelStore, LabelStoreSpec, TileRecord
from sscc_core.labelling.plan import (
    STRIPE_TILES, LineRun, line_outputs, prepare_lines, read_segments,
)
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
        description="Label Zarr cube stores (flight lines) with a trained SSCC checkpoint, tile by "
        "tile on Ray actors, each into a Zarr label store on its own grid (resumable).",
    )
    p.add_argument("--out", required=True, help="output label store (.zarr); an existing one made "
                   "by the same model is resumed. With several lines: a folder that holds one "
                   "<line>.zarr label store per line")
    p.add_argument("--recheck", action="store_true",
                   help="also re-read the tiles already done and relabel those whose input window "
                   "changed since (fingerprint in the tile record)")
    add_labelling_args(p)
    return p


def add_labelling_args(p: argparse.ArgumentParser) -> None:
    """The options shared by ``sscc predict`` and ``sscc reprocess`` (all but the output)."""
    p.add_argument("--checkpoint", required=True, help="model.pt (or the directory holding it)")
    p.add_argument("--store", required=True, nargs="+",
                   help="input cube store(s) (sscc ingest output): one or more stores, globs over "
                   "stores or manifest files listing one store per line; each flight line is "
                   "labelled on its own grid (sscc_core.io.lines)")
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


def read_segment(batch: dict[str, np.ndarray], stores: list[str], reader: TileReader,
                 tile_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data task of the read stage: fingerprint, read and pre-process the tiles of read
    segments (:func:`sscc_core.labelling.tile_work.read_tiles`), one output row per tile.

    Args:
        batch: Rows of one or more segments: ``line`` (the index of the segment's line),
            ``tiles`` (each a list of :class:`sscc_core.io.tiling.Tile` field tuples) and
            ``recorded`` (their recorded fingerprints, "" when not done).
        stores: Input cube store of each line.
        reader: The model's tile reader.
        tile_size: Tile side, pixels.

    Yields:
        ``{"line": (1,) int, "read": (1,) object}``: the tile's line and one
        :class:`sscc_core.labelling.tile_work.TileRead`.
    """
    for line, tiles, recorded in zip(batch["line"], batch["tiles"], batch["recorded"]):
        pairs = [(Tile(*(int(v) for v in t)), str(fp)) for t, fp in zip(tiles, recorded)]
        for read in read_tiles(stores[int(line)], reader, pairs, tile_size, STRIPE_TILES):
            yield {"line": np.array([int(line)]), "read": np.array([read], dtype=object)}


class LabelReads:
    """Ray Data actor of the label stage: runs the network on tiles already read (on a GPU with
    ``use_gpu``) and writes their chunks into their line's label store; the driver records them.

    Args:
        checkpoint: Checkpoint path (loaded once per actor).
        outs: Label store path of each line (created by the driver; each opened on first use).
        mode: Inference mode of :class:`sscc_core.labelling.inference.Labeller`.
        batch_size: Patches per forward pass in patch mode.
        threads: torch intra-op threads of this actor.
        use_gpu: Put the model on this actor's GPU.
    """

    def __init__(self, checkpoint: str, outs: list[str], mode: str, batch_size: int,
                 threads: int, use_gpu: bool) -> None:
        torch.set_num_threads(threads)
        self.labeller = Labeller.from_checkpoint(load_checkpoint(checkpoint), mode, batch_size)
        self.labeller.model.to("cuda" if use_gpu else "cpu")
        self.outs = outs
        self.writers: dict[int, TileWriter] = {}

    def writer(self, line: int) -> TileWriter:
        """The tile writer of line ``line``'s label store (opened on first use)."""
        if line not in self.writers:
            self.writers[line] = TileWriter(self.labeller, LabelStore(self.outs[line]))
        return self.writers[line]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Label a batch of read tiles, line by line (the tiles of one line share its forward
        passes).

        Args:
            batch: ``line``: ``(n,)`` line indices; ``read``: ``(n,)``
                :class:`sscc_core.labelling.tile_work.TileRead` objects.

        Returns:
            ``line`` and the :class:`sscc_core.labelling.tile_work.TileOutcome` fields as
            columns, each ``(n,)``: ``row``, ``col``, ``n_valid``, ``seconds`` (read + label
            time), ``labelled`` (False for a tile skipped as unchanged or failed), ``error`` (""
            on success) and ``fingerprint`` (of the input window).
        """
        lines = np.asarray(batch["line"], dtype=np.int64)
        outcomes: list[TileOutcome | None] = [None] * len(lines)
        for line in np.unique(lines):
            rows = np.flatnonzero(lines == line)
            written = self.writer(int(line)).write([batch["read"][i] for i in rows])
            for i, outcome in zip(rows, written):
                outcomes[i] = outcome
        columns = {name: np.asarray([getattr(o, name) for o in outcomes])
                   for name in OUTCOME_FIELDS}
        return {"line": lines, **columns}


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


@dataclass(frozen=True)
class LineTally:
    """What the pipeline did for one line.

    Attributes:
        tiles: Tiles labelled (tiles found unchanged are not counted).
        pixels: Labelled pixels written.
        seconds: Summed per-tile read + label seconds.
        failed: The failures, one line each naming the tile.
    """

    tiles: int = 0
    pixels: int = 0
    seconds: float = 0.0
    failed: tuple[str, ...] = ()


def _label_on_ray(runs: list[LineRun], reader: TileReader, args: argparse.Namespace,
                  log: Any) -> list[LineTally]:
    """Run the two stages over the tiles to do of every line in one Ray Data job (read tasks,
    then the label actor pool), logging each tile as its result arrives and recording the
    labelled tiles in their line's store (in batches, at most every ``RECORD_SECONDS``, and at
    the end).

    Args:
        runs: The lines, their stores prepared and planned (tiles to label or, with a recorded
            fingerprint, to check); the driver is the only writer of the stores' records.
        reader: The model's tile reader (sent to the read tasks).
        args: The parsed command line.
        log: The run's logger.

    Returns:
        One tally per line, in order; a failed tile (logged as ``tile_failed``) is in its line's
        ``failed`` while the other tiles are labelled and recorded, so a rerun after the fix
        does only the failed ones.
    """
    import ray

    ensure_ray()
    total = sum(len(r.plan.todo) for r in runs)
    actors = min(args.actors, total)  # an actor without a tile would only delay the start
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    cpus = args.cpus_per_actor or (1.0 if args.use_gpu else actor_cpus(actors, cluster_cpus))
    free_cpus = max(cluster_cpus - actors * cpus, 0.0)
    if free_cpus < MIN_READ_CPUS:  # the read tasks could never be scheduled: a silent hang
        raise ValueError(f"--actors {actors} x --cpus-per-actor {cpus:g} take all {cluster_cpus:g} "
                         "CPUs of the Ray cluster and leave none for the read tasks; lower "
                         "--actors or --cpus-per-actor")
    task_cpus = read_cpus(free_cpus)
    tiles_per_batch = args.tiles_per_batch or (GPU_TILES_PER_BATCH if args.use_gpu else 1)
    busy_lines = sum(1 for r in runs if r.plan.todo)
    per_line = math.ceil(max(1, int(free_cpus / task_cpus)) / busy_lines)
    items = [{"line": r.index, "tiles": [dataclasses.astuple(t) for t in segment],
              "recorded": [r.plan.recorded.get((t.row, t.col), "") for t in segment]}
             for r in runs for segment in read_segments(r.plan.todo, min_segments=per_line)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds.context.target_max_block_size = TILE_BLOCK_BYTES
    ds = ds.map_batches(
        read_segment, fn_kwargs=dict(stores=[r.line.store for r in runs], reader=reader,
                                     tile_size=runs[0].spec.tile_size),
        batch_size=1, batch_format="numpy", num_cpus=task_cpus,
    )
    ds = ds.map_batches(
        LabelReads,
        fn_constructor_kwargs=dict(
            checkpoint=storage.resolve(args.checkpoint),
            outs=[storage.resolve(r.out) for r in runs], mode=args.mode,
            batch_size=args.batch_size, threads=args.threads, use_gpu=args.use_gpu,
        ),
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=tiles_per_batch,
        batch_format="numpy",
        num_cpus=cpus,
        num_gpus=args.gpus_per_actor if args.use_gpu else 0,
    )
    log_event(log, "actors_started", actors=actors, cpus_per_actor=cpus, use_gpu=args.use_gpu,
              tiles_per_batch=tiles_per_batch, read_segments=len(items),
              cpus_per_read_task=task_cpus, tiles=total, lines=len(runs))
    every = max(1, total // 10)
    across = f" ({len(runs)} lines)" if len(runs) > 1 else ""
    n_seen = 0
    tiles, pixels, busy = [0] * len(runs), [0] * len(runs), [0.0] * len(runs)
    failed: list[list[str]] = [[] for _ in runs]
    pending: list[list[TileRecord]] = [[] for _ in runs]
    last_record = time.monotonic()
    for row in ds.iter_rows():
        n_seen += 1
        i = int(row["line"])
        fields = dict(line=runs[i].line.name, row=int(row["row"]), col=int(row["col"]),
                      n_valid=int(row["n_valid"]), seconds=round(float(row["seconds"]), 4),
                      done=n_seen, total=total)
        if row["error"]:
            failed[i].append(str(row["error"]))
            log_event(log, "tile_failed", error=str(row["error"]), **fields)
            print(f"predict: error: {row['error']}", file=sys.stderr, flush=True)
        elif not row["labelled"]:
            log_event(log, "tile_unchanged", **fields)
        else:
            tiles[i] += 1
            pixels[i] += int(row["n_valid"])
            busy[i] += float(row["seconds"])
            pending[i].append(TileRecord(fields["row"], fields["col"], float(row["seconds"]),
                                         fields["n_valid"], str(row["fingerprint"])))
            log_event(log, "tile_done", **fields)
        if any(pending) and (time.monotonic() - last_record >= RECORD_SECONDS
                             or n_seen == total):
            _record(runs, pending)
            last_record = time.monotonic()
        if n_seen % every == 0 or n_seen == total:
            print(f"predict: {n_seen}/{total} tiles checked, {sum(tiles)} labelled, "
                  f"{sum(map(len, failed))} failed{across}", flush=True)
    _record(runs, pending)
    return [LineTally(n, px, s, tuple(f)) for n, px, s, f in zip(tiles, pixels, busy, failed)]


def _record(runs: list[LineRun], pending: list[list[TileRecord]]) -> None:
    """Record each line's pending finished tiles in its store and empty the lists."""
    for line_run, records in zip(runs, pending):
        if records:
            line_run.labels.record_tiles(records)
            records.clear()


def check_bands(labeller: Labeller, cube: Any, store: str, checkpoint: str, log: Any) -> None:
    """Refuse a cube whose bands are not the model's; print and log the wavelength warnings.

    Raises:
        ValueError: Band count or wavelengths differ; the message names the store and the
            checkpoint.
    """
    cube_wl = cube["wavelength"].values if "wavelength" in cube.coords else ()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            labeller.check_cube(int(cube.sizes["band"]), cube_wl)
        except ValueError as exc:
            raise ValueError(f"{store} vs checkpoint {checkpoint}: {exc}") from exc
    for warning in caught:
        print(f"predict: warning: {warning.message}", file=sys.stderr, flush=True)
        log_event(log, "wavelengths_unchecked", message=str(warning.message))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed command line; returns the run summary (:func:`label_lines`).

    Raises:
        ValueError: Bad ``--store`` values (:func:`sscc_core.io.lines.resolve_lines`), several
            lines with ``--out`` naming a store, or as :func:`label_lines`.
        FileNotFoundError: Missing checkpoint.
    """
    lines = resolve_lines(args.store)
    if len(lines) > 1 and str(args.out).rstrip("/").endswith(".zarr"):
        raise ValueError(f"--out {args.out}: with {len(lines)} lines --out is a folder that "
                         "holds one <line>.zarr label store per line, not a store")
    return label_lines(args, lines, line_outputs(args.out, lines))


def label_lines(args: argparse.Namespace, lines: list[Line], outs: list[str | Path],
                checked: Callable[[], None] | None = None) -> dict[str, Any]:
    """Label every line into its own label store in one Ray Data job (``args.store`` is not
    read: ``lines`` are the resolved stores).

    Every line is checked against the checkpoint and its store created or reopened and planned
    before any tile is read, so bad input leaves nothing half-written; each store is marked
    complete once all its tiles are done.

    Args:
        args: The parsed command line (``args.out`` is what messages name: the label store of
            one line, the folder of several).
        lines: The lines, with their opened cubes (:func:`sscc_core.io.lines.resolve_lines`).
        outs: Each line's label store path or URL.
        checked: Called once every line has passed its checks against the checkpoint, before
            any label store is created, reopened or planned (``sscc reprocess`` grows its
            stores there).

    Returns:
        The summary: totals (``out``, ``model_version``, ``tiles``, ``tiles_labelled``,
        ``tiles_unchanged``, ``pixels_labelled``, ``seconds``, ``pixels_per_s``,
        ``pixels_per_actor_s``) and ``lines``, one dict per line (``line``, ``store``, ``out``,
        ``tiles``, ``tiles_labelled``, ``tiles_unchanged``, ``pixels_labelled``).

    Raises:
        ValueError: Bad arguments, band-count or wavelength mismatch, an incompatible existing
            label store, an unreadable input tile, or a failed write (the stores of the lines
            without failures are completed first).
        FileNotFoundError: Missing checkpoint.
    """
    log = setup_logging("predict", args.log_file, output=args.out)
    for name in ("actors", "threads", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tiles_per_batch is not None and args.tiles_per_batch < 1:
        raise ValueError(f"--tiles-per-batch must be >= 1, got {args.tiles_per_batch}")
    for url in (args.checkpoint, args.out):
        storage.check_url(url)
    check_gpus(args)
    ckpt = load_checkpoint(args.checkpoint)
    labeller = Labeller.from_checkpoint(ckpt, args.mode, args.batch_size)
    dense = labeller.dense  # raises for --mode dense with a patch-only backbone
    cubes = [line.cube for line in lines]
    for line, cube in zip(lines, cubes):
        check_bands(labeller, cube, line.store, args.checkpoint, log)
    if checked is not None:
        checked()
    spec = LabelStoreSpec(
        model_version=ckpt.model_version, n_clusters=ckpt.config.model.n_clusters,
        tile_size=args.tile_size or ckpt.config.tile.tile_size, confidence=args.confidence,
        config=to_dict(ckpt.config),
    )
    runs = prepare_lines(lines, outs, cubes, spec, args.recheck)
    verb = "check" if args.recheck else "label"

    def counts(some: list[LineRun], unit: str) -> str:
        return (f"{sum(len(r.plan.nonempty) for r in some)} non-empty {unit}tiles, "
                f"{sum(len(r.plan.done) for r in some)} already done, "
                f"{sum(len(r.plan.todo) for r in some)} to {verb}")

    for r in runs:
        for problem in r.plan.damaged.values():
            print(f"predict: warning: {r.labels.path}: {problem}; relabelling it",
                  file=sys.stderr, flush=True)
            log_event(log, "tile_damaged", line=r.line.name, problem=problem)
        log_event(log, "plan", model_version=ckpt.model_version, line=r.line.name,
                  store=r.line.store, out=str(r.out), tiles=len(r.plan.nonempty),
                  done=len(r.plan.done), todo=len(r.plan.todo), recheck=args.recheck)
    several = f"{len(runs)} lines, " if len(runs) > 1 else ""
    print(f"predict: model {ckpt.model_version} ({'dense' if dense else 'patch'} inference), "
          f"{several}{counts(runs, f'{spec.tile_size}px ')} -> {args.out}", flush=True)
    if len(runs) > 1:
        for r in runs:
            print(f"predict:   {r.line.name}: {counts([r], '')} -> {r.out}", flush=True)
    start = time.perf_counter()
    tallies = [LineTally() for _ in runs]
    if any(r.plan.todo for r in runs):
        for r in runs:
            if r.plan.todo:
                r.labels.mark_incomplete()
        left = ("the label store is left incomplete with the tiles recorded so far; free space "
                "and rerun the same command (it labels the rest)")
        with failing_output(args.out, "labelling", lambda: left), \
                dropping_lines(RAY_DATA_ACTOR_ARGS):  # Ray core's line per Ray Data map actor
            tallies = _label_on_ray(runs, labeller.reader, args, log)
    seconds = time.perf_counter() - start
    for r, tally in zip(runs, tallies):
        if not tally.failed:
            r.labels.mark_complete(r.valid, r.spec)
    broken = [(r, tally) for r, tally in zip(runs, tallies) if tally.failed]
    if broken:
        total = sum(len(r.plan.todo) for r in runs)
        stores = ", ".join(str(r.out) for r, _ in broken)
        raise ValueError(f"{sum(len(t.failed) for _, t in broken)} of {total} tiles failed, "
                         f"label store{'s' if len(broken) > 1 else ''} {stores} left incomplete "
                         f"(rerun the same command after fixing the cause); first: "
                         f"{broken[0][1].failed[0]}")
    per_line = [{"line": r.line.name, "store": r.line.store, "out": str(r.out),
                 "tiles": len(r.plan.nonempty), "tiles_labelled": t.tiles,
                 "tiles_unchanged": len(r.plan.todo) - t.tiles, "pixels_labelled": t.pixels}
                for r, t in zip(runs, tallies)]
    n_tiles, n_pixels = sum(t.tiles for t in tallies), sum(t.pixels for t in tallies)
    busy = sum(t.seconds for t in tallies)
    summary = {
        "out": str(args.out), "model_version": ckpt.model_version,
        "tiles": sum(e["tiles"] for e in per_line), "tiles_labelled": n_tiles,
        "tiles_unchanged": sum(e["tiles_unchanged"] for e in per_line),
        "pixels_labelled": n_pixels, "seconds": round(seconds, 3),
        "pixels_per_s": round(n_pixels / seconds, 1) if n_tiles else 0.0,
        "pixels_per_actor_s": round(n_pixels / busy, 1) if busy > 0 else 0.0,
        "lines": per_line,
    }
    log_event(log, "summary", **summary)
    stored = (f"store complete: {args.out}" if len(runs) == 1
              else f"{len(runs)} label stores complete under {args.out}")
    print(f"summary: labelled {n_tiles} tiles ({n_pixels} pixels) in {seconds:.1f} s "
          f"({summary['pixels_per_s']:.0f} pixels/s end to end, "
          f"{summary['pixels_per_actor_s']:.0f} pixels/s per busy actor); all "
          f"{summary['tiles']} non-empty tiles done, {stored}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc predict``; returns the process exit code (2 on user errors)."""
    return run_stage("predict", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
