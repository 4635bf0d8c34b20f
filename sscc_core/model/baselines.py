"""k-means baseline in the same harness as SSCC: same features, same metrics, tile-wise labelling.

Features are the pre-processed pixel features of :mod:`sscc_core.model.preprocess`. k-means does
better on the PCA scores of the z-scored bands than on the whitened recipe features (whitening
gives the noisy minor components as much weight as the first): on Salinas-A (K = 6, labelled
pixels) mean ACC 0.77 vs 0.69 over seeds 0..2, so feed the baseline
``transform(..., whiten=False)`` features. The model is scikit-learn's
:class:`~sklearn.cluster.MiniBatchKMeans`, fitted on a pixel set that fits in memory (labelled
or sampled pixels) and then applied tile by tile to a whole scene (:func:`fit_kmeans_baseline`,
:func:`label_kmeans_baseline`: the one k-means baseline of the accuracy harness, the demo and the
benchmarks). Labels are the nearest centroid (:func:`sscc_core.model.readout.nearest_centroid`,
the k-means readout of SSCC).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from torch import Tensor

from sscc_core.model.postprocess import NODATA
from sscc_core.model.preprocess import Preprocessor
from sscc_core.model.readout import nearest_centroid
from sscc_core.io.tiling import tile_grid, tile_valid


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
