"""The epoch's batches: a seeded shuffle buffer over the stream of views, the same batches
whatever chunks the stream arrives in."""

from __future__ import annotations

import pytest
import torch

from sscc_core.training.batches import shuffled_batches


def rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n view pairs whose values name their row: view_a row i is filled with i, view_b with -i."""
    a = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 2, 3, 3).clone()
    return a, -a


def reference(n: int, batch_size: int, buffer_size: int, seed: int) -> list[list[int]]:
    """Row by row: fill the buffer to its size, draw a batch by randperm, keep the rest in order."""
    gen = torch.Generator().manual_seed(seed)
    buffer: list[int] = []
    out, nxt = [], 0
    while True:
        while len(buffer) < buffer_size and nxt < n:
            buffer.append(nxt)
            nxt += 1
        if len(buffer) < batch_size:
            return out
        picked = torch.randperm(len(buffer), generator=gen)[:batch_size].tolist()
        out.append([buffer[i] for i in picked])
        buffer = [r for i, r in enumerate(buffer) if i not in set(picked)]


@pytest.mark.parametrize("cuts", [[1000], [1, 2, 997], [300, 300, 300, 100], [999, 1], [64] * 15 + [40]])
def test_batches_depend_on_the_rows_and_the_generator_not_on_the_chunks(cuts: list[int]) -> None:
    a, b = rows(1000)
    chunks, start = [], 0
    for n in cuts:
        chunks.append((a[start : start + n], b[start : start + n]))
        start += n
    got = list(shuffled_batches(chunks, 64, 256, torch.Generator().manual_seed(3)))
    expect = reference(1000, 64, 256, 3)
    assert len(got) == 1000 // 64 == len(expect)
    assert [ga[:, 0, 0, 0].long().tolist() for ga, _ in got] == expect
    assert all(torch.equal(gb, -ga) for ga, gb in got)  # the two views of a row stay paired
    used = [r for batch in expect for r in batch]
    assert len(set(used)) == len(used)  # no row twice


def test_a_buffer_smaller_than_a_batch_holds_one_batch_and_an_empty_stream_gives_nothing() -> None:
    a, b = rows(10)
    got = list(shuffled_batches([(a, b)], 4, 1, torch.Generator().manual_seed(0)))
    assert [g[0][:, 0, 0, 0].long().tolist() for g in got] == reference(10, 4, 4, 0)
    assert list(shuffled_batches([], 4, 8, torch.Generator())) == []
