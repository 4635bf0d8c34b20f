"""One run's network, trained as ``sscc reproduce`` trains it: shared by the experiment scripts.

Not part of the package: the scripts in this folder import it by its path (``python
docs/experiments/SCRIPT.py`` puts the folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sscc_core.accuracy.experiment import UNTRAINED_LR, Scene, load_scene, load_store_scene, scene_config
from sscc_core.config import SSCCConfig, load_config, replace
from sscc_core.model.network import SSCCNet
from sscc_core.model.preprocess import Preprocessor
from sscc_core.training.reference import scene_views, train_reference
from sscc_core.training.run import fit_scenes_preprocessor
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
