"""Differentiable collectives for data-parallel SSCC (``torch.distributed``; no Ray).

SSCC's objective depends on batch statistics (column standardisation, cross-correlation,
NT-Xent negatives) and so does BatchNorm: data-parallel training computes them over the global
batch by gathering across ranks. Both collectives here keep autograd working through the
exchange, and both backward passes *sum* the gradients that every rank computed for the shared
result, so when every rank computes the same global quantity the gradient reaching a rank's
inputs is ``world_size`` times the single-process one; DistributedDataParallel's mean over ranks
divides that factor back out (see :class:`sscc_core.loss.SSCCLoss`).

Outside an initialised process group (one process, Ray Train local mode) every function is the
identity on its input.
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


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward sums the gradient over ranks (the adjoint of a sum)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate every rank's rows in rank order, with gradients.

    Args:
        x: (n, ...) on this rank; every rank must pass the same shape.

    Returns:
        (world_size * n, ...): rank 0's rows first; ``x`` itself without a process group.
    """
    return _GatherRows.apply(x) if world_size() > 1 else x


def all_reduce_sum(x: Tensor) -> Tensor:
    """Element-wise sum of ``x`` over ranks, with gradients (``x`` itself without a group)."""
    return _AllReduceSum.apply(x) if world_size() > 1 else x
