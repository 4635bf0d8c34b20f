"""Measuring the benchmark sections; each one's raw results go to ``OUT/<section>.json``
(:func:`save`), which :mod:`benchmarks.render` turns into plots and the Markdown report.

Sections (the report is rendered from every JSON present in ``OUT``, so ``make bench`` and
``make bench-scale`` can run separately):

- ``throughput``: the full Ray labelling pipeline (:func:`pipelines.predict.run`: read ->
  pre-process -> infer -> write) on the largest mosaic, next to the limits measured in the same
  run on a seeded sample of the same tiles, in the same number of processes as pipeline actors
  (started together behind a barrier, one torch/BLAS thread each): raw Zarr read+decode of the
  tiles with their halo, the pre-processing map, the model's dense forward pass on in-memory
  feature tiles, and k-means' nearest centroid (``sscc_core.model.baselines.predict``) on in-memory pixel features.
- ``dense``: dense fcn vs per-patch fcn vs per-patch authors' ResNet on the same tile.
- ``train``: Ray Train with 1 and 2 workers vs the plain PyTorch loop
  (:func:`sscc_core.training.reference.train_reference`) on the same patches and config.
- ``memory``: peak summed RSS of this driver and every Ray process it started, and peak object
  store bytes, while labelling mosaics of 1x, 4x and 16x size.
- ``accuracy``: SSCC (short training on a pixel sample of the smallest mosaic) vs k-means (fitted
  on the same sample) against the mosaic's true labels, on the 4x mosaic.
- ``scale`` (``--scale-gb``): labelling one mosaic larger than the machine's RAM with a tiny model.

Synthetic mosaics (:mod:`sscc_core.io.synthetic`, real Salinas-A spectra) are generated once into
``--work`` and reused while their parameters match.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import re
import shlex
import shutil
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import predict, synth
from pipelines.common import ensure_ray
from sscc_core.io import synthetic
from sscc_core.config import ModelConfig, SSCCConfig, TrainConfig, replace
from sscc_core.profiling import TreeMemorySampler, machine_info

SECTIONS = ("throughput", "dense", "train", "memory", "accuracy")
GOAL_RATIO = 0.8  # issue #13: labelling at >= 0.8 of min(read limit, model limit)
FLAT_TOLERANCE = 0.25
CONTINENTAL_PIXELS = 1e11
BENCH_MODEL = ModelConfig(n_clusters=6, backbone="fcn", stem_channels=16, widths=(16, 32, 64),
                          head_hidden=128)
OBJECT_STORE_METRIC = re.compile(
    r'^ray_object_store_memory\{[^}]*Location="MMAP_(?:SHM|DISK)"[^}]*\} (\S+)$', re.MULTILINE)
TINY_MODEL = ModelConfig(n_clusters=6, backbone="fcn", stem_channels=8, widths=(8, 8, 8),
                         head_hidden=32)


# ---- mosaics, models ---------------------------------------------------------------------------


def ensure_mosaic(path: Path, seed: int, size_gb: float | None = None,
                  side: int | None = None) -> Path:
    """A synthetic Salinas-A mosaic at ``path``, generated with Ray unless an identical one exists.

    Args:
        path: Store path.
        seed: Mosaic seed.
        size_gb: Reflectance size in decimal GB (square mosaic), or
        side: Exact square side in pixels.
    """
    argv = ["--out", str(path), "--seed", str(seed), "--overwrite"]
    argv += ["--size-gb", str(size_gb)] if side is None else ["--height", str(side), "--width", str(side)]
    args = synth.build_parser().parse_args(argv)
    spec = synth.spec_from_args(args, synthetic.class_library(args.source))
    if path.is_dir():
        import zarr

        found = dict(zarr.open_group(path, mode="r").attrs).get("synthetic")
        if json.dumps(found, sort_keys=True) == json.dumps(spec.params(), sort_keys=True):
            return path
    synth.run(args)
    return path


def _open(store: Path) -> tuple[Any, Any, Any]:
    import zarr

    group = zarr.open_group(store, mode="r")
    return group["reflectance"], group["valid"], group["labels"]


def sample_patches(store: Path, cfg: SSCCConfig, n: int, seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Fit the pre-processing on a pixel sample of a store and gather ``n`` sampled patches.

    Returns:
        ``(pre, patches, sample)``: the fitted :class:`sscc_core.model.preprocess.Preprocessor`,
        (n, C, P, P) float32 patches of uniformly sampled valid pixels, and the (H, W) bool mask
        of those pixels.
    """
    from sscc_core.model.patches import gather_patches
    from sscc_core.model.preprocess import fit_preprocessor

    cube, valid, _ = _open(store)
    pre = fit_preprocessor(cube, valid, cfg.preprocess, cfg.tile.tile_size, "sample")
    mask = np.asarray(valid[:], dtype=bool)
    flat = np.flatnonzero(mask)
    pick = np.random.default_rng(seed).choice(flat, size=min(n, flat.size), replace=False)
    sample = np.zeros(mask.shape, dtype=bool)
    sample.flat[pick] = True
    patches, _ = gather_patches(cube, valid, sample, pre, cfg.preprocess.patch_size, cfg.tile.tile_size)
    return pre, patches, sample


