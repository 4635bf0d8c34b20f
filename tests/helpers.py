"""Helpers shared by test modules (imported as ``from helpers import ...``)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import zarr

from sscc_core.io.store import cube_identity, open_cube
from sscc_core.labelling.labelstore import LabelStore, LabelStoreSpec, create_label_store


def relabelled_store(cube_path: Path, out: Path, lut: np.ndarray, model_version: str = "perfect00001",
                     n_clusters: int = 8, complete: bool = True, tile_size: int = 32) -> LabelStore:
    """A label store whose clusters are ``lut[ground truth]`` (a relabelled ground truth: with a
    one-to-one ``lut``, a perfect clustering), written tile by tile as the pipeline does; with
    ``complete=False`` the last tile is left unlabelled and the store is not marked complete."""
    cube = open_cube(cube_path)
    store = create_label_store(out, cube, LabelStoreSpec(
        model_version=model_version, n_clusters=n_clusters, tile_size=tile_size,
        config={"model": {"n_clusters": n_clusters}}, input_store=str(cube_path),
        input_identity=cube_identity(cube)))
    gt = cube["labels"].values
    valid = zarr.open_group(cube_path, mode="r")["valid"]
    tiles = store.missing_tiles(valid)
    for tile in tiles if complete else tiles[:-1]:
        store.write_tile(tile, lut[gt[tile.y0 : tile.y1, tile.x0 : tile.x1]], None, seconds=0.0)
    if complete:
        store.mark_complete(valid)
    return store


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, poll: float,
              waiting_for: str) -> None:
    """Wait until ``ready()`` (polled every ``poll`` seconds) while ``proc`` still runs, then
    SIGKILL its process tree (also when the wait fails); fails naming ``waiting_for`` after
    ``timeout`` seconds, or when the process ends before it could be killed."""
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the labelling job ended before it could be killed"
            assert time.time() < deadline, f"{waiting_for} in time"
            time.sleep(poll)
    finally:
        kill_process_tree(proc.pid)


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (a stage's driver, the local Ray it started and
    its actors: all started by the test) and wait for them to go."""
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in family:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
