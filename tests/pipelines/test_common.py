"""The stages' shared Ray helpers (pipelines/common.py)."""

from __future__ import annotations

import errno
import time

import pytest
import ray

from pipelines.common import gather_tasks, output_failed, user_error


@ray.remote(num_cpus=0.25)
def line_task(i: int) -> int:
    """Task 0 fails at once with a full disk; the others finish a moment later."""
    if i == 0:
        raise OSError(errno.ENOSPC, "No space left on device")
    time.sleep(0.5)
    return i


def test_a_failed_task_lets_the_others_finish_then_raises(ray_session):
    """A failing line of a multi-line ingest raised at once: the other lines' outcomes were
    never collected (their stores' fate unknown; a failing one printed Ray's "Unhandled error"
    traceback at exit). Now the others run to their end and are reported, then the error."""
    finished = []
    with pytest.raises(Exception) as raised:
        gather_tasks([line_task.remote(i) for i in range(3)],
                     lambda i, result: finished.append((i, result)))
    assert sorted(finished) == [(1, 1), (2, 2)]
    error = user_error(raised.value)
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(output_failed("out", "ingest", error, "1 of 3 line stores are whole and kept")) == (
        "out: ingest failed (No space left on device, ENOSPC); 1 of 3 line stores are whole and "
        "kept")
