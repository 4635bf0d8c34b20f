"""Agreement between two networks: each readout candidate's partition by two independently trained networks.

Label-scored development script (docs/RESULTS.md, *Keeping the untrained network's
neighbourhoods*, last paragraphs); not in the package. Resample stability, the shipped rule's
criterion, favours partitions that subsamples reproduce, and on some scenes the right partition
is the least reproducible one (Samson on Pavia Centre). This measures another criterion: train a
second network with another seed (``SEED + SECOND``), read the same readout sample through both,
fit each candidate on each network's vectors, and take the adjusted Rand index between the two
partitions. A candidate that reflects the scene rather than one network's quirks should be found
by both.

For one scene, protocol and seed it writes one row per candidate: sample ACC of the first
network's partition (``acc``), its resample stability (``stability``, as the shipped rule
computes it) and the two networks' agreement (``agreement``); with ``--scene`` also the scene ACC
of the first network's readout of it (``scene_acc``, as ``candidates.py`` scores a candidate).
``--anchored`` trains both networks with the objective of ``neighbourhood_anchor.py``.
``--summary`` compares the shipped rule (most stable), the most agreeing candidate, and the best
by labels, on scene ACC when every file has it and on sample ACC otherwise.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/cross_network.py [--anchored] [--scene] SCENE PROTOCOL SEED OUT.json
    .venv/bin/python docs/experiments/cross_network.py --summary OUT1.json OUT2.json ...
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

import neighbourhood_anchor
from candidates import candidate_stability, most_stable, scene_acc
from sscc_core.metrics import evaluate
from sscc_core.training.selection import Candidate, fit_candidate
from trained_run import load_any_scene, run_or_summarise, sample_vectors, train_run

SECOND = 1000  # the second network's seed offset
ANCHORED = False  # set by --anchored
SCENE_ACC = False  # set by --scene


def run(spec: str, protocol: str, seed: int, out: str) -> None:
    start = time.time()
    scene = load_any_scene(spec)
    first, second = (train_run(scene, protocol, s) for s in (seed, seed + SECOND))
    post, k = first.cfg.postprocess, scene.n_classes
    mask, vectors_a = sample_vectors(first)
    _, vectors_b = sample_vectors(second, sample_seed=seed)
    classes = scene.labels[mask]
    scored = classes > 0
    rows = []
    for (sigma, va), (_, vb) in zip(vectors_a, vectors_b):
        for kind, scale in itertools.product(post.select_kinds, post.select_scales):
            cand = Candidate(kind, sigma, scale)
            labels, _, z, state = fit_candidate(va, cand, first.model.feature_dim, first.pre.comp_std, k, post, seed)
            other = fit_candidate(vb, cand, second.model.feature_dim, second.pre.comp_std, k, post, seed)[0]
            stable = candidate_stability(z, labels, kind, k, post, seed)
            row = {"sigma": float(sigma), "kind": kind, "scale": scale,
                   "acc": float(evaluate(classes[scored], labels[scored])["acc"]),
                   "stability": stable, "agreement": float(adjusted_rand_score(labels, other))}
            if SCENE_ACC:
                row["scene_acc"] = scene_acc(first, cand, labels, z, state)
            rows.append(row)
    Path(out).write_text(json.dumps({"spec": spec, "protocol": protocol, "seed": seed, "k": k,
                                     "anchored": ANCHORED,
                                     "seconds": time.time() - start, "rows": rows}, indent=1))
    print(out, f"{time.time() - start:.0f}s", flush=True)


def summary(paths: list[str]) -> None:
    rules = {"shipped (most stable)": lambda rows: most_stable(rows),
             "most agreeing": lambda rows: max(rows, key=lambda r: r["agreement"]),
             "best by labels (bound)": lambda rows: max(rows, key=lambda r: r["acc"])}
    table = {name: [] for name in rules}
    files = {path: json.loads(Path(path).read_text())["rows"] for path in sorted(paths)}
    key = "scene_acc" if all("scene_acc" in row for rows in files.values() for row in rows) else "acc"
    print(f"scored by {key}")
    for path, raw in files.items():
        rows = [{**row, "acc": row[key]} for row in raw]
        picks = {name: rule(rows) for name, rule in rules.items()}
        for name, row in picks.items():
            table[name].append(row["acc"])
        print(Path(path).stem, "  ".join(f"{row['kind'][0]}{row['sigma']:.0f} {row['acc']:.3f}" for row in picks.values()))
    for name, accs in table.items():
        print(f"{np.mean(accs):.3f}  {name} ({len(accs)} runs)")


if __name__ == "__main__":
    if "--anchored" in sys.argv:
        sys.argv.remove("--anchored")
        neighbourhood_anchor.activate()
        ANCHORED = True
    if "--scene" in sys.argv:
        sys.argv.remove("--scene")
        SCENE_ACC = True
    run_or_summarise(__doc__.splitlines()[0], run, summary)
