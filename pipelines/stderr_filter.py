"""Drop one known, harmless line of Ray's C++ core from this process's standard error.

Ray 2.60's core worker logs an error-level line on the driver for every actor that Ray Data's
``ActorPoolMapOperator`` starts (``core_worker.cc: Actor with class name: 'MapWorker(...)' ... has
constructor arguments in the object store and max_restarts > 0``): Ray Data itself passes its
context and transform as object references to each map actor. It is upstream's open issue
ray-project/ray#57733 ("warning with minimal Ray Data use"); nothing a caller of
``map_batches`` passes avoids it, and the line stays in Ray's ``python-core-driver-*.log``.

The C++ logger writes to file descriptor 2 directly, so ``sys.stderr`` or ``logging`` cannot
filter it: :func:`dropping_lines` swaps descriptor 2 for a pipe while a block runs and copies
everything else through unchanged and at once (progress bars' partial lines included).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

RAY_DATA_ACTOR_ARGS = re.compile(
    rb"core_worker\.cc:\d+: Actor with class name: '[^']*' and ID: '[0-9a-f]+' has constructor "
    rb"arguments in the object store and max_restarts > 0")
"""Ray core's line for each Ray Data map actor (ray-project/ray#57733)."""

LINE_START = b"["
"""How Ray's C++ log lines begin (``[2026-12-01 02:49:46,222 E 8629 8629] core_worker.cc:...``):
an unfinished piece that begins so is held until its line ends, any other is copied at once."""


def _copy(source: int, target: int, pattern: re.Pattern[bytes]) -> None:
    """Copy bytes from ``source`` to ``target`` until end of file, dropping whole lines that
    match ``pattern``."""
    held = b""
    with os.fdopen(source, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, held = (held + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not pattern.search(line))
            if held and not held.startswith(LINE_START):
                out, held = out + held, b""
            with contextlib.suppress(OSError):
                os.write(target, out)
    if held and not pattern.search(held):
        with contextlib.suppress(OSError):
            os.write(target, held)


@contextlib.contextmanager
def dropping_lines(pattern: re.Pattern[bytes] = RAY_DATA_ACTOR_ARGS) -> Iterator[None]:
    """While the block runs, drop the lines of file descriptor 2 that match ``pattern``.

    Args:
        pattern: Searched in each line (bytes, without its newline).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    source, sink = os.pipe()
    os.dup2(sink, 2)
    os.close(sink)
    copier = threading.Thread(target=_copy, args=(source, saved, pattern), daemon=True,
                              name="stderr-filter")
    copier.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the copier reads to its end
        copier.join(timeout=5)
        if not copier.is_alive():  # a child process still holding the pipe keeps it going
            os.close(saved)
