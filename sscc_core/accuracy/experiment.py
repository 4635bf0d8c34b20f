"""The accuracy protocol harness: one (scene, method, protocol, seed, config) run -> metrics.

A run fits the pre-processing on every valid pixel of the scene, trains (or clusters) on the
pixels its protocol selects, labels every valid pixel of the scene, optionally post-processes the
label map, and scores the labelled pixels:

* ``protocol="labelled"`` -- the authors': training pixels are the labelled ones, K = #classes.
* ``protocol="all"`` -- the realistic one: training pixels are all valid pixels (no labels used
  for training), K = #classes, evaluated on the labelled pixels.

Methods:

* ``"sscc"`` -- train the twin network with :func:`sscc_core.training.reference.train_reference`, then read
  out labels by ``cfg.postprocess.readout`` (cluster head, or k-means on backbone features) and
  apply the ``cfg.postprocess`` mode filter.
* ``"sscc_untrained"`` -- the same pipeline on the untrained network: one epoch at a learning
  rate of 1e-12 (random weights; only the BatchNorm statistics see the data), then the same
  readout (with ``readout: auto``, the same label-free choice). Does training matter?
* ``"readout_pca"`` -- the same readout on the pixel's PCA scores alone (no network): the
  ``readout: auto`` choice among the ``select_*`` grid on the smoothed recipe features (on the
  ``select_sample``, fitted on the ``readout_sample``, as for the network).
* ``"kmeans"`` -- mini-batch k-means on the recipe's features (band z-score, PCA, component
  z-score) of the training pixels; every valid pixel gets its nearest centroid.
* ``"kmeans_pca"`` -- the same on PCA scores *without* the component z-score (``whiten=False``),
  which suits k-means better because it keeps the dominant components dominant.
* ``"spectral_pca"`` -- a non-deep graph baseline with the SSCC spectral readout's machinery on
  the recipe's features instead of learned ones: the features smoothed over valid neighbours
  (``cfg.postprocess.smooth_sigma``), spectral clustering of a seeded sample of the training
  pixels (``spectral_neighbors``, ``readout_sample``) extended to every valid pixel by the
  fitted logistic regression; then the ``cfg.postprocess`` mode filter.

Each run reports its process CPU seconds (all threads) and wall seconds; :func:`summarise` gives
the mean and std of every score over the seeds of one setting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from sscc_core.model.baselines import fit_kmeans_baseline, label_kmeans_baseline
from sscc_core.config import SSCCConfig, replace
from sscc_core.labelling.inference import Labeller, label_scene
from sscc_core.io.ground_truth import require_ground_truth
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube
from sscc_core.metrics import evaluate
from sscc_core.model.network import recalibrate_batchnorm  # noqa: F401 (re-exported, harness API)
from sscc_core.model.postprocess import NODATA, mode_filter, smooth
from sscc_core.model.preprocess import Preprocessor
from sscc_core.model.readout import Readout
from sscc_core.training.readout_fit import extension, fit_readout, fit_spectral, readout_of, sample_mask
from sscc_core.training.selection import refit, select
from sscc_core.training.sizing import check_training_size
from sscc_core.training.reference import scene_views, train_reference
from sscc_core.training.run import fit_scenes_preprocessor
from sscc_core.training.trainer import training_mask

Method = Literal["sscc", "sscc_untrained", "readout_pca", "kmeans", "kmeans_pca", "spectral_pca"]
METHODS: tuple[str, ...] = ("sscc", "sscc_untrained", "readout_pca", "kmeans", "kmeans_pca", "spectral_pca")
BASELINES: tuple[str, ...] = ("kmeans", "kmeans_pca", "spectral_pca")
PROTOCOLS: tuple[str, ...] = ("labelled", "all")
SCORES: tuple[str, ...] = ("acc", "nmi", "ari", "kappa", "purity", "aa")
UNTRAINED_LR = 1e-12  # "untrained": one epoch at this rate moves no weight measurably
DATASET_ALIASES = {"salinas_a": "salinasA", "salinasa": "salinasA"}


@dataclass(frozen=True)
class Scene:
    """A benchmark scene in memory.

    Attributes:
        name: Registry name (``sscc_core.io.matlab.BENCHMARKS``), or a cube store's scene name.
        cube: (B, H, W) raw cube in its source dtype.
        valid: (H, W) bool, True where the pixel has data.
        labels: (H, W) int64 ground truth, 0 = unlabelled, classes 1..C.
    """

    name: str
    cube: np.ndarray
    valid: np.ndarray
    labels: np.ndarray

    @property
    def n_classes(self) -> int:
        """C, the number of distinct ground-truth classes (0 excluded)."""
        return int(np.count_nonzero(np.unique(self.labels)))


@dataclass
class RunResult:
    """The outcome of one run.

    Attributes:
        dataset: Scene name.
        method: One of :data:`METHODS`.
        protocol: ``"labelled"`` or ``"all"``.
        seed: The run's seed.
        metrics: :func:`sscc_core.metrics.evaluate` on the labelled pixels.
        cpu_seconds: Process CPU time of the run (every thread), seconds.
        wall_seconds: Elapsed time of the run, seconds.
        label_map: (H, W) int64 final cluster map, -1 at nodata.
        history: SSCC per-epoch loss summaries (empty for k-means).
        selection: The label-free readout choice (``readout: auto``), else ``None``.
    """

    dataset: str
    method: str
    protocol: str
    seed: int
    metrics: dict[str, Any]
    cpu_seconds: float
    wall_seconds: float
    label_map: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    selection: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """The headline scores and times as a flat JSON-serialisable dict."""
        return {
            "dataset": self.dataset, "method": self.method, "protocol": self.protocol,
            "seed": self.seed, **{k: self.metrics[k] for k in SCORES},
            "n_clusters_used": self.metrics["n_clusters"],
            "cpu_seconds": self.cpu_seconds, "wall_seconds": self.wall_seconds,
            "choice": None if self.selection is None else self.selection["choice"],
        }


def load_scene(name: str, data_dir: str | None = None) -> Scene:
    """Read a labelled benchmark scene (``indian_pines``, ``salinasA`` / ``salinas_a``, ...).

    Raises:
        ValueError: Unknown scene, or a scene without a ground-truth label map.
        FileNotFoundError: A file of the scene is missing.
    """
    key = DATASET_ALIASES.get(name.lower(), name)
    ds = read_benchmark(key, data_dir)
    if "labels" not in ds:
        raise ValueError(f"scene {name!r} has no ground-truth label map to evaluate against")
    return Scene(
        name=key,
        cube=np.asarray(ds["reflectance"].values),
        valid=np.asarray(ds["valid"].values, dtype=bool),
        labels=np.asarray(ds["labels"].values, dtype=np.int64),
    )


def load_store_scene(path: str) -> Scene:
    """Read a cube store that carries ground truth (``sscc ingest INPUT --labels GT``) into memory,
    to score clusterings of one's own labelled scene as the bundled ones are scored.

    Raises:
        FileNotFoundError: No cube store at ``path``.
        ValueError: The store has no ground-truth ``labels``.
    """
    ds = open_cube(path)
    labels = require_ground_truth(ds, path)
    return Scene(
        name=str(ds.attrs.get("name") or path.rstrip("/").rsplit("/", 1)[-1]),
        cube=np.asarray(ds["reflectance"].values),
        valid=np.asarray(ds["valid"].values, dtype=bool),
        labels=np.asarray(labels.values, dtype=np.int64),
    )


def scene_config(cfg: SSCCConfig, scene: Scene, protocol: str, seed: int) -> SSCCConfig:
    """``cfg`` with K = the scene's class count, the run's protocol and seed filled in.

    Raises:
        ValueError: The scene has fewer than 2 classes (K >= 2).
    """
    if scene.n_classes < 2:
        raise ValueError(f"{scene.name}: K = {scene.n_classes} ground-truth classes; clustering needs K >= 2")
    return replace(
        cfg,
        model=replace(cfg.model, n_clusters=scene.n_classes),
        train=replace(cfg.train, protocol=protocol, seed=seed),
        preprocess=replace(cfg.preprocess, seed=seed),
    )


def _scatter(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) int64 map holding ``values`` at ``mask`` (row-major) and :data:`NODATA` elsewhere."""
    out = np.full(mask.shape, NODATA, dtype=np.int64)
    out[mask] = values
    return out


