"""The two halves of a labelling run's per-tile work, each for one process of a pipeline stage:
reading (:func:`read_tiles`: fingerprint the input window, read and pre-process it through chunk
caches) and labelling (:class:`TileWriter`: the network, the readout, and the tile's chunk
written into the label store). Recording the tiles is left to the caller, after their chunks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import zarr

from sscc_core.io.tiling import Tile
from sscc_core.labelling.chunk_cache import ChunkCache
from sscc_core.labelling.inference import Labeller
from sscc_core.labelling.labelstore import LabelStore, tile_fingerprint
from sscc_core.labelling.tile_input import TileInput, TileReader


@dataclass(frozen=True)
class TileRead:
    """A tile after the read half.

    Attributes:
        tile: The tile.
        fingerprint: :func:`~sscc_core.labelling.labelstore.tile_fingerprint` of its input
            window ("" when unreadable).
        input: What the network needs; ``None`` when the tile is unchanged (its recorded
            fingerprint is current) or unreadable.
        error: One line naming the tile when its input could not be read, else "".
        seconds: Time spent reading it.
    """

    tile: Tile
    fingerprint: str
    input: TileInput | None
    error: str
    seconds: float


@dataclass(frozen=True)
class TileOutcome:
    """A tile after the label half (one result row of the pipeline).

    Attributes:
        row: Tile row.
        col: Tile column.
        n_valid: Labelled pixels written (0 unless ``labelled``).
        seconds: Read plus label time (the chunk write excluded).
        labelled: Whether its chunk was written (False: unchanged or failed).
        error: The failure, one line naming the tile, or "".
        fingerprint: Of its input window ("" when unreadable).
    """

    row: int
    col: int
    n_valid: int
    seconds: float
    labelled: bool
    error: str
    fingerprint: str


def read_tiles(store: str, reader: TileReader, tiles: Sequence[tuple[Tile, str]],
               tile_size: int, stripe_tiles: int) -> Iterator[TileRead]:
    """Fingerprint and read tiles of the cube store at ``store`` in the given order, through
    chunk caches spanning ``stripe_tiles`` tiles (see :func:`sscc_core.labelling.plan.read_segments`).

    Args:
        store: Input cube store path or URL.
        reader: The model's :class:`~sscc_core.labelling.tile_input.TileReader`.
        tiles: ``(tile, recorded fingerprint)`` pairs ("" when not done): a tile whose recorded
            fingerprint equals its current one is not read further.
        tile_size: Tile side, pixels.
        stripe_tiles: Width in tiles of the stripe the tiles sweep.

    Yields:
        One :class:`TileRead` per tile; an unreadable input window (corrupt chunk) becomes its
        ``error`` while the other tiles go on.
    """
    group = zarr.open_group(store, mode="r")
    cube = ChunkCache(group["reflectance"], tile_size, stripe_tiles)
    valid = ChunkCache(group["valid"], tile_size, stripe_tiles)
    for tile, recorded in tiles:
        start = time.perf_counter()
        try:
            fingerprint = tile_fingerprint(cube, valid, tile, reader.context)
            inp = None if recorded == fingerprint else reader.read(cube, valid, tile)
        except (OSError, RuntimeError, ValueError) as exc:
            error = (f"{store}: cannot read the input of tile r{tile.row}_c{tile.col} (rows "
                     f"{tile.y0}:{tile.y1}, cols {tile.x0}:{tile.x1}, halo {reader.context}): "
                     f"{type(exc).__name__}: {exc}")
            yield TileRead(tile, "", None, error, time.perf_counter() - start)
            continue
        yield TileRead(tile, fingerprint, inp, "", time.perf_counter() - start)


class TileWriter:
    """Labels tiles already read and writes their chunks into a label store (not their records).

    Args:
        labeller: The model, on the device it should run on.
        out: The label store (created by the driver).
    """

    def __init__(self, labeller: Labeller, out: LabelStore) -> None:
        self.labeller, self.out = labeller, out

    def write(self, reads: Sequence[TileRead]) -> list[TileOutcome]:
        """Label the read tiles (one network batch where shapes allow) and write their chunks.

        Returns:
            One outcome per read, in order; a failed write (:class:`LabelStoreError`) is that
            tile's ``error`` while the others are written.
        """
        live = [r for r in reads if r.input is not None]
        start = time.perf_counter()
        results = dict(zip(map(id, live), self.labeller.label_inputs([r.input for r in live])))
        share = (time.perf_counter() - start) / max(len(live), 1)
        outcomes = []
        for read in reads:
            tile = read.tile
            if id(read) not in results:
                outcomes.append(TileOutcome(tile.row, tile.col, 0, read.seconds, False,
                                            read.error, read.fingerprint))
                continue
            labels, conf = results[id(read)]
            try:
                n_valid = self.out.write_chunk(tile, labels,
                                               conf if self.out.has_confidence else None)
            except ValueError as exc:  # LabelStoreError: the write failed
                outcomes.append(TileOutcome(tile.row, tile.col, 0, read.seconds + share, False,
                                            str(exc), ""))
                continue
            outcomes.append(TileOutcome(tile.row, tile.col, n_valid, read.seconds + share, True,
                                        "", read.fingerprint))
        return outcomes
