"""The ``sscc`` console script: one subcommand per pipeline stage.

``sscc <stage> ARGS`` is exactly ``python -m pipelines.<stage> ARGS``, so the same command line
works locally and under ``ray job submit -- python -m pipelines.<stage> ...``.
"""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "ingest": "pipelines.ingest",
    "train": "pipelines.train",
    "predict": "pipelines.predict",
    "evaluate": "pipelines.evaluate",
    "export": "pipelines.export",
    "report": "pipelines.report",
    "verify": "pipelines.verify",
    "demo": "pipelines.demo",
    "reproduce": "pipelines.reproduce",
    "reprocess": "pipelines.reprocess",
    "synth": "pipelines.synth",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its stage module's ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sscc {" + ",".join(STAGES) + "} [-h] ...")
        print("Spectral-Spatial Contrastive Clustering of hyperspectral images on Ray.")
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"sscc: unknown subcommand {stage!r}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[stage])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
