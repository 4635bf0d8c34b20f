"""Planning a labelling run over a label store: which tiles to label (or recheck), with their
recorded fingerprints, after repairing what a crash or lost chunks left behind
(:func:`plan_labelling`); and the locality-aware order the tiles are read in
(:func:`read_segments`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sscc_core.io.tiling import Tile, nonempty_tiles
from sscc_core.labelling.labelstore import LabelStore

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
