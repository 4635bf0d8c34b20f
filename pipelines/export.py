"""``sscc export``: user products of a finished label store.

Usage::

    sscc export --labels runs/ip_labels.zarr --store runs/ip.zarr --out runs/ip_products \\
        [--metrics runs/ip_metrics.json]

Writes (:func:`sscc_core.labelling.export.export_all`) ``labels.tif`` (Cloud-Optimized GeoTIFF with a colour
table and provenance tags), ``quicklook.png``, ``spectra.csv`` / ``spectra_std.csv`` /
``spectra.png`` (per-cluster mean spectra of the cube), ``cluster_class_counts.csv`` when the
cube has ground truth, and ``metrics.json`` when ``--metrics`` (an ``sscc evaluate --out`` file)
is given, and the run report ``report/index.html`` (:mod:`sscc_core.labelling.report`; training curves
with ``--run``; ``--no-report`` skips it). Provenance comes from the label store's attributes.
Refuses an incomplete label store or one whose chunks do not hold what its tile records say
(``sscc verify``),
a ``--store`` that is not the input the labels were made from (its
:func:`sscc_core.io.store.cube_identity` differs from the one the label store recorded), and an
``--out`` folder that is not empty unless ``--overwrite`` (which replaces a previous export only).
The products are written into a temporary sibling folder that is renamed to ``--out`` only when
every product is written: the folder holds one whole export or none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import xarray as xr

from pipelines.common import (
    add_logging_args, label_provenance, log_event, output_failed, run_stage, setup_logging,
)
from sscc_core import storage
from sscc_core.labelling.export import export_all
from sscc_core.io.store import atomic_output, cube_identity, open_cube
from sscc_core.labelling.labelstore import LabelStore, open_label_store
from sscc_core.labelling.report import find_training, write_report
from sscc_core.versioning import resolve_labels


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the export stage."""
    p = argparse.ArgumentParser(
        prog="sscc export",
        description="Export a label store as COG, PNG quicklook, cluster spectra and metrics JSON.",
    )
    p.add_argument("--labels", required=True, help="label store written by `sscc predict`, or the --out-root of `sscc reprocess` (its current version)")
    p.add_argument("--store", required=True, help="the cube store the labels were computed from")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--metrics", default=None, help="metrics JSON written by `sscc evaluate --out`")
    p.add_argument("--run", default=None, help="training run directory or checkpoint of the model, "
                   "for the report's training curves and label-free choices")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write the HTML run report (report/index.html)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous export in --out (default: refuse a non-empty --out)")
    add_logging_args(p, beside="OUT")
    return p


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The ``metrics`` mapping of an ``sscc evaluate --out`` file.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not JSON, or no ``metrics`` mapping in it.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: metrics file not found")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict):
        raise ValueError(f"{p}: expected an `sscc evaluate` file with a 'metrics' mapping")
    return doc["metrics"]


def check_input(store: LabelStore, cube: xr.Dataset, store_path: str) -> None:
    """Refuse a cube that is not the input the labels were made from.

    Label stores written before identities were recorded are not checked.

    Raises:
        ValueError: The cube's identity differs from the label store's ``input_identity``.
    """
    recorded, identity = store.attrs.get("input_identity"), cube_identity(cube)
    if recorded and recorded != identity:
        raise ValueError(
            f"{store_path}: not the cube the labels {store.path} were made from (they record "
            f"{store.attrs.get('input_store')}, identity {recorded}; this store's identity is "
            f"{identity}); pass that store as --store"
        )


def is_export(path: str | Path) -> bool:
    """Whether ``path`` (a local folder or a URL) holds a previous export (its ``labels.tif``)."""
    return storage.exists(storage.join(path, "labels.tif"))


def run(args: argparse.Namespace) -> dict[str, Path]:
    """Execute a parsed command line; returns ``{product: path}``.

    Raises:
        ValueError: Incomplete label store, a cube that is not the labels' input, grids that
            differ, or a malformed metrics file.
        FileNotFoundError: A store or the metrics file is missing.
        FileExistsError: ``--out`` is not empty (without ``--overwrite``), or is not an export.
        ValueError: Writing failed (full disk, file-size limit, ...): names what is left.
    """
    log = setup_logging("export", args.log_file, output=args.out)
    store = open_label_store(resolve_labels(args.labels))
    store.require_complete()
    store.require_intact()
    metrics = read_metrics(args.metrics) if args.metrics else None
    cube = open_cube(args.store)
    labels = store.labels()
    if labels.shape != (cube.sizes["y"], cube.sizes["x"]):
        raise ValueError(f"{args.labels}: label grid {labels.shape} != cube grid "
                         f"{(cube.sizes['y'], cube.sizes['x'])} of {args.store}")
    check_input(store, cube, args.store)
    training, missing = find_training(args.run, args.labels) if args.report else (None, "")
    for url in (args.labels, args.store, args.out):
        storage.check_url(url)
    out = args.out if storage.is_url(args.out) else Path(args.out)
    if isinstance(out, Path) and out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder is no output to protect
    try:
        with atomic_output(out, args.overwrite, is_export, "an sscc export") as tmp:
            written = export_all(
                labels, tmp, provenance=label_provenance(store, args.store), cube=cube,
                ground_truth=cube["labels"] if "labels" in cube else None, metrics=metrics,
                k=store.n_clusters, title=f"{cube.attrs.get('name') or Path(args.store).stem}: "
                f"model {store.model_version}",
            )
            if args.report:
                written["report"] = write_report(
                    tmp / "report", store, cube, cube_path=args.store, training=training,
                    training_missing=missing).index
    except OSError as exc:
        if exc.errno is None:
            raise
        left = "the previous export is kept" if storage.is_dir(out) else "nothing was written"
        raise output_failed(out, "export", exc, left) from exc
    paths = {name: storage.join(out, path.relative_to(tmp).as_posix())
             if storage.is_url(out) else out / path.relative_to(tmp)
             for name, path in written.items()}
    for name, path in paths.items():
        print(f"export: {name:<16} {path}")
    log_event(log, "exported", labels=args.labels, out=args.out,
              products={k: str(v) for k, v in paths.items()})
    return paths


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc export``; returns the process exit code (2 on user errors)."""
    return run_stage("export", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
