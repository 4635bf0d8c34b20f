"""Ray Train pipeline: Ray Data tile reading, DDP training, checkpoints, resume, failure recovery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.common import setup_logging
from pipelines.train import TilePatches, run_training
from sscc_core.model.augment import two_views
from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.config import SSCCConfig, load_config, to_dict
from sscc_core.labelling.inference import Labeller
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube, write_cube
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.io.tiling import Tile
from sscc_core.model.patches import gather_patches
from sscc_core.training.run import fit_lines_preprocessor
from sscc_core.training.tiles import tile_stream, training_tiles
from sscc_core.training.trainer import epoch_generator, training_mask

TINY = {
    "model.backbone": "fcn",
    "model.widths": [8, 8, 8],
    "model.stem_channels": 8,
    "model.head_hidden": 16,
    "model.n_clusters": 6,
    "train.batch_size": 256,
    "train.epochs": 2,
    "tile.tile_size": 32,
}


@pytest.fixture(scope="module")
def salinas_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("train") / "salinasA.zarr"
    write_cube(read_benchmark("salinasA"), path, chunk=32)
    return path


def tiny_config(**extra: object) -> SSCCConfig:
    return load_config(overrides={**TINY, **extra})


def test_tile_views_equal_reference_augmentation_of_whole_scene_patches(salinas_store: Path) -> None:
    """The Ray Data UDF's views equal the augmentation pool applied to the in-memory reference
    patches with the (seed, epoch, tile) generator; a new epoch gives new views."""
    cfg = tiny_config()
    ds = open_cube(salinas_store)
    cube, valid, labels = (ds[v].values for v in ("reflectance", "valid", "labels"))
    pre = fit_preprocessor(cube, valid, cfg.preprocess)
    udf = TilePatches(str(salinas_store), pre.to_state(), to_dict(cfg))
    tiles = training_tiles(str(salinas_store), "labelled", 32)
    batch = {k: np.array([t[k] for t in tiles]) for k in tiles[0]}
    got = udf(batch)
    mask = training_mask(valid, labels, "labelled")
    patches, coords = gather_patches(cube, valid, mask, pre, 11, tile_size=32)
    assert got["view_a"].shape == got["view_b"].shape == (int(mask.sum()), 8, 11, 11)
    start = 0
    for t in tiles:
        tile = Tile(t["row"], t["col"], t["y0"], t["y1"], t["x0"], t["x1"])
        n = t["n_pixels"]
        gen = epoch_generator(cfg.train.seed, 0, tile_stream(tile))
        va, vb = two_views(torch.from_numpy(patches[start : start + n]), cfg.augment, gen)
        np.testing.assert_array_equal(got["view_a"][start : start + n], va.numpy())
        np.testing.assert_array_equal(got["view_b"][start : start + n], vb.numpy())
        start += n
    assert not np.array_equal(got["view_a"], got["view_b"])
    udf.epoch = lambda: 1
    again = udf(batch)
    assert not np.array_equal(again["view_a"], got["view_a"])


@pytest.mark.slow  # 1-3 min on 2 cores; `make test-slow`
def test_ray_train_two_workers_recover_from_a_killed_worker_and_resume(
        ray_session, salinas_store: Path, tmp_path: Path) -> None:
    """Two DDP workers train; worker rank 0, killed mid-way through the second epoch, is
    restarted by Ray Train from the first epoch's checkpoint and the run finishes; a relaunch with
    more epochs resumes from the saved epoch. (One test for the three: each Ray Train launch
    costs most of a minute on 2 cores.)"""
    cfg = tiny_config()
    final = run_training(str(salinas_store), cfg, "ddp", str(tmp_path), num_workers=2, cpus_per_worker=0.5,
                         max_failures=1, fail_at_epoch=1)
    assert (tmp_path / "ddp" / "injected_failure").is_file()
    ckpt = load_checkpoint(final)
    assert ckpt.epoch == 2 and [h["epoch"] for h in ckpt.extra["history"]] == [1, 2]
    assert ckpt.n_bands == 204 and ckpt.in_channels == 8
    longer = tiny_config(**{"train.epochs": 3})
    resumed = load_checkpoint(run_training(str(salinas_store), longer, "ddp", str(tmp_path), num_workers=2,
                                           cpus_per_worker=0.5))
    assert resumed.epoch == 3
    assert [h["epoch"] for h in resumed.extra["history"]] == [1, 2, 3]
    assert resumed.extra["history"][:2] == ckpt.extra["history"]
    assert all(torch.isfinite(v).all() for v in resumed.model_state.values() if v.is_floating_point())


def test_run_storage_may_be_a_url(ray_session, salinas_store: Path, tmp_path: Path) -> None:
    """Checkpoints and history go through fsspec: a file:// storage URL works like a local path
    (s3:// and gs:// work the same with their fsspec package installed). The final checkpoint
    carries the fitted spectral readout the config asks for, and the pre-processing fitted on the
    store, which is nowhere else in the run (Ray Train's reported checkpoint is the product)."""
    cfg = tiny_config(**{"train.epochs": 1, "postprocess.readout": "spectral",
                         "postprocess.smooth_sigma": 1.0, "postprocess.readout_spectra": 2.0})
    url = f"file://{tmp_path}/store"
    setup_logging("train", str(tmp_path / "log.jsonl"))
    final = run_training(str(salinas_store), cfg, "urlrun", url, num_workers=0)
    setup_logging("train")
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] in ("fit preprocessing", "epoch", "readout", "final checkpoint")]
    assert [e["event"] for e in steps] == ["fit preprocessing", "epoch", "readout", "final checkpoint"]
    assert steps[2]["readout"] == "spectral" and steps[2]["fitted"] and steps[2]["smooth_sigma"] == 1.0
    assert steps[3]["path"] == final and steps[3]["epoch"] == 1
    assert final == f"{url}/urlrun/final/model.pt"
    ckpt = load_checkpoint(final)
    assert ckpt.epoch == 1
    assert sorted(ckpt.readout_state) == ["coef", "intercept", "mean", "std", "weights"]
    assert Labeller.from_checkpoint(ckpt).readout.fitted  # sscc predict can use it as is
    run = tmp_path / "store" / "urlrun"  # local mode: Ray Train keeps no per-epoch checkpoint
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "final", "history.json", "run.json"]
    fitted = fit_lines_preprocessor([str(salinas_store)], cfg).preprocessor.to_state()
    assert sorted(ckpt.preprocess_state) == sorted(fitted)
    assert all(torch.equal(ckpt.preprocess_state[k], v) for k, v in fitted.items()
               if isinstance(v, torch.Tensor))
    assert (tmp_path / "store" / "urlrun" / "history.json").is_file()
    assert load_config(tmp_path / "store" / "urlrun" / "config.yaml") == cfg
