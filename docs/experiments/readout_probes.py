"""Five label-scored probes of the readout on one run's sample: graph weights, a density-valley
kind signal, stability on small subsamples, several networks' features side by side, and the
instance projections instead of the features.

Development script (docs/RESULTS.md, *Four readout probes on the bundled development runs*); not
in the package. ``cache`` trains ``NETWORKS`` networks of ``configs/default.yaml`` for one run
(seeds SEED, SEED + 1000, ...; the first is the run's own network) and stores the readout sample's
vectors (features, then the PCA scores) at each sigma of ``select_sigmas``, read through each
network for the same pixels. ``probe`` then scores, per cached run, on the sample's labelled
pixels (sample ACC):

* ``graph``: the spectral candidate at each sigma on three graphs of the same 10 nearest
  neighbours: the shipped symmetric one, shared-neighbour weights (each edge weighted by the
  share of neighbours its ends have in common, Jarvis & Patrick 1973) and the mutual one (an edge
  only where each end is among the other's neighbours; von Luxburg 2007, section 2.2);
* ``valley``: per candidate, the depth of the density valley between each cluster and its
  nearest cluster (kernel density of the two clusters' vectors projected on the line through
  their centroids: the lowest density between the two medians over the lower of the densities
  at the medians; 1 = no valley, a split of one mode), averaged over those pairs; the rule
  keeps the candidate with the deepest valleys;
* ``fraction``: the shipped stability rule with resamples of a fifth of the sample instead of
  halves;
* ``networks``: the shipped rule on vectors whose feature block holds the features of two or
  three networks side by side (one block, weighted as the shipped block is);
* ``instance``: the shipped rule on vectors whose feature block is the first network's instance
  projections (its instance head applied to the features, at sigma > 0 to the smoothed ones, then
  L2-normalised as NT-Xent sees them) instead of the features: the projection is trained only by
  the instance loss, so it may keep less of the cluster head's partition.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/readout_probes.py cache SCENE PROTOCOL SEED OUT.npz
    .venv/bin/python docs/experiments/readout_probes.py probe 'CACHE/*.npz'
"""

from __future__ import annotations

import glob
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import gaussian_kde
from sklearn.cluster import SpectralClustering
from sklearn.neighbors import kneighbors_graph

from candidates import candidate_stability, most_stable
from sscc_core.config import load_config
from sscc_core.metrics import evaluate
from sscc_core.training.readout_fit import extension
from sscc_core.training.selection import Candidate, cluster, fit_candidate, resampled_agreement
from trained_run import load_any_scene, sample_vectors, train_run

NETWORKS = 3  # networks trained per run by ``cache``
SECOND = 1000  # seed offset between the networks
FRACTION = 0.2  # the ``fraction`` probe's resample size, a share of the sample
VALLEY_POINTS = 3000  # projected vectors the valley's kernel density is fitted on, at most


def cache(spec: str, protocol: str, seed: int, out: str) -> None:
    """Train the run's networks and store their sample vectors (see the module docstring)."""
    scene = load_any_scene(spec)
    runs = [train_run(scene, protocol, seed + i * SECOND) for i in range(NETWORKS)]
    per_net = [sample_vectors(run, sample_seed=seed) for run in runs]
    arrays = {f"v{i}_{int(sigma)}": vectors.numpy() for i, (_, per_sigma) in enumerate(per_net)
              for sigma, vectors in per_sigma}
    fdim = runs[0].model.feature_dim
    with torch.no_grad():
        for sigma, vectors in per_net[0][1]:
            projections = torch.nn.functional.normalize(runs[0].model.instance(vectors[:, :fdim]), dim=1)
            arrays[f"p_{int(sigma)}"] = torch.cat([projections, vectors[:, fdim:]], dim=1).numpy()
    np.savez(out, classes=scene.labels[per_net[0][0]], k=scene.n_classes, seed=seed,
             feature_dim=fdim, comp_std=runs[0].pre.comp_std, **arrays)
    print(out, flush=True)


