"""``sscc predict``: label a cube store out of core, tile by tile, on a pool of Ray actors.

Usage::

    sscc predict --checkpoint runs/ip/model.pt --store runs/ip.zarr --out runs/ip_labels.zarr \\
        [--tile-size 256] [--actors 2] [--confidence] [--mode auto|dense|patch] [--batch-size 2048]

The driver loads the checkpoint, checks the cube's band count, creates (or reopens) the label store
(:mod:`sscc_core.labelstore`), lists the non-empty tiles and drops those already marked done, so a
rerun after a crash, or after new tiles gained data, labels only the rest. The remaining tile
descriptors go through ``ray.data.from_items(...).map_batches(LabelTiles, ...)`` on an actor pool:
each actor loads the checkpoint once, reopens the input store with zarr, labels a tile with its
halo (:meth:`sscc_core.inference.Labeller.label_tile`), writes the tile's whole chunk, then its
completion marker. Labels equal the single-process :func:`sscc_core.inference.label_scene` bit for
bit. The store is marked complete only when every non-empty tile is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from pipelines.common import add_logging_args, ensure_ray, log_event, run_stage, setup_logging
from sscc_core.checkpoint import load_checkpoint
from sscc_core.config import to_dict
from sscc_core.inference import Labeller
from sscc_core.io.store import open_cube
from sscc_core.labelstore import LabelStore, LabelStoreSpec, prepare_label_store
from sscc_core.tiling import Tile, nonempty_tiles

TILE_FIELDS = tuple(f.name for f in dataclasses.fields(Tile))
BLOCKS_PER_ACTOR = 16


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the predict stage."""
    p = argparse.ArgumentParser(
        prog="sscc predict",
        description="Label a Zarr cube store with a trained SSCC checkpoint, tile by tile on Ray "
        "actors, into a Zarr label store on the same grid (resumable).",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt (or the directory holding it)")
    p.add_argument("--store", required=True, help="input cube store (sscc ingest output)")
    p.add_argument("--out", required=True, help="output label store (.zarr); an existing one made "
                   "by the same model is resumed")
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
    add_logging_args(p)
    return p


class LabelTiles:
    """Ray Data actor: labels tiles and writes them (chunk, then marker) into the label store.

    Args:
        checkpoint: Checkpoint path (loaded once per actor).
        store: Input cube store path.
        out: Label store path (created by the driver).
        mode: Inference mode of :class:`sscc_core.inference.Labeller`.
        batch_size: Patches per forward pass in patch mode.
        threads: torch intra-op threads of this actor.
    """

    def __init__(self, checkpoint: str, store: str, out: str, mode: str, batch_size: int,
                 threads: int) -> None:
        torch.set_num_threads(threads)
        self.labeller = Labeller.from_checkpoint(load_checkpoint(checkpoint), mode, batch_size)
        group = zarr.open_group(store, mode="r")
        self.cube, self.valid = group["reflectance"], group["valid"]
        self.out = LabelStore(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Label every tile of a batch of tile descriptors.

        Args:
            batch: Columns of :class:`sscc_core.tiling.Tile` fields, each ``(n,)`` int.

        Returns:
            Columns ``row``, ``col``, ``n_valid`` (labelled pixels) and ``seconds`` (label time),
            each ``(n,)``.
        """
        result: dict[str, list] = {"row": [], "col": [], "n_valid": [], "seconds": []}
        for i in range(len(batch["row"])):
            tile = Tile(*(int(batch[name][i]) for name in TILE_FIELDS))
            start = time.perf_counter()
            labels, conf = self.labeller.label_tile(self.cube, self.valid, tile)
            seconds = time.perf_counter() - start
            n_valid = self.out.write_tile(
                tile, labels, conf if self.out.has_confidence else None, seconds
            )
            for key, value in zip(result, (tile.row, tile.col, n_valid, seconds)):
                result[key].append(value)
        return {key: np.asarray(values) for key, values in result.items()}


def actor_cpus(actors: int, cluster_cpus: float) -> float:
    """Default CPUs per actor: one each when the cluster has room, else an equal share of the
    cluster minus half a CPU for the driver and Ray Data (rounded down to 0.05, at least 0.05)."""
    share = (cluster_cpus - 0.5) / actors
    return 1.0 if share >= 1.0 else max(0.05, math.floor(share * 20) / 20)


def _label_on_ray(
    todo: list[Tile], args: argparse.Namespace, log: Any
) -> tuple[int, int, float]:
    """Run the actor pool over ``todo``, logging each tile as its result arrives.

    Returns:
        ``(tiles, labelled pixels, summed per-tile label seconds)``.
    """
    import ray

    ensure_ray()
    cpus = args.cpus_per_actor or actor_cpus(args.actors, ray.cluster_resources().get("CPU", 1))
    items = [dataclasses.asdict(t) for t in todo]
    n_blocks = min(len(items), BLOCKS_PER_ACTOR * args.actors)
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        LabelTiles,
        fn_constructor_kwargs=dict(
            checkpoint=str(Path(args.checkpoint).resolve()), store=str(Path(args.store).resolve()),
            out=str(Path(args.out).resolve()), mode=args.mode, batch_size=args.batch_size,
            threads=args.threads,
        ),
        compute=ray.data.ActorPoolStrategy(size=args.actors),
        batch_size=1,
        batch_format="numpy",
        num_cpus=cpus,
    )
    log_event(log, "actors_started", actors=args.actors, cpus_per_actor=cpus, tiles=len(todo))
    every = max(1, len(todo) // 10)
    n_tiles = n_pixels = 0
    busy = 0.0
    for row in ds.iter_rows():
        n_tiles += 1
        n_pixels += int(row["n_valid"])
        busy += float(row["seconds"])
        log_event(log, "tile_done", row=int(row["row"]), col=int(row["col"]),
                  n_valid=int(row["n_valid"]), seconds=round(float(row["seconds"]), 4),
                  done=n_tiles, total=len(todo))
        if n_tiles % every == 0 or n_tiles == len(todo):
            print(f"predict: {n_tiles}/{len(todo)} tiles labelled", flush=True)
    return n_tiles, n_pixels, busy


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed command line; returns the run summary.

    Raises:
        ValueError: Bad arguments, band-count mismatch, or an incompatible existing label store.
        FileNotFoundError: Missing checkpoint or cube store.
    """
    log = setup_logging("predict", args.log_file)
    for name in ("actors", "threads", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    ckpt = load_checkpoint(args.checkpoint)
    labeller = Labeller.from_checkpoint(ckpt, args.mode, args.batch_size)
    dense = labeller.dense  # raises for --mode dense with a patch-only backbone
    cube = open_cube(args.store)
    n_bands = int(cube.sizes["band"])
    if n_bands != labeller.pre.n_bands:
        raise ValueError(f"{args.store}: cube has {n_bands} bands but checkpoint {args.checkpoint} "
                         f"was fitted on {labeller.pre.n_bands} bands")
    spec = LabelStoreSpec(
        model_version=ckpt.model_version, n_clusters=ckpt.config.model.n_clusters,
        tile_size=args.tile_size or ckpt.config.tile.tile_size, confidence=args.confidence,
        config=to_dict(ckpt.config), input_store=str(Path(args.store).resolve()),
    )
    out = prepare_label_store(args.out, cube, spec)
    valid = zarr.open_group(args.store, mode="r")["valid"]
    nonempty = nonempty_tiles(valid, out.tiles())
    done = out.done_tiles()
    todo = [t for t in nonempty if (t.row, t.col) not in done]
    print(f"predict: model {ckpt.model_version} ({'dense' if dense else 'patch'} inference), "
          f"{len(nonempty)} non-empty {spec.tile_size}px tiles, "
          f"{len(nonempty) - len(todo)} already done, {len(todo)} to label -> {args.out}", flush=True)
    log_event(log, "plan", model_version=ckpt.model_version, store=args.store, out=args.out,
              tiles=len(nonempty), done=len(nonempty) - len(todo), todo=len(todo))
    start = time.perf_counter()
    n_tiles = n_pixels = 0
    busy = 0.0
    if todo:
        out.mark_incomplete()
        n_tiles, n_pixels, busy = _label_on_ray(todo, args, log)
    seconds = time.perf_counter() - start
    out.mark_complete(valid)
    summary = {
        "out": str(args.out), "model_version": ckpt.model_version, "tiles": len(nonempty),
        "tiles_labelled": n_tiles, "pixels_labelled": n_pixels, "seconds": round(seconds, 3),
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