def train_model(store: Path, cfg: SSCCConfig, n: int, seed: int, out: Path) -> dict[str, Any]:
    """Train SSCC with the plain loop on ``n`` sampled pixels of ``store``; save a checkpoint.

    Also fits k-means (K = ``cfg.model.n_clusters``) on the same pixels' PCA scores.

    Returns:
        ``checkpoint`` (path), ``kmeans`` (fitted estimator), ``seconds``, ``history``.
    """
    import torch

    from sscc_core.model.baselines import fit_kmeans_baseline
    from sscc_core.model.checkpoint import Checkpoint, save_checkpoint
    from sscc_core.io.store import open_cube
    from sscc_core.training.reference import patch_views, train_reference

    torch.set_num_threads(1)
    start = time.perf_counter()
    pre, patches, sample = sample_patches(store, cfg, n, seed)
    training = train_reference(patch_views(torch.from_numpy(patches), cfg), pre.n_components, cfg)
    cube = open_cube(store)
    wavelength = tuple(float(w) for w in cube["wavelength"].values) if "wavelength" in cube.coords else ()
    path = save_checkpoint(Checkpoint(
        config=cfg, in_channels=pre.n_components, n_bands=pre.n_bands,
        model_state=training.model.state_dict(), preprocess_state=pre.to_state(),
        epoch=training.epoch, wavelength=wavelength,
        extra={"history": training.history, "store": str(store), "train_samples": len(patches)},
    ), out)
    reflectance, valid, _ = _open(store)
    kmeans = fit_kmeans_baseline(reflectance, valid, sample, pre, cfg.model.n_clusters, seed,
                                 tile_size=cfg.tile.tile_size)
    return {"checkpoint": path, "kmeans": kmeans, "seconds": time.perf_counter() - start,
            "history": training.history}


# ---- the pipeline under the memory sampler -----------------------------------------------------


def object_store_bytes() -> float:
    """Bytes held in the Ray object store (shared memory and its disk fallback, every node), as
    the raylets last reported them to Ray's Prometheus metrics endpoint (public; refreshed every
    few seconds, so short peaks between two reports are missed).

    Raises:
        OSError: A node's metrics endpoint cannot be read (the memory sampler records NaN).
    """
    import ray

    total = 0.0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        total += sum(float(m.group(1)) for m in OBJECT_STORE_METRIC.finditer(text))
    return total


def run_pipeline(checkpoint: Path, store: Path, out: Path, actors: int, tile_size: int,
                 interval_s: float = 0.5, use_gpu: bool = False) -> dict[str, Any]:
    """``sscc predict`` into a fresh label store (label actors on GPUs with ``use_gpu``),
    sampling the process tree's memory meanwhile.

    Returns:
        The predict summary plus ``memory`` (:meth:`MemorySeries.to_dict`), ``command`` and
        ``store_gb`` (reflectance size, decimal GB).
    """
    if out.exists():
        shutil.rmtree(out)
    argv = ["--checkpoint", str(checkpoint), "--store", str(store), "--out", str(out),
            "--actors", str(actors), "--tile-size", str(tile_size),
            "--log-file", str(out.with_suffix(".log.jsonl"))] + (["--use-gpu"] if use_gpu else [])
    args = predict.build_parser().parse_args(argv)
    with TreeMemorySampler(interval_s=interval_s,
                           probes={"object_store_bytes": object_store_bytes}) as sampler:
        summary = predict.run(args)
    cube, valid, _ = _open(store)
    return {**summary, "memory": sampler.series.to_dict(),
            "store_gb": cube.nbytes / 1e9, "shape": list(cube.shape),
            "n_valid": int(np.count_nonzero(valid[:])),
            "command": "sscc predict " + shlex.join(argv)}


