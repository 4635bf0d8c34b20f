"""Who a readout vector's nearest neighbours are: nearby in the image, and of the same class.

The diagnosis table of docs/RESULTS.md, *Changing what the network learns*. Label-scored (a
diagnosis, never a rule). For each scene the network of ``configs/default.yaml`` is trained
(and, for the untrained column, run for one epoch at the suite's ``UNTRAINED_LR``); the
readout vectors of the readout sample at smoothing sigma 0 and 2 are standardised and weighted
as the ``balanced`` scale does, and split into the feature block and the K - 1 score block.
For each sample pixel and each space (both blocks, features, scores) the script takes its 10
nearest neighbours and prints the share that lie within 2 px of it in the image (Chebyshev
distance) and the share of labelled pixels' neighbours with the pixel's own class.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/neighbours.py SCENE PROTOCOL SEED

SCENE is a bundled scene's name or a cube store with ground truth.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.neighbors import NearestNeighbors

from sscc_core.labelling.inference import Labeller
from sscc_core.model.readout import Readout, standardise
from sscc_core.training.readout_fit import LineArrays, lines_vectors, sample_masks
from sscc_core.training.selection import spectra_weights, standardiser
from trained_run import add_run_arguments, load_any_scene, train_run

NEIGHBOURS = 10
NEAR_PX = 2


def neighbour_shares(z: np.ndarray, yx: np.ndarray, classes: np.ndarray) -> tuple[float, float]:
    """(share of neighbours within ``NEAR_PX`` px, share of labelled pixels' neighbours of the
    same class) of (N, d) vectors at (N, 2) pixel positions with (N,) classes (0 = unlabelled)."""
    idx = NearestNeighbors(n_neighbors=NEIGHBOURS + 1).fit(z).kneighbors(z, return_distance=False)[:, 1:]
    near = np.abs(yx[idx] - yx[:, None, :]).max(-1) <= NEAR_PX
    labelled = classes > 0
    return float(near.mean()), float((classes[idx][labelled] == classes[labelled, None]).mean())


def main(spec: str, protocol: str, seed: int) -> None:
    scene = load_any_scene(spec)
    for variant in ("trained", "untrained"):
        run = train_run(scene, protocol, seed, untrained=variant == "untrained")
        model, pre, post, d = run.model, run.pre, run.cfg.postprocess, run.model.feature_dim
        mask = sample_masks([run.train_mask], post.readout_sample, seed)[0]
        yx, classes = np.argwhere(mask), np.asarray(scene.labels)[mask]
        for sigma in (0.0, 2.0):
            labeller = Labeller(model, pre, readout=Readout("kmeans", sigma, post.readout_spectra))
            vectors = lines_vectors(labeller, [LineArrays(scene.cube, scene.valid, run.train_mask)], [mask])
            weights = spectra_weights(vectors, d, pre.comp_std, "balanced", post.readout_spectra, scene.n_classes)
            z = standardise(vectors, standardiser(vectors, weights)).numpy()
            for block, values in (("both", z), ("features", z[:, :d]), ("scores", z[:, d:])):
                near, same = neighbour_shares(values, yx, classes)
                print(f"{spec} {protocol} seed {seed} {variant:9s} sigma {sigma:g} {block:8s} "
                      f"within {NEAR_PX} px {near:.3f} same class {same:.3f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    args = parser.parse_args()
    main(args.scene, args.protocol, args.seed)
