"""Does a readout candidate's partition hold in both blocks of its vectors? One run.

Label-scored development script (docs/RESULTS.md, *The two blocks of the readout vector*,
2026-12-03); never a rule by itself. The shipped ``balanced`` readout vector of a pixel is two
blocks: the D backbone features (each weighted ``1/sqrt(D)``) and the first m = min(K - 1, C)
PCA scores (each ``1/sqrt(m)``), so each block has total variance 1 over the sample.

For one scene, protocol and seed the network of ``configs/default.yaml`` is trained as ``sscc
reproduce`` trains it; at each sigma of ``select_sigmas`` the readout sample's vectors are
standardised and weighted as the shipped scale does (:func:`fit_candidate`), and for each kind
(k-means, spectral) five partitions are fitted, of:

* ``joint``: the shipped vectors (the shipped candidate);
* ``features``: the features block alone;
* ``scores``: the scores block alone;
* ``local``: the two blocks each divided by its own median distance from a vector to its
  ``spectral_neighbors``-th nearest (itself counted, as the graph counts it), so both blocks
  weigh the same in nearest-neighbour distances, not only in total variance (the ``local``
  scale of ``local_scale.patch``, which puts it in the package's selection);
* ``reduced``: the features block on its first m principal axes, not whitened, scaled to total
  variance 1, beside the scores block: the K - 1 rank argument of ``balanced`` applied to the
  features too, so the many weak feature directions no longer set the neighbour distances.

Each row holds the five partitions' sample ACC (the sample's labelled pixels, Hungarian-matched;
no extension to the scene, no mode filter), the stability (the shipped criterion) of the
``joint``, ``scores``, ``local`` and ``reduced`` candidates, and the adjusted Rand index of each
pair of ``joint``, ``features`` and ``scores``; ``agreement`` is the mean of the joint partition's ARI with the
features' and with the scores' partition.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/cross_view.py SCENE PROTOCOL SEED OUT.json
    .venv/bin/python docs/experiments/cross_view.py --summary OUT1.json OUT2.json ...

The summary prints each rule's sample ACC per run and its mean over the given runs (the shipped
rule: the most stable joint candidate; the kind at each sigma by higher agreement, then the
sigma by stability; the highest agreement; the best joint candidate by labels, a bound; the most
stable of joint k-means and local spectral; the most stable local candidate; the most stable
reduced candidate; the most stable of joint k-means and scores spectral), then every fixed candidate's mean. A rule whose column a file
lacks (written before it existed) prints ``nan``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from candidates import most_stable
from sscc_core.metrics import accuracy
from sscc_core.training.readout_fit import extension
from sscc_core.training.selection import cluster, stability
from trained_run import load_any_scene, readout_samples, run_or_summarise, train_run

KINDS = ("kmeans", "spectral")


def neighbour_distance(z: np.ndarray, neighbors: int) -> float:
    """Median over the (M, V) vectors of the distance to their ``neighbors``-th nearest (itself
    counted, as the graph counts it): the block's local scale."""
    dist = NearestNeighbors(n_neighbors=neighbors).fit(z).kneighbors(z)[0]
    return float(np.median(dist[:, -1]))


def leading_axes(z: np.ndarray, m: int) -> np.ndarray:
    """(M, m) the (M, V) vectors on their m leading principal axes, not whitened (the axes keep
    their relative variance), scaled to total variance 1."""
    centred = z - z.mean(0)
    projected = centred @ np.linalg.svd(centred, full_matrices=False)[2][:m].T
    return projected / np.sqrt(projected.var(0).sum())