def spectral_on(affinity, k: int, seed: int) -> np.ndarray:
    """Spectral clustering of a precomputed graph, assigned as the shipped readout does."""
    model = SpectralClustering(k, affinity="precomputed", assign_labels="cluster_qr", random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # disconnected mutual graphs
        return model.fit_predict(affinity)


def graphs(z: np.ndarray, neighbors: int) -> dict[str, object]:
    """The three graphs of the ``graph`` probe on (M, V) vectors."""
    nearest = kneighbors_graph(z, neighbors, include_self=True)
    symmetric = (0.5 * (nearest + nearest.T)).tocsr()
    shared = (nearest @ nearest.T).multiply(symmetric > 0) / neighbors
    return {"symmetric": symmetric, "shared": shared.tocsr(), "mutual": nearest.multiply(nearest.T).tocsr()}


def valley_depth(z: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> float:
    """Mean valley ratio over each cluster and its nearest cluster (by centroid distance)."""
    ids = np.unique(labels)
    centroids = np.stack([z[labels == i].mean(0) for i in ids])
    dist = ((centroids[:, None] - centroids[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    ratios = []
    for a, b in {tuple(sorted((ids[i], ids[int(np.argmin(row))]))) for i, row in enumerate(dist)}:
        axis = z[labels == b].mean(0) - z[labels == a].mean(0)
        pa, pb = z[labels == a] @ axis, z[labels == b] @ axis
        both = np.concatenate([pa, pb])
        lo, hi = np.median(pa), np.median(pb)
        if hi <= lo or both.std() == 0:
            ratios.append(1.0)
            continue
        density = gaussian_kde(rng.choice(both, min(both.size, VALLEY_POINTS), replace=False))(np.linspace(lo, hi, 200))
        ratios.append(float(density.min() / min(density[0], density[-1])))
    return float(np.mean(ratios))


def small_resample_stability(z: np.ndarray, labels: np.ndarray, kind: str, k: int, neighbors: int,
                             resamples: int, seed: int) -> float:
    """The shipped stability with resamples of ``FRACTION`` of the sample instead of halves."""
    return resampled_agreement(z, labels, lambda part, s: cluster(part, kind, k, neighbors, s)[0], resamples,
                               seed, lambda zf, lf: extension(zf, lf, k, seed)(z), fraction=FRACTION)


def probe_run(path: str) -> dict[str, float]:
    """Sample ACC of each probe's choice (and the shipped rule's, and the best candidate's) on one run."""
    data = np.load(path)
    post = load_config("configs/default.yaml").postprocess
    classes, k, seed, fdim = data["classes"], int(data["k"]), int(data["seed"]), int(data["feature_dim"])
    scored, rng = classes > 0, np.random.default_rng(0)
    acc = lambda labels: float(evaluate(classes[scored], labels[scored])["acc"])  # noqa: E731
    rows, nets, instance = [], {n: [] for n in range(2, NETWORKS + 1)}, []
    out: dict[str, float] = {}
    for sigma in sorted(post.select_sigmas):
        raw = [torch.from_numpy(data[f"v{i}_{int(sigma)}"]) for i in range(NETWORKS)]
        for kind in post.select_kinds:
            cand = Candidate(kind, sigma, "balanced")
            labels, _, z, _ = fit_candidate(raw[0], cand, fdim, data["comp_std"], k, post, seed)
            rows.append({"sigma": sigma, "kind": kind, "acc": acc(labels),
                         "stability": candidate_stability(z, labels, kind, k, post, seed),
                         "fraction": small_resample_stability(z, labels, kind, k, post.spectral_neighbors,
                                                              post.select_resamples, seed),
                         "valley": valley_depth(z, labels, rng)})
            if kind == "spectral":
                for name, graph in graphs(z, post.spectral_neighbors).items():
                    out[f"graph {name} sigma {sigma:g}"] = acc(spectral_on(graph, k, seed))
            projected = torch.from_numpy(data[f"p_{int(sigma)}"])
            labels, _, z, _ = fit_candidate(projected, cand, projected.shape[1] - (raw[0].shape[1] - fdim),
                                            data["comp_std"], k, post, seed)
            instance.append({"kind": kind, "acc": acc(labels),
                             "stability": candidate_stability(z, labels, kind, k, post, seed)})
            for n in nets:
                side = torch.cat([r[:, :fdim] for r in raw[:n]] + [raw[0][:, fdim:]], dim=1)
                labels, _, z, _ = fit_candidate(side, cand, fdim * n, data["comp_std"], k, post, seed)
                nets[n].append({"kind": kind, "acc": acc(labels),
                                "stability": candidate_stability(z, labels, kind, k, post, seed)})
    out["shipped rule"] = most_stable(rows)["acc"]
    out["valley rule"] = min(rows, key=lambda r: r["valley"])["acc"]
    out["fraction rule"] = most_stable([{**r, "stability": r["fraction"]} for r in rows])["acc"]
    for n, net_rows in nets.items():
        out[f"{n} networks, shipped rule"] = most_stable(net_rows)["acc"]
        out[f"{n} networks, best candidate"] = max(r["acc"] for r in net_rows)
        out[f"{n} networks, best spectral candidate"] = max(r["acc"] for r in net_rows if r["kind"] == "spectral")
    out["instance projections, shipped rule"] = most_stable(instance)["acc"]
    out["instance projections, best candidate"] = max(r["acc"] for r in instance)
    out["best candidate"] = max(r["acc"] for r in rows)
    out["best spectral candidate"] = max(r["acc"] for r in rows if r["kind"] == "spectral")
    return out


def probe(pattern: str) -> None:
    """Per run and on average, every probe's sample ACC (see the module docstring)."""
    table = {}
    for path in sorted(glob.glob(pattern)):
        table[Path(path).stem] = scores = probe_run(path)
        print(Path(path).stem, " ".join(f"{name} {value:.3f};" for name, value in scores.items()), flush=True)
    names = list(scores)
    print("| probe | mean sample ACC |\n| --- | --- |")
    for name in names:
        print(f"| {name} | {np.mean([scores[name] for scores in table.values()]):.3f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["cache"] and len(sys.argv) == 6:
        torch.set_num_threads(1)
        cache(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif sys.argv[1:2] == ["probe"] and len(sys.argv) == 3:
        probe(sys.argv[2])
    else:
        raise SystemExit(__doc__.split("Usage")[1])
