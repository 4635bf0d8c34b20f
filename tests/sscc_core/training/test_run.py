"""A run's directory on relaunch: the pre-processing comes from the newest loadable checkpoint,
or, before any exists, is fitted again to the identical state; a finished run is recognised."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sscc_core import storage
from sscc_core.config import SSCCConfig, load_config
from sscc_core.io.cube import make_cube
from sscc_core.io.store import write_cube
from sscc_core.model.checkpoint import Checkpoint, save_checkpoint
from sscc_core.model.preprocess import Preprocessor, accumulate_moments, preprocessor_from_moments
from sscc_core.training.run import (
    final_checkpoint, finished_run, fit_lines_preprocessor, run_preprocessing,
)

TILE = 8


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(1)
    cube = (rng.normal(0, 3, (6, 1, 1)) * rng.normal(0, 1, (1, 19, 21))
            + rng.normal(50, 5, (6, 19, 21))).astype(np.float32)
    cube[:, 4:9, 3:7] = -1  # nodata
    path = tmp_path_factory.mktemp("run") / "tiny.zarr"
    return str(write_cube(make_cube(cube, nodata=-1, name="tiny"), path, chunk=TILE))


def config(**extra: object) -> SSCCConfig:
    return load_config(overrides={"preprocess.n_components": 3, "tile.tile_size": TILE, **extra})


def assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[name]), name
        else:
            assert value == b[name], name


def checkpoint(cfg: SSCCConfig, pre: Preprocessor, epoch: int) -> Checkpoint:
    return Checkpoint(config=cfg, in_channels=pre.n_components, n_bands=6,
                      model_state={"w": torch.zeros(2)}, preprocess_state=pre.to_state(), epoch=epoch)


def epoch_file(run: str, second: int) -> str:
    """The file of a per-epoch checkpoint as Ray Train names its folder (by creation time)."""
    return storage.join(run, f"checkpoint_2026-11-30_10-00-{second:02d}.000001", "model.pt")


@pytest.mark.parametrize("sample_pixels, method", [(10_000, "exact"), (50, "sample")])
def test_refitting_before_any_checkpoint_gives_the_identical_state(store: str, tmp_path: Path,
                                                                   sample_pixels: int, method: str) -> None:
    cfg = config(**{"preprocess.sample_pixels": sample_pixels})
    first = run_preprocessing([store], cfg, str(tmp_path / "run"))
    again = run_preprocessing([store], cfg, str(tmp_path / "run"))
    assert (first.checkpoint, first.method, first.n_valid) == (None, method, 19 * 21 - 20)
    assert_same_state(again.preprocessor.to_state(), first.preprocessor.to_state())
    if method == "sample":  # the seeded sample is not the exact fit: the sample path was taken
        exact = fit_lines_preprocessor([store], config()).preprocessor
        assert not np.allclose(exact.band_mean, first.preprocessor.band_mean)


def test_a_resumed_run_reads_the_newest_loadable_checkpoint(store: str, tmp_path: Path) -> None:
    cfg = config()
    run = str(tmp_path / "run")
    fitted = fit_lines_preprocessor([store], cfg).preprocessor
    save_checkpoint(checkpoint(cfg, fitted, 1), epoch_file(run, 0))
    marked = Preprocessor.from_state({**fitted.to_state(),
                                      "band_mean": torch.full((6,), 7.0, dtype=torch.float64)})
    newer = save_checkpoint(checkpoint(cfg, marked, 2), epoch_file(run, 1))
    got = run_preprocessing([store], cfg, run)
    assert got.checkpoint == newer and got.method is None  # read, not fitted
    assert_same_state(got.preprocessor.to_state(), marked.to_state())
    newest = save_checkpoint(checkpoint(cfg, marked, 3), epoch_file(run, 2))
    os.truncate(newest, 100)  # killed while writing: skipped
    assert run_preprocessing([store], cfg, run).checkpoint == newer
    os.truncate(newer, 100)
    oldest = run_preprocessing([store], cfg, run)  # the epoch-1 checkpoint holds what a refit gives
    assert oldest.checkpoint is not None and oldest.checkpoint.endswith("10-00-00.000001/model.pt")
    assert_same_state(oldest.preprocessor.to_state(), fitted.to_state())


def test_a_run_is_finished_once_its_final_checkpoint_and_history_reach_the_epochs(store: str,
                                                                                  tmp_path: Path) -> None:
    cfg = config(**{"train.epochs": 2})
    run = str(tmp_path / "run")
    pre = fit_lines_preprocessor([store], cfg).preprocessor
    path = save_checkpoint(checkpoint(cfg, pre, 2), storage.join(run, "final"))
    assert path == final_checkpoint(run) == str(tmp_path / "run" / "final" / "model.pt")
    assert finished_run(run, cfg) is None  # history.json is written last: not finished yet
    (tmp_path / "run" / "history.json").write_text("[]")
    assert finished_run(run, cfg) == path
    assert finished_run(run, config(**{"train.epochs": 3})) is None  # raised: continue the run


@pytest.fixture(scope="module")
def two_lines(tmp_path_factory: pytest.TempPathFactory, salinas: np.ndarray) -> list[str]:
    """Two flight lines cut from Salinas-A on different grids, the second with a nodata block."""
    root = tmp_path_factory.mktemp("lines")
    first = salinas[:, 0:30, 0:40]
    second = salinas[:, 25:83, 30:86].copy()
    second[:, 5:12, 10:20] = -1
    return [str(write_cube(make_cube(first, name="fl01"), root / "fl01.zarr", chunk=16)),
            str(write_cube(make_cube(second, nodata=-1, name="fl02"), root / "fl02.zarr", chunk=16))]


def test_lines_are_fitted_together_on_their_valid_pixels(two_lines: list[str], salinas: np.ndarray) -> None:
    """Two lines: the exact fit is the fit of their valid pixels concatenated; above
    preprocess.sample_pixels one seeded sample is drawn across the lines."""
    second = salinas[:, 25:83, 30:86]
    valid = np.ones(second.shape[1:], bool)
    valid[5:12, 10:20] = False
    pixels = np.concatenate([salinas[:, 0:30, 0:40].reshape(204, -1), second[:, valid]], axis=1)
    reference = preprocessor_from_moments(accumulate_moments(pixels[:, None, :], None), 3)
    fitted = fit_lines_preprocessor(two_lines, config(**{"tile.tile_size": 16}))
    assert (fitted.method, fitted.n_valid) == ("exact", 30 * 40 + valid.sum())
    for name in ("band_mean", "band_std", "components", "explained_variance"):
        np.testing.assert_allclose(getattr(fitted.preprocessor, name), getattr(reference, name),
                                   rtol=1e-9, atol=1e-12, err_msg=name)
    assert fitted.preprocessor.n_pixels == pixels.shape[1]
    sample = config(**{"tile.tile_size": 16, "preprocess.sample_pixels": 500})
    sampled, again = fit_lines_preprocessor(two_lines, sample), fit_lines_preprocessor(two_lines, sample)
    assert (sampled.method, sampled.preprocessor.n_pixels) == ("sample", 500)
    assert_same_state(sampled.preprocessor.to_state(), again.preprocessor.to_state())
    assert not np.allclose(sampled.preprocessor.band_mean, reference.band_mean)
    np.testing.assert_allclose(sampled.preprocessor.band_mean, reference.band_mean, rtol=0.05)
