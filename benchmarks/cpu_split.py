"""Where the CPU goes while ``sscc predict`` labels a mosaic: CPU seconds per process role.

Usage::

    python -m benchmarks.cpu_split [--size-gb 1.6] [--actors 2] [--tile-size 256]
        [--work runs/bench] [--out docs/bench]

Labels the bench mosaic (:func:`benchmarks.measure.ensure_mosaic`) with the bench model (trained
as ``make bench`` does when missing) in a ``sscc predict`` subprocess on a local Ray it starts,
and samples every process of the machine with psutil every ``--interval`` seconds. Each process's
CPU time (user + system) over the run, minus what it had used before the run started, is added
to its role (:func:`role_of`): the label actors, the read tasks (Ray task workers, idle or
running), the driver, and Ray's own services. Processes that end between two samples lose their
last interval. The result, ``OUT/cpu_split.json``, shows how much of the machine's CPU the tile
work gets; the rest is the fixed cost of the driver and of Ray on this machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from typing import Any

import psutil

from benchmarks.measure import add_mosaic_args, bench_checkpoint, bench_mosaic, save
from pipelines.common import run_stage

ROLES = (  # (role, substring of the process's command line), first match wins
    ("label actors", "LabelReads"),
    ("read tasks", "read_segment"),
    ("read tasks", "ray::IDLE"),
    ("driver (sscc predict)", "pipelines.predict"),
    ("Ray dashboard", "dashboard/dashboard.py"),
    ("Ray services", "ray::"),
    ("Ray services", "raylet"),
    ("Ray services", "gcs_server"),
    ("Ray services", "ray/_private"),
    ("Ray services", "ray/dashboard"),
    ("Ray services", "ray/autoscaler"),
)


def role_of(cmdline: str) -> str:
    """The role of a process from its command line (Ray workers show their task or actor in
    it), ``"other"`` when it is not part of the run."""
    return next((role for role, part in ROLES if part in cmdline), "other")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the CPU split benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_split",
                                description=__doc__.split("\n\n")[0])
    add_mosaic_args(p, size_gb=1.6)  # the mosaic of make bench's throughput figures
    p.add_argument("--actors", type=int, default=2, help="labelling actors (default 2)")
    p.add_argument("--tile-size", type=int, default=256, help="labelling tile side, pixels")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    return p


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """``pid -> (command line, user + system CPU seconds)`` of every readable process."""
    out = {}
    for proc in psutil.process_iter():
        try:
            times = proc.cpu_times()
            out[proc.pid] = (" ".join(proc.cmdline()), times.user + times.system)
        except psutil.Error:
            continue
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Label the mosaic while sampling, then save and print the CPU seconds per role."""
    work, out, store = bench_mosaic(args)
    checkpoint = bench_checkpoint(store, work, args.tile_size, args.seed)
    labels = work / "cpu_split_labels.zarr"
    shutil.rmtree(labels, ignore_errors=True)
    command = [sys.executable, "-m", "pipelines.predict", "--checkpoint", str(checkpoint),
               "--store", str(store), "--out", str(labels), "--actors", str(args.actors),
               "--tile-size", str(args.tile_size), "--log-file", str(work / "cpu_split.log.jsonl")]
    before = {pid: cpu for pid, (_, cpu) in cpu_seconds().items()}
    last: dict[int, tuple[str, float]] = {}
    start = time.perf_counter()
    proc = psutil.Popen(command, stdout=sys.stdout, stderr=sys.stderr)
    while proc.poll() is None:
        last.update(cpu_seconds())
        time.sleep(args.interval)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"sscc predict failed (exit {proc.returncode}): {' '.join(command)}")
    roles: Counter[str] = Counter()
    for pid, (cmdline, cpu) in last.items():
        roles[role_of(cmdline)] += cpu - before.get(pid, 0.0)
    cores = psutil.cpu_count()
    result = {"command": " ".join(command[1:]), "wall_seconds": wall, "cores": cores,
              "cpu_seconds": {k: round(v, 2) for k, v in roles.most_common()},
              "tile_work_share": (roles["label actors"] + roles["read tasks"]) / (wall * cores)}
    for role, cpu in roles.most_common():
        print(f"cpu split: {cpu:7.1f} CPU s  {role}", flush=True)
    print(f"cpu split: {wall:.1f} s wall x {cores} cores; tile work (actors + read tasks) used "
          f"{result['tile_work_share']:.0%} of the machine", flush=True)
    save(out, "cpu_split", result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m benchmarks.cpu_split``."""
    return run_stage("cpu_split", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