# ---- limits: the same tiles in the same number of plain processes -----------------------------


def _limit_worker(kind: str, store: str, checkpoint: str, tiles: list[tuple[int, ...]],
                  kmeans: Any, barrier: Any, use_gpu: bool) -> tuple[int, float, float]:
    """One limit process: set up, wait for the others, then time ``kind`` over ``tiles``.

    Kinds: ``read`` (reflectance + valid with halo, decoded), ``preprocess`` (band z-score +
    PCA of a block already in memory), ``model`` (dense forward pass on in-memory feature tiles
    of the tiles' shapes), ``kmeans`` (nearest-centroid labels of in-memory pixel features).

    Returns:
        ``(pixels, start, end)``: pixels processed and the wall-clock (``time.time``) span.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from sscc_core.model.baselines import predict_block
    from sscc_core.model.checkpoint import load_checkpoint
    from sscc_core.labelling.inference import Labeller
    from sscc_core.model.network import predict_dense
    from sscc_core.io.tiling import Tile, read_with_halo

    torch.set_num_threads(1)
    threadpool_limits(1)
    cube, valid, _ = _open(Path(store))
    labeller = Labeller.from_checkpoint(load_checkpoint(checkpoint))
    halo = labeller.model.halo
    device = "cuda" if use_gpu else "cpu"
    model = labeller.model.to(device)
    gen = torch.Generator().manual_seed(0)
    work = []
    for t in (Tile(*t) for t in tiles):  # inputs prepared before the clock starts
        shape = (t.height + 2 * halo, t.width + 2 * halo)
        if kind == "preprocess":
            work.append((read_with_halo(cube, t, halo), read_with_halo(valid, t, halo).astype(bool)))
        elif kind == "model":
            work.append(torch.randn((labeller.pre.n_components, *shape), generator=gen).to(device))
        elif kind == "kmeans":
            work.append(np.random.default_rng(0).standard_normal(
                (labeller.pre.n_components, t.height, t.width)).astype(np.float32))
        else:
            work.append(t)
    pixels = sum(Tile(*t).height * Tile(*t).width for t in tiles)
    barrier.wait()
    start = time.time()
    for item in work:
        if kind == "read":
            read_with_halo(cube, item, halo), read_with_halo(valid, item, halo)
        elif kind == "preprocess":
            labeller.pre.transform(*item)
        elif kind == "model":
            predict_dense(model, item)[0].cpu()
        elif kind == "kmeans":
            predict_block(kmeans, item)
        else:
            raise ValueError(f"unknown limit kind {kind!r}")
    return pixels, start, time.time()


def measure_limit(kind: str, store: Path, checkpoint: Path, tiles: list[Any], processes: int,
                  kmeans: Any = None, use_gpu: bool = False) -> dict[str, float]:
    """Throughput of one limit over ``tiles`` split round-robin across ``processes`` processes.

    Returns:
        ``pixels``, ``seconds`` (first start to last end, after the barrier) and
        ``pixels_per_s``.
    """
    ctx = multiprocessing.get_context("spawn")
    shares = [[dataclasses.astuple(t) for t in tiles[i::processes]] for i in range(processes)]
    shares = [s for s in shares if s]
    with ctx.Manager() as manager, ProcessPoolExecutor(len(shares), mp_context=ctx) as pool:
        barrier = manager.Barrier(len(shares))
        futures = [pool.submit(_limit_worker, kind, str(store), str(checkpoint), share, kmeans,
                               barrier, use_gpu) for share in shares]
        results = [f.result() for f in futures]
    pixels = sum(r[0] for r in results)
    seconds = max(r[2] for r in results) - min(r[1] for r in results)
    return {"pixels": pixels, "seconds": seconds, "pixels_per_s": pixels / seconds}


def sample_tiles(store: Path, tile_size: int, n: int, seed: int) -> list[Any]:
    """A seeded sample of ``n`` non-empty tiles of the store's grid (row-major order)."""
    from sscc_core.io.tiling import nonempty_tiles, tile_grid

    _, valid, _ = _open(store)
    tiles = nonempty_tiles(valid, tile_grid(*valid.shape, tile_size))
    pick = np.sort(np.random.default_rng(seed).choice(len(tiles), min(n, len(tiles)), replace=False))
    return [tiles[i] for i in pick]


