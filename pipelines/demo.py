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
from sscc_core.model.baselines import fit_kmeans_baseline, label_kmeans_baseline
from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.io.store import open_cube
from sscc_core.metrics import evaluate as evaluate_labels
from sscc_core.model.preprocess import Preprocessor

COLUMNS = ("acc", "nmi", "ari", "kappa", "purity")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``sscc demo``."""
    p = argparse.ArgumentParser(prog="sscc demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="working directory (replaced)")
    p.add_argument("--benchmark", default="indian_pines", help="bundled scene (default indian_pines)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="run configuration YAML")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="config override passed to sscc train, e.g. --set model.n_clusters=3 (repeatable)")
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
    overrides = [arg for item in args.overrides for arg in ("--set", item)]
    overrides += ["--set", f"train.epochs={args.epochs}"] if args.epochs else []
    stage("ingest", ingest, ["--benchmark", args.benchmark, "--out", str(cube), "--chunk", "64"])
    stage("train", train, ["--store", str(cube), "--run-name", "demo", "--storage-path", str(out / "train"),
                           "--config", args.config, "--num-workers", str(args.num_workers),
                           "--cpus-per-worker", "1", "--threads", "2", *overrides,
                           "--log-file", str(out / "train.log.jsonl")])
    checkpoint = out / "train" / "demo" / "final"
    stage("predict", predict, ["--checkpoint", str(checkpoint), "--store", str(cube), "--out", str(labels),
                               "--confidence", "--log-file", str(out / "predict.log.jsonl")])
    metrics = out / "metrics.json"
    stage("evaluate", evaluate, ["--labels", str(labels), "--store", str(cube), "--out", str(metrics),
                                 "--log-file", str(out / "evaluate.log.jsonl")])
    stage("export", export, ["--labels", str(labels), "--store", str(cube), "--out", str(exported),
                             "--metrics", str(metrics), "--run", str(out / "train" / "demo"),
                             "--log-file", str(out / "export.log.jsonl")])
    summary = json.loads(metrics.read_text())
    rows = {"SSCC (this run)": summary.get("metrics", summary), "k-means": kmeans_metrics(cube, checkpoint)}
    print(f"\n{args.benchmark}: labelled pixels, K = {load_checkpoint(checkpoint).config.model.n_clusters}")
    print(f"{'method':<18}" + "".join(f"{k:>9}" for k in COLUMNS))
    for name, m in rows.items():
        print(f"{name:<18}" + "".join(f"{m[k]:>9.4f}" for k in COLUMNS))
    print("outputs:", *sorted(str(p) for p in exported.iterdir()), sep="\n  ")


def kmeans_metrics(cube_path: Path, checkpoint: Path) -> dict:
    """k-means (MiniBatchKMeans, same K, seed 0) on the checkpoint's PCA features of the labelled
    pixels, scored like SSCC: the baseline beside every demo run."""
    ckpt = load_checkpoint(checkpoint)
    pre = Preprocessor.from_state(ckpt.preprocess_state)
    cube = open_cube(cube_path)
    truth, valid, raw = cube["labels"].values, cube["valid"].values, cube["reflectance"].values
    mask = valid & (truth > 0)
    model = fit_kmeans_baseline(raw, valid, mask, pre, ckpt.config.model.n_clusters, seed=0)
    return evaluate_labels(truth[mask], label_kmeans_baseline(model, raw, valid, pre)[mask])


def main(argv: list[str] | None = None) -> int:
    """Run ``sscc demo``."""
    return run_stage("demo", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
