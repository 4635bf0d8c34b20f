"""Contrastive Clustering's instance head on top of ``configs/default.yaml``, for the held-out test
of docs/RESULTS.md, *An instance head beside the cluster head, tested on the held-out scenes*.

It is not in the package. This script patches ``SSCCNet``, ``TwinForward`` and ``SSCCLoss`` when it
is imported. The patch adds a projection ``Linear(64, 128) -> ReLU -> Linear(128, 128)`` of the
backbone features, and adds SimCLR's NT-Xent on the two views' projections (temperature 0.5,
weight 1) to the SSCC loss. It runs in one process only: the patched loss does not gather
across ranks.

Usage (from the repository root)::

    # ACC on cube stores with ground truth (sscc synth), seeds 0 1 2, protocol all
    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/instance_head.py heldout OUT.json STORE...
    # label-free: the participation ratio of feature_rank.py, with the instance head
    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/instance_head.py rank SCENE...
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from sscc_core.model import loss as loss_module
from sscc_core.model import network

_plain_init = network.SSCCNet.__init__


def _init(self: network.SSCCNet, cfg, in_channels: int, patch_size: int) -> None:
    _plain_init(self, cfg, in_channels, patch_size)
    d = self.backbone.out_channels
    self.instance = nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 128))


def _twin_forward(self: network.TwinForward, xa: Tensor, xb: Tensor) -> tuple[Tensor, ...]:
    """(N, C, P, P) x 2 -> cluster probabilities (N, K) x 2 and instance projections (N, 128) x 2."""
    fa, fb = self.net.features(xa), self.net.features(xb)
    return self.net.head(fa), self.net.head(fb), self.net.instance(fa), self.net.instance(fb)


def _loss_forward(self: loss_module.SSCCLoss, ya: Tensor, yb: Tensor, za: Tensor, zb: Tensor):
    parts = loss_module.sscc_loss(ya, yb, self.cfg)
    return dataclasses.replace(parts, total=parts.total + loss_module.nt_xent(za, zb, 0.5))


network.SSCCNet.__init__ = _init
network.TwinForward.forward = _twin_forward
loss_module.SSCCLoss.forward = _loss_forward


def heldout(out: str, stores: list[str]) -> None:
    from sscc_core.accuracy.experiment import load_store_scene, run_one
    from sscc_core.config import load_config

    cfg, rows = load_config("configs/default.yaml"), []
    for store in stores:
        scene = load_store_scene(store)
        for seed in (0, 1, 2):
            result = run_one(scene, "sscc", "all", seed, cfg)
            rows.append({"store": store, "seed": seed, "acc": result.metrics["acc"],
                         "cpu_seconds": result.cpu_seconds, "choice": (result.selection or {}).get("choice")})
            print(json.dumps(rows[-1]), flush=True)
    Path(out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "heldout":
        heldout(sys.argv[2], sys.argv[3:])
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        import feature_rank

        feature_rank.main(sys.argv[2:])
