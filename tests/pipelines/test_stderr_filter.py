"""The stderr filter drops exactly Ray core's line per Ray Data map actor and copies everything
else through unchanged, including a progress bar's unfinished line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RAY_LINE = (
    "[2026-12-01 02:49:46,222 E 8629 8629] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(LabelReads))' and ID: '2e298366b3468d71664bf4a301000000' has "
    "constructor arguments in the object store and max_restarts > 0. If the arguments in the "
    "object store go out of scope or are lost, the actor restart will fail. See "
    "https://github.com/ray-project/ray/issues/53727 for more details.\n"
)


def run_filtered(body: str) -> str:
    """stderr of a child process that writes the pieces of the list ``body`` (Python source) to
    descriptor 2 inside :func:`pipelines.stderr_filter.dropping_lines`, then ``after`` outside
    it."""
    script = (
        "import os, sys\n"
        "from pipelines.stderr_filter import dropping_lines\n"
        "with dropping_lines():\n"
        f"    for piece in {body}:\n"
        "        os.write(2, piece.encode())\n"
        "    print('from python', file=sys.stderr)\n"
        "os.write(2, b'after\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60, check=True)
    return done.stderr.decode()  # bytes: text mode would turn the bars' \r into \n


def test_drops_the_ray_data_actor_line_and_keeps_the_rest():
    pieces = ["first line\n", RAY_LINE, "\rRunning 0: 0.00 row", "\rRunning 1: 1.00 row\n",
              RAY_LINE[:40], RAY_LINE[40:] + "a real error from core_worker.cc\n",
              "[2026-12-01 02:49:46,222 E 8629 8629] core_worker.cc:99: something else\n",
              "no newline at the end"]
    assert run_filtered(repr(pieces)) == (
        "first line\n\rRunning 0: 0.00 row\rRunning 1: 1.00 row\n"
        "a real error from core_worker.cc\n"
        "[2026-12-01 02:49:46,222 E 8629 8629] core_worker.cc:99: something else\n"
        "no newline at the endfrom python\nafter\n")