def read_order_ablation(store: Path, checkpoint: Path, tile_size: int,
                        max_tiles: int = 16) -> dict[str, float]:
    """The read stage's per-tile work (fingerprint, halo read, pre-processing:
    :func:`sscc_core.labelling.tile_work.read_tiles`) in this process, one thread, on the first
    ``max_tiles`` tiles of the grid's first read segment: in the segment's stripe order through
    caches of the stripe's width (the pipeline), and row-major through caches of one tile's
    width (the pipeline before), each once.

    Returns:
        ``striped_pixels_per_s``, ``row_major_pixels_per_s``, ``speed_up`` and the input chunks
        each order decodes per tile (``striped_decodes_per_tile``, ``row_major_decodes_per_tile``,
        counted on the valid mask, which has the cube's chunk grid).
    """
    import torch
    import zarr

    from sscc_core.io.tiling import nonempty_tiles, read_with_halo, tile_grid
    from sscc_core.labelling.chunk_cache import ChunkCache
    from sscc_core.labelling.inference import Labeller
    from sscc_core.labelling.plan import STRIPE_TILES, read_segments
    from sscc_core.labelling.tile_work import read_tiles
    from sscc_core.model.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    reader = Labeller.from_checkpoint(load_checkpoint(checkpoint)).reader
    valid = zarr.open_group(store, mode="r")["valid"]
    segment = read_segments(nonempty_tiles(valid, tile_grid(*valid.shape, tile_size)))[0][:max_tiles]
    orders = {"striped": (segment, STRIPE_TILES),
              "row_major": (sorted(segment, key=lambda t: (t.row, t.col)), 1)}
    pixels = sum(t.height * t.width for t in segment)
    out: dict[str, float] = {"tiles": len(segment)}
    for name, (tiles, stripe) in orders.items():
        start = time.perf_counter()
        for _ in read_tiles(str(store), reader, [(t, "") for t in tiles], tile_size, stripe):
            pass
        out[f"{name}_pixels_per_s"] = pixels / (time.perf_counter() - start)
        cache = ChunkCache(valid, tile_size, stripe)
        for tile in tiles:
            read_with_halo(cache, tile, reader.context)
        out[f"{name}_decodes_per_tile"] = cache.decoded / len(tiles)
    out["speed_up"] = out["striped_pixels_per_s"] / out["row_major_pixels_per_s"]
    return out


