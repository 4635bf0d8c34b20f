"""Three more readout variants and two more label-free signals for the readout's kind, on one run.

The table of docs/RESULTS.md, *Three readout variants and two kind signals* (2026-12-03).
Label-scored (development only, never a rule). For one scene, protocol and seed the network of
``configs/default.yaml`` is trained as ``sscc reproduce`` trains it; the readout sample's vectors
are smoothed at each sigma of ``select_sigmas``, standardised and weighted as the shipped
``balanced`` scale does, and clustered four ways:

* ``kmeans`` and ``spectral``: the shipped candidates (:func:`cluster`);
* ``selftuned``: spectral clustering of the same 10-nearest-neighbour graph with Gaussian edge
  weights scaled per vector (Zelnik-Manor & Perona 2004: ``exp(-d_ij^2 / (s_i s_j))``, ``s_i``
  the distance to the 7th neighbour) instead of weight 1;
* ``merged``: spectral clustering into 2K clusters, merged pairwise to K by Ward's criterion
  (the pair whose merge least raises the within-cluster sum of squares, ``n_a n_b / (n_a +
  n_b) |c_a - c_b|^2``), meant to keep the graph's cuts where they are sharp while letting
  the variance decide where the graph splits a continuum.

Each clustering's ACC is scored on the sample's labelled pixels (Hungarian matching; no
extension to the scene and no mode filter, so it is not the suite's ACC). Beside it: the
stability of ``kmeans``, ``spectral`` and ``merged`` (the shipped criterion), and two signals for
the kind computed on the sample alone: Wilks' lambda (log det of the pooled within-cluster
scatter over log det of the total scatter; Friedman & Rubin 1967) and the Gaussian
classification likelihood (the mean of ``n_k log det S_k`` over clusters, with S_k each
cluster's covariance), both on the K - 1 leading principal axes of the sample's vectors.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/readout_variants.py SCENE PROTOCOL SEED OUT.json
    .venv/bin/python docs/experiments/readout_variants.py --summary OUT1.json OUT2.json ...

The summary prints, over the given runs, the mean sample ACC of each rule: the shipped one (the
most stable of k-means and spectral, ties within 0.001 to the grid's order), the most stable
with ``merged`` added, ``merged`` alone (sigma by stability), and the kind chosen at each sigma by
the lower Wilks' lambda or classification likelihood (sigma by stability), beside the best by
labels.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.cluster import SpectralClustering
from sklearn.neighbors import kneighbors_graph

from candidates import most_stable
from sscc_core.metrics import accuracy
from sscc_core.training.readout_fit import extension
from sscc_core.training.selection import cluster, resampled_agreement, spectral_clusters
from trained_run import load_any_scene, readout_samples, run_or_summarise, train_run

SCALE_NEIGHBOUR = 7
KINDS = ("kmeans", "spectral", "merged")  # the grid's order of kinds within a sigma, as ``run`` writes them


def selftuned(z: np.ndarray, k: int, neighbors: int, seed: int) -> np.ndarray:
    """Spectral clustering of (M, V) vectors on the k-NN graph with locally scaled weights."""
    dist = kneighbors_graph(z, neighbors, mode="distance").tocoo()
    scale = np.sort(dist.tocsr().data.reshape(len(z), neighbors), 1)[:, SCALE_NEIGHBOUR - 1]
    weights = np.exp(-dist.data ** 2 / (scale[dist.row] * scale[dist.col] + 1e-12))
    affinity = sparse.csr_matrix((weights, (dist.row, dist.col)), shape=dist.shape)
    model = SpectralClustering(k, affinity="precomputed", assign_labels="cluster_qr", random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected", category=UserWarning)
        return model.fit_predict(affinity.maximum(affinity.T)).astype(np.int64)


def ward_merge(z: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(M,) ids 0..k-1: the clusters of ``labels`` merged pairwise by Ward's criterion until k."""
    ids = list(np.unique(labels))
    centre = {c: z[labels == c].mean(0) for c in ids}
    size = {c: int((labels == c).sum()) for c in ids}
    out = labels.copy()
    while len(ids) > k:
        a, b = min(((a, b) for i, a in enumerate(ids) for b in ids[i + 1:]),
                   key=lambda p: size[p[0]] * size[p[1]] / (size[p[0]] + size[p[1]])
                   * float(((centre[p[0]] - centre[p[1]]) ** 2).sum()))
        centre[a] = (size[a] * centre[a] + size[b] * centre[b]) / (size[a] + size[b])
        size[a] += size[b]
        out[out == b] = a
        ids.remove(b)
    return np.unique(out, return_inverse=True)[1].astype(np.int64)


