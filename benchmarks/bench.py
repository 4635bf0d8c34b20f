"""``python -m benchmarks.bench``: the scale and performance suite; measures
(:mod:`benchmarks.measure`), then writes raw JSON, PNG plots and a Markdown report
(:mod:`benchmarks.render`).

Usage::

    python -m benchmarks.bench --out docs/bench --doc docs/BENCHMARKS.md                # `make bench`
    python -m benchmarks.bench --out docs/bench --doc docs/BENCHMARKS.md --scale-gb 26  # `make bench-scale`

Synthetic mosaics (:mod:`sscc_core.io.synthetic`, real Salinas-A spectra) are generated once into
``--work`` and reused while their parameters match.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks.measure import SECTIONS, measure
from benchmarks.render import render
from pipelines.common import run_stage


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the benchmark suite."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/bench", help="directory of raw JSON results and PNG plots")
    p.add_argument("--doc", default="docs/BENCHMARKS.md", help="Markdown report to (re)write")
    p.add_argument("--work", default="runs/bench", help="scratch directory: mosaics, checkpoints, "
                   "label stores (reused between runs)")
    p.add_argument("--sizes-gb", default="0.1,0.4,1.6",
                   help="mosaic sizes (decimal GB of reflectance) for the memory runs; the largest "
                   "also gives the throughput figures (default 0.1,0.4,1.6)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--actors", type=int, default=2, help="labelling actors = limit processes")
    p.add_argument("--tile-size", type=int, default=256, help="labelling tile side, pixels")
    p.add_argument("--limit-tiles", type=int, default=16,
                   help="tiles sampled (seeded) for the limit measurements (default 16)")
    p.add_argument("--train-samples", type=int, default=8192,
                   help="pixels sampled from the smallest mosaic to train the bench model")
    p.add_argument("--train-epochs", type=int, default=8, help="epochs of the bench model")
    p.add_argument("--train-side", type=int, default=96,
                   help="side of the small mosaic of the training-throughput runs (pixels)")
    p.add_argument("--train-bench-epochs", type=int, default=3,
                   help="epochs of each training-throughput run (the last one is reported)")
    p.add_argument("--scale-gb", type=float, default=None,
                   help="run only the larger-than-RAM labelling of a mosaic of this size")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: re-render the plots and the report from OUT/*.json")
    p.add_argument("--use-gpu", action="store_true",
                   help="GPU for Ray Train workers, the model-limit forward pass and the label "
                   "actors of the labelling pipeline (sscc predict --use-gpu)")
    p.add_argument("--seed", type=int, default=0, help="mosaic and sampling seed")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected sections, then re-render the plots and the report from all results."""
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    sizes = sorted(float(s) for s in args.sizes_gb.split(","))
    if args.actors < 1 or args.limit_tiles < 1 or not sizes or sizes[0] <= 0:
        raise ValueError("--actors and --limit-tiles must be >= 1 and --sizes-gb positive")
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        measure(args, sections, sizes, out, work)
    return render(args, out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.bench``."""
    return run_stage("bench", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
