"""Label-free choice of the readout (``postprocess.readout: auto``): which clustering, which
smoothing scale and which weighting of the pixel's own spectrum, decided from the data alone.

No setting of the readout suits every scene: a spectral graph on smoothed vectors follows the
fields of Indian Pines and Salinas-A, while k-means on unsmoothed vectors keeps the thin roads
and the water of Jasper Ridge. ``readout: auto`` fits every candidate of the grid

    ``select_kinds`` (k-means, spectral)  x  ``select_sigmas`` (smoothing, pixels)
    x  ``select_scales`` (how the PCA scores are weighted)

on the same seeded sample of training pixels and keeps the most **stable** one: a clustering
that reflects structure in the data comes back when the data are resampled, one that cuts a
continuum arbitrarily does not (Ben-Hur et al. 2002; Lange et al. 2004).

The choice and the fit can use two samples (``select_sample`` and ``readout_sample``): the
candidates are compared on the first, and the chosen one is fitted again on the second
(:func:`refit`). Stability depends on the sample's density (a denser sample steadies the finer
graphs, so the most stable sigma moves with the sample size); separating the two keeps the
criterion at the size it was designed at while the readout is fitted on a denser sample. The
shipped configuration leaves ``select_sample`` at ``None`` (one sample): a denser fit of the same
choice was not reliably better on held-out scenes (docs/RESULTS.md).

Stability of a candidate (deterministic for a seed):

1. cluster the whole sample (M vectors) -> labels ``L0``; this is also the fitted readout;
2. cluster ``select_resamples`` seeded random halves of the sample, and extend each clustering
   to the whole sample with the readout's own extension (a logistic regression) -> ``L1..Lr``;
3. stability = the mean adjusted Rand index over all pairs of ``L0..Lr`` (1 = identical
   partitions, 0 = chance agreement).

Ties (within ``TIE``) go to the earlier candidate in grid order: smaller smoothing first, k-means
before spectral, whitened before unwhitened. Nothing here reads a ground-truth label; the rule
and the scenes looked at while designing it are in ``docs/RESULTS.md``.

**Graph gain** (``select_graph_gain``, optional). Stability alone cannot tell a graph that found
structure from one that re-cuts a continuum the same way every time (Jasper Ridge: the graph
splits the water and merges trees with soil, reproducibly). A spectral candidate is meant to
find clusters k-means misses, so it must show them on its own objective: on its
k-nearest-neighbour graph of the sample (:func:`knn_affinity`), the normalised cut (Shi & Malik
2000, :func:`normalised_cut`) of the k-means partition at the same smoothing and scale, divided
by that of the graph's own partition, is its *graph gain*; a spectral candidate whose gain is
below ``select_graph_gain`` does not enter the comparison (every k-means candidate does).

Spectrum weighting (``spectra_scale``) of the C appended PCA scores, after each of the D + C
dimensions is standardised over the sample:

* ``"whitened"``: every score gets the weight ``readout_spectra`` (the components count equally,
  as in the authors' pre-processing);
* ``"unwhitened"``: score i gets ``sqrt(D) * s_i / max_j s_j`` where ``s_i`` is its spread in
  PCA units (the sample std of the whitened score times the component's std): the components
  keep their relative variance, as k-means on plain PCA scores sees them, and the first one
  weighs as much as the D standardised features together (as one feature when D = 0);
* ``"balanced"``: only the first m = min(K - 1, C) scores are kept, and the two blocks weigh
  the same: every feature gets ``1 / sqrt(D)`` and each kept score ``1 / sqrt(m)``, so each
  block has total variance 1 over the sample. The centroids of K clusters span at most K - 1
  dimensions (the rank of the between-cluster scatter, as in Fisher's discriminant), so the
  leading K - 1 components hold the spectrum's cluster structure and the rest add noise; and
  with equal block weights neither the D network features nor the spectrum outvote the other
  by their number of dimensions.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Callable, Literal

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import SpectralClustering
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import kneighbors_graph
from torch import Tensor

from sscc_core.model.baselines import fit_kmeans
from sscc_core.config import PostprocessConfig
from sscc_core.model.readout import standardise

Kind = Literal["kmeans", "spectral"]
Scale = Literal["whitened", "unwhitened", "balanced"]
TIE = 1e-3  # stabilities closer than this count as equal
NCUT_FLOOR = 1e-12  # added to both normalised cuts of the gain ratio (a partition may cut no edge)


@dataclass(frozen=True)
class Candidate:
    """One readout setting of the selection grid.

    Attributes:
        kind: ``"kmeans"`` or ``"spectral"``.
        smooth_sigma: Gaussian smoothing of the vectors before the readout, pixels.
        spectra_scale: ``"whitened"`` or ``"unwhitened"`` weighting of the appended PCA scores.
    """

    kind: Kind
    smooth_sigma: float
    spectra_scale: Scale

    @property
    def name(self) -> str:
        """Short label, e.g. ``spectral/sigma=2/unwhitened``."""
        return f"{self.kind}/sigma={self.smooth_sigma:g}/{self.spectra_scale}"


def candidates(post: PostprocessConfig) -> list[Candidate]:
    """The selection grid of a ``postprocess`` config, in tie-breaking order (smaller sigma,
    then the order of ``select_kinds``, then of ``select_scales``); one scale when no spectra
    are appended (``readout_spectra == 0``)."""
    scales = post.select_scales if post.readout_spectra > 0 else post.select_scales[:1]
    return [Candidate(kind, float(sigma), scale)  # type: ignore[arg-type]
            for sigma in sorted(post.select_sigmas) for kind in post.select_kinds for scale in scales]


def spectra_weights(vectors: Tensor, feature_dim: int, comp_std: np.ndarray | None, scale: Scale,
                    weight: float, n_clusters: int) -> Tensor | None:
    """(V,) per-dimension weights (applied after standardising) of ``[features; PCA scores]``
    vectors: 1 on the features, the ``scale`` rule of the module docstring on the scores.

    Args:
        vectors: (N, V) sample vectors, V = D features + C whitened PCA scores.
        feature_dim: D.
        comp_std: (C,) the pre-processing's component standard deviations (``Preprocessor.
            comp_std``); needed for ``"unwhitened"``.
        scale: ``"whitened"`` or ``"unwhitened"``.
        weight: ``readout_spectra``; 0 means no scores are appended (returns ``None``).
            ``"balanced"`` fixes the scores' weight itself (``weight`` only switches them on).
        n_clusters: K (``"balanced"`` keeps K - 1 scores).
    """
    if weight <= 0 or vectors.shape[1] == feature_dim:
        return None
    weights = torch.ones(vectors.shape[1], dtype=torch.float64)
    if scale == "balanced":
        kept = min(n_clusters - 1, vectors.shape[1] - feature_dim)
        weights[:feature_dim] = 1 / math.sqrt(max(feature_dim, 1))
        weights[feature_dim:] = 0.0
        weights[feature_dim:feature_dim + kept] = 1 / math.sqrt(kept)
        return weights.float()
    if scale == "whitened":
        weights[feature_dim:] = weight
        return weights.float()
    if comp_std is None:
        raise ValueError("spectra_scale 'unwhitened' needs the pre-processing's component std")
    spread = vectors[:, feature_dim:].double().std(0, unbiased=False) * torch.as_tensor(comp_std).double()
    weights[feature_dim:] = math.sqrt(max(feature_dim, 1)) * spread / spread.max().clamp(min=1e-12)
    return weights.float()


def standardiser(vectors: Tensor, weights: Tensor | None) -> dict[str, Tensor]:
    """``{"mean", "std"[, "weights"]}`` of (N, V) sample vectors: per-dimension mean and
    population std (floored at 1e-6), float32."""
    state = {"mean": vectors.double().mean(0).float(),
             "std": vectors.double().std(0, unbiased=False).clamp(min=1e-6).float()}
    if weights is not None:
        state["weights"] = weights.float()
    return state


def spectral_clusters(vectors: np.ndarray, n_clusters: int, neighbors: int, seed: int) -> tuple[np.ndarray, int]:
    """Spectral clustering of (M, D) vectors on a k-nearest-neighbour graph.

    A graph in several separate parts is expected (fields far apart in the scene and in feature
    space), so scikit-learn's "Graph is not fully connected" warning is not passed on; the
    number of parts is returned instead (the selection's provenance records it).

    Returns:
        ``(labels, parts)``: (M,) int64 cluster ids and the connected parts of the symmetric
        graph scikit-learn clustered (each vector joined to its ``neighbors`` nearest, itself
        included).
    """
    model = SpectralClustering(n_clusters, affinity="nearest_neighbors", n_neighbors=neighbors,
                               assign_labels="cluster_qr", random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected", category=UserWarning)
        labels = model.fit_predict(vectors).astype(np.int64)
    return labels, int(connected_components(model.affinity_matrix_, directed=False)[0])


def knn_affinity(z: np.ndarray, neighbors: int) -> sparse.csr_matrix:
    """(M, M) the symmetric k-nearest-neighbour graph spectral clustering cuts (scikit-learn's
    ``SpectralClustering(affinity="nearest_neighbors")``): each of the (M, V) vectors joined with
    weight 1 to its ``neighbors`` nearest, itself included, then symmetrised as (C + C^T) / 2."""
    connectivity = kneighbors_graph(z, neighbors, include_self=True)
    return (0.5 * (connectivity + connectivity.T)).tocsr()


def normalised_cut(affinity: sparse.spmatrix, labels: np.ndarray) -> float:
    """Normalised cut of a partition of a graph: the sum over its clusters A_k of
    cut(A_k, rest) / vol(A_k) (Shi & Malik 2000); 0 when no edge joins two clusters.

    Args:
        affinity: (M, M) symmetric non-negative edge weights.
        labels: (M,) cluster ids >= 0.
    """
    member = sparse.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)))
    within = (member.T @ affinity @ member).toarray()
    volume = within.sum(1)
    used = volume > 0
    return float(((volume - np.diag(within))[used] / volume[used]).sum())


def graph_gain(z: np.ndarray, kmeans_labels: np.ndarray, spectral_labels: np.ndarray, neighbors: int) -> float:
    """How many times better a spectral partition of (M, V) vectors cuts its own graph than the
    k-means partition of the same vectors: ``normalised_cut(kmeans) / normalised_cut(spectral)``
    on :func:`knn_affinity`, each plus ``NCUT_FLOOR`` (two partitions that both cut no edge:
    gain 1)."""
    affinity = knn_affinity(z, neighbors)
    return ((normalised_cut(affinity, kmeans_labels) + NCUT_FLOOR)
            / (normalised_cut(affinity, spectral_labels) + NCUT_FLOOR))


def cluster(z: np.ndarray, kind: Kind, n_clusters: int, neighbors: int, seed: int) -> tuple[np.ndarray, int | None]:
    """Cluster (M, V) standardised vectors: k-means (k-means++, several inits) or spectral
    clustering on a k-nearest-neighbour graph (QR assignment).

    Returns:
        ``(labels, parts)``: (M,) int64 cluster ids, and the graph's connected parts for the
        spectral kind (``None`` for k-means).
    """
    if kind == "kmeans":
        return fit_kmeans(z, n_clusters, seed).labels_.astype(np.int64), None
    return spectral_clusters(z, n_clusters, neighbors, seed)


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select`: the chosen candidate, its fitted sample labels, and every
    candidate's criterion value (the checkpoint's provenance).

    Attributes:
        choice: The chosen :class:`Candidate`.
        labels: (M,) cluster ids of the sample under the choice (``L0``).
        z: (M, V) the sample's standardised vectors under the choice (the fit sample's after
            :func:`refit`).
        state: ``{"mean", "std"[, "weights"]}`` standardiser of the choice.
        table: One dict per candidate: ``kind``, ``smooth_sigma``, ``spectra_scale``,
            ``stability`` (mean pairwise ARI), ``clusters`` (distinct ids in ``L0``) and, for
            the spectral kind, ``graph_parts`` (the connected parts of its graph of the
            sample, :func:`spectral_clusters`) and, with a ``select_graph_gain``,
            ``graph_gain`` (:func:`graph_gain`) and ``eligible`` (gain >= the threshold).
        select_pixels: Size of the sample the candidates were compared on.
        graph_gain: The ``select_graph_gain`` threshold the comparison used (``None``: off).
    """

    choice: Candidate
    labels: np.ndarray
    z: np.ndarray
    state: dict[str, Tensor]
    table: list[dict[str, object]]
    select_pixels: int
    graph_gain: float | None = None

    def record(self) -> dict[str, object]:
        """JSON-serialisable provenance: criterion, choice, the per-candidate values and the
        pixels the choice was made on (``select_pixels``) and the readout fitted on
        (``fit_pixels``)."""
        criterion = ("stability: mean pairwise ARI of the sample's clustering and of half-resample "
                     "clusterings extended to it")
        if self.graph_gain is not None:
            criterion += (f"; a spectral candidate competes only with a graph gain >= {self.graph_gain:g} "
                          "(normalised cut of the k-means partition / of its own, on its k-NN graph)")
        return {"criterion": criterion, "choice": asdict(self.choice), "candidates": self.table,
                "select_pixels": self.select_pixels, "fit_pixels": int(len(self.labels)),
                "graph_gain": self.graph_gain}


def stability(z: np.ndarray, labels: np.ndarray, kind: Kind, n_clusters: int, neighbors: int,
              resamples: int, seed: int, extend: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> float:
    """:func:`resampled_agreement` of a candidate's clustering (:func:`cluster` of ``kind``)."""
    return resampled_agreement(z, labels, lambda half, s: cluster(half, kind, n_clusters, neighbors, s)[0],
                               resamples, seed, extend)


def resampled_agreement(z: np.ndarray, labels: np.ndarray, fit: Callable[[np.ndarray, int], np.ndarray],
                        resamples: int, seed: int,
                        extend: Callable[[np.ndarray, np.ndarray], np.ndarray], fraction: float = 0.5) -> float:
    """Mean pairwise adjusted Rand index of ``labels`` (the clustering of all M vectors) and of
    the clusterings ``fit(z_half, seed) -> labels`` of ``resamples`` seeded random halves (or
    another ``fraction`` of the M vectors), each extended to the M vectors by
    ``extend(z_half, labels_half) -> (M,) labels``."""
    rng = np.random.default_rng(seed + 7919)
    runs = [labels]
    for r in range(resamples):
        half = np.sort(rng.choice(len(z), int(len(z) * fraction), replace=False))
        sub = fit(z[half], seed + 1 + r)
        runs.append(extend(z[half], sub) if len(np.unique(sub)) > 1 else np.zeros(len(z), np.int64))
    pairs = [adjusted_rand_score(runs[i], runs[j]) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    return float(np.mean(pairs))


def select(
    vectors_at: Callable[[float], Tensor], feature_dim: int, comp_std: np.ndarray | None,
    n_clusters: int, post: PostprocessConfig, seed: int,
    extend: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]],
    log: Callable[[dict[str, object]], None] | None = None,
) -> Selection:
    """Fit every candidate of :func:`candidates` and keep the most stable one (of those whose
    graph gain reaches ``post.select_graph_gain``, when it is set; k-means always competes).

    Args:
        vectors_at: ``sigma -> (M, V)`` the sample's readout vectors smoothed at ``sigma``
            (the same M pixels, in the same order, for every sigma).
        feature_dim: D, the backbone features at the front of each vector.
        comp_std: (C,) component stds of the pre-processing (``"unwhitened"`` scale).
        n_clusters: K.
        post: ``select_*``, ``spectral_neighbors``, ``readout_spectra``.
        seed: Seed of every clustering and resample.
        extend: ``(z_fit, labels_fit) -> predict`` where ``predict(z) -> labels``: how a
            clustering of some vectors labels others (the readout's extension).
        log: Called with each candidate's row as it is measured (progress).

    Returns:
        The :class:`Selection`.
    """
    best: tuple[float, Candidate, np.ndarray, np.ndarray, dict[str, Tensor]] | None = None
    table = []
    for sigma, group in itertools.groupby(candidates(post), key=lambda cand: cand.smooth_sigma):
        vectors = vectors_at(sigma)
        fitted = {cand: fit_candidate(vectors, cand, feature_dim, comp_std, n_clusters, post, seed) for cand in group}
        for cand, (labels, parts, z, state) in fitted.items():
            value = stability(z, labels, cand.kind, n_clusters, post.spectral_neighbors,
                              post.select_resamples, seed, lambda zf, lf: extend(zf, lf)(z))
            row = {**asdict(cand), "stability": round(value, 6), "clusters": int(len(np.unique(labels)))}
            if parts is not None:
                row["graph_parts"] = parts
            eligible = True
            if post.select_graph_gain is not None and cand.kind == "spectral":
                gain = graph_gain(z, fitted[replace(cand, kind="kmeans")][0], labels, post.spectral_neighbors)
                eligible = gain >= post.select_graph_gain
                row["graph_gain"], row["eligible"] = round(gain, 6), eligible
            table.append(row)
            if log is not None:
                log(row)
            if eligible and (best is None or value > best[0] + TIE):
                best = (value, cand, labels, z, state)
    assert best is not None  # candidates() is never empty and k-means always competes (validated config)
    return Selection(*best[1:], table=table, select_pixels=len(best[2]), graph_gain=post.select_graph_gain)


def fit_candidate(vectors: Tensor, cand: Candidate, feature_dim: int, comp_std: np.ndarray | None,
                  n_clusters: int, post: PostprocessConfig,
                  seed: int) -> tuple[np.ndarray, int | None, np.ndarray, dict[str, Tensor]]:
    """Standardise and weight (M, V) sample vectors for ``cand`` and cluster them.

    Returns:
        ``(labels, parts, z, state)``: (M,) cluster ids, the spectral graph's connected parts
        (``None`` for k-means), the (M, V) standardised vectors and their standardiser.
    """
    state = standardiser(vectors, spectra_weights(vectors, feature_dim, comp_std, cand.spectra_scale,
                                                  post.readout_spectra, n_clusters))
    z = standardise(vectors, state).numpy()
    labels, parts = cluster(z, cand.kind, n_clusters, post.spectral_neighbors, seed)
    return labels, parts, z, state


def refit(chosen: Selection, vectors: Tensor, feature_dim: int, comp_std: np.ndarray | None,
          n_clusters: int, post: PostprocessConfig, seed: int) -> Selection:
    """The chosen candidate fitted again on another sample (the readout sample, when the choice
    was made on a smaller ``select_sample``): its standardiser and clustering come from
    ``vectors``; the choice and every candidate's criterion value stay as they were.

    Args:
        chosen: The outcome of :func:`select`.
        vectors: (M', V) the fit sample's readout vectors at the chosen smoothing.

    Returns:
        The :class:`Selection` with ``labels``, ``z`` and ``state`` of the fit sample.
    """
    labels, _, z, state = fit_candidate(vectors, chosen.choice, feature_dim, comp_std, n_clusters, post, seed)
    return replace(chosen, labels=labels, z=z, state=state)