def merged(z: np.ndarray, k: int, neighbors: int, seed: int) -> np.ndarray:
    """Spectral clustering into 2k clusters, Ward-merged to k."""
    return ward_merge(z, spectral_clusters(z, 2 * k, neighbors, seed)[0], k)


def principal(z: np.ndarray, dims: int) -> np.ndarray:
    """(M, dims) centred vectors on their leading principal axes."""
    centred = z - z.mean(0)
    return centred @ np.linalg.svd(centred, full_matrices=False)[2][:dims].T


def wilks(x: np.ndarray, labels: np.ndarray) -> float:
    """log det(W) - log det(T) of (M, d) vectors: lower is better separated."""
    within = sum(np.cov(x[labels == c].T, bias=True) * (labels == c).sum() for c in np.unique(labels))
    return float(np.linalg.slogdet(within)[1] - np.linalg.slogdet(x.T @ x)[1])


def class_likelihood(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the M vectors of log det of their cluster's covariance: lower is tighter."""
    d = x.shape[1]
    return float(sum((labels == c).sum() * np.linalg.slogdet(np.cov(x[labels == c].T) + 1e-6 * np.eye(d))[1]
                     for c in np.unique(labels)) / len(x))


def run(spec: str, protocol: str, seed: int, out: str) -> None:
    trained = train_run(load_any_scene(spec), protocol, seed)
    post, k = trained.cfg.postprocess, trained.scene.n_classes
    classes, samples = readout_samples(trained)
    scored = classes > 0
    rows = []
    for sigma, z in samples:
        axes = principal(z, max(k - 1, 2))
        clusterers = {"kmeans": lambda zz, s: cluster(zz, "kmeans", k, post.spectral_neighbors, s)[0],
                      "spectral": lambda zz, s: cluster(zz, "spectral", k, post.spectral_neighbors, s)[0],
                      "merged": lambda zz, s: merged(zz, k, post.spectral_neighbors, s)}
        for kind, fit in clusterers.items():
            labels = fit(z, seed)
            value = resampled_agreement(z, labels, fit, post.select_resamples, seed,
                                        lambda zf, lf: extension(zf, lf, k, seed)(z))
            rows.append({"sigma": float(sigma), "kind": kind, "acc": accuracy(classes[scored], labels[scored]),
                         "stability": value, "wilks": wilks(axes, labels),
                         "likelihood": class_likelihood(axes, labels)})
        rows.append({"sigma": float(sigma), "kind": "selftuned",
                     "acc": accuracy(classes[scored], selftuned(z, k, post.spectral_neighbors, seed)[scored])})
        print(spec, protocol, seed, sigma, {r["kind"]: round(r["acc"], 3) for r in rows if r["sigma"] == sigma},
              flush=True)
    Path(out).write_text(json.dumps({"spec": spec, "protocol": protocol, "seed": seed, "k": k, "rows": rows},
                                    indent=1))


def summary(paths: list[str]) -> None:
    runs = [json.loads(Path(p).read_text())["rows"] for p in paths]
    rules = {
        "shipped (most stable of k-means, spectral)": lambda rs: most_stable([r for r in rs if r["kind"] in KINDS[:2]]),
        "most stable of k-means, spectral, merged": lambda rs: most_stable([r for r in rs if r["kind"] in KINDS]),
        "merged alone (sigma by stability)": lambda rs: most_stable([r for r in rs if r["kind"] == "merged"]),
    }
    for signal in ("wilks", "likelihood"):
        rules[f"kind by lower {signal} at each sigma, sigma by stability"] = lambda rs, s=signal: most_stable(
            [min((r for r in rs if r["sigma"] == sigma and r["kind"] in KINDS[:2]), key=lambda r: r[s])
             for sigma in sorted({r["sigma"] for r in rs})])
    rules["best of k-means, spectral by labels"] = lambda rs: max((r for r in rs if r["kind"] in KINDS[:2]),
                                                                  key=lambda r: r["acc"])
    for name, rule in rules.items():
        print(f"{np.mean([rule(rs)['acc'] for rs in runs]):.3f}  {name}")
    for kind in ("kmeans", "spectral", "selftuned", "merged"):
        for sigma in sorted({r["sigma"] for r in runs[0]}):
            mean = np.mean([r["acc"] for rs in runs for r in rs if r["kind"] == kind and r["sigma"] == sigma])
            print(f"{mean:.3f}  {kind} at sigma {sigma:g}, fixed")


if __name__ == "__main__":
    run_or_summarise(__doc__.splitlines()[0], run, summary)
