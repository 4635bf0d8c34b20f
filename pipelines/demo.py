"""``sscc demo``: the whole job end to end on the bundled Indian Pines (8-bit) scene, on local Ray.

ingest -> train (Ray Train) -> predict (Ray Data, out of core) -> evaluate -> export, each stage
called exactly as a user would call it, then a metrics table beside k-means on the same features.

    sscc demo --out runs/demo [--epochs 4] [--config configs/demo.yaml]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from pipelines import evaluate, export, ingest, predict, train
from pipelines.common import run_stage

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``sscc demo``."""
    p = argparse.ArgumentParser(prog="sscc demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="working directory (replaced)")
    p.add_argument("--benchmark", default="indian_pines", help="bundled scene (default indian_pines)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="run configuration YAML")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    return p


def stage(name: str, module, argv: list[str]) -> None:
    """Run one stage's ``main`` and stop the demo on failure."""
    print(f"\n=== sscc {name} {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = module.main(argv)
    if code != 0:
        raise RuntimeError(f"sscc {name} failed with exit code {code}")
    print(f"=== {name} done in {time.perf_counter() - start:.1f} s", flush=True)


def run(args: argparse.Namespace) -> None:
    """Run the five stages in ``args.out`` and print the metrics."""
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cube, labels, exported = out / "cube.zarr", out / "labels.zarr", out / "export"
    overrides = ["--set", f"train.epochs={args.epochs}"] if args.epochs else []
    stage("ingest", ingest, ["--benchmark", args.benchmark, "--out", str(cube), "--chunk", "64"])
    stage("train", train, ["--store", str(cube), "--run-name", "demo", "--storage-path", str(out / "train"),
                           "--config", args.config, "--num-workers", str(args.num_workers),
                           "--cpus-per-worker", "1", "--threads", "2", *overrides,
                           "--log-file", str(out / "train.log.jsonl")])
    checkpoint = out / "train" / "demo" / "final"
    stage("predict", predict, ["--checkpoint", str(checkpoint), "--store", str(cube), "--out", str(labels),
                               "--confidence"])
    metrics = out / "metrics.json"
    stage("evaluate", evaluate, ["--labels", str(labels), "--store", str(cube), "--out", str(metrics)])
    stage("export", export, ["--labels", str(labels), "--store", str(cube), "--out", str(exported),
                             "--metrics", str(metrics)])
    summary = json.loads(metrics.read_text())
    m = summary.get("metrics", summary)
    print("\nSSCC on", args.benchmark, "(labelled pixels, K =", m.get("n_clusters"), ")")
    print(" ".join(f"{k}={m[k]:.3f}" for k in ("acc", "nmi", "ari", "kappa", "purity") if k in m))
    print("outputs:", *sorted(str(p) for p in exported.iterdir()), sep="\n  ")


def main(argv: list[str] | None = None) -> int:
    """Run ``sscc demo``."""
    return run_stage("demo", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
