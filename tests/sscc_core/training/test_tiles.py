"""Training-tile planning: the tiles holding training pixels (with their counts, equal to the
whole-scene mask's), their random streams, and the readout's bounded subset of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sscc_core.io.cube import make_cube
from sscc_core.io.store import write_cube
from sscc_core.io.tiling import Tile, tile_grid
from sscc_core.training.tiles import (
    READOUT_TILE_FACTOR, descriptor_tile, epoch_tile_order, lines_training_tiles, readout_tiles, tile_stream,
    training_tiles,
)
from sscc_core.training.trainer import training_mask

TILE = 8


def tiny_scene() -> tuple[np.ndarray, np.ndarray]:
    """A (5, 20, 27) cube with a nodata block and labels in two corners only (so some tiles
    hold no labelled pixel), and its labels."""
    rng = np.random.default_rng(0)
    cube = rng.normal(100, 10, (5, 20, 27)).astype(np.float32)
    cube[:, 0:3, 10:16] = -1  # nodata
    labels = np.zeros((20, 27), np.int16)
    labels[1:6, 1:7] = 1
    labels[17:20, 25:27] = 2
    labels[1, 1] = 3
    return cube, labels


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    cube, labels = tiny_scene()
    path = tmp_path_factory.mktemp("tiles") / "tiny.zarr"
    return str(write_cube(make_cube(cube, nodata=-1, labels=labels, name="tiny"), path, chunk=TILE))


@pytest.mark.parametrize("protocol", ["labelled", "all"])
def test_training_tiles_hold_the_whole_scene_training_pixels(store: str, protocol: str) -> None:
    cube, labels = tiny_scene()
    mask = training_mask((cube != -1).all(0), labels, protocol)
    tiles = training_tiles(store, protocol, TILE)
    counts = {(t.row, t.col): int(mask[t.y0 : t.y1, t.x0 : t.x1].sum()) for t in tile_grid(20, 27, TILE)}
    assert [(t["row"], t["col"]) for t in tiles] == [rc for rc, n in counts.items() if n]
    assert all(t["n_pixels"] == counts[t["row"], t["col"]] for t in tiles)
    assert sum(t["n_pixels"] for t in tiles) == mask.sum()
    assert len(tiles) == (2 if protocol == "labelled" else 12)  # 3 x 4 grid


def test_training_tiles_refuse_a_protocol_without_its_pixels(tmp_path: Path) -> None:
    cube, _ = tiny_scene()
    unlabelled = str(write_cube(make_cube(cube, nodata=-1), tmp_path / "u.zarr", chunk=TILE))
    with pytest.raises(ValueError, match=r"u.zarr: protocol 'labelled' needs a 'labels' variable; "
                                         r"use train.protocol=all$"):
        training_tiles(unlabelled, "labelled", TILE)
    blank = str(write_cube(make_cube(cube, nodata=-1, labels=np.zeros((20, 27), np.int16)),
                           tmp_path / "b.zarr", chunk=TILE))
    with pytest.raises(ValueError, match=r"b.zarr: no training pixel under protocol 'labelled'$"):
        training_tiles(blank, "labelled", TILE)


def test_descriptors_name_their_tile_and_streams_are_distinct(store: str) -> None:
    tiles = training_tiles(store, "all", TILE)
    assert [descriptor_tile(t) for t in tiles] == list(tile_grid(20, 27, TILE))
    streams = {tile_stream(Tile(r, c, 0, 1, 0, 1)) for r in range(40) for c in range(40)}
    assert len(streams) == 1600 and 0 not in streams  # 0 is left to the whole-scene stream


def test_readout_tiles_bound_the_driver_pass_by_the_sample_size() -> None:
    tiles = [{"row": r, "col": c, "n_pixels": 100} for r in range(20) for c in range(30)]  # 600
    kept = readout_tiles(tiles, max_pixels=500, seed=3)
    assert len(kept) == READOUT_TILE_FACTOR * 500 // 100  # 20 of 600 tiles: the bound, no more
    assert kept == sorted(kept, key=lambda t: (t["row"], t["col"]))
    assert kept == readout_tiles(tiles, 500, 3) and kept != readout_tiles(tiles, 500, 4)
    assert len({t["row"] for t in kept}) > 5  # spread over the mosaic, not its first rows
    assert readout_tiles(tiles, max_pixels=10**6, seed=3) == tiles  # small scenes: every tile


def test_tiles_of_several_lines_list_every_line_on_its_own_grid(store: str, tmp_path: Path) -> None:
    cube, labels = tiny_scene()
    other = str(write_cube(make_cube(cube[:, 4:20, 3:20], nodata=-1, labels=labels[4:20, 3:20]),
                           tmp_path / "other.zarr", chunk=TILE))  # 16 x 17: a 2 x 3 grid
    tiles = lines_training_tiles([store, other], "all", TILE)
    assert tiles == training_tiles(store, "all", TILE) + training_tiles(other, "all", TILE, line=1)
    assert [t["line"] for t in tiles] == [0] * 12 + [1] * 6
    assert [descriptor_tile(t) for t in tiles[12:]] == list(tile_grid(16, 17, TILE))
    assert sum(t["n_pixels"] for t in tiles[12:]) == int((cube[:, 4:20, 3:20] != -1).all(0).sum())
    unlabelled = str(write_cube(make_cube(cube, nodata=-1), tmp_path / "u.zarr", chunk=TILE))
    with pytest.raises(ValueError, match=r"u.zarr: protocol 'labelled' needs a 'labels' variable"):
        lines_training_tiles([store, unlabelled], "labelled", TILE)
    chosen = readout_tiles(tiles, max_pixels=40, seed=0)  # 160 of the 513 pixels
    assert {t["line"] for t in chosen} == {0, 1}
    assert chosen == sorted(chosen, key=lambda t: (t["line"], t["row"], t["col"]))


def test_tile_streams_differ_across_lines_and_line_0_keeps_its_streams() -> None:
    tiles = [Tile(r, c, 0, 1, 0, 1) for r in range(40) for c in range(40)]
    assert [tile_stream(t) for t in tiles] == [1 + (t.row << 20) + t.col for t in tiles]
    assert [tile_stream(t, 0) for t in tiles] == [tile_stream(t) for t in tiles]
    streams = {tile_stream(t, line) for t in tiles for line in range(3)}
    assert len(streams) == 3 * 1600
    corner = Tile((1 << 20) - 1, (1 << 20) - 1, 0, 1, 0, 1)  # the largest grid's last tile
    assert tile_stream(corner, 0) < tile_stream(Tile(0, 0, 0, 1, 0, 1), 1)


def test_the_epoch_tile_order_is_a_seeded_permutation_new_every_epoch() -> None:
    orders = [epoch_tile_order(50, seed, epoch) for seed, epoch in ((0, 0), (0, 1), (1, 0), (0, 0))]
    assert all(sorted(o.tolist()) == list(range(50)) for o in orders)
    assert orders[0].tolist() == orders[3].tolist()  # the same run seed and epoch: the same order
    assert orders[0].tolist() != orders[1].tolist() and orders[0].tolist() != orders[2].tolist()
    assert orders[0].tolist() != list(range(50))
    assert epoch_tile_order(1, 0, 3).tolist() == [0]
