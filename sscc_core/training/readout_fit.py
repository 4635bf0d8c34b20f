"""Fitting the readout (:mod:`sscc_core.model.readout`) after training.

The readout is fitted after training on the *same* vectors the labeller computes (the tile
path of :class:`sscc_core.labelling.inference.Labeller`, smoothing included), collected in scene row-major
order whatever the tile size, so every trainer fits the same readout.

With ``readout: auto`` the kind and the smoothing are chosen first by the label-free stability
criterion of :mod:`sscc_core.training.selection`.

A run on several flight lines (cubes on their own grids) fits one readout on them together
(:func:`fit_lines_readout`): the sample is drawn from the training pixels of all lines at once,
and each line's sample is read on its own grid, line after line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from sscc_core.model.baselines import fit_kmeans
from sscc_core.config import PostprocessConfig, SSCCConfig
from sscc_core.labelling.inference import Labeller
from sscc_core.model.network import SSCCNet, recalibrate_batchnorm
from sscc_core.model.patches import gather_patches
from sscc_core.model.preprocess import Preprocessor
from sscc_core.model.readout import EMPTY_CLUSTER_LOGIT, Readout, standardise
from sscc_core.training.selection import Selection, refit, select, spectral_clusters, standardiser
from sscc_core.io.tiling import tile_grid, tile_valid


def fit_spectral(vectors: Tensor, n_clusters: int, neighbors: int, seed: int,
                 weights: Tensor | None = None) -> dict[str, Tensor]:
    """The spectral readout's state: standardise (N, V) sample vectors per dimension, weight the
    dimensions, cluster them (:func:`spectral_clusters`), and fit the linear map that extends
    the clusters to any vector (:func:`fit_extension`).

    Args:
        vectors: (N, V) sample vectors.
        n_clusters: K.
        neighbors: Neighbours of the graph.
        seed: Seed of the clustering.
        weights: Optional (V,) per-dimension weights applied after standardising.

    Returns:
        ``{"mean": (V,), "std": (V,), "coef": (K, V), "intercept": (K,)}``, plus ``"weights"``
        when given.

    Raises:
        ValueError: The clustering put every sample vector in one cluster.
    """
    state = standardiser(vectors, weights)
    z = standardise(vectors, state).numpy()
    return {**state, **fit_extension(z, spectral_clusters(z, n_clusters, neighbors, seed)[0], n_clusters, seed)}


def fit_extension(z: np.ndarray, labels: np.ndarray, n_clusters: int, seed: int) -> dict[str, Tensor]:
    """Multinomial logistic regression of (N, V) standardised sample vectors onto their (N,)
    cluster ids, as ``logits = z @ coef.T + intercept`` over all K clusters.

    Returns:
        ``{"coef": (K, V) float32, "intercept": (K,) float32}``; clusters absent from ``labels``
        get a zero row and an intercept of ``EMPTY_CLUSTER_LOGIT``.

    Raises:
        ValueError: Fewer than two clusters present.
    """
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(f"spectral readout: the clustering found {len(present)} cluster(s) in "
                         f"the sample; need at least 2")
    model = LogisticRegression(max_iter=2000, random_state=seed).fit(z, labels)
    coef = np.zeros((n_clusters, z.shape[1]))
    intercept = np.full(n_clusters, EMPTY_CLUSTER_LOGIT)
    if len(present) == 2:  # scikit-learn's binary form: one logit for classes_[1] against [0]
        coef[present[1]], intercept[present[1]] = model.coef_[0], model.intercept_[0]
        intercept[present[0]] = 0.0
    else:
        coef[present], intercept[present] = model.coef_, model.intercept_
    return {"coef": torch.from_numpy(coef).float(), "intercept": torch.from_numpy(intercept).float()}

@dataclass(frozen=True)
class LineArrays:
    """One scene's or flight line's arrays the readout is fitted on.

    Attributes:
        cube: (B, H, W) array-like (numpy or zarr).
        valid: (H, W) bool array-like.
        train_mask: (H, W) bool, the training pixels
            (:func:`sscc_core.training.trainer.training_mask`).
    """

    cube: Any
    valid: Any
    train_mask: np.ndarray


def readout_patches(
    lines: Sequence[LineArrays], pre: Preprocessor, patch_size: int, seed: int, max_pixels: int,
    tile_size: int = 256,
) -> Tensor:
    """Clean patches of a seeded sample of at most ``max_pixels`` training pixels of all lines,
    line after line, each in its scene row-major order whatever the tile size (BatchNorm
    recalibration).

    Args:
        lines: The arrays of each line (one for a single scene).
        pre: Fitted pre-processing.
        patch_size: Odd patch side P.
        seed: Seed of the sample (the run's ``train.seed``).
        max_pixels: Largest number of patches returned.
        tile_size: Tile side used to read the cube.

    Returns:
        (N, C, P, P) float32 patches, N = min(#training pixels, ``max_pixels``).
    """
    masks = sample_masks([line.train_mask for line in lines], max_pixels, seed)
    return torch.cat([row_major(*gather_patches(line.cube, line.valid, mask, pre, patch_size, tile_size))
                      for line, mask in zip(lines, masks)])


def row_major(values: np.ndarray, coords: np.ndarray) -> Tensor:
    """(N, ...) values gathered tile by tile, reordered by their (N, 2) scene (row, col)
    coordinates into scene row-major order, so the order does not depend on the tile size."""
    order = np.lexsort((coords[:, 1], coords[:, 0]))
    return torch.from_numpy(np.ascontiguousarray(values[order]))


def sample_mask(train_mask: np.ndarray, max_pixels: int, seed: int) -> np.ndarray:
    """(H, W) bool: ``train_mask`` thinned to a seeded uniform sample of at most ``max_pixels``."""
    return sample_masks([train_mask], max_pixels, seed)[0]


def sample_masks(train_masks: Sequence[np.ndarray], max_pixels: int, seed: int) -> list[np.ndarray]:
    """The masks of several lines thinned to one seeded uniform sample of at most
    ``max_pixels`` of their pixels together (each line keeps its share in expectation).

    Args:
        train_masks: (H_i, W_i) bool training pixels of each line.
        max_pixels: Sample size bound over all lines.
        seed: Seed of the sample.

    Returns:
        One (H_i, W_i) bool mask per line; the masks themselves when they hold at most
        ``max_pixels`` pixels together. With one mask, :func:`sample_mask` of it.
    """
    masks = [np.asarray(m, dtype=bool) for m in train_masks]
    flats = [np.flatnonzero(m) for m in masks]
    offsets = np.cumsum([0] + [len(f) for f in flats])
    if offsets[-1] <= max_pixels:
        return masks
    picks = np.random.default_rng(seed).choice(int(offsets[-1]), max_pixels, replace=False)
    kept = []
    for mask, flat, lo, hi in zip(masks, flats, offsets[:-1], offsets[1:]):
        keep = np.zeros(mask.shape, dtype=bool)
        keep.flat[flat[picks[(picks >= lo) & (picks < hi)] - lo]] = True
        kept.append(keep)
    return kept


def sample_vectors(labeller: Labeller, cube: Any, valid: Any, mask: np.ndarray,
                   tile_size: int = 256) -> Tensor:
    """The labeller's readout vectors (smoothed when configured) at the ``mask`` pixels.

    Returns:
        (N, V) float32 in scene row-major order, whatever ``tile_size``.
    """
    vectors, coords = [], []
    for tile in tile_grid(mask.shape[0], mask.shape[1], tile_size):
        local = tile_valid(mask, tile)
        if not local.any():
            continue
        vectors.append(labeller.readout_vectors(cube, valid, tile)[:, local].T)
        coords.append(np.argwhere(local) + [tile.y0, tile.x0])
    if not vectors:
        raise ValueError("readout: no training pixels to fit on")
    return row_major(np.concatenate(vectors), np.concatenate(coords))


def lines_vectors(labeller: Labeller, lines: Sequence[LineArrays], masks: Sequence[np.ndarray],
                  tile_size: int = 256) -> Tensor:
    """:func:`sample_vectors` of each line at its ``masks`` pixels, line after line.

    Returns:
        (N, V) float32.

    Raises:
        ValueError: No mask holds a pixel.
    """
    parts = [sample_vectors(labeller, line.cube, line.valid, mask, tile_size)
             for line, mask in zip(lines, masks) if mask.any()]
    if not parts:
        raise ValueError("readout: no training pixels to fit on")
    return torch.cat(parts)


def fit_readout(model: SSCCNet, pre: Preprocessor, cube: Any, valid: Any, train_mask: np.ndarray,
                cfg: SSCCConfig, tile_size: int = 256,
                log: Callable[[dict[str, Any]], None] | None = None) -> Readout:
    """:func:`fit_lines_readout` on one scene.

    Args:
        cube: (B, H, W) array-like.
        valid: (H, W) bool array-like.
        train_mask: (H, W) bool training pixels.
    """
    return fit_lines_readout(model, pre, [LineArrays(cube, valid, train_mask)], cfg, tile_size, log)


def fit_lines_readout(model: SSCCNet, pre: Preprocessor, lines: Sequence[LineArrays], cfg: SSCCConfig,
                      tile_size: int = 256,
                      log: Callable[[dict[str, Any]], None] | None = None) -> Readout:
    """Fit what ``cfg.postprocess`` needs after training, on the clean training pixels of one
    scene or of several flight lines together.

    With ``bn_recalibrate`` the model's BatchNorm statistics are re-estimated first (in place)
    on clean patches of a sample of the training pixels. The ``"kmeans"`` and ``"spectral"``
    readouts are then fitted on the labeller's vectors of a seeded sample of at most
    ``readout_sample`` training pixels (K = ``model.n_clusters``, seed ``train.seed``); with
    ``readout: auto`` the candidates are compared on one of at most ``select_sample``.

    Args:
        model: The trained network (left in eval mode).
        pre: The run's pre-processing.
        lines: The arrays of each line (one for a single scene); the sample is drawn from
            their training pixels together (:func:`sample_masks`).
        cfg: The run configuration.
        tile_size: Tile side used to read the cube.
        log: With ``readout: auto``, called with each candidate's criterion row (progress).

    Returns:
        The fitted :class:`Readout`; its ``state`` is the checkpoint's ``readout_state``. With
        ``readout: auto`` its ``kind`` and ``smooth_sigma`` are the chosen ones and
        ``selection`` records the choice; a fixed ``"kmeans"``/``"spectral"`` readout with
        ``spectra_scale`` other than ``"whitened"`` is fitted the same way on a grid of that
        one candidate (else its scale would be ignored).

    Raises:
        ValueError: Fewer sample pixels than clusters (or than the spectral neighbours).
    """
    post, seed = cfg.postprocess, cfg.train.seed
    if post.bn_recalibrate:
        recalibrate_batchnorm(model, readout_patches(lines, pre, model.patch_size, seed,
                                                     post.readout_sample, tile_size))
    model.eval()
    if post.readout == "auto":
        return fit_auto(model, pre, lines, post, seed, tile_size, log)
    if post.readout != "head" and post.readout_spectra > 0 and post.spectra_scale != "whitened":
        # a fixed readout with the other spectrum weightings: the selection's standardised
        # vectors, on a grid of this one candidate
        fixed = replace(post, select_kinds=(post.readout,), select_sigmas=(post.smooth_sigma,),
                        select_scales=(post.spectra_scale,), select_sample=None)
        return fit_auto(model, pre, lines, fixed, seed, tile_size, log)
    readout = Readout.from_config(post)
    if not readout.uses_features:
        return readout
    masks = sample_masks([line.train_mask for line in lines], post.readout_sample, seed)
    vectors = lines_vectors(Labeller(model, pre, readout=readout), lines, masks, tile_size)
    k = model.cfg.n_clusters
    if len(vectors) <= max(k, post.spectral_neighbors if readout.kind == "spectral" else 0):
        raise ValueError(f"readout {readout.kind!r}: {len(vectors)} training pixels are too few "
                         f"for {k} clusters")
    weights = readout.spectra_weights(model.feature_dim, vectors.shape[1])
    if readout.kind == "spectral":
        return replace(readout, state=fit_spectral(vectors, k, post.spectral_neighbors, seed, weights))
    km = fit_kmeans((vectors if weights is None else vectors * weights).numpy(), k, seed)
    state = {"centroids": torch.from_numpy(km.cluster_centers_.astype(np.float32))}
    return replace(readout, state=state if weights is None else {**state, "weights": weights})


def extension(z_fit: np.ndarray, labels: np.ndarray, n_clusters: int, seed: int):
    """The readout's extension of a clustering of (M, V) standardised vectors to any others:
    a predictor ``(N, V) -> (N,)`` from the fitted logistic regression (:func:`fit_extension`)."""
    fitted = fit_extension(z_fit, labels, n_clusters, seed)
    coef, intercept = fitted["coef"].double().numpy(), fitted["intercept"].double().numpy()
    return lambda z: np.argmax(z @ coef.T + intercept, axis=1).astype(np.int64)


def fit_auto(model: SSCCNet, pre: Preprocessor, lines: Sequence[LineArrays], post: PostprocessConfig,
             seed: int, tile_size: int = 256,
             log: Callable[[dict[str, Any]], None] | None = None) -> Readout:
    """``readout: auto``: choose the readout by :func:`sscc_core.training.selection.select` on the
    labeller's vectors of a seeded sample of at most ``select_sample`` training pixels (of all
    ``lines``; ``readout_sample`` when it is ``None``), fit the chosen one again on a seeded
    sample of at most ``readout_sample`` when that sample differs
    (:func:`sscc_core.training.selection.refit`), and build it (k-means: centroids of the
    standardised sample; spectral: the extension).

    Returns:
        The fitted :class:`Readout` with ``selection`` set.
    """
    train_masks = [line.train_mask for line in lines]
    fit_masks = sample_masks(train_masks, post.readout_sample, seed)
    select_masks = fit_masks if post.select_sample is None else sample_masks(train_masks, post.select_sample, seed)
    k = model.cfg.n_clusters

    def vectors_at(sigma: float, masks: Sequence[np.ndarray]) -> Tensor:
        labeller = Labeller(model, pre, readout=Readout("kmeans", sigma, post.readout_spectra))
        vectors = lines_vectors(labeller, lines, masks, tile_size)
        if len(vectors) <= max(k, post.spectral_neighbors):
            raise ValueError(f"readout 'auto': {len(vectors)} training pixels are too few for "
                             f"{k} clusters")
        return vectors

    chosen: Selection = select(lambda sigma: vectors_at(sigma, select_masks), model.feature_dim, pre.comp_std,
                               k, post, seed, lambda zf, lf: extension(zf, lf, k, seed), log)
    if not all(np.array_equal(a, b) for a, b in zip(select_masks, fit_masks)):
        chosen = refit(chosen, vectors_at(chosen.choice.smooth_sigma, fit_masks), model.feature_dim,
                       pre.comp_std, k, post, seed)
    return readout_of(chosen, k, seed, post.readout_spectra)


def readout_of(chosen: Selection, n_clusters: int, seed: int, spectra_weight: float) -> Readout:
    """The fitted :class:`Readout` of a selection: the chosen kind and smoothing, its
    standardiser, and k-means centroids of the standardised sample (an empty cluster's centroid
    is placed out of reach) or the spectral readout's extension."""
    z, labels = chosen.z, chosen.labels
    if chosen.choice.kind == "kmeans":
        centroids = np.stack([z[labels == c].mean(0) if (labels == c).any() else np.full(z.shape[1], 1e15)
                              for c in range(n_clusters)])
        state = {**chosen.state, "centroids": torch.from_numpy(centroids).float()}
    else:
        state = {**chosen.state, **fit_extension(z, labels, n_clusters, seed)}
    return Readout(chosen.choice.kind, chosen.choice.smooth_sigma, spectra_weight, state, chosen.record())