def run(spec: str, protocol: str, seed: int, out: str) -> None:
    trained = train_run(load_any_scene(spec), protocol, seed)
    post, k, d = trained.cfg.postprocess, trained.scene.n_classes, trained.model.feature_dim
    classes, samples = readout_samples(trained)  # the shipped scale, "balanced"
    scored = classes > 0
    rows = []
    for sigma, z in samples:
        m = min(k - 1, z.shape[1] - d)
        blocks = {"joint": z, "features": z[:, :d], "scores": z[:, d:d + m]}
        blocks["local"] = np.hstack([block / neighbour_distance(block, post.spectral_neighbors)
                                     for block in (blocks["features"], blocks["scores"])])
        blocks["reduced"] = np.hstack([leading_axes(blocks["features"], m), blocks["scores"]])
        for kind in KINDS:
            parts = {name: cluster(block, kind, k, post.spectral_neighbors, seed)[0] for name, block in blocks.items()}
            row: dict[str, Any] = {"sigma": float(sigma), "kind": kind, "scores_kept": m}
            for name, labels in parts.items():
                row[f"acc_{name}"] = accuracy(classes[scored], labels[scored])
            row["acc"] = row["acc_joint"]
            for name in ("joint", "scores", "local", "reduced"):
                zv = blocks[name]
                row["stability" if name == "joint" else f"stability_{name}"] = stability(
                    zv, parts[name], kind, k, post.spectral_neighbors, post.select_resamples, seed,
                    lambda zf, lf, zv=zv: extension(zf, lf, k, seed)(zv))
            row["ari_joint_features"] = adjusted_rand_score(parts["joint"], parts["features"])
            row["ari_joint_scores"] = adjusted_rand_score(parts["joint"], parts["scores"])
            row["ari_features_scores"] = adjusted_rand_score(parts["features"], parts["scores"])
            row["agreement"] = (row["ari_joint_features"] + row["ari_joint_scores"]) / 2
            rows.append(row)
            print(spec, protocol, seed, sigma, kind, {key: round(v, 3) for key, v in row.items()
                                                      if isinstance(v, float) and key != "sigma"}, flush=True)
    Path(out).write_text(json.dumps({"spec": spec, "protocol": protocol, "seed": seed, "k": k, "rows": rows},
                                    indent=1))


def kind_by(signal: str) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Rule: at each sigma the kind of higher ``signal`` (ties to k-means), then the most stable sigma."""
    def rule(rows: list[dict[str, Any]]) -> dict[str, Any]:
        per_sigma = []
        for sigma in sorted({r["sigma"] for r in rows}):
            pair = [r for r in rows if r["sigma"] == sigma]
            per_sigma.append(max(pair, key=lambda r: (r[signal], -KINDS.index(r["kind"]))))
        return most_stable(per_sigma)
    return rule


def most_stable_of(view: str, kinds: tuple[str, ...]) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Rule: the shipped choice (most stable, grid order) with the candidates of ``kinds`` read
    on ``view`` (its ACC and stability) and the other kinds' on the joint vectors."""
    def rule(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return most_stable([{**r, "acc": r[f"acc_{view}"], "stability": r[f"stability_{view}"]}
                            if r["kind"] in kinds else r for r in rows])
    return rule


def summary(paths: list[str]) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    rules: dict[str, Callable[[list[dict[str, Any]]], dict[str, Any]]] = {
        "shipped: most stable joint candidate": most_stable,
        "kind by higher agreement at each sigma, sigma by stability": kind_by("agreement"),
        "highest agreement": lambda rs: max(rs, key=lambda r: r["agreement"]),
        "best joint candidate by labels (bound)": lambda rs: max(rs, key=lambda r: r["acc"]),
        "most stable of joint k-means and local spectral": most_stable_of("local", ("spectral",)),
        "most stable local candidate": most_stable_of("local", KINDS),
        "most stable reduced candidate": most_stable_of("reduced", KINDS),
        "most stable of joint k-means and scores spectral": most_stable_of("scores", ("spectral",)),
    }
    def acc(rule: Callable[[list[dict[str, Any]]], dict[str, Any]], rows: list[dict[str, Any]]) -> float:
        try:
            return rule(rows)["acc"]
        except KeyError:  # a file written before the rule's column existed
            return math.nan

    width = max(len(Path(p).stem) for p in paths)
    print(" " * width, "  ".join(f"R{i}" for i in range(len(rules))))
    for path, data in zip(paths, runs):
        print(Path(path).stem.ljust(width), "  ".join(f"{acc(rule, data['rows']):.3f}" for rule in rules.values()))
    for i, (name, rule) in enumerate(rules.items()):
        print(f"R{i} {np.mean([acc(rule, d['rows']) for d in runs]):.3f}  {name}")
    for view in ("joint", "features", "scores", "local", "reduced"):
        for kind in KINDS:
            for sigma in sorted({r["sigma"] for r in runs[0]["rows"]}):
                mean = np.mean([r.get(f"acc_{view}", math.nan) for d in runs for r in d["rows"]
                                if r["kind"] == kind and r["sigma"] == sigma])
                if not math.isnan(mean):
                    print(f"{mean:.3f}  {view} {kind} at sigma {sigma:g}, fixed")


if __name__ == "__main__":
    run_or_summarise(__doc__.splitlines()[0], run, summary)