def _spectral_pca_map(scene: Scene, pre: Preprocessor, train_mask: np.ndarray, cfg: SSCCConfig) -> np.ndarray:
    """Spectral clustering of the smoothed recipe features of a sample of ``train_mask``; every
    valid pixel gets the cluster the fitted extension gives it."""
    post = cfg.postprocess
    feats = smooth(pre.transform(scene.cube, scene.valid), scene.valid, post.smooth_sigma)
    sample = torch.from_numpy(feats[:, sample_mask(train_mask, post.readout_sample, cfg.train.seed)].T)
    readout = Readout("spectral", state=fit_spectral(
        sample, scene.n_classes, post.spectral_neighbors, cfg.train.seed))
    labels, _ = readout.assign(torch.from_numpy(feats[:, scene.valid].T))
    return _scatter(labels.numpy(), scene.valid)


def _readout_pca_map(scene: Scene, pre: Preprocessor, train_mask: np.ndarray,
                     cfg: SSCCConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``readout: auto`` choice and fit on the smoothed recipe features alone (no network);
    every valid pixel gets the chosen readout's cluster."""
    post, seed, k = cfg.postprocess, cfg.train.seed, scene.n_classes
    feats = pre.transform(scene.cube, scene.valid)
    sample = sample_mask(train_mask, post.readout_sample, seed)
    compared = sample if post.select_sample is None else sample_mask(train_mask, post.select_sample, seed)

    smoothed = {sigma: smooth(feats, scene.valid, sigma) for sigma in post.select_sigmas}

    def at(sigma: float, where: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(smoothed[sigma][:, where].T))

    chosen = select(lambda sigma: at(sigma, compared), 0, pre.comp_std, k, post, seed,
                    lambda zf, lf: extension(zf, lf, k, seed))
    if not np.array_equal(compared, sample):
        chosen = refit(chosen, at(chosen.choice.smooth_sigma, sample), 0, pre.comp_std, k, post, seed)
    readout = readout_of(chosen, k, seed, post.readout_spectra)
    labels, _ = readout.assign(at(readout.smooth_sigma, scene.valid))
    return _scatter(labels.numpy(), scene.valid), chosen.record()


def _sscc_map(scene: Scene, pre: Preprocessor, train_mask: np.ndarray, cfg: SSCCConfig,
              verbose: bool, device: torch.device | str = "cpu",
              ) -> tuple[np.ndarray, list[dict[str, float]], dict[str, Any] | None]:
    """Train SSCC on ``train_mask``'s pixels as ``sscc train`` does (the reference trainer: the
    same tiles, views and batches) on ``device``, fit the ``cfg.postprocess`` readout (as
    ``sscc train`` does) and label every valid pixel (before filtering); the network runs on
    ``device`` throughout, the clustering of the readout on the CPU."""

    def log(epoch: int, summary: dict[str, float]) -> None:
        if verbose:
            print(f"  epoch {epoch:3d} loss {summary['total']:.4f} diag {summary['diagonal']:.3f} "
                  f"lr {summary['lr']:.2e} {summary['seconds']:.1f}s", flush=True)

    views = scene_views(scene.cube, scene.valid, scene.labels, pre, cfg)
    training = train_reference(views, pre.n_components, cfg, on_epoch=log, device=device)
    model = training.model
    readout = fit_readout(model, pre, scene.cube, scene.valid, train_mask, cfg)
    labeller = Labeller(model, pre, readout=readout)
    labels, _ = label_scene(labeller, scene.cube, scene.valid)
    return labels, training.history, readout.selection


def run_one(
    scene: Scene, method: Method, protocol: str, seed: int, cfg: SSCCConfig,
    verbose: bool = False, device: torch.device | str = "cpu",
) -> RunResult:
    """One run of the protocol; see the module docstring.

    Args:
        scene: The labelled scene.
        method: One of :data:`METHODS`.
        protocol: ``"labelled"`` or ``"all"``.
        seed: Seed of the pre-processing sample, weights, sampling, augmentation and k-means.
        cfg: Run configuration; K, protocol and seed are overridden per run.
        verbose: Print one line per SSCC epoch.
        device: Where the SSCC network trains and runs (``"cuda"`` on a GPU; the other methods
            ignore it).

    Returns:
        A :class:`RunResult` scored on the labelled pixels.

    Raises:
        ValueError: Unknown method or protocol.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {list(PROTOCOLS)}")
    cfg = scene_config(cfg, scene, protocol, seed)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    torch.manual_seed(seed)
    pre = fit_scenes_preprocessor([(scene.cube, scene.valid)], cfg).preprocessor  # as sscc train fits
    train_mask = training_mask(scene.valid, scene.labels, protocol)
    check_training_size(int(train_mask.sum()), cfg, scene.name, needs_batch=method.startswith("sscc"))
    history: list[dict[str, float]] = []
    selection = None
    if method in ("sscc", "sscc_untrained"):
        if method == "sscc_untrained":
            cfg = replace(cfg, train=replace(cfg.train, epochs=1, lr=UNTRAINED_LR))
        label_map, history, selection = _sscc_map(scene, pre, train_mask, cfg, verbose, device)
    elif method == "readout_pca":
        label_map, selection = _readout_pca_map(scene, pre, train_mask, cfg)
    elif method == "spectral_pca":
        label_map = _spectral_pca_map(scene, pre, train_mask, cfg)
    else:
        whiten = method == "kmeans"
        model = fit_kmeans_baseline(scene.cube, scene.valid, train_mask, pre, scene.n_classes, seed, whiten)
        label_map = label_kmeans_baseline(model, scene.cube, scene.valid, pre, whiten)
    if method not in ("kmeans", "kmeans_pca"):
        label_map = mode_filter(label_map, cfg.postprocess.mode_window, cfg.postprocess.mode_iterations)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    scored = scene.labels > 0
    metrics = evaluate(scene.labels[scored], label_map[scored])
    return RunResult(scene.name, method, protocol, seed, metrics, cpu, wall, label_map, history, selection)


def summarise(results: list[RunResult]) -> dict[str, Any]:
    """Mean and population std of every score and time over runs of one setting.

    Returns:
        ``{"dataset", "method", "protocol", "seeds", "<score>_mean", "<score>_std", ...,
        "cpu_seconds_mean", "wall_seconds_mean"}``.

    Raises:
        ValueError: No result, or results of different settings.
    """
    if not results:
        raise ValueError("summarise: no run results")
    settings = {(r.dataset, r.method, r.protocol) for r in results}
    if len(settings) != 1:
        raise ValueError(f"summarise: results mix settings {sorted(settings)}")
    first = results[0]
    out: dict[str, Any] = {"dataset": first.dataset, "method": first.method,
                           "protocol": first.protocol, "seeds": [r.seed for r in results]}
    for key in SCORES:
        vals = np.array([r.metrics[key] for r in results])
        out[f"{key}_mean"], out[f"{key}_std"] = float(vals.mean()), float(vals.std())
    out["cpu_seconds_mean"] = float(np.mean([r.cpu_seconds for r in results]))
    out["wall_seconds_mean"] = float(np.mean([r.wall_seconds for r in results]))
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """One Markdown table row: ACC, NMI, ARI, kappa (mean ± std), CPU and wall seconds."""
    cells = [f"{summary[f'{k}_mean']:.3f} ± {summary[f'{k}_std']:.3f}"
             for k in ("acc", "nmi", "ari", "kappa")]
    return (f"| {summary['dataset']} | {summary['method']} | {summary['protocol']} | "
            + " | ".join(cells)
            + f" | {summary['cpu_seconds_mean']:.0f} | {summary['wall_seconds_mean']:.0f} |")
