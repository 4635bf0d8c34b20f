"""``sscc reprocess``: idempotent, scheduled labelling of a (growing) mosaic into versioned outputs.

Usage::

    sscc reprocess --checkpoint runs/train/mosaic/final --store mosaic.zarr --out-root labels/ \\
        [--tile-size 256] [--actors 2] [--confidence] [--mode auto|dense|patch] ...
    sscc reprocess --checkpoint runs/train/lines/final --store 'lines/fl*.zarr' --out-root labels/
    sscc reprocess --checkpoint ... --store lines.txt --out-root s3://bucket/labels/

With one cube store, labels go to ``LABELS_DIR/<model_version>.zarr`` (:mod:`sscc_core.versioning`)
with ``LABELS_DIR`` the ``--out-root``. With several (flight lines: stores, globs or manifests,
:mod:`sscc_core.io.lines`), each line ``L`` has its own ``LABELS_DIR = OUT_ROOT/L`` on its own
grid and CRS, and all lines are labelled in one predict job (:func:`pipelines.predict.label_lines`);
everything below holds per line:

- the same model version reopens its store and relabels only tiles that are new (became
  non-empty) or whose input window changed (fingerprint in the tile record differs), so a rerun
  on an unchanged mosaic labels nothing and the result always equals a from-scratch
  ``sscc predict`` of the current mosaic;
- a mosaic that grew at the bottom and/or right (same origin and pixel spacing) grows the store
  (:meth:`sscc_core.labelling.labelstore.LabelStore.grow`), keeping the tiles whose windows did not change;
  any other change of grid is refused with a clear error (label into a new ``--out-root``);
- a new model version writes a new store beside the old ones and never touches them;
- ``LABELS_DIR/current`` is switched (atomically) to the version only once its store is complete
  (with several lines: once every line's store is complete);
- then the version's run report is written to ``LABELS_DIR/<model_version>.report/index.html``
  (:mod:`sscc_core.labelling.report`), with the change from the version ``current`` pointed to before
  (``--no-report`` skips it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipelines import predict
from pipelines.common import run_stage
from pipelines.report import version_report
from sscc_core import storage
from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.io.lines import resolve_lines
from sscc_core.labelling.labelstore import open_label_store
from sscc_core.labelling.plan import line_outputs
from sscc_core.versioning import switch_current, versioned_store


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the reprocess stage."""
    p = argparse.ArgumentParser(
        prog="sscc reprocess",
        description="Label a (grown) cube store into LABELS_DIR/<model_version>.zarr, relabelling "
        "only new or changed tiles, then point LABELS_DIR/current at it.",
    )
    p.add_argument("--out-root", required=True,
                   help="labels directory holding one <model_version>.zarr per model and `current`; "
                   "with several lines one such directory per line, OUT_ROOT/<line>")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write LABELS_DIR/<model_version>.report (the HTML run report)")
    predict.add_labelling_args(p)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed command line; returns predict's summary
    (:func:`pipelines.predict.label_lines`), each entry of ``lines`` with its ``current``
    pointer, and with one line that pointer as ``current``.

    Raises:
        ValueError: Bad ``--store`` values (:func:`sscc_core.io.lines.resolve_lines`), as
            :func:`pipelines.predict.label_lines`, or a grid change that is not growth at the
            bottom/right.
        FileNotFoundError: Missing checkpoint.
    """
    for url in (args.checkpoint, args.out_root):
        storage.check_url(url)
    lines = resolve_lines(args.store)
    predict.check_gpus(args)
    version = load_checkpoint(args.checkpoint).model_version
    roots = line_outputs(args.out_root, lines, suffix="")
    outs = [versioned_store(root, version) for root in roots]
    growing = []
    for out, line in zip(outs, lines):  # every line's grid is checked before any store grows
        if storage.is_dir(out):
            store = open_label_store(out, model_version=version)
            if store.grows_to(line.cube):
                growing.append((store, line.cube))

    def grow() -> None:  # once every line's bands passed too: a refused line grows nothing
        for store, cube in growing:
            store.grow(cube)
            print(f"reprocess: {store.path} grown to the input grid {cube.sizes['y']} x "
                  f"{cube.sizes['x']}", flush=True)

    fields = {k: v for k, v in vars(args).items() if k not in ("out_root", "report")}
    shown = outs[0] if len(lines) == 1 else args.out_root
    summary = predict.label_lines(argparse.Namespace(**fields, out=str(shown), recheck=True),
                                  lines, outs, checked=grow)
    pointers = []
    for line, root, entry in zip(lines, roots, summary["lines"]):
        pointers.append(switch_current(root, version, checkpoint=storage.resolve(args.checkpoint),
                                       input_store=line.store, tiles=entry["tiles"]))
        print(f"reprocess: {storage.join(root, 'current')} -> {pointers[-1]['store']} "
              f"({entry['tiles_labelled']} tiles labelled, {entry['tiles_unchanged']} "
              "unchanged)", flush=True)
        if args.report:
            written = version_report(root, version, line.store, args.checkpoint)
            print(f"reprocess: report {written.index}", flush=True)
    entries = [{**entry, "current": p} for entry, p in zip(summary["lines"], pointers)]
    return {**summary, "lines": entries, **({"current": pointers[0]} if len(lines) == 1 else {})}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc reprocess``; returns the process exit code (2 on user errors)."""
    return run_stage("reprocess", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
