"""``sscc verify``: check a label store's chunks against its tile records.

Usage::

    sscc verify --labels runs/ip_labels.zarr

Every tile with a completion record must have its chunks (``labels``, and ``confidence`` when
written) present, decodable, and holding exactly the labelled pixel count its record says
(:meth:`sscc_core.labelling.labelstore.LabelStore.damaged_tiles`). A damaged store is marked incomplete,
the damaged tiles lose their records, and the run ends with one line naming the first damaged
tile and chunk; ``sscc predict`` with the same arguments then relabels exactly those tiles.
``sscc evaluate`` and ``sscc export`` run the same check before reading the labels.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipelines.common import add_logging_args, log_event, run_stage, setup_logging
from sscc_core import storage
from sscc_core.labelling.labelstore import open_label_store
from sscc_core.versioning import resolve_labels


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the verify stage."""
    p = argparse.ArgumentParser(
        prog="sscc verify",
        description="Check that every labelled tile of a label store still has whole, readable "
        "chunks holding what its record says.",
    )
    p.add_argument("--labels", required=True, help="label store written by `sscc predict`, or "
                   "the --out-root of `sscc reprocess` (its current version)")
    add_logging_args(p)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed command line; returns ``{"labels", "tiles", "complete"}``.

    Raises:
        LabelStoreError: Some tile is damaged (named), or the path is no label store.
        FileNotFoundError: No store at ``--labels``.
    """
    log = setup_logging("verify", args.log_file)
    storage.check_url(args.labels)
    store = open_label_store(resolve_labels(args.labels))
    store.require_intact()
    summary = {"labels": str(store.path), "tiles": len(store.done_tiles()),
               "complete": store.complete}
    log_event(log, "verified", **summary)
    print(f"verify: {store.path}: all {summary['tiles']} labelled tiles intact"
          f"{'' if store.complete else ' (store not complete yet)'}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sscc verify``; returns the process exit code (2 on user errors)."""
    return run_stage("verify", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
