"""Every readout candidate of one run, each fitted alone and scored: the development driver.

The development runs of docs/RESULTS.md (the readout-kind study, the ninth test, *Changing what
the network learns*) come from this script. For one scene, protocol and seed it trains the
network of ``configs/default.yaml`` once (``--set`` overrides it as in ``sscc train``), then, for
each of the six candidates of ``readout: auto`` ({k-means, spectral} x sigma {0, 1, 2}), fits
that candidate alone with the package's functions, labels the scene with it, mode-filters as
the pipeline does and scores ACC on the labelled pixels, beside the candidate's stability. The
candidate the shipped rule keeps (the most stable; ties within 0.001 to the first in the grid's
order) scores what ``sscc reproduce`` reports for the same run, to every digit.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/candidates.py SCENE PROTOCOL SEED OUT.json \
        [--set SECTION.FIELD=VALUE ...]

SCENE is a bundled scene's name or a cube store with ground truth (``sscc synth``). OUT.json
holds one row per candidate (``sigma``, ``kind``, ``scale``, ``acc``, ``stability``,
``clusters``) and the rule's ``chosen`` row; the tables' means are means of ``chosen["acc"]``
(and of the best row's ``acc``, the bound) over the runs' files. With several scales (``--set
'postprocess.select_scales=[balanced, whitened]'``; the tenth held-out test's ``[balanced,
scores]`` after ``git apply docs/experiments/scores_scale.patch``) every candidate is fitted at
each, in the grid's order, and ``chosen_by_scale`` holds the rule's choice within each scale
alone, so two grids are read out from one trained network.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.options import parse_overrides
from sscc_core.config import PostprocessConfig
from sscc_core.labelling.inference import Labeller, label_scene
from sscc_core.metrics import evaluate
from sscc_core.model.postprocess import mode_filter
from sscc_core.training.readout_fit import extension, readout_of
from sscc_core.training.selection import TIE, Candidate, Selection, fit_candidate, stability
from trained_run import TrainedRun, add_run_arguments, load_any_scene, sample_vectors, train_run

def most_stable(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The shipped rule's choice among candidate rows given in the grid's order (sigma, then
    kind): the most stable, ties within ``TIE`` to the earlier row."""
    chosen = rows[0]
    for row in rows[1:]:
        if row["stability"] > chosen["stability"] + TIE:
            chosen = row
    return chosen


def candidate_stability(z: np.ndarray, labels: np.ndarray, kind: str, k: int, post: PostprocessConfig,
                        seed: int) -> float:
    """A candidate's resample stability as the shipped rule computes it (halves extended to the
    sample by the readout's linear extension)."""
    return stability(z, labels, kind, k, post.spectral_neighbors, post.select_resamples, seed,
                     lambda zf, lf: extension(zf, lf, k, seed)(z))


def scene_acc(run: TrainedRun, cand: Candidate, labels: np.ndarray, z: np.ndarray,
              state: dict[str, torch.Tensor]) -> float:
    """Scene ACC of one candidate fitted on the run's readout sample (``labels``, ``z`` and
    ``state`` from :func:`fit_candidate`): the scene labelled with its readout and mode-filtered
    as the pipeline does, scored on the labelled pixels."""
    post, k, seed = run.cfg.postprocess, run.scene.n_classes, run.cfg.train.seed
    selection = Selection(cand, labels, z, state, table=[], select_pixels=len(labels))
    readout = readout_of(selection, k, seed, post.readout_spectra)
    label_map, _ = label_scene(Labeller(run.model, run.pre, readout=readout), run.scene.cube, run.scene.valid)
    label_map = mode_filter(label_map, post.mode_window, post.mode_iterations)
    scored = run.scene.labels > 0
    return float(evaluate(run.scene.labels[scored], label_map[scored])["acc"])


def main(spec: str, protocol: str, seed: int, out: str, overrides: dict[str, Any]) -> None:
    start = time.time()
    run = train_run(load_any_scene(spec), protocol, seed, overrides)
    scene, model, pre = run.scene, run.model, run.pre
    post, k = run.cfg.postprocess, scene.n_classes
    rows = []
    for sigma, vectors in sample_vectors(run)[1]:
        for kind, scale in itertools.product(post.select_kinds, post.select_scales):
            cand = Candidate(kind, sigma, scale)
            labels, _, z, state = fit_candidate(vectors, cand, model.feature_dim, pre.comp_std, k, post, seed)
            stable = candidate_stability(z, labels, kind, k, post, seed)
            acc = scene_acc(run, cand, labels, z, state)
            rows.append({"sigma": float(sigma), "kind": kind, "scale": scale, "acc": acc,
                         "stability": stable, "clusters": int(len(np.unique(labels)))})
    by_scale = {scale: most_stable([r for r in rows if r["scale"] == scale]) for scale in post.select_scales}
    chosen = most_stable(rows)
    Path(out).write_text(json.dumps({"spec": spec, "protocol": protocol, "seed": seed, "k": k,
                                     "overrides": overrides, "seconds": time.time() - start,
                                     "rows": rows, "chosen": chosen, "chosen_by_scale": by_scale}, indent=1))
    print(out, f"{time.time() - start:.0f}s", f"chosen {chosen['kind']} sigma {chosen['sigma']:g} "
          f"acc {chosen['acc']:.3f}; best {max(r['acc'] for r in rows):.3f}", flush=True)


def cli() -> None:
    """The command line above."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()
    main(args.scene, args.protocol, args.seed, args.out, parse_overrides(args.overrides))


if __name__ == "__main__":
    cli()
