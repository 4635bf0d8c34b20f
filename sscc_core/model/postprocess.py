"""Spatial post-processing of a trained network's per-pixel outputs (``cfg.postprocess``).

Neighbouring pixels of a hyperspectral scene usually belong to the same class, so two local
operations use that prior. Each is defined over valid pixels only, so that a tile grown by the
operation's reach (clipped to the scene), processed and cropped back equals the whole-scene
result:

* :func:`smooth`: a Gaussian average of per-pixel vectors (cluster probabilities or backbone
  features) over valid neighbours, before the readout (``smooth_sigma``). It is a normalised
  convolution, ``G * (v m) / G * m`` with the valid mask ``m``: nodata pixels and positions
  outside the scene carry no weight, and the weights of every valid pixel sum to 1, so an affine
  map of the vectors (a z-score) commutes with it. Reach: :func:`smooth_reach`.
* :func:`mode_filter`: an iterated majority filter of the label map (``mode_window``). It
  replaces each valid pixel's label by the most frequent label among the valid pixels of the
  ``window x window`` square around it. Nodata pixels (label < 0) and positions outside the map
  are neither counted nor changed. A tie keeps the pixel's current label when it is among the
  most frequent ones, otherwise the smallest tied label wins, so the filter is deterministic and
  leaves a constant map unchanged. Reach: :func:`mode_reach`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter

NODATA = -1
TRUNCATE = 4.0  # Gaussian kernel radius, in standard deviations (scipy's default)


def smooth_reach(sigma: float) -> int:
    """Pixels beyond a tile whose values change the tile's smoothed values: the Gaussian
    kernel's radius ``int(TRUNCATE * sigma + 0.5)`` (0 when smoothing is off, ``sigma == 0``)."""
    return int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0


def smooth(values: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian average of per-pixel vectors over valid pixels (normalised convolution).

    Args:
        values: (V, H, W) per-pixel vectors (values at invalid pixels are ignored).
        valid: (H, W) bool mask.
        sigma: Standard deviation, in pixels (0 returns the values, zeroed at invalid pixels).

    Returns:
        (V, H, W) float32; 0 at invalid pixels.

    Raises:
        ValueError: Shapes do not match, or ``sigma`` < 0.
    """
    values = np.asarray(values)
    valid = np.asarray(valid, dtype=bool)
    if values.ndim != 3 or values.shape[1:] != valid.shape:
        raise ValueError(f"smooth: expected (V, H, W) values and an (H, W) mask, got "
                         f"{values.shape} and {valid.shape}")
    if sigma < 0:
        raise ValueError(f"smooth: sigma must be >= 0 pixels, got {sigma}")
    weight = valid.astype(np.float64)
    if sigma == 0:
        return (values * weight).astype(np.float32)
    num = gaussian_filter(values * weight, sigma=(0, sigma, sigma), mode="constant",
                          truncate=TRUNCATE)
    den = gaussian_filter(weight, sigma=sigma, mode="constant", truncate=TRUNCATE)
    # Every valid pixel weighs itself, so den > 0 wherever the result is kept.
    return np.where(valid, num / np.where(valid, den, 1.0), 0.0).astype(np.float32)


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
