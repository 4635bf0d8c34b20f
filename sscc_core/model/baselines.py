"""k-means baseline in the same harness as SSCC: same features, same metrics, tile-wise labelling.

Features are the pre-processed pixel features of :mod:`sscc_core.model.preprocess`. k-means does
better on the PCA scores of the z-scored bands than on the whitened recipe features (whitening
gives the noisy minor components as much weight as the first): on Salinas-A (K = 6, labelled
pixels) mean ACC 0.77 vs 0.69 over seeds 0..2, so feed the baseline
``transform(..., whiten=False)`` features. The model is scikit-learn's
:class:`~sklearn.cluster.MiniBatchKMeans`, fitted on a pixel set that fits in memory (labelled
or sampled pixels) and then applied tile by tile to a whole scene (:func:`fit_kmeans_baseline`,
:func:`label_kmeans_baseline`: the one k-means baseline of the accuracy harness, the demo and the
benchmarks). Labels are the nearest centroid (:func:`nearest_centroid`, the same function the
k-means readout of SSCC uses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from torch import Tensor

from sscc_core.model.postprocess import NODATA
from sscc_core.model.preprocess import Preprocessor
from sscc_core.io.tiling import tile_grid, tile_valid


def nearest_centroid(features: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest-centroid labels of feature vectors (Euclidean, in float64), and a confidence.

    Args:
        features: (N, D) feature vectors.
        centroids: (K, D) k-means centroids, K >= 2.

    Returns:
        ``(labels, confidence)``: (N,) int64 in ``[0, K)`` and (N,) float32
        ``1 - d_nearest / d_second`` in ``[0, 1]`` (0 = equidistant from two centroids).

    Raises:
        ValueError: Shapes do not match.
    """
    if features.ndim != 2 or centroids.ndim != 2 or features.shape[1] != centroids.shape[1]:
        raise ValueError(f"nearest_centroid: expected (N, D) features and (K, D) centroids, got "
                         f"{tuple(features.shape)} and {tuple(centroids.shape)}")
    if centroids.shape[0] < 2:
        raise ValueError(f"nearest_centroid: need at least 2 centroids, got {centroids.shape[0]}")
    f, c = features.double(), centroids.double()
    dist2 = (f * f).sum(1, keepdim=True) - 2.0 * f @ c.T + (c * c).sum(1)  # (N, K)
    two = dist2.clamp(min=0.0).topk(2, dim=1, largest=False)
    d = two.values.sqrt()
    conf = torch.where(d[:, 1] > 0, 1.0 - d[:, 0] / d[:, 1].clamp(min=1e-300), 0.0)
    return two.indices[:, 0].long(), conf.float()


