"""Labelling rate on 1 Ray worker node vs 2 with the same total CPUs, measured in one run.

Usage::

    python -m benchmarks.nodes [--size-gb 0.4] [--cpus 2] [--actors 2] [--tile-size 256]
        [--rounds 2] [--work runs/bench] [--out docs/bench]

Two Ray clusters are started one after the other on this machine with `ray start`
(``tests.helpers.ray_cluster``: own temp dir and ports, token auth): a head with no CPUs (it runs
the job driver only) and one worker node of ``--cpus`` CPUs, then the same head layout with two
worker nodes of ``--cpus / 2`` CPUs each, alternating 1, 2, 2, 1 (``--rounds`` of each; the
ratio is of the means). Each labels the same synthetic mosaic
(:func:`benchmarks.measure.ensure_mosaic`) with ``sscc predict`` submitted by ``ray job submit``
(``--actors`` actors, CPUs per actor sized by predict from the cluster's CPUs, the same in both
layouts) into a fresh label store; the rates are predict's own summary (end to end, and steady:
per busy actor x actors). The mosaic's files are read once before the first run, so both runs
read from the page cache. The nodes share this machine: the figure is Ray's cost of spreading
one job over nodes (separate object stores, cross-node scheduling), not more hardware or a
network. Results go to ``OUT/nodes.json`` (:func:`benchmarks.measure.save`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.measure import add_mosaic_args, bench_checkpoint, bench_mosaic, save
from pipelines.common import run_stage
from tests.helpers import ray_cluster


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the node benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.nodes",
                                description=__doc__.split("\n\n")[0])
    add_mosaic_args(p, size_gb=0.4)
    p.add_argument("--cpus", type=int, default=2, help="total CPUs of the worker nodes (even)")
    p.add_argument("--actors", type=int, default=2, help="labelling actors (default 2)")
    p.add_argument("--tile-size", type=int, default=256, help="labelling tile side, pixels")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs of each layout, in the order 1, 2, 2, 1 nodes per two rounds, so a "
                   "steady drift of the machine's load cancels in the means (default 2)")
    return p


def warm_page_cache(store: Path) -> int:
    """Read every file of ``store`` once (bytes read), so no run pays the first disk read."""
    return sum(len(f.read_bytes()) for f in store.rglob("*") if f.is_file())


def summary_of(log: Path) -> dict[str, Any]:
    """The ``summary`` event of a predict JSON-lines log."""
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return next(e for e in reversed(events) if e.get("event") == "summary")


def label_on_nodes(worker_cpus: tuple[int, ...], checkpoint: Path, store: Path, work: Path,
                   args: argparse.Namespace) -> dict[str, Any]:
    """Start a cluster of a CPU-less head and ``worker_cpus`` worker nodes, label ``store`` with
    a submitted ``sscc predict`` and return its summary, the command and where the actors ran."""
    n = len(worker_cpus)
    out, log = work / f"nodes_{n}.zarr", work / f"nodes_{n}.log.jsonl"
    shutil.rmtree(out, ignore_errors=True)
    log.unlink(missing_ok=True)
    command = ["python", "-m", "pipelines.predict", "--checkpoint", str(checkpoint.resolve()),
               "--store", str(store.resolve()), "--out", str(out.resolve()),
               "--actors", str(args.actors), "--tile-size", str(args.tile_size),
               "--log-file", str(log.resolve())]
    with ray_cluster(head_cpus=0, worker_cpus=worker_cpus) as cluster:
        done = cluster.submit(*command)
        if done.returncode:
            raise RuntimeError(f"the labelling job on {n} node(s) failed:\n"
                               f"{(done.stdout + done.stderr)[-3000:]}")
        actors = [a for a in cluster.state("actors") if a["class_name"].startswith("MapWorker(")]
    summary = summary_of(log)
    return {"worker_nodes": n, "cpus_per_node": list(worker_cpus),
            "actor_nodes": len({a["node_id"] for a in actors}), "actors": len(actors),
            "pixels": summary["pixels_labelled"], "seconds": summary["seconds"],
            "pixels_per_s": summary["pixels_per_s"],
            "steady_pixels_per_s": summary["pixels_per_actor_s"] * args.actors,
            "command": "ray job submit --working-dir . -- " + " ".join(command)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both layouts in one run and save ``OUT/nodes.json``."""
    if args.cpus < 2 or args.cpus % 2:
        raise ValueError(f"--cpus must be even and >= 2, got {args.cpus}")
    work, out, store = bench_mosaic(args)
    checkpoint = bench_checkpoint(store, work, args.tile_size, args.seed)
    cached = warm_page_cache(store)
    one, two = (args.cpus,), (args.cpus // 2, args.cpus // 2)
    order = [one, two, two, one] * (args.rounds // 2) + [one, two] * (args.rounds % 2)
    runs = [label_on_nodes(layout, checkpoint, store, work, args) for layout in order]
    for r in runs:
        print(f"nodes: {r['worker_nodes']} worker node(s) x {r['cpus_per_node'][0]} CPUs: "
              f"{r['pixels_per_s']:,.0f} pixels/s end to end, {r['steady_pixels_per_s']:,.0f} "
              f"steady ({r['pixels']:,} pixels in {r['seconds']:.1f} s; actors on "
              f"{r['actor_nodes']} node(s))", flush=True)

    def mean(nodes: int, key: str) -> float:
        return statistics.fmean(r[key] for r in runs if r["worker_nodes"] == nodes)

    result = {"runs": runs, "store": str(store), "store_bytes_read_to_cache": cached,
              "order": [len(layout) for layout in order],
              "ratio_end_to_end": mean(2, "pixels_per_s") / mean(1, "pixels_per_s"),
              "ratio_steady": mean(2, "steady_pixels_per_s") / mean(1, "steady_pixels_per_s"),
              "colocated": True}
    print(f"nodes: 2 nodes / 1 node (means over {args.rounds} round(s)): "
          f"{result['ratio_end_to_end']:.2f} end to end, {result['ratio_steady']:.2f} steady",
          flush=True)
    save(out, "nodes", result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m benchmarks.nodes``."""
    return run_stage("nodes", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
