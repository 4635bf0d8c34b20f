"""Planning a labelling run: tiles to do after a crash or lost chunks, rechecks, and the
locality-aware read segments."""

from __future__ import annotations

import numpy as np
import pytest

from sscc_core.io.cube import make_cube
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube, write_cube
from sscc_core.io.tiling import Tile, tile_grid
from sscc_core.labelling.labelstore import LabelStoreSpec, TileRecord, create_label_store
from sscc_core.labelling.plan import plan_labelling, read_segments

TILE = 16


@pytest.fixture()
def store(tmp_path):
    """A 40 x 50 cube of real Salinas-A spectra (3 x 4 tiles of 16, tile (0, 3) all nodata) and
    a label store on it with tiles (0, 0), (0, 1) and (1, 1) done."""
    sa = read_benchmark("salinasA")["reflectance"].values[::20, :40, :50].copy()
    sa[:, :TILE, 3 * TILE :] = -1
    cube_path = write_cube(make_cube(sa, nodata=-1, name="sa"), tmp_path / "cube.zarr", chunk=TILE)
    cube = open_cube(cube_path)
    out = create_label_store(tmp_path / "labels.zarr", cube, LabelStoreSpec(
        model_version="aaaa11112222", n_clusters=4, tile_size=TILE))
    tiles = {(t.row, t.col): t for t in out.tiles()}
    for key, fp in (((0, 0), "f0" * 16), ((0, 1), "f1" * 16), ((1, 1), "e1" * 16)):
        t = tiles[key]
        n = out.write_chunk(t, np.zeros((t.height, t.width), dtype=np.int64), None)
        out.record_tiles([TileRecord(t.row, t.col, 0.1, n, fp)])
    return out, cube["valid"]


def test_plan_resumes_the_tiles_not_done(store):
    out, valid = store
    plan = plan_labelling(out, valid.values, recheck=False)
    assert len(plan.nonempty) == 11 and (0, 3) not in {(t.row, t.col) for t in plan.nonempty}
    assert plan.done == {(0, 0), (0, 1), (1, 1)} and not plan.damaged
    assert [(t.row, t.col) for t in plan.todo] == [
        (t.row, t.col) for t in plan.nonempty if (t.row, t.col) not in plan.done]
    assert plan.recorded == {}


def test_plan_relabels_a_tile_whose_chunk_was_lost(store):
    out, valid = store
    (out.path / "labels" / "c" / "0" / "1").unlink()
    plan = plan_labelling(out, valid.values, recheck=False)
    assert set(plan.damaged) == {(0, 1)} and "is missing" in plan.damaged[(0, 1)]
    assert (0, 1) in {(t.row, t.col) for t in plan.todo} and plan.done == {(0, 0), (1, 1)}
    assert out.done_tiles() == {(0, 0), (1, 1)} and not out.complete


def test_recheck_keeps_fingerprints_and_clears_tiles_that_became_empty(store):
    out, valid = store
    mask = valid.values.copy()
    mask[TILE : 2 * TILE, TILE : 2 * TILE] = False  # tile (1, 1) lost all its data
    plan = plan_labelling(out, mask, recheck=True)
    assert plan.recorded == {(0, 0): "f0" * 16, (0, 1): "f1" * 16, (1, 1): "e1" * 16}
    assert len(plan.todo) == len(plan.nonempty) == 10
    assert plan.done == {(0, 0), (0, 1)} and out.done_tiles() == {(0, 0), (0, 1)}
    assert (np.asarray(out.array("labels")[TILE : 2 * TILE, TILE : 2 * TILE]) == out.nodata).all()


def test_read_segments_are_stripes_cut_into_row_bands():
    tiles = tile_grid(100, 90, 10)  # 10 rows x 9 cols
    segments = read_segments(tiles[::-1], stripe_tiles=4, segment_rows=6)
    assert [len(s) for s in segments] == [24, 16, 24, 16, 6, 4]
    assert sorted((t.row, t.col) for s in segments for t in s) == [(t.row, t.col) for t in tiles]
    first = segments[0]
    assert [(t.row, t.col) for t in first[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert {t.col // 4 for t in segments[2]} == {1} and {t.row // 6 for t in segments[3]} == {1}
    assert all(isinstance(t, Tile) for s in segments for t in s)
    assert [len(s) for s in read_segments(tiles, 4, 16, min_segments=5)] == [
        32, 8, 32, 8, 8, 2]  # 16 -> 8 rows per segment
    assert [len(s) for s in read_segments(tiles, 4, 16, min_segments=7)] == [
        16, 16, 8, 16, 16, 8, 4, 4, 2]  # 16 -> 8 -> 4 rows per segment
    assert len(read_segments(tiles[:3], 4, 16, min_segments=5)) == 1  # one row: cannot cut more
