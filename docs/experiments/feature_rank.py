"""How many directions the backbone features of the readout sample span, trained against untrained.

The figures of docs/RESULTS.md, *Whitening the network features' leading components*. Label-free:
no ground truth is scored; protocol ``all`` trains on every valid pixel.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/feature_rank.py [--without-instance-head] \
        [--set SECTION.FIELD=VALUE ...] [--trained-only] jasper_ridge samson salinasA indian_pines

A scene is a bundled scene's name or a cube store with ground truth (``sscc synth``, ``sscc
ingest --labels``). For each scene, the network of ``configs/default.yaml`` (with
``--without-instance-head``: ``model.instance_dim = 0``, the configuration before 2026-12-02; with
``--set``: overridden as in ``sscc train``, e.g. ``--set loss.spread_weight=10`` after
``git apply docs/experiments/spread_weight.patch``) is trained for seed 0 (and, for the untrained
column unless ``--trained-only``, run for one epoch at the suite's ``UNTRAINED_LR``). The sigma-0
readout vectors of the 6,000-pixel readout sample are then split into the 64 backbone features and the first
K - 1 PCA scores. For each block it prints the participation ratio of the standardised
covariance, ``(sum eig)^2 / sum eig^2``, which is the block's effective number of dimensions, and
the variance share of its top direction.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from pipelines.options import parse_overrides
from sscc_core.labelling.inference import Labeller
from sscc_core.model.readout import Readout
from sscc_core.training.readout_fit import sample_mask, sample_vectors
from trained_run import load_any_scene, train_run


def spread(block: torch.Tensor) -> tuple[float, float]:
    """(participation ratio, top direction's variance share) of (N, d) vectors, standardised."""
    z = (block - block.mean(0)) / block.std(0).clamp(min=1e-6)
    eig = torch.linalg.eigvalsh(z.T @ z / len(z)).clamp(min=0)
    return float(eig.sum() ** 2 / (eig ** 2).sum()), float(eig.max() / eig.sum())


def main(scenes: list[str], overrides: dict[str, Any], trained_only: bool = False) -> None:
    for name in scenes:
        scene = load_any_scene(name)
        for variant in ("trained",) if trained_only else ("trained", "untrained"):
            run = train_run(scene, "all", 0, overrides, untrained=variant == "untrained")
            model = run.model
            labeller = Labeller(model, run.pre, readout=Readout("kmeans", 0.0, run.cfg.postprocess.readout_spectra))
            mask = sample_mask(run.train_mask, run.cfg.postprocess.readout_sample, 0)
            vectors = sample_vectors(labeller, scene.cube, scene.valid, mask).double()
            d, kept = model.feature_dim, min(scene.n_classes - 1, vectors.shape[1] - model.feature_dim)
            for block, values in (("features", vectors[:, :d]), ("scores", vectors[:, d:d + kept])):
                ratio, top = spread(values)
                print(f"{name:12s} {variant:9s} {block:8s} dims {values.shape[1]:3d} "
                      f"participation ratio {ratio:6.2f} top direction {top:.3f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenes", nargs="+", help="bundled scene names or cube stores with ground truth")
    parser.add_argument("--without-instance-head", action="store_true", help="model.instance_dim = 0")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--trained-only", action="store_true", help="skip the untrained column")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    if args.without_instance_head:
        overrides["model.instance_dim"] = 0
    main(args.scenes, overrides, args.trained_only)
