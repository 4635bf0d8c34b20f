"""Clustering metrics against ground truth: ACC/OA (Hungarian), NMI, ARI, kappa, purity.

Clusters are matched one-to-one to classes by the Hungarian algorithm on the class x cluster
contingency table (maximising matched pixels). With more clusters than classes the surplus
clusters stay unmatched and their pixels count as errors; with fewer, the surplus classes are
never predicted. Label-free scores (NMI, ARI, purity) use the raw cluster ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import mutual_info_score

UNMATCHED = -1


def contingency(
    y_true: np.ndarray, y_pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class x cluster count table.

    Args:
        y_true: ``(N,)`` integer class labels.
        y_pred: ``(N,)`` integer cluster ids.

    Returns:
        ``(classes, clusters, table)``: the sorted distinct classes ``(C,)``, the sorted distinct
        clusters ``(K,)`` and the ``(C, K)`` int64 table of pixel counts.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    classes, ti = np.unique(y_true, return_inverse=True)
    clusters, pi = np.unique(y_pred, return_inverse=True)
    table = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    return classes, clusters, table


def hungarian_map(y_true: np.ndarray, y_pred: np.ndarray) -> dict[int, int]:
    """One-to-one cluster -> class matching that maximises the matched pixel count.

    Args:
        y_true: ``(N,)`` integer class labels.
        y_pred: ``(N,)`` integer cluster ids.

    Returns:
        ``{cluster: class}`` for the matched clusters (``min(C, K)`` of them); clusters absent
        from the dict have no class.
    """
    classes, clusters, table = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {int(clusters[c]): int(classes[r]) for r, c in zip(rows, cols)}


def map_labels(y_pred: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Apply a cluster -> class mapping; unmatched clusters become :data:`UNMATCHED` (-1).

    Args:
        y_pred: Integer cluster ids, any shape.
        mapping: ``{cluster: class}`` from :func:`hungarian_map`.

    Returns:
        int64 class labels, shape of ``y_pred``.
    """
    y_pred = np.asarray(y_pred)
    clusters, inverse = np.unique(y_pred, return_inverse=True)
    lut = np.array([mapping.get(int(c), UNMATCHED) for c in clusters], dtype=np.int64)
    return lut[inverse].reshape(y_pred.shape)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Clustering accuracy (overall accuracy after Hungarian matching), in [0, 1]."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    return float(np.mean(map_labels(y_pred, hungarian_map(y_true, y_pred)) == y_true))


