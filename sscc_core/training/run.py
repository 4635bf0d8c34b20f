"""A training run's directory on relaunch: whether the run already finished, and the
pre-processing it continues with.

A run directory (local or object storage) holds Ray Train's per-epoch checkpoints
(``checkpoint_<time>/model.pt``, :func:`sscc_core.model.checkpoint.run_checkpoints`), the
:class:`sscc_core.model.checkpoint.RunRecord` (``run.json``) and, once the run is done, the
product ``final/model.pt`` with ``history.json`` and ``config.yaml``. The fitted pre-processing
lives only inside the checkpoints: a resumed run reads it from the newest loadable one; before
any checkpoint exists it is fitted again from the run's stores (one or more flight lines),
deterministically (the exact moments of every valid pixel, or a sample seeded by
``preprocess.seed``), so a relaunch trains with the same pre-processing either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zarr

from sscc_core import storage
from sscc_core.config import SSCCConfig
from sscc_core.io.tiling import tile_grid, tile_valid
from sscc_core.model.checkpoint import checkpoint_file, load_checkpoint, newest_loadable, run_checkpoints
from sscc_core.model.preprocess import (
    FitMethod, Preprocessor, accumulate_lines_moments, preprocessor_from_moments,
)

FINAL = "final"  # the run's product: RUN/final/model.pt


def final_checkpoint(run_dir: str) -> str:
    """The file of a run's final checkpoint (written once, after the readout fit)."""
    return checkpoint_file(storage.join(run_dir, FINAL))


def finished_run(run_dir: str, cfg: SSCCConfig) -> str | None:
    """The final checkpoint of a run that already completed ``train.epochs`` (its readout fitted
    and ``history.json`` written, the last steps of a run), else ``None``."""
    path = final_checkpoint(run_dir)
    if not (storage.exists(storage.join(run_dir, "history.json")) and storage.exists(path)):
        return None
    return path if load_checkpoint(path).epoch >= cfg.train.epochs else None


@dataclass(frozen=True)
class RunPreprocessing:
    """The pre-processing a launch trains with, and where it came from.

    Attributes:
        preprocessor: The fitted pre-processing.
        checkpoint: The per-epoch checkpoint it was read from (a resumed run), or ``None``
            (fitted by this launch).
        method: ``"exact"`` or ``"sample"`` when fitted by this launch, else ``None``.
        n_valid: Valid pixels of the stores (all lines) when fitted by this launch, else ``None``.
    """

    preprocessor: Preprocessor
    checkpoint: str | None = None
    method: FitMethod | None = None
    n_valid: int | None = None


def fit_scenes_preprocessor(scenes: Sequence[tuple[Any, Any]], cfg: SSCCConfig) -> RunPreprocessing:
    """Fit the pre-processing on the valid pixels of one or more scenes (flight lines) together,
    tile by tile: the exact moments of every valid pixel of all lines up to
    ``preprocess.sample_pixels`` of them, one seeded sample across the lines above
    (:func:`sscc_core.model.preprocess.accumulate_lines_moments`; deterministic either way).

    ``sscc train`` fits its run's stores with it and the accuracy suite its scene in memory, so
    both train with the same pre-processing.

    Args:
        scenes: ``(cube, valid)`` of each line, in the run's line order: ``(B, H, W)`` and
            ``(H, W)`` array-likes (zarr arrays, numpy).
        cfg: Run configuration (``preprocess``, ``tile.tile_size``).
    """
    tile = cfg.tile.tile_size
    n_valid = sum(int(tile_valid(valid, t).sum()) for _, valid in scenes for t in tile_grid(*valid.shape, tile))
    method: FitMethod = "exact" if n_valid <= cfg.preprocess.sample_pixels else "sample"
    moments = accumulate_lines_moments(list(scenes), tile, method, cfg.preprocess.sample_pixels,
                                       cfg.preprocess.seed)
    pre = preprocessor_from_moments(moments, cfg.preprocess.n_components)
    return RunPreprocessing(pre, method=method, n_valid=n_valid)


def fit_lines_preprocessor(stores: Sequence[str], cfg: SSCCConfig) -> RunPreprocessing:
    """:func:`fit_scenes_preprocessor` of cube stores (canonical, in the run's line order)."""
    groups = [zarr.open_group(store, mode="r") for store in stores]
    return fit_scenes_preprocessor([(g["reflectance"], g["valid"]) for g in groups], cfg)


def run_preprocessing(stores: Sequence[str], cfg: SSCCConfig, run_dir: str) -> RunPreprocessing:
    """The pre-processing of a run: read from its newest loadable per-epoch checkpoint, else
    (no checkpoint yet, or none loads) fitted on the stores by :func:`fit_lines_preprocessor`.

    The run record (:func:`sscc_core.model.checkpoint.check_run_record`) has already tied any
    checkpoint of ``run_dir`` to these stores and config, so both give the same pre-processing.

    Args:
        stores: Canonical cube stores (the run's flight lines, in order).
        cfg: Run configuration.
        run_dir: The run's directory (local or object storage).
    """
    paths = run_checkpoints(run_dir)
    ckpt, errors = newest_loadable(paths)
    if ckpt is None:
        return fit_lines_preprocessor(stores, cfg)
    return RunPreprocessing(Preprocessor.from_state(ckpt.preprocess_state), checkpoint=paths[len(errors)])
