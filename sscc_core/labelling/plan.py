"""Planning a labelling run over a label store: which tiles to label (or recheck), with their
recorded fingerprints, after repairing what a crash or lost chunks left behind
(:func:`plan_labelling`); the same for each flight line of a run, each into its own label store
on its own grid (:func:`line_outputs`, :func:`prepare_lines`); and the locality-aware order the
tiles are read in (:func:`read_segments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from sscc_core import storage
from sscc_core.io.lines import Line
from sscc_core.io.store import cube_identity
from sscc_core.io.tiling import Tile, nonempty_tiles
from sscc_core.labelling.labelstore import LabelStore, LabelStoreSpec, prepare_label_store

STRIPE_TILES = 4  # tile columns one reader sweeps row by row (its chunk cache spans them)
SEGMENT_ROWS = 16  # tile rows of one read segment (a stripe is cut into segments)


@dataclass(frozen=True)
class LabelPlan:
    """What a labelling run has to do.

    Attributes:
        nonempty: Every tile of the grid with a valid pixel, row-major.
        done: ``(row, col)`` of the non-empty tiles already recorded done.
        todo: Tiles to label, or with ``recheck`` to re-read and relabel if their input changed.
        recorded: Recorded input fingerprints of the done tiles in ``todo`` (``recheck`` only).
        damaged: ``{(row, col): problem}`` of done tiles whose chunks were missing, unreadable
            or held another count than their record (their records were dropped: they are in
            ``todo``).
    """

    nonempty: list[Tile]
    done: set[tuple[int, int]]
    todo: list[Tile]
    recorded: dict[tuple[int, int], str]
    damaged: dict[tuple[int, int], str]


def plan_labelling(out: LabelStore, valid: Any, recheck: bool) -> LabelPlan:
    """Plan a run over ``out``: drop the records of damaged tiles, list the non-empty tiles of
    the input and those left to do. With ``recheck``, every non-empty tile is in ``todo`` (with
    its recorded fingerprint) and done tiles whose input became empty are cleared, so they do
    not keep their old labels.

    Args:
        out: The label store (prepared for this run).
        valid: (H, W) bool array-like of the input cube (read tile by tile).
        recheck: Re-read the done tiles too (``sscc reprocess``).

    Returns:
        The plan; the store is marked incomplete when records were dropped or tiles cleared.
    """
    damaged = out.damaged_tiles()
    if damaged:  # a chunk lost or corrupted since it was written: label the tile again
        out.forget_tiles(damaged)
    nonempty = nonempty_tiles(valid, out.tiles())
    done = out.done_tiles()  # one read of the store's tile records
    recorded = ({(r["row"], r["col"]): r["fingerprint"] for r in out.tile_records()}
                if recheck else {})
    todo = [t for t in nonempty if recheck or (t.row, t.col) not in done]
    keep = {(t.row, t.col) for t in nonempty}
    if recheck:  # tiles whose input became empty must not keep their old labels
        for tile in out.tiles():
            if (tile.row, tile.col) in done and (tile.row, tile.col) not in keep:
                out.mark_incomplete()
                out.clear_tile(tile)
    return LabelPlan(nonempty, done & keep, todo, recorded, damaged)


@dataclass(frozen=True)
class LineRun:
    """One flight line of a labelling run, its label store prepared and its tiles planned.

    Attributes:
        index: The line's position in the run (what the pipeline's rows carry).
        line: The line: its name and input cube store.
        out: Its label store's path or URL, as given.
        labels: That label store, created or reopened for this run.
        spec: What the run writes into it, with this line's ``input_store`` and
            ``input_identity``.
        valid: (H, W) bool validity of the line's cube (a zarr array, read tile by tile).
        plan: What is left to do in it.
    """

    index: int
    line: Line
    out: str | Path
    labels: LabelStore
    spec: LabelStoreSpec
    valid: Any
    plan: LabelPlan


def line_outputs(out: str | Path, lines: Sequence[Line], suffix: str = ".zarr") -> list[str | Path]:
    """Where each line's output goes: ``out`` itself for one line, ``out/<line><suffix>`` (a
    local path or a URL, :func:`sscc_core.storage.join`) for several.

    Args:
        out: The run's output (a label store, or a labels root) as given.
        lines: The run's lines (unique names, :func:`sscc_core.io.lines.resolve_lines`).
        suffix: Appended to each line's name.

    Returns:
        One output per line, in order.
    """
    if len(lines) == 1:
        return [out]
    return [storage.join(out, f"{line.name}{suffix}") for line in lines]


def prepare_lines(lines: Sequence[Line], outs: Sequence[str | Path], cubes: Sequence[xr.Dataset],
                  spec: LabelStoreSpec, recheck: bool) -> list[LineRun]:
    """Create or reopen each line's label store on its own grid with its own input recorded
    (:func:`~sscc_core.labelling.labelstore.prepare_label_store`), then plan each
    (:func:`plan_labelling`). The stores that exist already are reopened first, so one refused
    (another model, grid or input) leaves no new store behind.

    Args:
        lines: The run's lines.
        outs: Each line's label store path or URL.
        cubes: Each line's cube (:func:`sscc_core.io.store.open_cube`), checked against the
            model by the caller.
        spec: What the run writes (its ``input_store`` and ``input_identity`` are replaced by
            each line's).
        recheck: Re-read the done tiles too (see :func:`plan_labelling`).

    Returns:
        One :class:`LineRun` per line, in order.

    Raises:
        LabelStoreError: An existing label store does not match this run (the message names it).
    """
    specs = [replace(spec, input_store=line.store, input_identity=cube_identity(cube))
             for line, cube in zip(lines, cubes)]
    stores: dict[int, LabelStore] = {}
    for i in sorted(range(len(lines)), key=lambda i: not storage.is_dir(outs[i])):
        stores[i] = prepare_label_store(outs[i], cubes[i], specs[i], relabel=recheck)
    runs = []
    for i, line in enumerate(lines):
        valid = zarr.open_group(line.store, mode="r")["valid"]
        runs.append(LineRun(i, line, outs[i], stores[i], specs[i], valid,
                            plan_labelling(stores[i], valid, recheck)))
    return runs


def read_segments(tiles: list[Tile], stripe_tiles: int = STRIPE_TILES,
                  segment_rows: int = SEGMENT_ROWS, min_segments: int = 1) -> list[list[Tile]]:
    """Group tiles for reading with locality: vertical stripes ``stripe_tiles`` tile columns
    wide, each cut into segments of at most ``segment_rows`` tile rows (halved until there are
    ``min_segments``, or one row per segment), tiles row-major inside a segment. A reader that
    sweeps one segment through a :class:`~sscc_core.labelling.chunk_cache.ChunkCache` of the
    stripe's width decodes each chunk about once (row-major order through a cache of one tile's
    width: about 3 times).

    Args:
        tiles: Tiles of one grid (any order, any subset).
        stripe_tiles: Tile columns per stripe.
        segment_rows: Most tile rows per segment.
        min_segments: Segments wanted at least (readers that can run at once).

    Returns:
        Non-empty segments, stripe by stripe from the left, top to bottom.
    """
    ordered = sorted(tiles, key=lambda t: (t.col // stripe_tiles, t.row, t.col))
    while True:
        segments: dict[tuple[int, int], list[Tile]] = {}
        for tile in ordered:
            segments.setdefault((tile.col // stripe_tiles, tile.row // segment_rows), []).append(tile)
        if len(segments) >= min_segments or segment_rows == 1:
            return list(segments.values())
        segment_rows = max(1, segment_rows // 2)
