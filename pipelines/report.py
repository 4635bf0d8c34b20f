"""``sscc report``: a static report of a label store that a person opens in a browser.

Usage::

    sscc report --labels runs/ip_labels.zarr --store runs/ip.zarr --out runs/ip_report \\
        [--run runs/train/ip] [--previous runs/old_labels.zarr] [--overwrite]

Writes ``OUT/index.html`` with its assets (:func:`sscc_core.labelling.report.write_report`): the label map
as a zoomable tile pyramid with a legend (colour, pixels, area when georeferenced), the cluster
mean ± std spectra, the training curves and provenance of the run (``--run``: the training run
directory or its checkpoint; found by itself for the ``--out-root`` of ``sscc reprocess``),
the matched confusion matrix and metrics when the cube has ground truth, and with ``--previous``
a change map and the pixels moving between Hungarian-matched clusters. The folder opens from
disk (no server, no network). A missing training run or previous version leaves its section out
with a note; a cube on another grid, a ``--run`` or ``--previous`` that does not exist, or a
``--run`` of another model is a one-line error. The report is written into a temporary sibling
folder renamed to ``--out`` when whole.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.common import (
    add_logging_args, failing_output, log_event, run_stage, setup_logging,
)
from pipelines.export import check_input
from sscc_core import storage
from sscc_core.io.store import atomic_output, open_cube
from sscc_core.labelling.labelstore import LabelStore, open_label_store
from sscc_core.labelling.report import (
    NO_RUN, SPECTRA_PIXELS, ReportResult, TrainingRun, check_grid, find_training, is_report,
    load_training, write_report,
)
from sscc_core.versioning import read_current, resolve_labels, versioned_store

def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the report stage."""
    p = argparse.ArgumentParser(
        prog="sscc report",
        description="Write a self-contained HTML report of a label store (map, legend, spectra, "
        "training curves, ground-truth agreement, change from a previous version).",
    )
    p.add_argument("--labels", required=True, help="label store written by `sscc predict`, or "
                   "the --out-root of `sscc reprocess` (its current version)")
    p.add_argument("--store", required=True, help="the cube store the labels were computed from")
    p.add_argument("--out", required=True, help="report folder (index.html and its assets)")
    p.add_argument("--run", default=None, help="training run directory (<storage>/<run-name>) or "
                   "checkpoint of the model (training curves, label-free choices)")
    p.add_argument("--previous", default=None,
                   help="label store of a previous version, for the change map and table")
    p.add_argument("--spectra-pixels", type=int, default=SPECTRA_PIXELS,
                   help=f"pixel budget of the spectra pass (default {SPECTRA_PIXELS:,}); a larger "
                   "cube is read in a seeded sample of chunks")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous report in --out (default: refuse a non-empty --out)")
    add_logging_args(p, beside="OUT")
    return p


def open_finished(path: str | Path) -> LabelStore:
    """A complete, intact label store (or a reprocess root's current version).

    Raises:
        FileNotFoundError: No label store there.
        ValueError: Incomplete or damaged store.
    """
    store = open_label_store(resolve_labels(path))
    store.require_complete()
    store.require_intact()
    return store


def report_into(
    out: str | Path, store: LabelStore, cube_path: str, *, training: TrainingRun | None,
    training_missing: str = NO_RUN, previous: LabelStore | None = None,
    overwrite: bool = False, spectra_pixels: int = SPECTRA_PIXELS,
) -> ReportResult:
    """Write a report atomically into ``out`` (temporary sibling renamed when whole).

    Raises:
        FileExistsError: ``out`` holds something (without ``overwrite``: anything but an empty
            folder; with it: anything but a previous report).
        ValueError: As :func:`sscc_core.labelling.report.write_report`, or a cube that is not the labels'
            input.
    """
    cube = open_cube(cube_path)
    check_grid(store.labels(), cube, cube_path, str(store.path))
    check_input(store, cube, cube_path)
    if isinstance(out, Path) and out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder is no output to protect
    with atomic_output(out, overwrite, is_report, "an sscc report") as tmp:
        result = write_report(tmp, store, cube, cube_path=cube_path, training=training,
                              training_missing=training_missing, previous=previous,
                              spectra_pixels=spectra_pixels)
    index = storage.join(out, result.index.name) if storage.is_url(out) else out / result.index.name
    return ReportResult(index=index, notes=result.notes)


def version_report(out_root: str | Path, model_version: str, cube_path: str,
                   checkpoint: str) -> ReportResult:
    """The report of one version of a ``sscc reprocess`` root: ``<version>.report`` beside
    ``<version>.zarr``, compared with the version ``current`` pointed to before (when its store
    is still there), replacing an earlier report of the same version."""
    pointer = read_current(out_root) or {}
    before = pointer.get("previous")
    previous = None
    if before and storage.is_dir(versioned_store(out_root, before)):
        previous = open_finished(versioned_store(out_root, before))
    store = open_finished(versioned_store(out_root, model_version))
    name = f"{model_version}.report"
    out = storage.join(out_root, name) if storage.is_url(out_root) else Path(out_root) / name
    return report_into(out, store, cube_path, training=load_training(checkpoint),
                       previous=previous, overwrite=True)


def run(args: argparse.Namespace) -> ReportResult:
    """Execute a parsed command line; returns what was written.

    Raises:
        ValueError: Incomplete label store, a cube on another grid or not the labels' input,
            a training run of another model.
        FileNotFoundError: A store, ``--run`` or ``--previous`` is missing.
        FileExistsError: ``--out`` is not empty (without ``--overwrite``) or not a report.
    """
    log = setup_logging("report", args.log_file, output=args.out)
    if args.spectra_pixels < 1:
        raise ValueError(f"--spectra-pixels must be >= 1, got {args.spectra_pixels}")
    store = open_finished(args.labels)
    training, missing = find_training(args.run, args.labels)
    previous = open_finished(args.previous) if args.previous else None
    def left() -> str:
        return "the previous report is kept" if is_report(args.out) else "nothing was written"

    with failing_output(args.out, "report", left):
        result = report_into(Path(args.out), store, args.store, training=training,
                             training_missing=missing, previous=previous,
                             overwrite=args.overwrite, spectra_pixels=args.spectra_pixels)
    for section, note in result.notes.items():
        print(f"report: note: {section}: {note}")
    print(f"report: {result.index}", flush=True)
    log_event(log, "report", labels=args.labels, out=str(result.index), notes=result.notes)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc report``; returns the process exit code (2 on user errors)."""
    return run_stage("report", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
