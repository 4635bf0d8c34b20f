"""The production labelling path honours ``cfg.postprocess`` exactly like the accuracy harness:
the mode filter and the Gaussian smoothing across tiles equal the whole-scene operations, and the
k-means and spectral readouts fitted after training (stored in the checkpoint) label every pixel
as a direct computation on its patch's backbone features does. Real data: Salinas-A (83 x 86,
204 bands) with a tiny network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sscc_core.model.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from sscc_core.model.readout import nearest_centroid
from sscc_core.config import ModelConfig, PostprocessConfig, SSCCConfig, TrainConfig
from sscc_core.labelling.inference import Labeller, label_scene
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import write_cube
from sscc_core.model.network import SSCCNet, backbone_features
from sscc_core.model.postprocess import mode_filter, mode_reach, smooth, smooth_reach
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.model.patches import gather_patches
from sscc_core.model.readout import Readout
from sscc_core.training.final_readout import fit_final_readout
from sscc_core.training.readout_fit import (
    LineArrays, fit_extension, fit_readout, readout_patches, sample_mask,
)
from sscc_core.training.selection import spectral_clusters
from sscc_core.io.tiling import Tile, tile_grid
from sscc_core.training.tiles import training_tiles
from sscc_core.training.reference import scene_views, train_reference
from sscc_core.training.trainer import build_training, training_mask

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
    model = train_reference(scene_views(cube, valid, labels, pre, cfg), pre.n_components, cfg).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    readout = fit_readout(model, pre, cube, valid, mask, cfg)
    return cfg, model, before, readout


def test_kmeans_readout_labels_nearest_centroid_of_patch_features(scene, trained, tmp_path):
    cube, valid, _, pre = scene
    cfg, model, before, readout = trained
    centroids = readout.state["centroids"]
    assert centroids.dtype == torch.float32 and tuple(centroids.shape) == (6, model.feature_dim)
    # BN recalibration changed the running statistics only
    after = model.state_dict()
    assert not torch.equal(after["backbone.layers.1.running_mean"], before["backbone.layers.1.running_mean"])
    assert all(torch.equal(after[k], v) for k, v in before.items() if "running" not in k
               and "num_batches" not in k)

    path = save_checkpoint(checkpoint(pre, cube, model, cfg, readout.state), tmp_path / "km")
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
    fitted = fit_final_readout(fresh, [str(store)], training_tiles(str(store), "labelled", TILE))
    model2 = SSCCNet(cfg.model, pre.n_components, cfg.preprocess.patch_size)
    model2.load_state_dict(fresh.model_state)
    full = np.ones_like(valid)
    expect = fit_readout(model2, pre, cube, full, training_mask(full, scene[2], "labelled"), cfg)
    torch.testing.assert_close(fitted.readout_state["centroids"], expect.state["centroids"],
                               rtol=0, atol=0)
    for k, v in model2.state_dict().items():
        assert torch.equal(fitted.model_state[k], v), k
    assert fitted.extra["readout"]["n_pixels"] == int((scene[2] > 0).sum())


def test_readout_sample_is_seeded_and_capped(scene):
    cube, valid, _, pre = scene
    a = readout_patches([LineArrays(cube, valid, valid)], pre, 5, seed=1, max_pixels=300)
    b = readout_patches([LineArrays(cube, valid, valid)], pre, 5, seed=1, max_pixels=300, tile_size=32)
    c = readout_patches([LineArrays(cube, valid, valid)], pre, 5, seed=2, max_pixels=300)
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
                                              "holds no fitted readout"):
        Labeller.from_checkpoint(checkpoint(pre, cube, model, km_cfg))
    with pytest.raises(ValueError, match=r"centroids must be \(>= 2, 8\)"):
        Labeller(model, pre, readout=Readout("kmeans", state={"centroids": torch.zeros(6, 5)}))
    with pytest.raises(ValueError, match=r"coef must be \(>= 2, 8\)"):
        Labeller(model, pre, readout=Readout("spectral", state={
            "mean": torch.zeros(8), "std": torch.ones(8), "coef": torch.zeros(6, 3),
            "intercept": torch.zeros(6)}))
    with pytest.raises(ValueError, match="Readout 'spectral' is not fitted"):
        Readout("spectral").assign(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="mode_window must be a positive odd number"):
        Labeller(model, pre, mode_window=4)


def test_smooth_is_the_normalised_gaussian_average_over_valid_pixels():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(3, 9, 11))
    valid = rng.random((9, 11)) > 0.3
    sigma = 1.2
    r = smooth_reach(sigma)
    assert r == 5 and smooth_reach(0.0) == 0
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    expected = np.zeros_like(values)
    for y, x in np.argwhere(valid):
        num, den = np.zeros(3), 0.0
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                yy, xx = y + dy, x + dx
                if 0 <= yy < 9 and 0 <= xx < 11 and valid[yy, xx]:
                    w = taps[dy + r] * taps[dx + r]
                    num, den = num + w * values[:, yy, xx], den + w
        expected[:, y, x] = num / den
    out = smooth(values, valid, sigma)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert (out[:, ~valid] == 0).all()
    # the weights of a valid pixel sum to one: an affine map commutes with the smoothing
    np.testing.assert_allclose(smooth(3 * values + 2, valid, sigma)[:, valid], 3 * out[:, valid] + 2,
                               atol=1e-5)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        smooth(values, valid, -1.0)
    with pytest.raises(ValueError, match=r"expected \(V, H, W\) values"):
        smooth(values[0], valid, 1.0)


def test_smoothing_across_tiles_equals_whole_scene_smoothing(scene):
    cube, valid, _, pre = scene
    height, width = valid.shape
    whole = Tile(0, 0, 0, height, 0, width)
    post = PostprocessConfig(smooth_sigma=1.5, mode_window=3)
    for backbone, mode in (("fcn", "dense"), ("resnet", "patch")):
        cfg = SSCCConfig(model=dataclasses.replace(TINY, backbone=backbone), postprocess=post,
                         train=TrainConfig(seed=4))
        model = build_training(cfg, pre.n_components).model
        with torch.no_grad():  # sharpen the untrained head so its argmax varies across the scene
            model.head.mlp[-1].weight.mul_(100.0)
        labeller = Labeller.from_checkpoint(checkpoint(pre, cube, model, cfg), mode)
        assert labeller.context == model.halo + smooth_reach(1.5) + mode_reach(3, 1) == model.halo + 7
        raw = dataclasses.replace(labeller, readout=Readout("head")).readout_vectors(cube, valid, whole)
        expected = smooth(raw, valid, 1.5)  # (K, H, W) probabilities smoothed over the scene
        for tile in tile_grid(height, width, TILE):
            np.testing.assert_allclose(
                labeller.readout_vectors(cube, valid, tile),
                expected[:, tile.y0 : tile.y1, tile.x0 : tile.x1], atol=1e-6, err_msg=str(tile))
        labels, _ = label_scene(labeller, cube, valid, TILE)
        np.testing.assert_array_equal(labels, mode_filter(np.where(valid, expected.argmax(0), -1), 3))
        assert (labels != np.where(valid, raw.argmax(0), -1)).sum() > 100  # smoothing changed it


def test_spectral_extension_reproduces_the_clusters_and_handles_missing_ones():
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=4.0, size=(4, 5))
    labels = rng.integers(0, 4, 600)
    z = centres[labels] + rng.normal(size=(600, 5))
    labels[labels == 2] = 3  # cluster 2 of K = 5 left empty, 4 never used
    state = fit_extension(z, labels, 5, seed=0)
    assert tuple(state["coef"].shape) == (5, 5) and tuple(state["intercept"].shape) == (5,)
    readout = Readout("spectral", state={"mean": torch.zeros(5), "std": torch.ones(5), **state})
    got, conf = readout.assign(torch.from_numpy(z).float())
    assert (got.numpy() == labels).mean() > 0.97  # the linear map reproduces the clusters
    assert not np.isin(got.numpy(), [2, 4]).any()  # empty clusters are never chosen
    assert ((conf > 0.25) & (conf <= 1)).all()
    # two clusters: scikit-learn's binary form maps onto the right rows
    two = fit_extension(z[labels < 2], labels[labels < 2] * 3, 5, seed=0)  # ids 0 and 3
    pair = Readout("spectral", state={"mean": torch.zeros(5), "std": torch.ones(5), **two})
    np.testing.assert_array_equal(pair.assign(torch.from_numpy(z[labels < 2]).float())[0].numpy(),
                                  labels[labels < 2] * 3)
    with pytest.raises(ValueError, match="found 1 cluster"):
        fit_extension(z, np.zeros(600, dtype=int), 5, seed=0)


def test_spectral_readout_fits_smoothed_features_and_labels_in_the_pipeline(scene, tmp_path):
    cube, valid, labels, pre = scene
    height, width = valid.shape
    post = PostprocessConfig(readout="spectral", smooth_sigma=1.0, spectral_neighbors=8,
                             readout_sample=1500, readout_spectra=2.0)
    cfg = SSCCConfig(model=TINY, train=TrainConfig(seed=5), postprocess=post)
    model = build_training(cfg, pre.n_components).model.eval()
    mask = training_mask(valid, labels, "labelled")
    readout = fit_readout(model, pre, cube, valid, mask, cfg)
    state = readout.state
    dim = model.feature_dim + pre.n_components  # features, then the pixel's own PCA scores
    assert tuple(state["coef"].shape) == (6, dim)
    # the readout vectors are [backbone features; standardised PCA scores] of each pixel
    raw = Labeller(model, pre, readout=Readout("kmeans", spectra_weight=2.0)).readout_vectors(
        cube, valid, Tile(0, 0, 0, height, 0, width))
    assert raw.shape == (dim, height, width)
    np.testing.assert_allclose(raw[model.feature_dim :, valid], pre.transform(cube, valid)[:, valid])
    # the sample: those vectors smoothed, standardised, the scores weighted, sampled row-major,
    # clustered by spectral clustering, which the fitted extension reproduces
    weights = np.r_[np.ones(model.feature_dim), np.full(pre.n_components, 2.0)]
    np.testing.assert_array_equal(state["weights"].numpy(), weights)
    vectors = smooth(raw, valid, 1.0)[:, sample_mask(mask, 1500, 5)].T
    np.testing.assert_allclose(state["mean"].numpy(), vectors.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["std"].numpy(), vectors.std(0), rtol=1e-3, atol=1e-5)
    z_sample = (vectors - state["mean"].numpy()) / state["std"].numpy() * weights
    clusters, _ = spectral_clusters(z_sample.astype(np.float32), 6, 8, seed=5)
    assert (readout.assign(torch.from_numpy(vectors))[0].numpy() == clusters).mean() > 0.95

    ckpt = load_checkpoint(save_checkpoint(checkpoint(pre, cube, model, cfg, state), tmp_path / "sp"))
    got, conf = label_scene(Labeller.from_checkpoint(ckpt), cube, valid, TILE)
    z = (smooth(raw, valid, 1.0)[:, valid].T - state["mean"].numpy()) / state["std"].numpy() * weights
    logits = z @ state["coef"].numpy().T + state["intercept"].numpy()
    np.testing.assert_array_equal(got[valid], logits.argmax(1))
    assert (got[~valid] == -1).all() and (conf[~valid] == 0).all()

    # the Ray trainer's driver step fits the same readout from the store, tiled differently
    store = write_cube(read_benchmark("salinasA"), tmp_path / "sa.zarr", chunk=TILE)
    fitted = fit_final_readout(checkpoint(pre, cube, model, cfg), [str(store)],
                               training_tiles(str(store), "labelled", TILE))
    full = np.ones_like(valid)
    expect = fit_readout(model, pre, cube, full, training_mask(full, labels, "labelled"), cfg)
    for key in ("mean", "std", "weights", "coef", "intercept"):
        torch.testing.assert_close(fitted.readout_state[key], expect.state[key], rtol=0, atol=0)