def purity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of pixels that belong to the majority class of their cluster, in [0, 1]."""
    return _purity(contingency(y_true, y_pred)[2])


def _purity(table: np.ndarray) -> float:
    """Purity of a ``(C, K)`` class x cluster table."""
    return float(table.max(axis=0).sum() / table.sum())


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, ignore: int | None = 0) -> dict[str, Any]:
    """Every metric on the labelled pixels, as a JSON-serialisable dict.

    Args:
        y_true: Ground-truth class map, any shape (e.g. ``(H, W)``); ``ignore`` marks unlabelled.
        y_pred: Cluster map of the same shape.
        ignore: Ground-truth value excluded from scoring (0 = unlabelled); ``None`` keeps all.

    Returns:
        See :func:`evaluate_table` (the same dict, from the pixels' contingency table).

    Raises:
        ValueError: Shapes differ or no pixel is labelled.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    _check_pair(y_true, y_pred)
    keep = np.ones(y_true.shape, bool) if ignore is None else y_true != ignore
    if not keep.any():
        raise ValueError(f"no labelled pixel: every ground-truth value equals ignore={ignore}")
    return evaluate_table(*contingency(y_true[keep], y_pred[keep]))


def evaluate_table(classes: np.ndarray, clusters: np.ndarray, table: np.ndarray) -> dict[str, Any]:
    """Every metric from a class x cluster contingency table (no per-pixel arrays needed, so a
    table streamed over a mosaic of any size scores in memory independent of its pixel count).

    Args:
        classes: ``(C,)`` class ids of the table's rows.
        clusters: ``(K,)`` cluster ids of its columns.
        table: ``(C, K)`` pixel counts; rows or columns of zeros are dropped.

    Returns:
        ``n_labelled``, ``n_classes``, ``n_clusters`` (distinct ids predicted on labelled pixels),
        ``acc`` (= ``oa``), ``aa`` (mean per-class accuracy), ``kappa`` (Cohen's, on matched
        labels; unmatched clusters count as a wrong extra label), ``nmi``, ``ari``, ``purity``,
        ``per_class_acc`` (``{class: acc}``), ``mapping`` (``{cluster: class}``), ``classes``,
        ``clusters``, ``confusion`` (classes x clusters counts) and ``confusion_matched`` (classes x
        classes counts after matching; pixels of unmatched clusters are not in it).

    Raises:
        ValueError: Mismatched sizes or an empty table.
    """
    table = np.asarray(table, dtype=np.int64)
    classes, clusters = np.asarray(classes).reshape(-1), np.asarray(clusters).reshape(-1)
    if table.shape != (len(classes), len(clusters)):
        raise ValueError(f"table shape {table.shape} != (classes, clusters) "
                         f"({len(classes)}, {len(clusters)})")
    rows, cols = table.sum(1) > 0, table.sum(0) > 0
    table, classes, clusters = table[rows][:, cols], classes[rows], clusters[cols]
    n = int(table.sum())
    if n == 0:
        raise ValueError("no labelled pixel: the contingency table is empty")
    match_rows, match_cols = linear_sum_assignment(table, maximize=True)
    confusion_matched = np.zeros((len(classes), len(classes)), dtype=np.int64)
    confusion_matched[:, match_rows] = table[:, match_cols]
    n_class = table.sum(1)
    hits = np.diag(confusion_matched)
    per_class = {int(c): float(h / m) for c, h, m in zip(classes, hits, n_class)}
    acc = float(hits.sum() / n)
    p_true, p_pred = n_class / n, confusion_matched.sum(0) / n
    expected = float(p_true @ p_pred)
    kappa = 1.0 if expected == 1.0 else (acc - expected) / (1.0 - expected)
    return {
        "n_labelled": n,
        "n_classes": int(len(classes)),
        "n_clusters": int(len(clusters)),
        "acc": acc,
        "oa": acc,
        "aa": float(np.mean(list(per_class.values()))),
        "kappa": float(kappa),
        "nmi": _nmi(table),
        "ari": _ari(table),
        "purity": _purity(table),
        "per_class_acc": per_class,
        "mapping": {int(clusters[c]): int(classes[r]) for r, c in zip(match_rows, match_cols)},
        "classes": [int(c) for c in classes],
        "clusters": [int(c) for c in clusters],
        "confusion": table.tolist(),
        "confusion_matched": confusion_matched.tolist(),
    }


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of a count vector."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _nmi(table: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean normaliser, as scikit-learn's default) of a
    contingency table without empty rows or columns."""
    if table.shape[0] == table.shape[1] == 1:
        return 1.0
    mi = float(mutual_info_score(None, None, contingency=table))
    if mi == 0:
        return 0.0
    return mi / ((_entropy(table.sum(1)) + _entropy(table.sum(0))) / 2)


def _ari(table: np.ndarray) -> float:
    """Adjusted Rand index of a contingency table (pair counts in exact integers)."""
    n = int(table.sum())
    sum_squares = int((table.astype(object) ** 2).sum())
    n_c, n_k = table.sum(1).astype(object), table.sum(0).astype(object)
    fp = int((table.astype(object) @ n_k).sum()) - sum_squares
    fn = int((table.T.astype(object) @ n_c).sum()) - sum_squares
    tp = sum_squares - n
    tn = n * n - fp - fn - sum_squares
    if fn == fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened integer label vectors of equal length."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true shape {y_true.shape} != y_pred shape {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must hold integer labels, got dtype {y.dtype}")
    return y_true.reshape(-1), y_pred.reshape(-1)
