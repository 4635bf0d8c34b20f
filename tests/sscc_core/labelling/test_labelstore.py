"""The label store: layout on the input grid, aligned writes, completion record, version guard."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import zarr

from sscc_core.io.cube import make_cube
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube, write_cube
from sscc_core.labelling.labelstore import (
    LabelStoreError,
    LabelStoreSpec,
    create_label_store,
    encode_labels,
    label_dtype,
    open_label_store,
    prepare_label_store,
)
from sscc_core.io.tiling import Tile

TILE = 16
TRANSFORM = (600000.0, 3.7, 0.0, 4050000.0, 0.0, -3.7)


@pytest.fixture(scope="module")
def cube_path(tmp_path_factory):
    """A georeferenced 40 x 50 cube of real Salinas-A spectra (20 bands) with one empty tile."""
    sa = read_benchmark("salinasA")["reflectance"].values[::10, :40, :50].copy()
    sa[:, :TILE, 2 * TILE : 3 * TILE] = -1  # tile (0, 2) is all nodata
    ds = make_cube(sa, nodata=-1, crs="EPSG:32611", transform=TRANSFORM, name="sa_geo")
    return write_cube(ds, tmp_path_factory.mktemp("ls") / "cube.zarr", chunk=TILE)


def spec(version: str = "aaaa11112222", **kw) -> LabelStoreSpec:
    base = dict(model_version=version, n_clusters=6, tile_size=TILE, confidence=True,
                config={"model": {"n_clusters": 6}}, input_store="cube.zarr")
    return LabelStoreSpec(**{**base, **kw})


def test_layout_on_input_grid(cube_path, tmp_path):
    cube = open_cube(cube_path)
    store = create_label_store(tmp_path / "lab.zarr", cube, spec())
    group = zarr.open_group(store.path, mode="r")
    assert group["labels"].dtype == np.uint8 and group["labels"].chunks == (TILE, TILE)
    assert group["labels"].fill_value == 255 and group["confidence"].chunks == (TILE, TILE)
    attrs = store.attrs
    assert attrs["complete"] is False and attrs["model_version"] == "aaaa11112222"
    assert attrs["tile_size"] == TILE and attrs["nodata"] == 255 and attrs["n_clusters"] == 6
    assert {"config", "input_store", "created", "sscc_version"} <= set(attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the marker group must not upset Zarr/xarray
        labels = store.labels()
    assert labels.dtype == np.uint8 and labels.attrs["nodata"] == 255
    assert (labels.values == 255).all()
    np.testing.assert_array_equal(labels["y"].values, cube["y"].values)
    np.testing.assert_array_equal(labels["x"].values, cube["x"].values)
    assert labels.rio.crs == cube.rio.crs and labels.rio.crs.to_epsg() == 32611
    assert labels.rio.transform() == cube.rio.transform()
    with pytest.raises(FileExistsError):
        create_label_store(tmp_path / "lab.zarr", cube, spec())


def test_label_dtype_follows_k(cube_path, tmp_path):
    store = create_label_store(tmp_path / "k300.zarr", open_cube(cube_path),
                               spec(n_clusters=300, confidence=False))
    assert store.labels().dtype == np.uint16 and store.nodata == 65535
    assert label_dtype(300) == (np.dtype(np.uint16), 65535)


def test_encode_labels():
    lab = np.array([[-1, 0], [5, 2]])
    np.testing.assert_array_equal(encode_labels(lab, 6), [[255, 0], [5, 2]])
    with pytest.raises(ValueError, match="outside -1..5"):
        encode_labels(np.array([[6]]), 6)


def test_misaligned_write_raises(cube_path, tmp_path):
    store = create_label_store(tmp_path / "lab.zarr", open_cube(cube_path), spec(confidence=False))
    block = np.zeros((TILE, TILE), np.uint8)
    with pytest.raises(ValueError, match="not aligned"):
        store.write_region(8, 0, block)
    with pytest.raises(ValueError, match="not aligned"):
        store.write_region(0, 0, np.zeros((TILE, TILE - 1), np.uint8))
    with pytest.raises(ValueError, match="leaves the 40 x 50 grid"):
        store.write_region(32, 0, block)
    with pytest.raises(ValueError, match="dtype"):
        store.write_region(0, 0, block.astype(np.int64))
    with pytest.raises(ValueError, match="confidence given"):
        store.write_region(0, 0, block, np.zeros((TILE, TILE), np.float32))
    # a multi-chunk region ending at the grid edge is aligned
    edge = np.full((40 - 2 * TILE, 50 - TILE), 3, np.uint8)
    store.write_region(2 * TILE, TILE, edge)
    np.testing.assert_array_equal(store.labels().values[2 * TILE :, TILE:], edge)
    assert (store.labels().values[: 2 * TILE] == 255).all()


def test_completion_record(cube_path, tmp_path):
    cube = open_cube(cube_path)
    valid = zarr.open_group(cube_path, mode="r")["valid"]
    store = create_label_store(tmp_path / "lab.zarr", cube, spec())
    tiles = store.tiles()
    assert len(tiles) == 3 * 4
    nonempty = store.missing_tiles(valid)
    assert (0, 2) not in {(t.row, t.col) for t in nonempty} and len(nonempty) == 11
    rng = np.random.default_rng(0)
    for i, tile in enumerate(nonempty):
        mask = np.asarray(valid[tile.y0 : tile.y1, tile.x0 : tile.x1])
        lab = np.where(mask, rng.integers(0, 6, mask.shape), -1)
        conf = np.where(mask, 0.5, 0.0).astype(np.float32)
        assert store.write_tile(tile, lab, conf, seconds=0.25) == int(mask.sum())
        np.testing.assert_array_equal(store.labels().values[tile.y0 : tile.y1, tile.x0 : tile.x1],
                                      np.where(mask, lab, 255))
        if i == 4:
            assert store.done_tiles() == {(t.row, t.col) for t in nonempty[:5]}
            with pytest.raises(LabelStoreError, match="6 non-empty tiles are not labelled"):
                store.mark_complete(valid)
            assert store.complete is False
    record = store.tile_record(Tile(1, 1, TILE, 2 * TILE, TILE, 2 * TILE))
    assert record["seconds"] == 0.25 and record["n_valid"] == TILE * TILE
    assert record["fingerprint"] == "" and record["written"].startswith("20")
    store.mark_complete(valid)
    assert store.complete is True and open_label_store(store.path).attrs["complete"] is True
    # the records are one object of the store, whatever the number of tiles
    assert [p.relative_to(store.path).as_posix() for p in store.path.rglob("*")
            if "_sscc_tiles/records/c" in p.as_posix() and p.is_file()] == \
        ["_sscc_tiles/records/c/0/0/0"]


def test_marker_store_is_migrated_to_records(cube_path, tmp_path):
    """A store of the marker-file format (sscc-labels/1) is read: its markers become records,
    the marker folder goes, and resuming it labels only the tiles without a marker."""
    cube = open_cube(cube_path)
    valid = zarr.open_group(cube_path, mode="r")["valid"]
    store = create_label_store(tmp_path / "old.zarr", cube, spec(confidence=False))
    tiles = store.missing_tiles(valid)
    for tile in tiles[:3]:
        store.write_chunk(tile, np.zeros((tile.height, tile.width), int), None)
    group = zarr.open_group(store.path, mode="r+")
    del group["_sscc_tiles"]
    group.attrs["format"] = "sscc-labels/1"
    group.create_group("_sscc_done")
    for i, tile in enumerate(tiles[:3]):
        (store.path / "_sscc_done" / f"r{tile.row}_c{tile.col}.json").write_text(json.dumps({
            "row": tile.row, "col": tile.col, "seconds": 0.5, "n_valid": i,
            "model_version": "aaaa11112222", "fingerprint": f"{i:032x}",
            "written": "2026-11-01T00:00:00+00:00"}))
    migrated = open_label_store(store.path)
    assert migrated.attrs["format"] == "sscc-labels/2"
    assert not (store.path / "_sscc_done").exists()
    assert migrated.done_tiles() == {(t.row, t.col) for t in tiles[:3]}
    first = migrated.tile_record(tiles[1])
    assert (first["n_valid"], first["fingerprint"], first["written"]) == (
        1, f"{1:032x}", "2026-11-01T00:00:00+00:00")
    assert migrated.missing_tiles(valid) == tiles[3:]


def test_version_guard_and_reopen(cube_path, tmp_path):
    cube = open_cube(cube_path)
    path = tmp_path / "lab.zarr"
    store = prepare_label_store(path, cube, spec())
    tile = Tile(0, 0, 0, TILE, 0, TILE)
    store.write_tile(tile, np.zeros((TILE, TILE), int), np.ones((TILE, TILE), np.float32), 0.1)
    again = prepare_label_store(path, cube, spec())
    assert again.done_tiles() == {(0, 0)}
    with pytest.raises(LabelStoreError, match="model version aaaa11112222, not bbbb33334444"):
        prepare_label_store(path, cube, spec("bbbb33334444"))
    with pytest.raises(LabelStoreError, match="tile_size 16 != requested 32"):
        prepare_label_store(path, cube, spec(tile_size=32))
    with pytest.raises(LabelStoreError, match="confidence True != requested False"):
        prepare_label_store(path, cube, spec(confidence=False))
    assert open_label_store(path).done_tiles() == {(0, 0)}  # nothing was touched


def test_foreign_store_refused(cube_path, tmp_path):
    with pytest.raises(LabelStoreError, match="not an SSCC label store"):
        open_label_store(cube_path)
    with pytest.raises(FileNotFoundError, match="no label store"):
        open_label_store(tmp_path / "nothing.zarr")
