"""The readout fit over several flight lines: one seeded sample across the lines' training
pixels (one line: the single-scene sample, unchanged), and the driver step reading every line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sscc_core.config import SSCCConfig, load_config
from sscc_core.io.cube import make_cube
from sscc_core.io.store import open_cube, write_cube
from sscc_core.model.checkpoint import Checkpoint
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.training.final_readout import fit_final_readout
from sscc_core.training.readout_fit import LineArrays, fit_lines_readout, sample_mask, sample_masks
from sscc_core.training.tiles import lines_training_tiles
from sscc_core.training.trainer import build_training

TILE = 8


def test_one_sample_is_drawn_across_the_lines() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((20, 30)) < 0.5, rng.random((12, 9)) < 0.7
    one = sample_masks([a], 100, seed=4)[0]
    before = np.zeros_like(a)  # the single-scene sample as it was drawn before lines existed
    before.flat[np.random.default_rng(4).choice(np.flatnonzero(a), 100, replace=False)] = True
    np.testing.assert_array_equal(one, before)
    np.testing.assert_array_equal(sample_mask(a, 100, 4), before)
    ka, kb = sample_masks([a, b], 100, seed=4)
    assert ka.sum() + kb.sum() == 100 and ka.sum() > 50 and kb.sum() > 10  # ~ 300 : 76 pixels
    assert not (ka & ~a).any() and not (kb & ~b).any()
    again = sample_masks([a, b], 100, seed=4)
    assert (again[0] == ka).all() and (again[1] == kb).all()
    assert not (sample_masks([a, b], 100, seed=5)[1] == kb).all()
    everything = sample_masks([a, b], 10_000, seed=4)
    assert (everything[0] == a).all() and (everything[1] == b).all()


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two 6-band lines on different grids (24 x 30 and 16 x 18) with different spectra."""
    rng = np.random.default_rng(2)
    root = tmp_path_factory.mktemp("readout_lines")
    first = rng.normal(100, 10, (6, 24, 30)).astype(np.float32)
    second = rng.normal(140, 25, (6, 16, 18)).astype(np.float32)
    return [str(write_cube(make_cube(cube, name=name), root / f"{name}.zarr", chunk=TILE))
            for name, cube in (("fl01", first), ("fl02", second))]


def config() -> SSCCConfig:
    return load_config(overrides={
        "model.backbone": "fcn", "model.widths": [8, 8], "model.stem_channels": 8,
        "model.head_hidden": 8, "model.n_clusters": 4, "preprocess.n_components": 3,
        "preprocess.patch_size": 5, "tile.tile_size": TILE, "train.protocol": "all",
        "postprocess.readout": "kmeans", "postprocess.readout_spectra": 0.0,
        "postprocess.smooth_sigma": 0.0, "postprocess.bn_recalibrate": True,
        "postprocess.readout_sample": 300})  # 4 x 300 >= 1008 pixels: every tile is read


def test_the_driver_step_fits_the_readout_on_every_line(lines: list[str]) -> None:
    cfg = config()
    cubes = [open_cube(s) for s in lines]
    arrays = [LineArrays(c["reflectance"].values, c["valid"].values, c["valid"].values) for c in cubes]
    pixels = np.concatenate([a.cube[:, a.valid] for a in arrays], axis=1)
    pre = fit_preprocessor(pixels[:, None, :], None, cfg.preprocess)
    model = build_training(cfg, pre.n_components).model
    ckpt = Checkpoint(config=cfg, in_channels=3, n_bands=6, model_state=model.state_dict(),
                      preprocess_state=pre.to_state())
    fitted = fit_final_readout(ckpt, lines, lines_training_tiles(lines, "all", TILE))
    assert fitted.extra["readout"]["n_pixels"] == 300
    expect = fit_lines_readout(model, pre, arrays, cfg, tile_size=TILE)
    torch.testing.assert_close(fitted.readout_state["centroids"], expect.state["centroids"], rtol=0, atol=0)
    for name, value in model.state_dict().items():  # BatchNorm recalibrated on both lines
        assert torch.equal(fitted.model_state[name], value), name
    first_only = fit_lines_readout(build_training(cfg, 3).model, pre, arrays[:1], cfg, tile_size=TILE)
    assert not torch.allclose(first_only.state["centroids"], expect.state["centroids"])
