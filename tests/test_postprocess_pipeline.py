"""The production labelling path honours ``cfg.postprocess`` exactly like the accuracy harness:
the mode filter across tiles equals the whole-scene filter, and the k-means readout fitted after
training (stored in the checkpoint) labels every pixel by the nearest centroid of its patch's
backbone features. Real data: Salinas-A (83 x 86, 204 bands) with a tiny network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipelines.train import fit_final_readout, training_tiles
from sscc_core.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from sscc_core.config import ModelConfig, PostprocessConfig, SSCCConfig, TrainConfig
from sscc_core.inference import Labeller, label_scene
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import write_cube
from sscc_core.model import SSCCNet, backbone_features
from sscc_core.postprocess import (
    fit_readout,
    mode_filter,
    mode_reach,
    nearest_centroid,
    readout_patches,
)
from sscc_core.preprocess import fit_preprocessor
from sscc_core.trainer import (
    build_training,
    gather_patches,
    train_reference,
    training_mask,
)

TILE = 32  # a 3 x 3 grid with ragged edge tiles, as in test_predict
TINY = ModelConfig(backbone="fcn", widths=(8, 8, 8), stem_channels=8, head_hidden=16, n_clusters=6)


@pytest.fixture(scope="module")
def scene():
    """Salinas-A cube (204, 83, 86), its valid mask with nodata holes punched in (a block and a
    scattered 3 %), its ground truth and the pre-processing fitted on it."""
    torch.set_num_threads(1)
    ds = read_benchmark("salinasA")
    cube = np.asarray(ds["reflectance"].values)
    valid = np.asarray(ds["valid"].values, dtype=bool).copy()
    valid[30:37, 60:70] = False
    valid[np.random.default_rng(0).random(valid.shape) < 0.03] = False
    labels = np.asarray(ds["labels"].values, dtype=np.int64)
    return cube, valid, labels, fit_preprocessor(cube, valid)


def checkpoint(pre, cube, model: SSCCNet, cfg: SSCCConfig, readout_state=None) -> Checkpoint:
    return Checkpoint(config=cfg, in_channels=pre.n_components, n_bands=cube.shape[0],
                      model_state=model.state_dict(), preprocess_state=pre.to_state(),
                      readout_state=readout_state)


def test_mode_filter_across_tiles_equals_whole_scene_filter(scene):
    cube, valid, _, pre = scene
    post = PostprocessConfig(mode_window=5, mode_iterations=2)
    for backbone, mode in (("fcn", "dense"), ("resnet", "patch")):
        cfg = SSCCConfig(model=dataclasses.replace(TINY, backbone=backbone, n_clusters=16),
                         train=TrainConfig(seed=3), postprocess=post)
        model = build_training(cfg, pre.n_components).model
        filtered = Labeller.from_checkpoint(checkpoint(pre, cube, model, cfg), mode)
        assert (filtered.mode_window, filtered.mode_iterations) == (5, 2)
        assert filtered.context == model.halo + mode_reach(5, 2) == model.halo + 4
        plain = dataclasses.replace(filtered, mode_window=1, mode_iterations=1)
        raw, raw_conf = label_scene(plain, cube, valid, tile_size=128)  # one whole-scene tile
        tiled, tiled_conf = label_scene(filtered, cube, valid, tile_size=TILE)
        whole = mode_filter(raw, 5, 2)
        np.testing.assert_array_equal(tiled, whole)
        np.testing.assert_allclose(tiled_conf, raw_conf, atol=1e-6)  # confidence: before filtering
        assert (tiled[~valid] == -1).all() and (tiled[valid] >= 0).all()
        assert (tiled != raw).sum() > 100  # the filter did change the map
        # filtering each tile on its own (no grown window) is wrong at tile edges
        naive = np.full_like(raw, -1)
        for y in range(0, raw.shape[0], TILE):
            for x in range(0, raw.shape[1], TILE):
                naive[y : y + TILE, x : x + TILE] = mode_filter(raw[y : y + TILE, x : x + TILE], 5, 2)
        assert (naive != whole).any()


def test_mode_filter_counts_nothing_outside_the_map():
    # outside the map is 'no vote', exactly like nodata: padding with nodata changes nothing
    rng = np.random.default_rng(1)
    m = rng.integers(0, 3, size=(12, 15))
    m[rng.random(m.shape) < 0.2] = -1
    padded = np.pad(m, 4, constant_values=-1)
    np.testing.assert_array_equal(mode_filter(padded, 5, 2)[4:-4, 4:-4], mode_filter(m, 5, 2))


@pytest.fixture(scope="module")
def trained(scene):
    """A tiny fcn trained 1 epoch on the labelled pixels, with the k-means readout fitted."""
    cube, valid, labels, pre = scene
    cfg = SSCCConfig(model=TINY, train=TrainConfig(epochs=1, batch_size=256, lr=1e-3, seed=5),
                     postprocess=PostprocessConfig(readout="kmeans", bn_recalibrate=True))
    mask = training_mask(valid, labels, "labelled")
    patches, _ = gather_patches(cube, valid, mask, pre, cfg.preprocess.patch_size)
    model = train_reference(torch.from_numpy(patches), cfg).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    readout = fit_readout(model, readout_patches(cube, valid, mask, pre, cfg.preprocess.patch_size,
                                                 cfg.train.seed), cfg)
    return cfg, model, before, readout


def test_kmeans_readout_labels_nearest_centroid_of_patch_features(scene, trained, tmp_path):
    cube, valid, _, pre = scene
    cfg, model, before, readout = trained
    centroids = readout["centroids"]
    assert centroids.dtype == torch.float32 and tuple(centroids.shape) == (6, model.feature_dim)
    # BN recalibration changed the running statistics only
    after = model.state_dict()
    assert not torch.equal(after["backbone.layers.1.running_mean"], before["backbone.layers.1.running_mean"])
    assert all(torch.equal(after[k], v) for k, v in before.items() if "running" not in k
               and "num_batches" not in k)

    path = save_checkpoint(checkpoint(pre, cube, model, cfg, readout), tmp_path / "km")
    ckpt = load_checkpoint(path)
    torch.testing.assert_close(ckpt.readout_state["centroids"], centroids, rtol=0, atol=0)

    all_patches, coords = gather_patches(cube, valid, valid, pre, cfg.preprocess.patch_size)
    ref_labels, ref_conf = nearest_centroid(backbone_features(model, torch.from_numpy(all_patches)),
                                            centroids)
    expected = np.full(valid.shape, -1, dtype=np.int64)
    expected[coords[:, 0], coords[:, 1]] = ref_labels.numpy()
    assert len(np.unique(ref_labels)) > 2
    for mode in ("patch", "dense"):
        labels, conf = label_scene(Labeller.from_checkpoint(ckpt, mode), cube, valid, TILE)
        np.testing.assert_array_equal(labels, expected, err_msg=mode)
        assert (conf[~valid] == 0).all() and ((conf >= 0) & (conf <= 1)).all()
        np.testing.assert_allclose(conf[coords[:, 0], coords[:, 1]], ref_conf.numpy(), atol=1e-4)

    # the Ray trainer's driver step fits the same readout from the store, tiled differently
    store = write_cube(read_benchmark("salinasA"), tmp_path / "sa.zarr", chunk=TILE)
    fresh = checkpoint(pre, cube, build_training(cfg, pre.n_components).model, cfg)
    fitted = fit_final_readout(fresh, str(store), pre, training_tiles(str(store), "labelled", TILE))
    model2 = SSCCNet(cfg.model, pre.n_components, cfg.preprocess.patch_size)
    model2.load_state_dict(fresh.model_state)
    full = np.ones_like(valid)
    expect = fit_readout(model2, readout_patches(cube, full, training_mask(full, scene[2], "labelled"),
                                                 pre, cfg.preprocess.patch_size, cfg.train.seed), cfg)
    torch.testing.assert_close(fitted.readout_state["centroids"], expect["centroids"], rtol=0, atol=0)
    for k, v in model2.state_dict().items():
        assert torch.equal(fitted.model_state[k], v), k
    assert fitted.extra["readout"]["n_patches"] == int((scene[2] > 0).sum())


def test_readout_sample_is_seeded_and_capped(scene):
    cube, valid, _, pre = scene
    a = readout_patches(cube, valid, valid, pre, 5, seed=1, max_pixels=300)
    b = readout_patches(cube, valid, valid, pre, 5, seed=1, max_pixels=300, tile_size=32)
    c = readout_patches(cube, valid, valid, pre, 5, seed=2, max_pixels=300)
    assert a.shape == (300, pre.n_components, 5, 5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_checkpoint_readout_state_versions_and_errors(scene, tmp_path):
    cube, _, _, pre = scene
    head_cfg = SSCCConfig(model=TINY)
    km_cfg = dataclasses.replace(head_cfg, postprocess=PostprocessConfig(readout="kmeans"))
    model = build_training(head_cfg, pre.n_components).model
    plain = checkpoint(pre, cube, model, head_cfg)
    # a file written without the readout_state key (older version) still loads, as None
    path = save_checkpoint(plain, tmp_path / "old")
    payload = torch.load(path, weights_only=True)
    del payload["readout_state"]
    torch.save(payload, path)
    assert load_checkpoint(path).readout_state is None
    assert load_checkpoint(path).model_version == plain.model_version

    centroids = {"centroids": torch.randn(6, model.feature_dim)}
    with_km = checkpoint(pre, cube, model, km_cfg, centroids)
    other_km = checkpoint(pre, cube, model, km_cfg, {"centroids": centroids["centroids"] + 1})
    versions = {plain.model_version, with_km.model_version, other_km.model_version,
                checkpoint(pre, cube, model, dataclasses.replace(
                    head_cfg, postprocess=PostprocessConfig(mode_window=3))).model_version}
    assert len(versions) == 4

    with pytest.raises(CheckpointError, match="postprocess.readout 'kmeans' but the checkpoint "
                                              "holds no k-means centroids"):
        Labeller.from_checkpoint(checkpoint(pre, cube, model, km_cfg))
    with pytest.raises(ValueError, match=r"centroids must be \(K >= 2, 8\)"):
        Labeller(model, pre, centroids=torch.zeros(6, 5))
    with pytest.raises(ValueError, match="mode_window must be a positive odd number"):
        Labeller(model, pre, mode_window=4)
