"""The SSCC objective on the cluster-assignment probabilities of two views.

Given the softmax outputs ``Ya`` and ``Yb`` (N x K) of the two augmented views of one batch:

* each column is standardised over the batch, ``Z = (Y - mean) / sqrt(var + eps)`` with the
  biased variance (``unbiased=False``) and ``eps = 1e-5``, i.e. exactly
  ``nn.BatchNorm1d(K, affine=False)`` in training mode (batch statistics, never running ones);
* ``C = Za^T Zb / N`` is the K x K cross-correlation of the cluster columns;
* ``L_cc = sum_k (1 - C_kk)^2 + lambda * sum_{k != l} C_kl^2``: the diagonal pulls each cluster's
  assignments of the two views together, the off-diagonal pushes different clusters apart;
* ``L_nt`` is SimCLR's NT-Xent on the 2N rows of ``[Ya; Yb]``: cosine similarity divided by the
  temperature, the other view of the same sample as the positive, the remaining 2N - 2 rows as
  negatives, cross-entropy averaged over the 2N rows;
* with an instance head (``model.instance_dim > 0``, Contrastive Clustering), ``L_inst`` is the
  same NT-Xent on the 2N rows of the two views' instance projections ``[Ha; Hb]``;
* total ``= L_cc + ntxent_weight * L_nt + instance_weight * L_inst`` (``L_inst = 0`` without
  an instance head).

Data-parallel training uses :class:`SSCCLoss` with ``gather_distributed=True``: each rank's
outputs are gathered with gradients (:func:`sscc_core.model.distributed.gather_rows`), so every term is
computed over the global batch and N above is the global batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sscc_core.config import LossConfig
from sscc_core.model.distributed import gather_rows

BN_EPS = 1e-5  # nn.BatchNorm1d's default eps
LOSS_PARTS = ("total", "cc", "diagonal", "off_diagonal", "ntxent", "instance")  # the scalar parts, logged


@dataclass(frozen=True)
class SSCCLossParts:
    """The SSCC loss and its parts, each a 0-d tensor (``total`` carries the graph).

    Attributes:
        total: ``cc + ntxent_weight * ntxent + instance_weight * instance``; call
            ``backward()`` on this.
        cc: ``diagonal + offdiag_weight * off_diagonal``.
        diagonal: ``sum_k (1 - C_kk)^2``.
        off_diagonal: ``sum_{k != l} C_kl^2`` (unweighted).
        ntxent: NT-Xent on the rows (unweighted).
        instance: NT-Xent on the instance projections' rows (unweighted; 0 without them).
        probs: (2N, K) detached cluster probabilities the loss saw, view a's rows then view
            b's (the global batch when gathered), for label-free health statistics.
    """

    total: Tensor
    cc: Tensor
    diagonal: Tensor
    off_diagonal: Tensor
    ntxent: Tensor
    instance: Tensor
    probs: Tensor

    def as_floats(self) -> dict[str, float]:
        """The parts as plain floats, for logging."""
        return {name: float(getattr(self, name).detach()) for name in LOSS_PARTS}


def _check_pair(ya: Tensor, yb: Tensor) -> None:
    if ya.ndim != 2 or ya.shape != yb.shape:
        raise ValueError(
            f"SSCC loss: expected two (N, K) tensors of the same shape, got {tuple(ya.shape)} "
            f"and {tuple(yb.shape)}"
        )
    if ya.shape[0] < 2:
        raise ValueError(f"SSCC loss: need a batch of at least 2 rows, got N={ya.shape[0]}")


def standardise_columns(y: Tensor, eps: float = BN_EPS) -> Tensor:
    """Batch-norm each column without affine: ``(y - mean) / sqrt(biased var + eps)``, (N, K)."""
    mean = y.mean(dim=0, keepdim=True)
    var = y.var(dim=0, unbiased=False, keepdim=True)
    return (y - mean) / torch.sqrt(var + eps)


def cross_correlation(ya: Tensor, yb: Tensor) -> Tensor:
    """K x K cross-correlation ``C = Za^T Zb / N`` of the column-standardised (N, K) inputs."""
    _check_pair(ya, yb)
    return standardise_columns(ya).T @ standardise_columns(yb) / ya.shape[0]


def nt_xent(ya: Tensor, yb: Tensor, temperature: float) -> Tensor:
    """SimCLR NT-Xent over the 2N rows of ``[ya; yb]`` (cosine similarity), mean over rows.

    Args:
        ya: View-a rows (N, K).
        yb: View-b rows (N, K); row i is the positive of ``ya`` row i.
        temperature: Softmax temperature (> 0).

    Returns:
        0-d tensor.
    """
    _check_pair(ya, yb)
    if temperature <= 0:
        raise ValueError(f"LossConfig.temperature: must be > 0, got {temperature}")
    n = ya.shape[0]
    z = F.normalize(torch.cat([ya, yb], dim=0), dim=1)
    sim = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=sim.device)
    positives = torch.cat([idx + n, idx])
    return F.cross_entropy(sim, positives)


def sscc_loss(ya: Tensor, yb: Tensor, cfg: LossConfig,
              ha: Tensor | None = None, hb: Tensor | None = None) -> SSCCLossParts:
    """The SSCC objective of two views' cluster probabilities (and instance projections).

    Args:
        ya: Softmax outputs of view a, (N, K), N >= 2.
        yb: Softmax outputs of view b, (N, K).
        cfg: ``offdiag_weight`` (lambda), ``ntxent_weight``, ``temperature`` and
            ``instance_weight``.
        ha: Instance projections of view a, (N, E), or ``None`` (no instance head).
        hb: Instance projections of view b, (N, E), given with ``ha``.

    Returns:
        :class:`SSCCLossParts`.

    Raises:
        ValueError: Shapes differ, are not 2-D, or N < 2; or only one view's instance
            projections are given.
    """
    if (ha is None) != (hb is None):
        raise ValueError("SSCC loss: give the instance projections of both views or of neither")
    c = cross_correlation(ya, yb)
    diag = torch.diagonal(c)
    diagonal = ((1.0 - diag) ** 2).sum()
    off_diagonal = (c - torch.diag_embed(diag)).pow(2).sum()
    cc = diagonal + cfg.offdiag_weight * off_diagonal
    ntxent = nt_xent(ya, yb, cfg.temperature)
    total = cc + cfg.ntxent_weight * ntxent
    instance = torch.zeros((), dtype=total.dtype, device=total.device)
    if ha is not None:
        instance = nt_xent(ha, hb, cfg.temperature)
        total = total + cfg.instance_weight * instance
    return SSCCLossParts(
        total=total,
        cc=cc,
        diagonal=diagonal,
        off_diagonal=off_diagonal,
        ntxent=ntxent,
        instance=instance,
        probs=torch.cat([ya, yb]).detach(),
    )


class SSCCLoss(nn.Module):
    """The SSCC objective as a module, optionally over the global batch of all ranks.

    With ``gather_distributed=True`` and an initialised process group, the (n, K) outputs of
    every rank (and its instance projections, when given) are all-gathered with gradients (rank
    order), so the column standardisation, the cross-correlation and both NT-Xent terms see the
    global batch of ``world_size * n`` rows and every rank computes the same loss value, which
    equals the single-process loss on the concatenated batch. Gradient scale: the gather's
    backward sums the ``world_size`` identical ranks' gradients (each rank's rows receive
    ``world_size * dL/dy``) and DistributedDataParallel averages parameter gradients over the
    ranks, so the applied gradient is exactly ``dL/dθ`` of the single-process run; no further
    scaling is needed (``tests/sscc_core/model/test_distributed.py`` checks it). Without a
    process group the module is :func:`sscc_loss`.

    Args:
        cfg: Loss weights and temperature.
        gather_distributed: Gather the rows of all ranks before computing the loss.
    """

    def __init__(self, cfg: LossConfig, gather_distributed: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.gather_distributed = gather_distributed

    def forward(self, ya: Tensor, yb: Tensor, ha: Tensor | None = None,
                hb: Tensor | None = None) -> SSCCLossParts:
        """(n, K) x 2 cluster probabilities of this rank, and optionally its (n, E) x 2
        instance projections -> :class:`SSCCLossParts`."""
        if self.gather_distributed:
            ya, yb = gather_rows(ya), gather_rows(yb)
            if ha is not None and hb is not None:
                ha, hb = gather_rows(ha), gather_rows(hb)
        return sscc_loss(ya, yb, self.cfg, ha, hb)
