"""Static figures of the run report (matplotlib's Agg canvas through ``Figure``, no pyplot):
cluster spectra as small multiples and the training curves. The all-clusters spectra plot is
:func:`sscc_core.labelling.export.plot_spectra`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sscc_core.labelling.export import ClusterSpectra
from sscc_core.model import loss

MAX_PANELS = 64
# Every logged loss part but ``cc``, which is ``diagonal + offdiag_weight * off_diagonal``.
LOSS_PARTS = tuple(part for part in loss.LOSS_PARTS if part != "cc")


def plot_spectra_grid(
    stats: ClusterSpectra,
    wavelength: Any | None,
    path: Path,
    colormap: Mapping[int, tuple[int, int, int, int]],
) -> Path:
    """Small multiples: one panel per non-empty cluster (the :data:`MAX_PANELS` largest), its
    mean spectrum with a +-1 std band, on shared axes, in wavelength order."""
    from matplotlib.figure import Figure

    x = np.arange(stats.mean.shape[1]) if wavelength is None else np.asarray(wavelength, float)
    order = np.argsort(x, kind="stable")
    shown = [c for c in np.argsort(-stats.count, kind="stable")[:MAX_PANELS] if stats.count[c]]
    shown.sort()
    ncol = max(1, math.ceil(math.sqrt(len(shown))))
    nrow = max(1, math.ceil(len(shown) / ncol))
    width, height = 2.4 * ncol, 1.9 * nrow + 0.5
    fig = Figure(figsize=(width, height), dpi=90)
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.1 / width, bottom=0.55 / height,
                        top=1 - 0.3 / height, wspace=0.12, hspace=0.4)  # fixed: no tight_layout
    axes = fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False)
    for ax, c in zip(axes.flat, shown):
        colour = np.array(colormap[int(c)][:3]) / 255.0
        mean, std = stats.mean[c][order], stats.std[c][order]
        ax.fill_between(x[order], mean - std, mean + std, color=colour, alpha=0.25, lw=0)
        ax.plot(x[order], mean, color=colour, lw=1.2)
        ax.set_title(f"cluster {c} (n={stats.count[c]:,})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    fig.supxlabel("band index" if wavelength is None else "wavelength (nm)", fontsize=9)
    fig.supylabel("reflectance", fontsize=9)
    fig.savefig(path)
    return path


def plot_training(history: Sequence[Mapping[str, float]], n_clusters: int, path: Path) -> Path:
    """Three panels per epoch: the loss parts, the clusters the argmax used (K dashed) and the
    mean assignment entropy (log K dashed)."""
    from matplotlib.figure import Figure

    epochs = [int(h["epoch"]) for h in history]
    fig = Figure(figsize=(12, 3.4), dpi=90)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.22)
    loss, used, entropy = fig.subplots(1, 3)
    for part in LOSS_PARTS:
        if all(part in h for h in history):
            loss.plot(epochs, [h[part] for h in history], marker=".", label=part)
    loss.set_yscale("symlog", linthresh=1e-3)
    loss.set_title("loss parts")
    loss.legend(fontsize=7)
    used.plot(epochs, [h["clusters_used"] for h in history], marker=".", color="C2")
    used.axhline(n_clusters, ls="--", color="0.5", lw=1)
    used.set_ylim(0, n_clusters + 1)
    used.set_title(f"clusters used by the argmax (K = {n_clusters})")
    entropy.plot(epochs, [h["assign_entropy"] for h in history], marker=".", color="C3")
    entropy.axhline(math.log(n_clusters), ls="--", color="0.5", lw=1)
    entropy.set_title("assignment entropy (nats; log K dashed)")
    for ax in (loss, used, entropy):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.savefig(path)
    return path
