"""How a trained network's outputs become the final label map (``cfg.postprocess``).

* The k-means readout: after training, k-means (K = ``model.n_clusters``) is fitted on the
  eval-mode backbone features of (a seeded sample of) the clean training patches
  (:func:`fit_readout`, optionally after BatchNorm recalibration on the same patches); its
  centroids are stored in the checkpoint and every pixel gets its nearest centroid
  (:func:`nearest_centroid`).
* An iterated majority (mode) filter of the label map. Neighbouring pixels of a hyperspectral
  scene usually belong to the same class, so an isolated pixel whose cluster differs from all its
  neighbours is more often an error than a tiny field. The mode filter replaces each valid
  pixel's label by the most frequent label among the valid pixels of the ``window x window``
  square around it. Nodata pixels (label < 0) and positions outside the map are neither counted
  nor changed, so filtering a tile grown by :func:`mode_reach` pixels (clipped to the scene) and
  cropping it back equals filtering the whole scene. A tie keeps the pixel's current label when
  it is among the most frequent ones, otherwise the smallest tied label wins, so the filter is
  deterministic and leaves a constant map unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from sscc_core.baselines import fit_kmeans
from sscc_core.config import SSCCConfig
from sscc_core.model import SSCCNet, backbone_features, recalibrate_batchnorm
from sscc_core.preprocess import Preprocessor
from sscc_core.trainer import gather_patches

NODATA = -1
READOUT_SAMPLE = 50_000  # training patches the k-means readout and BN recalibration are fitted on


def mode_filter(labels: np.ndarray, window: int, iterations: int = 1) -> np.ndarray:
    """Majority filter of a label map over square windows of valid pixels.

    Args:
        labels: (H, W) integer cluster ids in ``[0, K)``; negative values mark nodata.
        window: Odd window side, in pixels (>= 3; 1 returns a copy).
        iterations: Times the filter is applied (each pass reads the previous pass's map).

    Returns:
        (H, W) int64 label map; nodata pixels keep their value.

    Raises:
        ValueError: ``labels`` is not a 2-D integer map, ``window`` is not a positive odd number,
            or ``iterations`` < 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"mode_filter: expected an (H, W) integer label map, got "
                         f"{labels.shape} {labels.dtype}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"mode_filter: window must be a positive odd number, got {window}")
    if iterations < 0:
        raise ValueError(f"mode_filter: iterations must be >= 0, got {iterations}")
    out = labels.astype(np.int64)
    valid = out >= 0
    if window == 1 or not valid.any():
        return out
    n_clusters = int(out.max()) + 1
    for _ in range(iterations):
        # counts[k] = number of valid window pixels labelled k (box mean times window area).
        onehot = (out[None] == np.arange(n_clusters)[:, None, None]).astype(np.float64)
        counts = uniform_filter(onehot, size=(1, window, window), mode="constant") * window**2
        counts = np.rint(counts)
        # Half a vote for the current label: it wins every tie it takes part in.
        counts[(out.clip(min=0), *np.indices(out.shape))] += 0.5 * valid
        new = np.where(valid, counts.argmax(axis=0), out)
        if np.array_equal(new, out):
            break
        out = new
    return out


def mode_reach(window: int, iterations: int) -> int:
    """Pixels beyond a tile whose labels can change the tile's filtered labels:
    ``(window // 2) * iterations`` (0 when the filter is off, ``window == 1``)."""
    return (window // 2) * iterations if window > 1 else 0


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-centroid labels of feature vectors (Euclidean), and a confidence.

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


def readout_patches(
    cube: Any, valid: Any, train_mask: np.ndarray, pre: Preprocessor, patch_size: int, seed: int,
    max_pixels: int = READOUT_SAMPLE, tile_size: int = 256,
) -> torch.Tensor:
    """Clean patches of the training pixels (a seeded sample of at most ``max_pixels``), in scene
    row-major order whatever the tile size, so every trainer fits the same readout.

    Args:
        cube: (B, H, W) array-like (numpy or zarr).
        valid: (H, W) bool array-like.
        train_mask: (H, W) bool, the training pixels (:func:`sscc_core.trainer.training_mask`).
        pre: Fitted pre-processing.
        patch_size: Odd patch side P.
        seed: Seed of the sample (the run's ``train.seed``).
        max_pixels: Largest number of patches returned.
        tile_size: Tile side used to read the cube.

    Returns:
        (N, C, P, P) float32 patches, N = min(#training pixels, ``max_pixels``).
    """
    train_mask = np.asarray(train_mask, dtype=bool)
    flat = np.flatnonzero(train_mask)
    if len(flat) > max_pixels:
        flat = np.sort(np.random.default_rng(seed).choice(flat, max_pixels, replace=False))
        train_mask = np.zeros(train_mask.shape, dtype=bool)
        train_mask.flat[flat] = True
    patches, coords = gather_patches(cube, valid, train_mask, pre, patch_size, tile_size)
    order = np.lexsort((coords[:, 1], coords[:, 0]))
    return torch.from_numpy(np.ascontiguousarray(patches[order]))


def fit_readout(model: SSCCNet, patches: torch.Tensor, cfg: SSCCConfig) -> dict[str, torch.Tensor] | None:
    """Fit what ``cfg.postprocess`` needs after training, on clean training patches.

    With ``bn_recalibrate`` the model's BatchNorm statistics are re-estimated first (in place).
    With ``readout == "kmeans"`` k-means (K = ``model.n_clusters``, seed ``train.seed``) is fitted
    on the eval-mode backbone features of ``patches``.

    Args:
        model: The trained network (left in eval mode).
        patches: (N, C, P, P) clean training patches (:func:`readout_patches`).
        cfg: The run configuration.

    Returns:
        ``{"centroids": (K, D) float32}`` for the k-means readout, ``None`` for the head readout;
        the checkpoint's ``readout_state``.

    Raises:
        ValueError: Fewer patches than clusters.
    """
    post = cfg.postprocess
    if post.bn_recalibrate:
        recalibrate_batchnorm(model, patches)
    model.eval()
    if post.readout != "kmeans":
        return None
    feats = backbone_features(model, patches).numpy()
    km = fit_kmeans(feats, cfg.model.n_clusters, cfg.train.seed)
    return {"centroids": torch.from_numpy(km.cluster_centers_.astype(np.float32))}