def throughput_section(run: dict[str, Any], store: Path, checkpoint: Path, kmeans: Any,
                       args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline rates of ``run`` next to the limits measured now on a sample of its tiles."""
    tiles = sample_tiles(store, args.tile_size, args.limit_tiles, args.seed)
    limits = {kind: measure_limit(kind, store, checkpoint, tiles, args.actors, kmeans,
                                  args.use_gpu and kind == "model")
              for kind in ("read", "preprocess", "model", "kmeans")}
    ablation = read_order_ablation(store, checkpoint, args.tile_size)
    rate = {k: v["pixels_per_s"] for k, v in limits.items()}
    serial = 1.0 / sum(1.0 / rate[k] for k in ("read", "preprocess", "model"))
    bound = min(rate["read"], rate["model"])
    steady = run["pixels_per_actor_s"] * args.actors
    return {
        "pipeline_pixels_per_s": run["pixels_per_s"],
        "pipeline_steady_pixels_per_s": steady,
        "pixels_per_actor_s": run["pixels_per_actor_s"],
        "limits": limits,
        "read_order": ablation,
        "serial_chain_pixels_per_s": serial,
        "bound": "read" if rate["read"] <= rate["model"] else "model",
        "ratio_end_to_end": run["pixels_per_s"] / bound,
        "ratio_steady": steady / bound,
        "ratio_vs_serial_chain": run["pixels_per_s"] / serial,
        "goal_ratio": GOAL_RATIO,
        "actors": args.actors, "tile_size": args.tile_size, "limit_tiles": len(tiles),
        "pipeline_seconds": run["seconds"], "pixels": run["pixels_labelled"],
        "store_gb": run["store_gb"], "command": run["command"],
    }


# ---- dense vs per-patch ------------------------------------------------------------------------


LABEL_REPEATS = 10  # whole-tile labelling calls timed per readout (one call is ~50 ms)


def dense_section(store: Path, checkpoint: Path, side: int = 48, resnet_pixels: int = 64) -> dict[str, Any]:
    """Per-pixel cost of dense fcn, per-patch fcn and per-patch authors' ResNet on one tile, and
    of labelling the tile (:meth:`Labeller.label_tile`) with the cluster-head readout against the
    spectral-spatial readout of ``configs/indian_pines.yaml`` (smoothing sigma 2, PCA scores
    appended; its extension fitted here on the tile's own vectors: the cost does not depend on
    the fit).

    The ResNet (default :class:`ModelConfig` widths, untrained weights: cost does not depend on
    them) runs on the first ``resnet_pixels`` pixels of the tile only.
    """
    import torch

    from sscc_core.model.checkpoint import load_checkpoint
    from sscc_core.labelling.inference import Labeller
    from sscc_core.model.network import SSCCNet, predict_dense, predict_patches
    from sscc_core.model.patches import tile_features
    from sscc_core.model.readout import Readout
    from sscc_core.training.readout_fit import fit_spectral
    from sscc_core.io.tiling import Tile, extract_patches

    torch.set_num_threads(1)
    cube, valid, _ = _open(store)
    labeller = Labeller.from_checkpoint(load_checkpoint(checkpoint))
    fcn, halo = labeller.model, labeller.model.halo
    tile = Tile(0, 0, 0, side, 0, side)
    feats = tile_features(cube, valid, tile, labeller.pre, halo)
    patches = torch.from_numpy(extract_patches(feats, fcn.patch_size))
    resnet = SSCCNet(ModelConfig(n_clusters=fcn.cfg.n_clusters), fcn.in_channels, fcn.patch_size)

    def rate(fn: Any, pixels: int, warm_up: Any) -> float:
        warm_up()
        start = time.perf_counter()
        fn()
        return pixels / (time.perf_counter() - start)

    dense_lab, _ = predict_dense(fcn, torch.from_numpy(feats))
    patch_lab, _ = predict_patches(fcn, patches, 1024)
    head = dataclasses.replace(labeller, readout=Readout("head"), mode_window=1)
    spectral = dataclasses.replace(head, readout=Readout("spectral", 2.0, 2.0))
    vectors = torch.from_numpy(spectral.readout_vectors(cube, valid, tile).reshape(
        spectral.vector_dim, -1).T.copy())
    weights = spectral.readout.spectra_weights(fcn.feature_dim, spectral.vector_dim)
    spectral = dataclasses.replace(spectral, readout=dataclasses.replace(
        spectral.readout, state=fit_spectral(vectors, fcn.cfg.n_clusters, 10, 0, weights)))
    rates = {
        "fcn_dense": rate(lambda: predict_dense(fcn, torch.from_numpy(feats)), side * side,
                          lambda: predict_dense(fcn, torch.from_numpy(feats))),
        "fcn_patch": rate(lambda: predict_patches(fcn, patches, 1024), side * side,
                          lambda: predict_patches(fcn, patches[:64], 1024)),
        "resnet_patch": rate(lambda: predict_patches(resnet, patches[:resnet_pixels], 128),
                             resnet_pixels, lambda: predict_patches(resnet, patches[:4], 128)),
        "label_head": rate(lambda: [head.label_tile(cube, valid, tile) for _ in range(LABEL_REPEATS)],
                           LABEL_REPEATS * side * side, lambda: head.label_tile(cube, valid, tile)),
        "label_spectral": rate(
            lambda: [spectral.label_tile(cube, valid, tile) for _ in range(LABEL_REPEATS)],
            LABEL_REPEATS * side * side, lambda: spectral.label_tile(cube, valid, tile)),
    }
    return {"pixels_per_s": rates, "tile": side, "resnet_pixels": resnet_pixels,
            "dense_over_patch": rates["fcn_dense"] / rates["fcn_patch"],
            "dense_over_resnet": rates["fcn_dense"] / rates["resnet_patch"],
            "dense_equals_patch": bool(torch.equal(dense_lab.reshape(-1), patch_lab)),
            "spectral_over_head_time": rates["label_head"] / rates["label_spectral"],
            "fcn_widths": list(fcn.cfg.widths), "resnet_widths": list(resnet.cfg.widths)}


# ---- training throughput -----------------------------------------------------------------------


LATENCY_CALLS = 500


def _latency_rank(rank: int, init_file: str, out: str) -> None:
    """One of 2 gloo ranks timing small all-gathers (the size of a BatchNorm layer's stats)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x = torch.zeros(1, 129)
    parts = [torch.empty_like(x) for _ in range(2)]
    for _ in range(50):
        dist.all_gather(parts, x)
    start = time.perf_counter()
    for _ in range(LATENCY_CALLS):
        dist.all_gather(parts, x)
    if rank == 0:
        Path(out).write_text(json.dumps((time.perf_counter() - start) / LATENCY_CALLS))
    dist.destroy_process_group()


def collective_latency(work: Path) -> float:
    """Seconds per small all-gather between 2 gloo processes on this machine (mean of 500)."""
    import torch.multiprocessing as mp

    init, out = work.resolve() / "gloo_init", work.resolve() / "gloo_latency.json"
    init.unlink(missing_ok=True)
    mp.spawn(_latency_rank, args=(str(init), str(out)), nprocs=2, join=True)
    return float(json.loads(out.read_text()))


def train_section(store: Path, cfg: SSCCConfig, work: Path, use_gpu: bool) -> dict[str, Any]:
    """Samples/s of Ray Train with 1 and 2 workers and of the plain loop, same patches and config,
    and the data-production rate that bounds them on a small machine.

    ``train.batch_size`` is the global batch: 2 workers train on halves of the same global
    batches with the gathered objective (the same training as 1 worker; the largest relative
    difference of their per-epoch losses is reported). Ray Train workers take 0.75 CPU each
    (2 x 1 CPU on 2 cores starves Ray Data); each run's last epoch is reported (the first
    includes Ray Data's warm-up). The data limit is the Ray Data task's work (read a tile with
    its halo, pre-process, extract the patches, draw two views) for every training tile in this
    process, one thread. The 2-worker step also waits on collectives: one all-gather per
    BatchNorm layer and view forward and one all-reduce backward, plus the loss's gathers and
    DDP's gradient all-reduce; their latency is measured between 2 gloo processes.
    """
    import torch

    from pipelines.train import TilePatches, run_training
    from sscc_core.config import to_dict
    from sscc_core.io.store import open_cube
    from sscc_core.model.checkpoint import load_checkpoint
    from sscc_core.model.patches import gather_patches
    from sscc_core.model.preprocess import Preprocessor
    from sscc_core.training.tiles import training_tiles
    from sscc_core.training.reference import patch_views, train_reference
    from sscc_core.training.trainer import build_training, training_mask

    out: dict[str, Any] = {"epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size}
    storage = work / "train_runs"
    if storage.exists():
        shutil.rmtree(storage)
    for workers in (1, 2):
        start = time.perf_counter()
        run_training(str(store), cfg, f"w{workers}", str(storage), num_workers=workers,
                     use_gpu=use_gpu, cpus_per_worker=0.75)
        wall = time.perf_counter() - start
        history = json.loads((storage / f"w{workers}" / "history.json").read_text())
        out[f"ray_{workers}"] = {
            "workers": workers, "wall_s": wall, "samples_per_s": history[-1]["samples_per_s"],
            "epoch_samples_per_s": [h["samples_per_s"] for h in history],
            "loss": [h["total"] for h in history],
        }
    out["loss_rel_diff"] = max(abs(b - a) / abs(a) for a, b in zip(out["ray_1"]["loss"], out["ray_2"]["loss"]))
    torch.set_num_threads(1)
    pre = Preprocessor.from_state(load_checkpoint(storage / "w1" / "final").preprocess_state)
    tiles = training_tiles(str(store), cfg.train.protocol, cfg.tile.tile_size)
    udf = TilePatches(str(store), pre.to_state(), to_dict(cfg))
    batch = {k: np.array([t[k] for t in tiles]) for k in ("row", "col", "y0", "y1", "x0", "x1")}
    udf(batch, 0)  # warm-up
    start = time.perf_counter()
    n_views = len(udf(batch, 0)["view_a"])
    out["data_samples_per_s"] = n_views / (time.perf_counter() - start)
    cube, valid, labels = _open(store)
    mask = training_mask(np.asarray(valid[:]), np.asarray(labels[:]), cfg.train.protocol)
    patches, _ = gather_patches(cube, valid, mask, pre, cfg.preprocess.patch_size, cfg.tile.tile_size)
    training = build_training(cfg, pre.n_components)
    out["batchnorm_layers"] = sum(isinstance(m, torch.nn.BatchNorm2d) for m in training.model.modules())
    out["collective_s"] = collective_latency(work)
    plain = train_reference(patch_views(torch.from_numpy(patches), cfg), pre.n_components, cfg)
    rates = [h["samples_per_s"] for h in plain.history]
    out["plain"] = {"samples_per_s": rates[-1], "epoch_samples_per_s": rates}
    out["patches"] = len(patches)
    out["shape"] = list(open_cube(store)["reflectance"].shape)
    return out


# ---- accuracy ----------------------------------------------------------------------------------


def accuracy_section(store: Path, labels_store: Path, checkpoint: Path, kmeans: Any,
                     train_info: dict[str, Any]) -> dict[str, Any]:
    """ACC/NMI/ARI of the pipeline's SSCC labels and of k-means vs the mosaic's true labels."""
    from sscc_core.model.baselines import label_kmeans_baseline
    from sscc_core.model.checkpoint import load_checkpoint
    from sscc_core.labelling.labelstore import LabelStore
    from sscc_core.metrics import evaluate
    from sscc_core.model.preprocess import Preprocessor

    ckpt = load_checkpoint(checkpoint)
    pre = Preprocessor.from_state(ckpt.preprocess_state)
    cube, valid, truth = _open(store)
    truth = np.asarray(truth[:])
    sscc = np.asarray(LabelStore(labels_store).labels().values).astype(np.int64)
    km = label_kmeans_baseline(kmeans, cube, valid, pre)
    keys = ("acc", "aa", "kappa", "nmi", "ari", "n_labelled", "n_clusters")
    metrics = {name: {k: v for k, v in evaluate(truth, pred).items() if k in keys}
               for name, pred in (("sscc", sscc), ("kmeans", km))}
    return {**metrics, "train_samples": ckpt.extra.get("train_samples"),
            "train_epochs": ckpt.epoch, "train_seconds": train_info["seconds"],
            "model": dataclasses.asdict(ckpt.config.model), "lr": ckpt.config.train.lr}


# ---- driver ------------------------------------------------------------------------------------


def bench_config(model: ModelConfig, epochs: int, tile_size: int) -> SSCCConfig:
    """The bench run configuration: the given model, protocol ``all``, lr 1e-3, batch 512."""
    cfg = SSCCConfig(model=model, train=TrainConfig(protocol="all", epochs=epochs, lr=1e-3))
    return replace(cfg, tile=replace(cfg.tile, tile_size=tile_size))


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def save(out: Path, name: str, doc: dict[str, Any]) -> None:
    """Write one section's raw results as ``OUT/<name>.json``, stamped with the UTC time and the
    load average when it was measured (the machine may be shared)."""
    measured = {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []}
    (out / f"{name}.json").write_text(json.dumps({**doc, "measured": measured}, indent=1, default=float))


def add_mosaic_args(p: argparse.ArgumentParser, size_gb: float) -> None:
    """The options of a standalone benchmark over one bench mosaic (:func:`bench_mosaic`):
    ``--size-gb`` (default ``size_gb``), ``--work``, ``--out`` and ``--seed``."""
    p.add_argument("--size-gb", type=float, default=size_gb,
                   help=f"mosaic size, decimal GB of reflectance (default {size_gb:g})")
    p.add_argument("--work", default="runs/bench",
                   help="scratch directory: mosaic, bench model, label stores (reused)")
    p.add_argument("--out", default="docs/bench", help="directory of the JSON result")
    p.add_argument("--seed", type=int, default=0, help="mosaic, training and sampling seed")


def bench_mosaic(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """``(work, out, store)`` of a standalone benchmark (:func:`add_mosaic_args`): both folders
    created, and the ``--size-gb`` mosaic in ``work`` (:func:`ensure_mosaic`)."""
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    store = ensure_mosaic(work / f"mosaic_{args.size_gb}gb.zarr", args.seed, size_gb=args.size_gb)
    return work, out, store


def bench_checkpoint(store: Path, work: Path, tile_size: int, seed: int) -> Path:
    """The bench model of ``make bench`` (``WORK/model_bench/model.pt``); when it is missing, one
    is trained on ``store`` with the bench configuration (8 epochs, 8,192 sampled pixels)."""
    path = work / "model_bench" / "model.pt"
    if not path.is_file():
        train_model(store, bench_config(BENCH_MODEL, epochs=8, tile_size=tile_size), 8192, seed,
                    work / "model_bench")
    return path


def measure(args: argparse.Namespace, sections: list[str], sizes: list[float], out: Path,
            work: Path) -> None:
    """Run the selected sections (or the larger-than-RAM run) and save their JSON results."""
    work.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "gpu": _gpu_name()}
    save(out, "machine", machine)
    ensure_ray(include_dashboard=False, log_to_driver=False)
    cfg = bench_config(BENCH_MODEL if args.scale_gb is None else TINY_MODEL,
                       args.train_epochs, args.tile_size)
    small = ensure_mosaic(work / f"mosaic_{sizes[0]}gb.zarr", args.seed, size_gb=sizes[0])
    tag = "tiny" if args.scale_gb is not None else "bench"
    trained = train_model(small, cfg, args.train_samples, args.seed, work / f"model_{tag}")
    ckpt = trained["checkpoint"]
    if args.scale_gb is not None:
        store = ensure_mosaic(work / f"scale_{args.scale_gb:g}gb.zarr", args.seed, size_gb=args.scale_gb)
        r = run_pipeline(ckpt, store, work / "scale_labels.zarr", args.actors, args.tile_size, 2.0)
        save(out, "scale", {
            "store_gb": r["store_gb"], "shape": r["shape"], "ram_gib": machine["ram_gib"],
            "complete": True, "pixels": r["pixels_labelled"], "seconds": r["seconds"],
            "pixels_per_s": r["pixels_per_s"], "peak_rss": r["memory"]["peak_rss"],
            "start_rss": r["memory"]["rss"][0], "pixels_per_actor_s": r["pixels_per_actor_s"],
            "peak_object_store": r["memory"]["peaks"]["object_store_bytes"],
            "model_widths": list(cfg.model.widths), "command": r["command"],
            "rss_series": r["memory"]["rss"], "t": r["memory"]["t"],
        })
    else:
        runs = {}
        if {"memory", "throughput", "accuracy"} & set(sections):
            wanted = sizes if "memory" in sections else sizes[-1:] + ([sizes[len(sizes) // 2]] if "accuracy" in sections else [])
            for size in sorted(set(wanted)):
                store = ensure_mosaic(work / f"mosaic_{size}gb.zarr", args.seed, size_gb=size)
                print(f"bench: labelling the {size} GB mosaic", flush=True)
                runs[size] = (store, run_pipeline(ckpt, store, work / f"labels_{size}gb.zarr",
                                                  args.actors, args.tile_size,
                                                  use_gpu=args.use_gpu))
        if "memory" in sections:
            rows = [{"store_gb": r["store_gb"], "pixels": r["pixels_labelled"],
                     "seconds": r["seconds"], "pixels_per_s": r["pixels_per_s"],
                     "peak_rss": r["memory"]["peak_rss"], "start_rss": r["memory"]["rss"][0],
                     "peak_object_store": r["memory"]["peaks"]["object_store_bytes"],
                     "command": r["command"]} for _, r in runs.values()]
            peaks = [r["peak_rss"] for r in rows]
            save(out, "memory", {"runs": rows, "rss_ratio": peaks[-1] / peaks[0],
                                 "size_ratio": rows[-1]["store_gb"] / rows[0]["store_gb"],
                                 "flat": bool(max(peaks) <= (1 + FLAT_TOLERANCE) * min(peaks))})
        if "throughput" in sections:
            store, r = runs[sizes[-1]]
            print("bench: measuring the limits", flush=True)
            save(out, "throughput", throughput_section(r, store, ckpt, trained["kmeans"], args))
        if "accuracy" in sections:
            size = sizes[len(sizes) // 2]
            store = runs[size][0]
            save(out, "accuracy", accuracy_section(store, work / f"labels_{size}gb.zarr", ckpt,
                                                   trained["kmeans"], trained))
        if "dense" in sections:
            save(out, "dense", dense_section(small, ckpt))
        if "train" in sections:
            side = ensure_mosaic(work / f"train_{args.train_side}px.zarr", args.seed, side=args.train_side)
            tcfg = replace(cfg, train=replace(cfg.train, protocol="labelled",
                                              epochs=args.train_bench_epochs))
            save(out, "train", train_section(side, tcfg, work, args.use_gpu))
