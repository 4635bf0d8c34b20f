"""A differentiable all-gather for data-parallel SSCC (``torch.distributed``; no Ray).

SSCC's objective depends on batch statistics (column standardisation, cross-correlation,
NT-Xent negatives) and so does BatchNorm: data-parallel training computes them over the global
batch by gathering across ranks. :func:`gather_rows` keeps autograd working through the
exchange, and its backward *sums* the gradients that every rank computed for the gathered rows,
so when every rank computes the same global quantity the gradient reaching a rank's inputs is
``world_size`` times the single-process one; DistributedDataParallel's mean over ranks divides
that factor back out (see :class:`sscc_core.model.loss.SSCCLoss`).

Outside an initialised process group (one process, Ray Train local mode) it is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Ranks in the default process group (1 when none is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gathered gradient over ranks and keeps this
    rank's rows (SimCLR's / lightly's ``GatherLayer``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate every rank's rows in rank order, with gradients.

    Args:
        x: (n, ...) on this rank; every rank must pass the same shape.

    Returns:
        (world_size * n, ...): rank 0's rows first; ``x`` itself without a process group.
    """
    return _GatherRows.apply(x) if world_size() > 1 else x
