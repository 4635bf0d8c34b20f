"""Neighbourhood anchor: training that keeps the untrained network's neighbourhoods.

Label-scored development script (docs/RESULTS.md, *Keeping the untrained network's
neighbourhoods*); not in the package. On the field benches the same readout on the untrained
network scores above the trained one (Jasper Ridge 0.922 against 0.692 in the suite), and the
readout's graph follows the backbone features block (*The two blocks of the readout vector*), so
training changes which pixels are each other's neighbours in a way the graph then follows. This
adds one term to the objective that keeps the batch's neighbourhood structure of the network it
started from (relational distillation, Park et al. 2019, in its softmax form as in SEED, Fang
et al. 2021): for the 2n backbone feature rows of a step (both views; each column standardised
over the rows), the row-softmax of the cosine similarities at temperature ``TEMPERATURE``
(diagonal excluded) of a frozen copy of the initial network is the target of the trained
network's, by KL divergence averaged over the rows, at weight ``WEIGHT``. The frozen copy runs in
train mode (each view's batch statistics, as the trained network sees it) without gradients. Both
numbers were set before any run scored. Everything else is ``configs/default.yaml``.

The script replaces :func:`sscc_core.training.trainer.train_step` (which both trainers step
with) and :class:`sscc_core.model.network.TwinForward`'s forward (to keep the step's features)
in this process only, then runs :func:`cross_view.run`, so its output has the same rows as
``cross_view.py``'s and the two compare run by run; with ``--candidates`` it runs
``candidates.py`` instead (scene ACC of every candidate, the held-out test's driver).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/neighbourhood_anchor.py SCENE PROTOCOL SEED OUT.json
    OMP_NUM_THREADS=1 .venv/bin/python docs/experiments/neighbourhood_anchor.py --candidates SCENE PROTOCOL SEED OUT.json
    .venv/bin/python docs/experiments/neighbourhood_anchor.py --summary OUT1.json OUT2.json ...
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import candidates
import cross_view
import sscc_core.training.trainer as trainer
from sscc_core.model.loss import SSCCLoss, SSCCLossParts, standardise_columns
from sscc_core.model.network import TwinForward
from trained_run import run_or_summarise

WEIGHT = 1.0
TEMPERATURE = 0.1

_shipped_step = trainer.train_step
_shipped_forward = TwinForward.forward
_teachers: dict[int, nn.Module] = {}


def relation_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) of the row-softmaxed cosine similarities, averaged over rows.

    Args:
        student: (M, D) features with gradients.
        teacher: (M, D) features of the frozen network (no gradients).
        temperature: Softmax temperature of the similarities.

    Returns:
        Scalar loss.
    """
    def log_relations(f: Tensor) -> Tensor:
        z = F.normalize(standardise_columns(f), dim=1)
        sim = z @ z.T / temperature
        sim = sim.masked_fill(torch.eye(len(f), dtype=torch.bool, device=f.device), float("-inf"))
        return F.log_softmax(sim, dim=1).masked_fill(torch.eye(len(f), dtype=torch.bool, device=f.device), 0.0)

    target = log_relations(teacher)
    return (target.exp() * (target - log_relations(student))).sum(dim=1).mean()


def forward_keeping_features(self: TwinForward, xa: Tensor, xb: Tensor) -> tuple[Tensor, ...]:
    """:class:`TwinForward`'s forward, keeping both views' (n, F) features on ``self``."""
    fa, fb = self.net.features(xa), self.net.features(xb)
    self.kept = torch.cat([fa, fb])
    outputs = (self.net.head(fa), self.net.head(fb))
    if self.net.instance is None:
        return outputs
    return (*outputs, self.net.instance(fa), self.net.instance(fb))


def anchored_step(twin: nn.Module, optimizer: torch.optim.Optimizer, xa: Tensor, xb: Tensor, loss: SSCCLoss,
                  *, epoch: int, step: int) -> SSCCLossParts:
    """:func:`sscc_core.training.trainer.train_step` with ``WEIGHT * relation_kl`` added to the
    total; the frozen copy is taken at the network's first step (its initial weights)."""
    net = twin.net
    if id(net) not in _teachers:
        _teachers[id(net)] = copy.deepcopy(net).train().requires_grad_(False)
    teacher = _teachers[id(net)]

    def anchored_loss(*outputs: Tensor) -> SSCCLossParts:
        parts = loss(*outputs)
        with torch.no_grad():
            target = torch.cat([teacher.features(xa), teacher.features(xb)])
        anchor = relation_kl(twin.kept, target, TEMPERATURE)
        if step == 0:
            print(f"epoch {epoch + 1}: anchor term {float(anchor):.4f}, objective {float(parts.total):.4f}",
                  file=sys.stderr, flush=True)
        return replace(parts, total=parts.total + WEIGHT * anchor)

    return _shipped_step(twin, optimizer, xa, xb, anchored_loss, epoch=epoch, step=step)


def activate() -> None:
    """Train with the anchor in this process: replaces the two functions named above."""
    TwinForward.forward = forward_keeping_features
    trainer.train_step = anchored_step


if __name__ == "__main__":
    activate()
    if "--candidates" in sys.argv:
        sys.argv.remove("--candidates")
        sys.argv[0] = candidates.__file__
        candidates.cli()
    else:
        run_or_summarise(__doc__.splitlines()[0], cross_view.run, cross_view.summary)
