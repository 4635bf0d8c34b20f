"""``sscc predict``: label a cube store out of core, tile by tile, on a pool of Ray actors.

Usage::

    sscc predict --checkpoint runs/ip/model.pt --store runs/ip.zarr --out runs/ip_labels.zarr \\
        [--tile-size 256] [--actors 2] [--confidence] [--mode auto|dense|patch] [--batch-size 2048]
        [--recheck]

The driver loads the checkpoint, checks the cube's band count and wavelengths, creates (or
reopens) the label store (:mod:`sscc_core.labelling.labelstore`), lists the non-empty tiles and drops those
already marked done, so a rerun after a crash, or after new tiles gained data, labels only the
rest. With ``--recheck`` the done tiles are kept in the list: their input window is re-read and
only those whose fingerprint differs from their record's are relabelled (``sscc reprocess``).
Done tiles whose chunks are missing, unreadable or do not hold what their records say
(:meth:`sscc_core.labelling.labelstore.LabelStore.damaged_tiles`) are labelled again. An existing store
made from another input (its recorded
:func:`sscc_core.io.store.cube_identity` differs) is refused without ``--recheck``; with it,
the new input is recorded once every tile has been rechecked.
The tile descriptors go through ``ray.data.from_items(...).map_batches(LabelTiles, ...)`` on an
actor pool: each actor loads the checkpoint once, reopens the input store with zarr (through a
small cache of decoded chunks, :class:`ChunkCache`, so a tile's fingerprint and label reads and
the overlapping halos of neighbouring tiles decode each chunk once), fingerprints
the tile's input window, labels the tile with its halo
(:meth:`sscc_core.labelling.inference.Labeller.label_tile`), writes the tile's whole chunk and returns the
tile's record (with the fingerprint); the driver, the only writer of the store's tile records,
records the finished tiles in batches (at most every ``RECORD_SECONDS``), and marks the store
complete last. Labels equal the single-process
:func:`sscc_core.labelling.inference.label_scene` bit for bit. An unreadable input tile fails the run with
an error naming the tile. The store is marked complete only when every non-empty tile is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import zarr

from pipelines.common import add_logging_args, ensure_ray, log_event, run_stage, setup_logging
from sscc_core import storage
from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.config import to_dict
from sscc_core.labelling.inference import Labeller
from sscc_core.io.store import cube_identity, open_cube
from sscc_core.labelling.labelstore import (
    LabelStore,
    LabelStoreSpec,
    TileRecord,
    prepare_label_store,
    tile_fingerprint,
)
from sscc_core.io.tiling import Tile, nonempty_tiles

TILE_FIELDS = tuple(f.name for f in dataclasses.fields(Tile))
BLOCKS_PER_ACTOR = 16
CHUNK_CACHE_BYTES = 768 * 2**20  # per actor and array: bound of the decoded-chunk cache
RECORD_SECONDS = 1.0  # the driver records finished tiles at most this often (and at the end)


class ChunkCache:
    """Read-only view of a Zarr array that decodes each spatial chunk once and keeps the most
    recently used ones, so the fingerprint read and the label read of a tile, and the overlapping
    halo windows of neighbouring tiles of one actor, do not decode the same chunks again.

    Only ``arr[..., y0:y1, x0:x1]`` / ``arr[y0:y1, x0:x1]`` reads (what the tiling helpers do) go
    through the cache; any other key is passed to the array. Values are identical to the array's.

    Args:
        array: ``(..., H, W)`` Zarr array (all leading axes in one chunk, as in the cube store).
        tile_size: Tile side in pixels; the cache holds the chunks of one tile's halo window plus
            its neighbours' (``(tile // chunk + 2)`` per axis), at most ``CHUNK_CACHE_BYTES``.
    """

    def __init__(self, array: Any, tile_size: int) -> None:
        self.array, self.shape, self.dtype = array, tuple(array.shape), array.dtype
        self.cy, self.cx = array.chunks[-2:]
        lead = math.prod(self.shape[:-2])
        chunk_bytes = lead * self.cy * self.cx * np.dtype(self.dtype).itemsize
        wanted = (tile_size // self.cy + 2) * (tile_size // self.cx + 2)
        self.capacity = max(1, min(wanted, CHUNK_CACHE_BYTES // max(chunk_bytes, 1)))
        self.chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _chunk(self, i: int, j: int) -> np.ndarray:
        """Decoded spatial chunk ``(i, j)``, ``(..., cy, cx)`` (smaller at the scene edge)."""
        if (i, j) in self.chunks:
            self.chunks.move_to_end((i, j))
            return self.chunks[(i, j)]
        block = np.asarray(self.array[..., i * self.cy : (i + 1) * self.cy,
                                      j * self.cx : (j + 1) * self.cx])
        self.chunks[(i, j)] = block
        if len(self.chunks) > self.capacity:
            self.chunks.popitem(last=False)
        return block

    def __getitem__(self, key: Any) -> np.ndarray:
        parts = key if isinstance(key, tuple) else (key,)
        parts = parts[1:] if parts and parts[0] is Ellipsis else parts
        plain = (len(parts) == 2 and all(isinstance(k, slice) and k.step in (None, 1) for k in parts)
                 and (len(self.shape) == 2 or key[0] is Ellipsis))
        if not plain:
            return np.asarray(self.array[key])
        (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(parts, self.shape[-2:]))
        out = np.empty((*self.shape[:-2], max(y1 - y0, 0), max(x1 - x0, 0)), dtype=self.dtype)
        for i in range(y0 // self.cy, (y1 - 1) // self.cy + 1 if y1 > y0 else y0 // self.cy):
            for j in range(x0 // self.cx, (x1 - 1) // self.cx + 1 if x1 > x0 else x0 // self.cx):
                block = self._chunk(i, j)
                ya, yb = max(y0, i * self.cy), min(y1, (i + 1) * self.cy)
                xa, xb = max(x0, j * self.cx), min(x1, (j + 1) * self.cx)
                out[..., ya - y0 : yb - y0, xa - x0 : xb - x0] = block[
                    ..., ya - i * self.cy : yb - i * self.cy, xa - j * self.cx : xb - j * self.cx]
        return out


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
    add_logging_args(p, beside="OUT")


class LabelTiles:
    """Ray Data actor: labels tiles and writes their chunks into the label store; the driver
    records them.

    A tile whose recorded fingerprint (the ``fingerprint`` column of its descriptor) equals that
    of its current input window is skipped. A tile whose input cannot be read or whose output
    cannot be written is reported in the ``error`` column (and gets no record) while the other
    tiles go on; the driver fails the run.

    Args:
        checkpoint: Checkpoint path (loaded once per actor).
        store: Input cube store path.
        out: Label store path (created by the driver).
        mode: Inference mode of :class:`sscc_core.labelling.inference.Labeller`.
        batch_size: Patches per forward pass in patch mode.
        threads: torch intra-op threads of this actor.
    """

    def __init__(self, checkpoint: str, store: str, out: str, mode: str, batch_size: int,
                 threads: int) -> None:
        torch.set_num_threads(threads)
        self.labeller = Labeller.from_checkpoint(load_checkpoint(checkpoint), mode, batch_size)
        group = zarr.open_group(store, mode="r")
        self.store = store
        self.out = LabelStore(out)
        self.cube = ChunkCache(group["reflectance"], self.out.tile_size)
        self.valid = ChunkCache(group["valid"], self.out.tile_size)

    def fingerprint(self, tile: Tile) -> str:
        """The tile's input fingerprint; an unreadable input window becomes a clear error.

        Raises:
            ValueError: The input store could not be read or decoded there (corrupt chunk).
        """
        try:
            return tile_fingerprint(self.cube, self.valid, tile, self.labeller.context)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ValueError(
                f"{self.store}: cannot read the input of tile r{tile.row}_c{tile.col} (rows "
                f"{tile.y0}:{tile.y1}, cols {tile.x0}:{tile.x1}, halo {self.labeller.context}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Label every tile of a batch of tile descriptors.

        Args:
            batch: Columns of :class:`sscc_core.io.tiling.Tile` fields, each ``(n,)`` int, and
                ``fingerprint`` (the tile's recorded fingerprint, "" when not done).

        Returns:
            Columns ``row``, ``col``, ``n_valid`` (labelled pixels), ``seconds`` (label time),
            ``labelled`` (False for a tile skipped as unchanged or failed), ``error`` (the
            failure message, "" on success) and ``fingerprint`` (of the input window), each
            ``(n,)``.
        """
        result: dict[str, list] = {"row": [], "col": [], "n_valid": [], "seconds": [],
                                   "labelled": [], "error": [], "fingerprint": []}
        for i in range(len(batch["row"])):
            tile = Tile(*(int(batch[name][i]) for name in TILE_FIELDS))
            start = time.perf_counter()
            try:
                row = self.label(tile, str(batch["fingerprint"][i]), start)
            except ValueError as exc:  # unreadable input or failed write (LabelStoreError)
                row = (tile.row, tile.col, 0, time.perf_counter() - start, False, str(exc), "")
            for key, value in zip(result, row):
                result[key].append(value)
        return {key: np.asarray(values) for key, values in result.items()}

    def label(self, tile: Tile, recorded: str, start: float
              ) -> tuple[int, int, int, float, bool, str, str]:
        """Label one tile and write its chunk unless ``recorded`` (its recorded fingerprint)
        is current; one result row."""
        fingerprint = self.fingerprint(tile)
        if recorded and recorded == fingerprint:
            return tile.row, tile.col, 0, time.perf_counter() - start, False, "", fingerprint
        labels, conf = self.labeller.label_tile(self.cube, self.valid, tile)
        seconds = time.perf_counter() - start
        n_valid = self.out.write_chunk(tile, labels, conf if self.out.has_confidence else None)
        return tile.row, tile.col, n_valid, seconds, True, "", fingerprint


