"""``sscc evaluate``: score a finished label store against the cube's ground truth.

Usage::

    sscc evaluate --labels runs/ip_labels.zarr --store runs/ip.zarr [--out metrics.json]

Only pixels with a ground-truth class (``labels`` > 0 in the cube store) are scored; the label map
and the ground truth are streamed window by window, so only the labelled pixels are held in
memory. Labelled pixels that got no cluster (nodata in the label map) are not scored and are
counted as ``n_gt_without_label``. Refuses a label store that is not marked complete or whose
chunks do not hold what its tile records say (``sscc verify``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipelines.common import (
    add_logging_args, failing_output, label_provenance, log_event, run_stage, setup_logging,
)
from sscc_core import storage
from sscc_core.labelling.export import write_metrics_json
from sscc_core.io.ground_truth import require_ground_truth
from sscc_core.io.store import open_cube
from sscc_core.labelling.labelstore import open_label_store
from sscc_core.metrics import evaluate
from sscc_core.io.tiling import tile_grid
from sscc_core.versioning import resolve_labels

WINDOW = 1024
TABLE = {"acc": "ACC", "nmi": "NMI", "ari": "ARI", "kappa": "kappa", "purity": "purity"}


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the evaluate stage."""
    p = argparse.ArgumentParser(
        prog="sscc evaluate",
        description="Clustering metrics (ACC, NMI, ARI, kappa, purity) of a label store against "
        "the ground truth of its cube store.",
    )
    p.add_argument("--labels", required=True, help="label store written by `sscc predict`, or the --out-root of `sscc reprocess` (its current version)")
    p.add_argument("--store", required=True, help="cube store holding ground-truth `labels`")
    p.add_argument("--out", default=None, help="write the metrics and provenance as JSON here")
    add_logging_args(p, beside="OUT (stderr without --out)")
    return p


def labelled_pairs(
    truth: xr.DataArray, labels: xr.DataArray, nodata: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Ground truth and cluster id of every labelled pixel that has a cluster, streamed.

    Args:
        truth: (H, W) int classes, 0 = unlabelled.
        labels: (H, W) cluster ids, ``nodata`` where no label was produced.
        nodata: The label map's nodata value.

    Returns:
        ``(y_true, y_pred, n_missing)``: (N,) int64 arrays over the scored pixels, and the count of
        labelled pixels whose label is nodata.

    Raises:
        ValueError: The two maps have different shapes.
    """
    if truth.shape != labels.shape:
        raise ValueError(f"ground truth {truth.shape} and label map {labels.shape} differ in shape")
    trues, preds, missing = [], [], 0
    for t in tile_grid(*labels.shape, WINDOW):
        window = dict(y=slice(t.y0, t.y1), x=slice(t.x0, t.x1))
        gt = np.asarray(truth[window].values, dtype=np.int64)
        lab = np.asarray(labels[window].values, dtype=np.int64)
        scored = (gt > 0) & (lab != nodata)
        missing += int(((gt > 0) & (lab == nodata)).sum())
        trues.append(gt[scored])
        preds.append(lab[scored])
    return np.concatenate(trues), np.concatenate(preds), missing


def format_table(metrics: dict[str, Any]) -> str:
    """Two-line table of the headline metrics."""
    head = "".join(f"{name:>9}" for name in TABLE.values())
    row = "".join(f"{metrics[key]:>9.4f}" for key in TABLE)
    return f"{head}\n{row}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed command line; returns the metrics.

    Raises:
        ValueError: Incomplete label store, no ground truth, or mismatched grids.
        FileNotFoundError: A store is missing.
    """
    log = setup_logging("evaluate", args.log_file, output=args.out)
    for url in (args.labels, args.store, *([args.out] if args.out else [])):
        storage.check_url(url)
    store = open_label_store(resolve_labels(args.labels))
    store.require_complete()
    store.require_intact()
    cube = open_cube(args.store)
    y_true, y_pred, missing = labelled_pairs(require_ground_truth(cube, args.store), store.labels(),
                                             store.nodata)
    metrics = evaluate(y_true, y_pred)
    metrics["n_gt_without_label"] = missing
    print(f"evaluate: {args.labels} vs {args.store}: {metrics['n_labelled']} labelled pixels, "
          f"{metrics['n_classes']} classes, {metrics['n_clusters']} clusters"
          + (f", {missing} labelled pixels without a cluster" if missing else ""))
    print(format_table(metrics), flush=True)
    log_event(log, "metrics", labels=args.labels, store=args.store,
              **{k: metrics[k] for k in ("n_labelled", *TABLE)})
    if args.out:
        def left() -> str:
            return "the previous file is kept" if storage.exists(args.out) else "nothing was written"

        with failing_output(args.out, "evaluate", left):
            write_metrics_json(metrics, args.out, label_provenance(store, args.store))
        print(f"evaluate: wrote {args.out}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc evaluate``; returns the process exit code (2 on user errors)."""
    return run_stage("evaluate", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
