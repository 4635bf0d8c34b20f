"""Spatial post-processing of a cluster label map: an iterated majority (mode) filter.

Neighbouring pixels of a hyperspectral scene usually belong to the same class, so an isolated
pixel whose cluster differs from all its neighbours is more often an error than a tiny field. The
mode filter replaces each valid pixel's label by the most frequent label among the valid pixels
of the ``window x window`` square around it. Nodata pixels (label < 0) are neither counted nor
changed. A tie keeps the pixel's current label when it is among the most frequent ones, otherwise
the smallest tied label wins, so the filter is deterministic and leaves a constant map unchanged.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

NODATA = -1


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