def fit_kmeans(
    features: np.ndarray, k: int, seed: int, batch_size: int = 4096, n_init: int = 10
) -> MiniBatchKMeans:
    """Fit mini-batch k-means (k-means++ init, best of ``n_init`` runs by inertia).

    Args:
        features: ``(N, D)`` pixel features.
        k: Number of clusters.
        seed: Random seed (initialisation and mini-batch order).
        batch_size: Mini-batch size, in pixels.
        n_init: Independent initialisations; the lowest-inertia one is kept.

    Returns:
        The fitted estimator.

    Raises:
        ValueError: ``features`` is not 2-D or has fewer rows than ``k``.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {features.shape}")
    if k < 2 or len(features) < k:
        raise ValueError(f"need 2 <= k <= N pixels, got k={k} for N={len(features)}")
    model = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=batch_size, n_init=n_init)
    return model.fit(features)


def predict(model: MiniBatchKMeans, features: np.ndarray) -> np.ndarray:
    """Nearest-centroid labels of pixel features.

    Args:
        model: A fitted estimator from :func:`fit_kmeans`.
        features: ``(N, D)`` pixel features.

    Returns:
        ``(N,)`` int64 cluster ids in ``[0, k)``.
    """
    centroids = torch.from_numpy(np.asarray(model.cluster_centers_))
    return nearest_centroid(torch.from_numpy(np.asarray(features)), centroids)[0].numpy()


def predict_block(model: MiniBatchKMeans, block: np.ndarray) -> np.ndarray:
    """Label every pixel of a channel-first feature block (one tile).

    Args:
        model: A fitted estimator from :func:`fit_kmeans`.
        block: ``(D, h, w)`` features, e.g. :meth:`Preprocessor.transform` of a tile.

    Returns:
        ``(h, w)`` int64 cluster ids.
    """
    d, h, w = block.shape
    return predict(model, np.asarray(block).reshape(d, h * w).T).reshape(h, w)


def kmeans_fit_predict(
    features: np.ndarray, k: int, seed: int, batch_size: int = 4096, n_init: int = 10
) -> np.ndarray:
    """Fit k-means on ``features`` and label the same pixels.

    Args:
        features: ``(N, D)`` pixel features.
        k: Number of clusters.
        seed: Random seed.
        batch_size: Mini-batch size, in pixels.
        n_init: Independent initialisations.

    Returns:
        ``(N,)`` int64 cluster ids.
    """
    return predict(fit_kmeans(features, k, seed, batch_size, n_init), features)


def fit_kmeans_baseline(
    cube: Any, valid: Any, fit_mask: np.ndarray, pre: Preprocessor, k: int, seed: int,
    whiten: bool = False, tile_size: int = 512,
) -> MiniBatchKMeans:
    """The k-means baseline of a scene: :func:`fit_kmeans` on the pre-processed features of the
    ``fit_mask`` pixels, read tile by tile and taken in scene row-major order (so the fit does not
    depend on ``tile_size``).

    Args:
        cube: (B, H, W) raw array-like (numpy or zarr).
        valid: (H, W) bool array-like.
        fit_mask: (H, W) bool, the pixels to fit on (valid ones).
        pre: Fitted pre-processing.
        k: Number of clusters.
        seed: Random seed.
        whiten: Z-score the PCA components (the recipe's features); the baseline default is the
            plain PCA scores (see the module docstring).
        tile_size: Tile side used to read the cube.

    Returns:
        The fitted estimator.
    """
    fit_mask = np.asarray(fit_mask, dtype=bool)
    features, coords = [], []
    for tile in tile_grid(*fit_mask.shape, tile_size):
        mask = tile_valid(valid, tile)
        local = fit_mask[tile.slices] & mask
        if local.any():
            block = pre.transform(np.asarray(cube[(slice(None), *tile.slices)]), mask, whiten=whiten)
            features.append(block[:, local].T)
            coords.append(np.argwhere(local) + [tile.y0, tile.x0])
    if not features:
        raise ValueError("k-means baseline: no pixel to fit on")
    coords = np.concatenate(coords)
    order = np.lexsort((coords[:, 1], coords[:, 0]))
    return fit_kmeans(np.concatenate(features)[order], k, seed)


def label_kmeans_baseline(
    model: MiniBatchKMeans, cube: Any, valid: Any, pre: Preprocessor, whiten: bool = False,
    tile_size: int = 512,
) -> np.ndarray:
    """Every valid pixel of a scene labelled with its nearest centroid, tile by tile.

    Args:
        model: From :func:`fit_kmeans_baseline` (the same ``pre`` and ``whiten``).
        cube: (B, H, W) raw array-like (numpy or zarr).
        valid: (H, W) bool array-like.
        pre: Fitted pre-processing.
        whiten: As in the fit.
        tile_size: Tile side used to read the cube.

    Returns:
        (H, W) int64 cluster ids, :data:`sscc_core.model.postprocess.NODATA` (-1) at nodata pixels.
    """
    height, width = (int(s) for s in valid.shape)
    labels = np.full((height, width), NODATA, dtype=np.int64)
    for tile in tile_grid(height, width, tile_size):
        mask = tile_valid(valid, tile)
        if mask.any():
            block = pre.transform(np.asarray(cube[(slice(None), *tile.slices)]), mask, whiten=whiten)
            labels[tile.slices][mask] = predict(model, block[:, mask].T)
    return labels
