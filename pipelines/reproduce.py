"""``sscc reproduce``: the accuracy protocol on a benchmark scene, one setting over several seeds.

    sscc reproduce --dataset indian_pines --method sscc --protocol labelled \\
        --config configs/indian_pines.yaml --seeds 0 1 2
    sscc reproduce --dataset salinas_a --method kmeans_pca --protocol all --seeds 0 1 2
    python -m pipelines.reproduce ... --set train.epochs=5 --json runs/ip.json
    sscc reproduce --store runs/my_scene.zarr --method sscc --protocol all --seeds 0 1 2

``--store`` runs on one's own labelled scene instead of a bundled one: a cube store ingested with
its ground truth (``sscc ingest INPUT --labels GT --out CUBE``), K = its class count; with
``--suite``, the whole suite runs on one or more such stores instead of the bundled scenes.

Runs in this process (no Ray): :func:`sscc_core.accuracy.experiment.run_one` per seed, with
``configs/default.yaml`` unless ``--config`` says otherwise and each method's settings in the suite
(:func:`sscc_core.accuracy.suite.method_overrides`; ``--set`` overrides them), so any cell of the
suite's tables reruns with its ``--dataset``, ``--protocol``, ``--method`` and ``--seeds``. Prints one line
per seed, then a Markdown table row of mean ± std (ACC, NMI, ARI, kappa) with the mean CPU and
wall seconds per run; ``--json`` also writes every per-seed row and the summary.

``--suite`` runs the whole accuracy suite instead (:mod:`sscc_core.accuracy.suite`: every bundled scene x
both protocols x the seeds, SSCC with ``configs/default.yaml`` unless ``--config`` says
otherwise, its ablations and the three baselines), ``--jobs`` runs at a time, per-seed JSON under
``--out``, and regenerates the tables of ``--doc`` (``docs/RESULTS.md``) once every run succeeded:

    sscc reproduce --suite            # = make accuracy
    sscc reproduce --suite --store runs/mine.zarr --out runs/mine-suite   # on one's own scenes

The suite's tables are also written to ``OUT/tables.md``. With ``--store`` no document is
regenerated unless ``--doc`` names one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from pipelines.common import run_stage
from sscc_core import storage
from pipelines.options import DEFAULT_CONFIG, add_config_args, load_cli_config, parse_overrides
from sscc_core.config import MAX_SEED, load_config, to_dict
from sscc_core.accuracy.experiment import (
    METHODS,
    Scene,
    PROTOCOLS,
    format_summary,
    load_scene,
    load_store_scene,
    run_one,
    scene_config,
    summarise,
)
from sscc_core.accuracy import suite

DEFAULT_DOC = "docs/RESULTS.md"
TABLE_HEADER = ("| dataset | method | protocol | ACC | NMI | ARI | kappa | CPU s/run | wall s/run |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the reproduce stage."""
    p = argparse.ArgumentParser(
        prog="sscc reproduce",
        description="Run the SSCC accuracy protocol (or a k-means baseline) on a benchmark "
        "scene over several seeds and report mean ± std of ACC, NMI, ARI and kappa.",
    )
    p.add_argument("--suite", action="store_true",
                   help="run the whole accuracy suite (every scene, protocol, method) and "
                        "regenerate the tables of --doc")
    p.add_argument("--out", default="runs/accuracy", help="--suite: per-seed JSON directory")
    p.add_argument("--jobs", type=int, default=2, help="--suite: runs at a time (default 2)")
    p.add_argument("--doc", default=None,
                   help="--suite: document to regenerate (default docs/RESULTS.md; none with "
                        "--store)")
    p.add_argument("--dataset", default=None,
                   help="benchmark scene: indian_pines, salinas_a (salinasA), samson, jasper_ridge")
    p.add_argument("--store", nargs="+", default=None, metavar="CUBE",
                   help="instead of --dataset: a cube store with ground truth (sscc ingest "
                        "INPUT --labels GT); with --suite, one or more, run instead of the "
                        "bundled scenes")
    p.add_argument("--method", choices=METHODS, default="sscc",
                   help="sscc, kmeans (recipe features), kmeans_pca (PCA scores, not whitened) or "
                        "spectral_pca (spectral clustering of the smoothed recipe features; "
                        "postprocess.smooth_sigma/spectral_neighbors/readout_sample apply)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="labelled",
                   help="labelled: train on labelled pixels (authors); all: on every valid pixel")
    add_config_args(p, DEFAULT_CONFIG)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--data-dir", default=None, help="directory of the benchmark .mat files")
    p.add_argument("--json", default=None, help="write per-seed rows and the summary here")
    p.add_argument("--verbose", action="store_true", help="print one line per SSCC epoch")
    p.add_argument("--device", default="cpu",
                   help="where the SSCC network trains and runs: cpu (default), cuda or cuda:N "
                        "(single runs; e.g. configs/paper.yaml on a GPU)")
    return p