def actor_cpus(actors: int, cluster_cpus: float) -> float:
    """Default CPUs per actor: one each when the cluster has room, else an equal share of the
    cluster minus half a CPU for the driver and Ray Data (rounded down to 0.05, at least 0.05)."""
    share = (cluster_cpus - 0.5) / actors
    return 1.0 if share >= 1.0 else max(0.05, math.floor(share * 20) / 20)


def _label_on_ray(
    todo: list[Tile], recorded: dict[tuple[int, int], str], out: LabelStore,
    args: argparse.Namespace, log: Any,
) -> tuple[int, int, float]:
    """Run the actor pool over ``todo``, logging each tile as its result arrives and recording
    the labelled tiles in ``out`` (in batches, at most every ``RECORD_SECONDS``, and at the end).

    Args:
        todo: Tiles to label (or, with a recorded fingerprint, to check).
        recorded: Recorded fingerprints of done tiles, by ``(row, col)``.
        out: The label store (the driver is the only writer of its records).
        args: The parsed command line.
        log: The run's logger.

    Returns:
        ``(tiles labelled, labelled pixels, summed per-tile label seconds)``; tiles found
        unchanged are logged (``tile_unchanged``) but not counted.

    Raises:
        ValueError: Some tiles failed (each is logged as ``tile_failed``); the others were
            labelled and recorded, so a rerun after the fix does only the failed ones.
    """
    import ray

    ensure_ray()
    actors = min(args.actors, len(todo))  # an actor without a tile would only delay the start
    cpus = args.cpus_per_actor or actor_cpus(actors, ray.cluster_resources().get("CPU", 1))
    items = [{**dataclasses.asdict(t), "fingerprint": recorded.get((t.row, t.col), "")}
             for t in todo]
    n_blocks = min(len(items), BLOCKS_PER_ACTOR * actors)
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        LabelTiles,
        fn_constructor_kwargs=dict(
            checkpoint=storage.resolve(args.checkpoint), store=storage.resolve(args.store),
            out=storage.resolve(args.out), mode=args.mode, batch_size=args.batch_size,
            threads=args.threads,
        ),
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=1,
        batch_format="numpy",
        num_cpus=cpus,
    )
    log_event(log, "actors_started", actors=actors, cpus_per_actor=cpus, tiles=len(todo))
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
    for url in (args.checkpoint, args.store, args.out):
        storage.check_url(url)
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
    damaged = out.damaged_tiles()
    if damaged:  # a chunk lost or corrupted since it was written: label the tile again
        out.forget_tiles(damaged)
    for problem in damaged.values():
        print(f"predict: warning: {out.path}: {problem}; relabelling it", file=sys.stderr,
              flush=True)
        log_event(log, "tile_damaged", problem=problem)
    valid = zarr.open_group(args.store, mode="r")["valid"]
    nonempty = nonempty_tiles(valid, out.tiles())
    done = out.done_tiles()  # one read of the store's tile records
    records = ({(r["row"], r["col"]): r["fingerprint"] for r in out.tile_records()}
               if args.recheck else {})
    todo = [t for t in nonempty if args.recheck or (t.row, t.col) not in done]
    if args.recheck:  # tiles whose input became empty must not keep their old labels
        keep = {(t.row, t.col) for t in nonempty}
        for tile in out.tiles():
            if (tile.row, tile.col) in done and (tile.row, tile.col) not in keep:
                out.mark_incomplete()
                out.clear_tile(tile)
        done &= keep
    n_done = len(done & {(t.row, t.col) for t in nonempty})
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
        n_tiles, n_pixels, busy = _label_on_ray(todo, records, out, args, log)
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
