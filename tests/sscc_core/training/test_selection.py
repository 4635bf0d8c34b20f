"""The label-free readout choice (``postprocess.readout: auto``): the candidate grid, the spectrum
weighting against a direct computation, the stability criterion on data with and without
structure, and the production path (``sscc train``'s driver step + the checkpoint + tiled
labelling) giving exactly the harness's choice and labels. Real data: Salinas-A with a tiny
network, as in test_postprocess_pipeline."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import SpectralClustering
from sklearn.metrics import adjusted_rand_score

from sscc_core.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sscc_core.config import ConfigError, ModelConfig, PostprocessConfig, SSCCConfig, TrainConfig, load_config
from sscc_core.labelling.inference import Labeller, label_scene
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import write_cube
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.model.readout import standardise
from sscc_core.training.final_readout import fit_final_readout
from sscc_core.training.readout_fit import extension, fit_readout
from sscc_core.training.selection import (
    Candidate, candidates, cluster, graph_gain, knn_affinity, normalised_cut, select, spectra_weights,
    resampled_agreement, spectral_clusters, stability, standardiser,
)
from sscc_core.training.tiles import training_tiles
from sscc_core.training.trainer import build_training, training_mask

TILE = 32
TINY = ModelConfig(backbone="fcn", widths=(8, 8, 8), stem_channels=8, head_hidden=16, n_clusters=6)
AUTO = PostprocessConfig(readout="auto", readout_spectra=2.0, readout_sample=1800,  # 4x >= 7138 px: every tile
                         spectral_neighbors=8, select_sigmas=(0.0, 2.0))


def test_candidate_grid_order_and_single_scale_without_spectra() -> None:
    grid = candidates(AUTO)
    assert [c.name for c in grid] == [
        "kmeans/sigma=0/whitened", "kmeans/sigma=0/unwhitened",
        "spectral/sigma=0/whitened", "spectral/sigma=0/unwhitened",
        "kmeans/sigma=2/whitened", "kmeans/sigma=2/unwhitened",
        "spectral/sigma=2/whitened", "spectral/sigma=2/unwhitened"]
    no_spectra = PostprocessConfig(readout="auto", readout_spectra=0.0, select_sigmas=(1.0,))
    assert candidates(no_spectra) == [Candidate("kmeans", 1.0, "whitened"), Candidate("spectral", 1.0, "whitened")]


def test_selection_fields_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"postprocess.select_kinds: must be a non-empty list"):
        load_config(None, {"postprocess.select_kinds": ["dbscan"]})
    with pytest.raises(ConfigError, match=r"postprocess.select_sigmas: must be a non-empty list of sigmas >= 0"):
        load_config(None, {"postprocess.select_sigmas": [-1.0]})
    with pytest.raises(ConfigError, match=r"postprocess.select_resamples: must be >= 1, got 0"):
        load_config(None, {"postprocess.select_resamples": 0})
    with pytest.raises(ConfigError, match=r"^postprocess.select_graph_gain: must be > 0 or null, got 0.0$"):
        load_config(None, {"postprocess.select_graph_gain": 0})
    with pytest.raises(ConfigError, match=r"^postprocess.select_graph_gain: compares each spectral candidate "
                                          r"with the k-means one; select_kinds \['spectral'\] has no 'kmeans'$"):
        load_config(None, {"postprocess.select_graph_gain": 2.5, "postprocess.select_kinds": ["spectral"]})
    assert load_config("configs/default.yaml").postprocess.readout == "auto"


def test_spectra_weights_match_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    d, c = 5, 3
    vectors = torch.from_numpy(rng.normal(size=(400, d + c)) * np.r_[np.ones(d), 1.0, 0.5, 2.0]).float()
    comp_std = np.array([4.0, 2.0, 1.0])
    np.testing.assert_array_equal(spectra_weights(vectors, d, comp_std, "whitened", 2.0, 6).numpy(),
                                  np.r_[np.ones(d), np.full(c, 2.0)])
    spread = vectors[:, d:].double().numpy().std(0) * comp_std  # spread in PCA units
    expect = np.r_[np.ones(d), math.sqrt(d) * spread / spread.max()]
    np.testing.assert_allclose(spectra_weights(vectors, d, comp_std, "unwhitened", 2.0, 6).numpy(), expect, rtol=1e-6)
    assert spectra_weights(vectors, d, comp_std, "unwhitened", 0.0, 6) is None
    assert spectra_weights(vectors[:, :d], d, comp_std, "whitened", 2.0, 6) is None


@pytest.mark.parametrize(("k", "kept"), [(3, 2), (4, 3), (16, 3)])
def test_balanced_weights_keep_k_minus_1_scores_and_give_both_blocks_unit_variance(k: int, kept: int) -> None:
    rng = np.random.default_rng(1)
    d, c = 5, 3
    vectors = torch.from_numpy(rng.normal(size=(500, d + c)) * np.r_[np.full(d, 3.0), 1.0, 0.5, 2.0]).float()
    weights = spectra_weights(vectors, d, None, "balanced", 2.0, k)
    assert (weights[d + kept:] == 0).all() and (weights[d:d + kept] > 0).all()
    z = (vectors - vectors.mean(0)) / vectors.std(0, unbiased=False) * weights  # as select() standardises
    total = z.double().var(0, unbiased=False)
    assert total[:d].sum().item() == pytest.approx(1.0, rel=1e-5)  # features block
    assert total[d:].sum().item() == pytest.approx(1.0, rel=1e-5)  # kept scores block


def _extend(z_fit: np.ndarray, labels: np.ndarray, k: int):
    return extension(z_fit, labels, k, 0)


def test_stability_is_high_on_clusters_and_low_on_a_structureless_cloud() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=10.0, size=(3, 4))
    blobs = np.concatenate([c + rng.normal(size=(200, 4)) for c in centres])
    noise = rng.uniform(size=(600, 4))
    for data, low, high in ((blobs, 0.99, 1.0), (noise, -1.0, 0.9)):
        labels, _ = cluster(data, "kmeans", 3, 8, 0)
        value = stability(data, labels, "kmeans", 3, 8, 2, 0, lambda zf, lf: _extend(zf, lf, 3)(data))
        assert low <= value <= high, value
    # the criterion is the mean pairwise ARI of the three clusterings
    labels, _ = cluster(noise, "kmeans", 3, 8, 0)
    runs = [labels]
    rng2 = np.random.default_rng(0 + 7919)
    for r in range(2):
        half = np.sort(rng2.choice(600, 300, replace=False))
        runs.append(_extend(noise[half], cluster(noise[half], "kmeans", 3, 8, 1 + r)[0], 3)(noise))
    expect = np.mean([adjusted_rand_score(runs[i], runs[j]) for i, j in ((0, 1), (0, 2), (1, 2))])
    assert stability(noise, labels, "kmeans", 3, 8, 2, 0, lambda zf, lf: _extend(zf, lf, 3)(noise)) == pytest.approx(expect)


def test_resampled_agreement_fits_the_given_fraction_of_the_vectors() -> None:
    """Halves by default (the shipped stability); ``fraction`` sets the resample size, drawn by
    the same seeded generator."""
    rng = np.random.default_rng(3)
    data = rng.normal(size=(601, 3))
    labels, _ = cluster(data, "kmeans", 3, 8, 0)
    sizes: list[int] = []

    def fit(part: np.ndarray, seed: int) -> np.ndarray:
        sizes.append(len(part))
        return cluster(part, "kmeans", 3, 8, seed)[0]

    extend = lambda zf, lf: _extend(zf, lf, 3)(data)  # noqa: E731
    halves = resampled_agreement(data, labels, fit, 2, 0, extend)
    assert halves == stability(data, labels, "kmeans", 3, 8, 2, 0, extend)
    resampled_agreement(data, labels, fit, 2, 0, extend, fraction=0.2)
    assert sizes == [300, 300, 120, 120]


def test_select_keeps_the_most_stable_candidate_and_records_every_value() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=8.0, size=(3, 6))
    vectors = torch.from_numpy(np.concatenate([c + rng.normal(size=(150, 6)) for c in centres])).float()
    post = PostprocessConfig(readout="auto", readout_spectra=2.0, spectral_neighbors=8, select_sigmas=(0.0,))
    calls = []
    sel = select(lambda sigma: vectors, 4, np.array([3.0, 1.0]), 3, post, 0,
                 lambda zf, lf: _extend(zf, lf, 3), calls.append)
    assert len(sel.table) == len(calls) == 4
    best = max(row["stability"] for row in sel.table)
    first_best = next(row for row in sel.table if row["stability"] > best - 1e-3)
    assert sel.record()["choice"] == {k: first_best[k] for k in ("kind", "smooth_sigma", "spectra_scale")}
    assert adjusted_rand_score(sel.labels, np.repeat([0, 1, 2], 150)) == 1.0
    again = select(lambda sigma: vectors, 4, np.array([3.0, 1.0]), 3, post, 0, lambda zf, lf: _extend(zf, lf, 3))
    assert again.table == sel.table and (again.labels == sel.labels).all()
    assert [("graph_parts" in row) for row in sel.table] == [row["kind"] == "spectral" for row in sel.table]


def test_knn_affinity_is_the_graph_spectral_clustering_cuts_and_normalised_cut_matches_a_dense_sum() -> None:
    rng = np.random.default_rng(6)
    z = rng.normal(size=(120, 4)).astype(np.float32)
    reference = SpectralClustering(3, affinity="nearest_neighbors", n_neighbors=7, random_state=0).fit(z)
    affinity = knn_affinity(z, 7)
    assert abs(affinity - reference.affinity_matrix_).max() == 0
    labels = rng.integers(0, 3, 120)
    dense = affinity.toarray()
    expect = sum(dense[labels == k][:, labels != k].sum() / dense[labels == k].sum() for k in range(3))
    assert normalised_cut(affinity, labels) == pytest.approx(expect)
    assert normalised_cut(affinity, np.zeros(120, np.int64)) == 0.0


def test_graph_gain_admits_a_graph_that_finds_rings_and_not_one_that_recuts_k_means_blobs() -> None:
    """With ``select_graph_gain``, a spectral candidate competes only where its graph holds
    structure k-means misses: two concentric rings (k-means halves them) pass, three separated
    blobs (both partitions the same, gain 1) do not, and k-means is kept there."""
    post = PostprocessConfig(readout="auto", readout_spectra=0.0, spectral_neighbors=10, select_sigmas=(0.0,),
                             select_graph_gain=2.5)
    rng = np.random.default_rng(3)
    angle = rng.uniform(0, 2 * np.pi, 600)
    radius = np.repeat([1.0, 3.0], 300) + rng.normal(scale=0.05, size=600)
    rings = torch.from_numpy(np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)).float()
    sel = select(lambda sigma: rings, 2, None, 2, post, 0, lambda zf, lf: _extend(zf, lf, 2))
    graph = next(row for row in sel.table if row["kind"] == "spectral")
    z = standardise(rings, standardiser(rings, None)).numpy()  # the vectors select() clusters
    assert graph["eligible"] and graph["graph_gain"] > 10
    expect = graph_gain(z, cluster(z, "kmeans", 2, 10, 0)[0], spectral_clusters(z, 2, 10, 0)[0], 10)
    assert graph["graph_gain"] == pytest.approx(expect, rel=1e-5)
    assert "graph_gain" not in sel.table[0] and sel.record()["graph_gain"] == 2.5

    centres = rng.normal(scale=8.0, size=(3, 2))
    blobs = torch.from_numpy(np.concatenate([c + rng.normal(size=(150, 2)) for c in centres])).float()
    sel = select(lambda sigma: blobs, 2, None, 3, post, 0, lambda zf, lf: _extend(zf, lf, 3))
    graph = next(row for row in sel.table if row["kind"] == "spectral")
    assert graph["graph_gain"] == pytest.approx(1.0) and not graph["eligible"]
    assert sel.choice.kind == "kmeans" and "graph gain >= 2.5" in sel.record()["criterion"]


def test_spectral_clusters_pass_no_warning_on_a_graph_in_parts_and_its_parts_are_counted() -> None:
    """``make demo`` printed scikit-learn's "Graph is not fully connected" UserWarning (with its
    site-packages path) for the readout: a graph in parts is expected for fields far apart, so
    the warning is not passed on, and the parts are counted as scikit-learn's graph has them."""
    rng = np.random.default_rng(4)
    truth = np.repeat([0, 1, 2], 100)
    vectors = (rng.normal(scale=50.0, size=(3, 5))[truth] + rng.normal(size=(300, 5))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels, parts = spectral_clusters(vectors, 3, 8, seed=0)
    assert adjusted_rand_score(labels, truth) == 1.0
    reference = SpectralClustering(3, affinity="nearest_neighbors", n_neighbors=8, random_state=0)
    with pytest.warns(UserWarning, match="Graph is not fully connected"):
        reference.fit(vectors)
    assert parts == connected_components(reference.affinity_matrix_)[0] == 3
    joined = np.concatenate([vectors, np.linspace(vectors[truth == 0].mean(0), vectors[truth == 1].mean(0), 400)])
    assert spectral_clusters(joined, 3, 8, seed=0)[1] == 2


@pytest.fixture(scope="module")
def scene():
    torch.set_num_threads(1)
    ds = read_benchmark("salinasA")
    cube = np.asarray(ds["reflectance"].values)
    valid = np.asarray(ds["valid"].values, dtype=bool)
    labels = np.asarray(ds["labels"].values, dtype=np.int64)
    return cube, valid, labels, fit_preprocessor(cube, valid)


@pytest.mark.parametrize("select_sample", [None, 600])
def test_auto_readout_is_the_same_choice_and_labels_in_the_harness_and_the_production_path(
        scene, tmp_path, select_sample):
    cube, valid, labels, pre = scene
    cfg = SSCCConfig(model=TINY, train=TrainConfig(seed=3, protocol="all"),
                     postprocess=replace(AUTO, select_sample=select_sample))
    model = build_training(cfg, pre.n_components).model.eval()
    mask = training_mask(valid, labels, "all")
    # the harness: fit on the in-memory scene, label it whole
    readout = fit_readout(model, pre, cube, valid, mask, cfg)
    assert readout.selection is not None and len(readout.selection["candidates"]) == 8
    choice = readout.selection["choice"]
    assert (readout.kind, readout.smooth_sigma) == (choice["kind"], choice["smooth_sigma"])
    harness, _ = label_scene(Labeller(model, pre, readout=readout), cube, valid)

    # production: sscc train's driver step from a tiled store, the checkpoint, tiled labelling
    store = write_cube(read_benchmark("salinasA"), tmp_path / "sa.zarr", chunk=TILE)
    bare = Checkpoint(config=cfg, in_channels=pre.n_components, n_bands=cube.shape[0],
                      model_state=model.state_dict(), preprocess_state=pre.to_state())
    fitted = fit_final_readout(bare, [str(store)], training_tiles(str(store), "all", TILE))
    assert fitted.extra["selection"] == readout.selection
    post = fitted.config.postprocess
    assert (post.readout, post.smooth_sigma, post.spectra_scale) == (
        choice["kind"], choice["smooth_sigma"], choice["spectra_scale"])
    ckpt = load_checkpoint(save_checkpoint(fitted, tmp_path / "auto"))
    production, _ = label_scene(Labeller.from_checkpoint(ckpt), cube, valid, TILE)
    np.testing.assert_array_equal(production, harness)


def test_a_fixed_readout_applies_its_spectra_scale(scene):
    """A fixed readout with ``spectra_scale: balanced`` is fitted with the balanced weights (K - 1
    scores kept), the same readout ``auto`` gives on a grid of that one candidate."""
    cube, valid, labels, pre = scene
    post = replace(AUTO, readout="kmeans", smooth_sigma=2.0, spectra_scale="balanced")
    cfg = SSCCConfig(model=TINY, train=TrainConfig(seed=3, protocol="all"), postprocess=post)
    model = build_training(cfg, pre.n_components).model.eval()
    mask = training_mask(valid, labels, "all")
    readout = fit_readout(model, pre, cube, valid, mask, cfg)
    assert (readout.kind, readout.smooth_sigma) == ("kmeans", 2.0)
    weights = readout.state["weights"]
    d, k = model.feature_dim, TINY.n_clusters
    np.testing.assert_allclose(weights[:d].numpy(), 1 / math.sqrt(d), rtol=1e-6)
    np.testing.assert_allclose(weights[d:d + k - 1].numpy(), 1 / math.sqrt(k - 1), rtol=1e-6)
    assert (weights[d + k - 1:] == 0).all()
    grid = replace(post, readout="auto", select_kinds=("kmeans",), select_sigmas=(2.0,),
                   select_scales=("balanced",))
    auto = fit_readout(model, pre, cube, valid, mask, replace(cfg, postprocess=grid))
    for key in readout.state:
        torch.testing.assert_close(readout.state[key], auto.state[key], rtol=0, atol=0)


def test_a_choice_on_a_smaller_sample_is_that_samples_choice_refitted_on_the_readout_sample(scene):
    """``select_sample`` < ``readout_sample``: the candidates and their stabilities are exactly
    those of a run whose readout sample is the smaller one, and the fitted readout is exactly
    the chosen candidate fitted alone on the readout sample."""
    cube, valid, labels, pre = scene
    post = replace(AUTO, select_scales=("balanced",), select_sample=600)
    cfg = SSCCConfig(model=TINY, train=TrainConfig(seed=3, protocol="all"), postprocess=post)
    model = build_training(cfg, pre.n_components).model.eval()
    mask = training_mask(valid, labels, "all")
    split = fit_readout(model, pre, cube, valid, mask, cfg)
    small = fit_readout(model, pre, cube, valid, mask,
                        replace(cfg, postprocess=replace(post, readout_sample=600, select_sample=None)))
    assert split.selection["candidates"] == small.selection["candidates"]
    assert split.selection["choice"] == small.selection["choice"]
    assert (split.selection["select_pixels"], split.selection["fit_pixels"]) == (600, 1800)
    assert (small.selection["select_pixels"], small.selection["fit_pixels"]) == (600, 600)
    choice = split.selection["choice"]
    alone = replace(post, readout=choice["kind"], smooth_sigma=choice["smooth_sigma"],
                    spectra_scale=choice["spectra_scale"])
    fixed = fit_readout(model, pre, cube, valid, mask, replace(cfg, postprocess=alone))
    assert fixed.selection["candidates"] != split.selection["candidates"]  # one candidate, on 1800 px
    assert set(fixed.state) == set(split.state)
    for key in fixed.state:
        torch.testing.assert_close(split.state[key], fixed.state[key], rtol=0, atol=0)


def test_select_sample_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"^postprocess.select_sample: must be >= 2 or null, got 1$"):
        load_config(None, {"postprocess.select_sample": 1})
    assert load_config(None, {"postprocess.select_sample": None}).postprocess.select_sample is None
