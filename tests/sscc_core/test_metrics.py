"""Clustering metrics against brute force, direct computations and scikit-learn."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, cohen_kappa_score, normalized_mutual_info_score

from sscc_core.metrics import UNMATCHED, accuracy, evaluate, hungarian_map, map_labels, purity



def _brute_force(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, dict[int, int]]:
    """Best one-to-one cluster -> class matching by trying every permutation (small K only)."""
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    m = max(len(classes), len(clusters))
    table = np.zeros((m, m), int)
    for i, c in enumerate(classes):
        for j, k in enumerate(clusters):
            table[i, j] = np.sum((y_true == c) & (y_pred == k))
    best, best_perm = -1, None
    for perm in itertools.permutations(range(m)):  # class i <-> column perm[i]
        score = sum(table[i, perm[i]] for i in range(m))
        if score > best:
            best, best_perm = score, perm
    mapping = {
        int(clusters[j]): int(classes[i])
        for i, j in enumerate(best_perm)
        if i < len(classes) and j < len(clusters)
    }
    return best / len(y_true), mapping


def _noisy_permutation(
    rng: np.random.Generator, n: int, n_classes: int, n_clusters: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth in 1..C and a cluster labelling that mostly follows a permutation of it."""
    y_true = rng.integers(1, n_classes + 1, n)
    perm = rng.permutation(max(n_classes, n_clusters))[:n_classes]
    y_pred = perm[y_true - 1] % n_clusters
    flip = rng.random(n) < noise
    y_pred[flip] = rng.integers(0, n_clusters, flip.sum())
    return y_true, y_pred


def test_permuted_labelling_scores_perfectly() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(1, 7, 500)
    perm = np.array([0, 40, 3, 2, 17, 5, 9])
    result = evaluate(y_true, perm[y_true])
    for key in ("acc", "oa", "aa", "kappa", "nmi", "ari", "purity"):
        assert result[key] == pytest.approx(1.0), key
    assert result["mapping"] == {int(perm[c]): c for c in range(1, 7)}


@pytest.mark.parametrize("n_classes,n_clusters", [(3, 3), (4, 6), (6, 4), (5, 5), (2, 6)])
def test_accuracy_equals_brute_force_over_permutations(n_classes: int, n_clusters: int) -> None:
    rng = np.random.default_rng(n_classes * 10 + n_clusters)
    for noise in (0.2, 0.7, 1.0):
        y_true, y_pred = _noisy_permutation(rng, 300, n_classes, n_clusters, noise)
        expected, _ = _brute_force(y_true, y_pred)
        assert accuracy(y_true, y_pred) == pytest.approx(expected)
        assert evaluate(y_true, y_pred)["acc"] == pytest.approx(expected)


def test_purity_equals_direct_count() -> None:
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(1, 5, 400), rng.integers(0, 7, 400)
    direct = sum(Counter(y_true[y_pred == k]).most_common(1)[0][1] for k in np.unique(y_pred)) / 400
    assert purity(y_true, y_pred) == pytest.approx(direct)
    assert evaluate(y_true, y_pred)["purity"] == pytest.approx(direct)


@pytest.mark.parametrize("n_classes,n_clusters", [(5, 5), (4, 6), (6, 4)])
def test_kappa_nmi_ari_equal_sklearn(n_classes: int, n_clusters: int) -> None:
    rng = np.random.default_rng(7)
    y_true, y_pred = _noisy_permutation(rng, 600, n_classes, n_clusters, 0.3)
    _, mapping = _brute_force(y_true, y_pred)
    assert hungarian_map(y_true, y_pred) == mapping
    mapped = np.array([mapping.get(int(k), UNMATCHED) for k in y_pred])
    result = evaluate(y_true, y_pred)
    assert result["kappa"] == pytest.approx(cohen_kappa_score(y_true, mapped))
    assert result["nmi"] == pytest.approx(normalized_mutual_info_score(y_true, y_pred))
    assert result["ari"] == pytest.approx(adjusted_rand_score(y_true, y_pred))
    per_class = {c: float(np.mean(mapped[y_true == c] == c)) for c in range(1, n_classes + 1)}
    assert result["per_class_acc"] == pytest.approx(per_class)
    assert result["aa"] == pytest.approx(np.mean(list(per_class.values())))


def test_more_clusters_than_classes() -> None:
    y_true = np.array([1] * 10 + [2] * 6 + [3] * 4)
    y_pred = np.array([5] * 7 + [8] * 3 + [0] * 6 + [2] * 4)  # class 1 split over clusters 5 and 8
    mapping = hungarian_map(y_true, y_pred)
    assert mapping == {5: 1, 0: 2, 2: 3}
    np.testing.assert_array_equal(map_labels(np.array([8, 5]), mapping), [UNMATCHED, 1])
    result = evaluate(y_true, y_pred)
    assert result["acc"] == pytest.approx(17 / 20)
    assert result["purity"] == 1.0
    assert result["per_class_acc"] == {1: 0.7, 2: 1.0, 3: 1.0}
    assert result["n_clusters"] == 4
    assert result["confusion"] == [[0, 0, 7, 3], [6, 0, 0, 0], [0, 4, 0, 0]]
    assert result["confusion_matched"] == [[7, 0, 0], [0, 6, 0], [0, 0, 4]]


def test_fewer_clusters_than_classes() -> None:
    y_true = np.array([1] * 5 + [2] * 5 + [3] * 2)
    y_pred = np.array([0] * 5 + [1] * 7)
    result = evaluate(y_true, y_pred)
    assert result["acc"] == pytest.approx(10 / 12)
    assert result["per_class_acc"][3] == 0.0
    assert result["confusion_matched"] == [[5, 0, 0], [0, 5, 0], [0, 2, 0]]


def test_evaluate_on_real_ground_truth_ignores_unlabelled_and_is_json(mat) -> None:
    gt = mat("indian_pines/Indian_pines_gt.mat", "indian_pines_gt").astype(np.int64)
    rng = np.random.default_rng(0)
    pred = rng.permutation(17)[gt]
    pred[gt == 0] = rng.integers(0, 17, int((gt == 0).sum()))  # unlabelled pixels must not count
    result = evaluate(gt, pred)
    assert result["n_labelled"] == 10249 and result["n_classes"] == 16
    assert result["acc"] == 1.0 and result["kappa"] == pytest.approx(1.0)
    assert json.loads(json.dumps(result))["acc"] == 1.0


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.ones(4, int), np.ones(5, int))
    with pytest.raises(ValueError, match="integer labels"):
        evaluate(np.ones(4, int), np.ones(4))
    with pytest.raises(ValueError, match="no labelled pixel"):
        evaluate(np.zeros(4, int), np.ones(4, int))