def _run_suite(args: argparse.Namespace, command: str) -> None:
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.store and args.dataset:
        raise ValueError("--suite runs the bundled scenes, or the --store stores; --dataset does "
                         "not apply")
    cfg = load_cli_config(args)
    doc = args.doc or (None if args.store else DEFAULT_DOC)
    if doc is not None:
        if not Path(doc).is_file():
            raise FileNotFoundError(f"--doc {doc}: no such file")
        suite.generated_block(doc)
        check_output("--doc", doc, Path(doc).parent)  # replaced by a rename there
    check_output("--out", args.out, Path(args.out))
    start = time.perf_counter()

    def progress(done: int, total: int, run: suite.Run, row: dict) -> None:
        print(f"[{done}/{total}] {run.scene} {run.protocol} {run.method} seed {run.seed}: "
              f"ACC {row['acc']:.3f} clusters {row['n_clusters_used']} CPU {row['cpu_seconds']:.0f} s",
              flush=True)

    rows = suite.run_suite(cfg, args.out, args.seeds, args.jobs, args.data_dir, progress, args.store)
    seconds = time.perf_counter() - start
    sscc_cpu = sum(r["cpu_seconds"] for r in rows
                   if r["method"].startswith("sscc") and not r.get("reused_from"))
    text = suite.render(rows, seconds, sscc_cpu, command)
    tables = Path(args.out) / "tables.md"
    storage.write_bytes(tables, (text + "\n").encode())
    if doc is not None:
        suite.update_document(doc, text)
    print(text)
    print(f"suite: {len(rows)} rows in {seconds / 60:.1f} min; tables in {tables}"
          + (f"; {doc} regenerated" if doc is not None else ""))


def check_k_override(overrides: list[str], k: int, scene: Scene) -> None:
    """Refuse ``--set model.n_clusters`` other than the scene's class count: every run here sets
    K to it (:func:`sscc_core.accuracy.experiment.scene_config`), so the override would be ignored.

    Raises:
        ValueError: The override differs from the scene's class count.
    """
    if any(o.split("=", 1)[0].strip() == "model.n_clusters" for o in overrides) and k != scene.n_classes:
        raise ValueError(f"--set model.n_clusters={k}: sscc reproduce clusters {scene.name} into "
                         f"its K = {scene.n_classes} classes; drop the override (sscc train "
                         f"takes any K)")


def torch_device(name: str) -> torch.device:
    """The torch device ``--device`` names, checked against what this machine has.

    Raises:
        ValueError: Not ``cpu``, ``cuda`` or ``cuda:N``, or no such CUDA device here.
    """
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"--device {name}: expected cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"--device {name}: torch sees {count} CUDA device(s) on this machine; "
                             f"use --device cpu")
    return device


def check_output(option: str, value: str, directory: Path) -> None:
    """Refuse, before any run, an output the runs' results could not be written to.

    Raises:
        ValueError: ``directory`` (where ``option``'s files go) cannot be written.
    """
    try:
        storage.check_writable(directory)
    except OSError as exc:
        raise ValueError(f"{option} {value}: cannot write in {exc.filename} ({exc.strerror})") from exc


def _run(args: argparse.Namespace) -> None:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    command = "sscc reproduce " + " ".join(args.argv)
    device = torch_device(args.device)
    bad = [s for s in args.seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"--seeds: a seed is an integer in [0, {MAX_SEED}], got {bad[0]}")
    if args.suite:
        if device.type != "cpu":
            raise ValueError(f"--device {args.device}: the suite runs on the CPU (its tables report "
                             f"CPU seconds); use --device with single runs")
        _run_suite(args, command)
        return
    if (args.dataset is None) == (args.store is None):
        raise ValueError("give --dataset NAME or --store CUBE (exactly one of them), or --suite")
    if args.doc is not None:
        raise ValueError("--doc is regenerated by --suite only; a single setting writes --json")
    if args.store is not None and len(args.store) > 1:
        raise ValueError(f"--store: a single setting runs on one store, got {len(args.store)} "
                         f"(--suite runs several)")
    if args.json and storage.is_url(args.json):
        storage.check_url(args.json)
    elif args.json:
        check_output("--json", args.json, Path(args.json).parent)
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    # the method's settings in the suite, under the command line's own overrides: a suite cell
    # reruns with the same --dataset, --protocol, --method and --seeds
    cfg = load_config(args.config, {**suite.method_overrides(args.method), **parse_overrides(args.overrides)})
    scene = load_scene(args.dataset, args.data_dir) if args.store is None else load_store_scene(args.store[0])
    check_k_override(args.overrides, cfg.model.n_clusters, scene)
    print(f"{scene.name}: {scene.cube.shape[0]} bands x {scene.cube.shape[1]} x "
          f"{scene.cube.shape[2]}, {int((scene.labels > 0).sum())} labelled pixels, "
          f"{scene.n_classes} classes; method {args.method}, protocol {args.protocol}", flush=True)
    results = []
    for seed in args.seeds:
        r = run_one(scene, args.method, args.protocol, seed, cfg, verbose=args.verbose, device=device)
        results.append(r)
        m = r.metrics
        print(f"seed {seed}: ACC {m['acc']:.4f} NMI {m['nmi']:.4f} ARI {m['ari']:.4f} "
              f"kappa {m['kappa']:.4f} purity {m['purity']:.4f} clusters {m['n_clusters']} "
              f"CPU {r.cpu_seconds:.0f} s wall {r.wall_seconds:.0f} s", flush=True)
    summary = summarise(results)
    print(TABLE_HEADER)
    print(format_summary(summary))
    if args.json:
        doc = {"command": command,
               "config": to_dict(scene_config(cfg, scene, args.protocol, args.seeds[0])), "runs": [r.row() for r in results], "summary": summary}
        storage.write_bytes(args.json, json.dumps(doc, indent=2).encode())


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc reproduce`` / ``python -m pipelines.reproduce``."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def run(args: argparse.Namespace) -> None:
        args.argv = argv
        _run(args)

    return run_stage("reproduce", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
