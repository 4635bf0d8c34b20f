"""The training batches of an epoch: a seeded shuffle buffer over the stream of training views.

Both trainers compose their batches here: the single-process reference trainer (the accuracy
suite) over views it draws in memory, and the Ray Train loop (``sscc train``) over the views Ray
Data streams to rank 0 in tile order. Given the same stream of rows and the same generator the
batches are the same, whatever chunks the rows arrive in, so the two trainers run the same
training (:mod:`sscc_core.training.reference`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

Views = tuple[Tensor, Tensor]


def shuffled_batches(chunks: Iterable[Views], batch_size: int, buffer_size: int,
                     generator: torch.Generator) -> Iterator[Views]:
    """Batches of ``batch_size`` view pairs drawn at random from a buffer of ``buffer_size``
    rows that the stream keeps full (``drop_last``: the last ``N mod batch_size`` rows are
    dropped).

    The buffer takes rows from the stream until it holds ``buffer_size`` (or the stream ends),
    then gives one batch: the rows at ``torch.randperm(len(buffer), generator)[:batch_size]``,
    in that order; the rows left keep their order. So every row is used at most once, an epoch
    of N rows gives ``N // batch_size`` batches, and the batches depend on the rows' order and
    the generator only, not on how the stream is cut into chunks.

    Args:
        chunks: ``(view_a, view_b)`` pairs, each ``(n, C, P, P)``, in stream order.
        batch_size: Pairs per batch.
        buffer_size: Rows held; at least ``batch_size`` (smaller values are raised to it).
        generator: The epoch's generator (consumed only here).

    Yields:
        ``(view_a, view_b)``, each ``(batch_size, C, P, P)``.
    """
    size = max(buffer_size, batch_size)
    held: list[Tensor] | None = None  # [view_a rows, view_b rows] in the buffer
    stream = iter(chunks)
    pending: list[Tensor] | None = None  # rows of the current chunk not yet taken
    exhausted = False
    while True:
        while not exhausted and (held is None or len(held[0]) < size):
            if pending is None or not len(pending[0]):
                chunk = next(stream, None)
                if chunk is None:
                    exhausted = True
                    break
                pending = list(chunk)
                continue
            take = size - (0 if held is None else len(held[0]))
            part = [p[:take] for p in pending]
            pending = [p[take:] for p in pending]
            held = part if held is None else [torch.cat([h, p]) for h, p in zip(held, part)]
        if held is None or len(held[0]) < batch_size:
            return
        picked = torch.randperm(len(held[0]), generator=generator)[:batch_size]
        keep = torch.ones(len(held[0]), dtype=torch.bool)
        keep[picked] = False
        yield held[0][picked], held[1][picked]
        held = [h[keep] for h in held]
