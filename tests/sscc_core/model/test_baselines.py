"""k-means baseline on real scenes, in the same pre-processing / metrics harness as SSCC."""

from __future__ import annotations


import numpy as np
import pytest

from sscc_core.model.baselines import fit_kmeans, kmeans_fit_predict, predict, predict_block
from sscc_core.metrics import evaluate
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.io.tiling import tile_grid

def _labelled_features(cube: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA(8) scores of the band-z-scored labelled pixels (fit on the whole scene), and labels."""
    pp = fit_preprocessor(cube, None)
    labelled = gt > 0
    return pp.transform_pixels(cube[:, labelled].T, whiten=False), gt[labelled].astype(np.int64)


@pytest.fixture(scope="module")
def salinas_a(salinas: np.ndarray, mat) -> tuple[np.ndarray, np.ndarray]:
    """Salinas-A (204, 83, 86) int16 and its (83, 86) ground truth."""
    return salinas, mat("salinasA/SalinasA_gt.mat", "salinasA_gt")


def test_kmeans_on_salinas_a_matches_the_measured_baseline(salinas_a) -> None:
    features, labels = _labelled_features(*salinas_a)
    accs = [evaluate(labels, kmeans_fit_predict(features, 6, seed))["acc"] for seed in range(3)]
    print(f"k-means Salinas-A (labelled, K=6) ACC per seed: {np.round(accs, 3)}")
    assert min(accs) > 0.6
    assert np.mean(accs) > 0.7


def test_kmeans_on_indian_pines_stays_a_weak_baseline(indian_pines: np.ndarray, mat) -> None:
    gt = mat("indian_pines/Indian_pines_gt.mat", "indian_pines_gt")
    features, labels = _labelled_features(indian_pines, gt)
    acc = evaluate(labels, kmeans_fit_predict(features, 16, 0))["acc"]
    print(f"k-means Indian Pines (8-bit, labelled, K=16) ACC: {acc:.3f}")
    assert 0.3 < acc < 0.45


def test_tilewise_prediction_equals_whole_scene_prediction(salinas_a) -> None:
    cube, gt = salinas_a
    pp = fit_preprocessor(cube, None)
    model = fit_kmeans(pp.transform_pixels(cube[:, gt > 0].T, whiten=False), 6, seed=0)
    pixels = pp.transform_pixels(cube.reshape(204, -1).T, whiten=False)
    whole = predict(model, pixels).reshape(83, 86)
    tiled = np.empty((83, 86), np.int64)
    for t in tile_grid(83, 86, 32):
        block = pp.transform(cube[:, t.y0 : t.y1, t.x0 : t.x1], whiten=False)
        tiled[t.y0 : t.y1, t.x0 : t.x1] = predict_block(model, block)
    np.testing.assert_array_equal(tiled, whole)
    assert set(np.unique(tiled)) <= set(range(6))


def test_fit_kmeans_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape \\(N, D\\)"):
        fit_kmeans(np.zeros(10), 2, 0)
    with pytest.raises(ValueError, match="k=5 for N=3"):
        fit_kmeans(np.zeros((3, 2)), 5, 0)
