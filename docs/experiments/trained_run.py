"""One run's network, trained as ``sscc reproduce`` trains it: shared by the experiment scripts.

Not part of the package: the scripts in this folder import it by its path (``python
docs/experiments/SCRIPT.py`` puts the folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sscc_core.accuracy.experiment import UNTRAINED_LR, Scene, load_scene, load_store_scene, scene_config
from sscc_core.config import SSCCConfig, load_config, replace
from sscc_core.labelling.inference import Labeller
from sscc_core.model.network import SSCCNet
from sscc_core.model.preprocess import Preprocessor
from sscc_core.model.readout import Readout
from sscc_core.training.reference import scene_views, train_reference
from sscc_core.training.readout_fit import LineArrays, lines_vectors, sample_masks
from sscc_core.training.run import fit_scenes_preprocessor
from sscc_core.training.selection import Candidate, fit_candidate
from sscc_core.training.trainer import training_mask


@dataclass(frozen=True)
class TrainedRun:
    """A scene, its run configuration, the fitted pre-processing, the network (eval mode) and
    the (H, W) bool training mask of the run's protocol."""

    scene: Scene
    cfg: SSCCConfig
    pre: Preprocessor
    model: SSCCNet
    train_mask: np.ndarray


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional ``scene protocol seed`` of one run."""
    parser.add_argument("scene", help="bundled scene name or cube store with ground truth")
    parser.add_argument("protocol", choices=["labelled", "all"])
    parser.add_argument("seed", type=int)


def sample_vectors(trained: TrainedRun, sample_seed: int | None = None
                   ) -> tuple[np.ndarray, list[tuple[float, torch.Tensor]]]:
    """The labeller's vectors of the run's readout sample (the shipped seeded sample of
    ``readout_sample`` training pixels; drawn with ``sample_seed`` instead of the run's seed
    when given, so two runs' networks read the same pixels) at each sigma of ``select_sigmas``.

    Returns:
        ``(mask, [(sigma, vectors), ...])``: (H, W) bool pixels of the sample, and per sigma
        their (M, V) ``[features; PCA scores]`` vectors in row-major order.
    """
    scene, post = trained.scene, trained.cfg.postprocess
    seed = trained.cfg.train.seed if sample_seed is None else sample_seed
    masks = sample_masks([trained.train_mask], post.readout_sample, seed)
    lines = [LineArrays(scene.cube, scene.valid, trained.train_mask)]
    return masks[0], [(float(sigma), lines_vectors(Labeller(trained.model, trained.pre, readout=Readout(
        "kmeans", sigma, post.readout_spectra)), lines, masks)) for sigma in sorted(post.select_sigmas)]


def readout_samples(trained: TrainedRun) -> tuple[np.ndarray, list[tuple[float, np.ndarray]]]:
    """:func:`sample_vectors` standardised and weighted by the first scale of ``select_scales``,
    as :func:`sscc_core.training.selection.fit_candidate` does.

    Returns:
        ``(classes, [(sigma, z), ...])``: (M,) ground truth of the sample's pixels (0 =
        unlabelled), and per sigma the (M, V) standardised vectors.
    """
    post, seed = trained.cfg.postprocess, trained.cfg.train.seed
    mask, per_sigma = sample_vectors(trained)
    return trained.scene.labels[mask], [
        (sigma, fit_candidate(vectors, Candidate("kmeans", sigma, post.select_scales[0]), trained.model.feature_dim,
                              trained.pre.comp_std, trained.scene.n_classes, post, seed)[2])
        for sigma, vectors in per_sigma]


def run_or_summarise(description: str, run: Callable[[str, str, int, str], None],
                     summary: Callable[[list[str]], None]) -> None:
    """The command line of a per-run script: ``SCENE PROTOCOL SEED OUT.json`` calls ``run(scene,
    protocol, seed, out)``; ``--summary OUT.json ...`` calls ``summary(paths)`` instead."""
    parser = argparse.ArgumentParser(description=description,
                                     usage="%(prog)s SCENE PROTOCOL SEED OUT.json | --summary OUT.json ...")
    parser.add_argument("--summary", nargs="+", metavar="OUT.json", help="summarise these runs' files instead")
    known, _ = parser.parse_known_args()
    if known.summary:
        summary(known.summary)
        return
    add_run_arguments(parser)
    parser.add_argument("out", help="JSON file to write")
    args = parser.parse_args()
    run(args.scene, args.protocol, args.seed, args.out)


def load_any_scene(spec: str) -> Scene:
    """A bundled scene by name, or a cube store with ground truth by path."""
    return load_store_scene(spec) if Path(spec).exists() else load_scene(spec)


def train_run(scene: Scene, protocol: str, seed: int, overrides: dict[str, Any] | None = None,
              untrained: bool = False) -> TrainedRun:
    """Train ``configs/default.yaml`` (with ``overrides``) for one run, as the suite does; with
    ``untrained``, one epoch at the suite's ``UNTRAINED_LR`` instead (its untrained network)."""
    torch.set_num_threads(1)
    cfg = scene_config(load_config("configs/default.yaml", overrides or None), scene, protocol, seed)
    if untrained:
        cfg = replace(cfg, train=replace(cfg.train, epochs=1, lr=UNTRAINED_LR))
    torch.manual_seed(seed)
    pre = fit_scenes_preprocessor([(scene.cube, scene.valid)], cfg).preprocessor
    views = scene_views(scene.cube, scene.valid, scene.labels, pre, cfg)
    model = train_reference(views, pre.n_components, cfg).model.eval()
    return TrainedRun(scene, cfg, pre, model, training_mask(scene.valid, scene.labels, protocol))
