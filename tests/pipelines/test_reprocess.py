"""Scheduled reprocessing: versioned outputs, idempotent reruns, only new or changed tiles are
relabelled (grown mosaic, changed input, larger grid), and the `current` pointer switches only to
a complete store of the new version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipelines import cli, reprocess
from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.io.cube import make_cube
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube, write_cube
from sscc_core.labelling.labelstore import LabelStoreSpec, create_label_store, open_label_store, tile_fingerprint
from sscc_core.io.tiling import Tile, read_with_halo, tile_grid
from sscc_core.versioning import current_store, read_current, switch_current, versioned_store
from tests.pipelines.test_predict import TILE, make_checkpoint, reference, stored

NODATA = -32768
HALO = 5  # patch 11


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    """Three states of one mosaic built from real Salinas-A spectra (83 x 86, 204 bands):
    ``early`` (columns >= 40 not flown yet: nodata), ``grown`` (all flown, and a small patch of
    tile r2_c0 re-flown with other spectra), and ``small`` (the first 64 x 64 pixels of grown)."""
    root = tmp_path_factory.mktemp("reprocess")
    sa = read_benchmark("salinasA")
    raw, gt = sa["reflectance"].values, sa["labels"].values
    early = raw.copy()
    early[:, :, 40:] = NODATA
    grown = raw.copy()
    grown[:, 70:75, 5:10] = raw[:, 10:15, 60:65]
    stores = {
        "early": write_cube(make_cube(early, nodata=NODATA, labels=gt), root / "early.zarr", chunk=TILE),
        "grown": write_cube(make_cube(grown, nodata=NODATA, labels=gt), root / "grown.zarr", chunk=TILE),
        "small": write_cube(make_cube(grown[:, :64, :64], nodata=NODATA, labels=gt[:64, :64]),
                            root / "small.zarr", chunk=TILE),
    }
    ckpt = make_checkpoint(root, stores["grown"], "fcn", seed=0)
    return root, stores, ckpt


def run_reprocess(ckpt, store, out_root, *extra):
    args = reprocess.build_parser().parse_args(
        ["--checkpoint", str(ckpt), "--store", str(store), "--out-root", str(out_root),
         "--tile-size", str(TILE), "--actors", "1", *extra])
    return reprocess.run(args)


def window(store, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(store, mode="r")
    return read_with_halo(group["reflectance"], tile, HALO), read_with_halo(group["valid"], tile, HALO)


def changed_tiles(old_store, new_store) -> set[tuple[int, int]]:
    """Non-empty tiles of ``new_store`` whose input window (with halo) is not identical in
    ``old_store``: new tiles, tiles that changed, and tiles whose bounds changed."""
    new_valid = zarr.open_group(new_store, mode="r")["valid"]
    old_valid = zarr.open_group(old_store, mode="r")["valid"]
    old_tiles = {(t.row, t.col): t for t in tile_grid(*old_valid.shape, TILE)}
    changed = set()
    for t in tile_grid(*new_valid.shape, TILE):
        if not new_valid[t.y0 : t.y1, t.x0 : t.x1].any():
            continue
        old = old_tiles.get((t.row, t.col))
        if old != t or not old_valid[old.y0 : old.y1, old.x0 : old.x1].any():
            changed.add((t.row, t.col))
            continue
        (a, va), (b, vb) = window(old_store, t), window(new_store, t)
        if not (np.array_equal(a, b) and np.array_equal(va, vb)):
            changed.add((t.row, t.col))
    return changed


def chunk_bytes(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file() and "/c/" in str(p.relative_to(store)) + "/"}


def marker_times(store: Path) -> dict[str, int]:
    """When each tile's labels chunk was last written (``r{row}_c{col}.json`` -> mtime, ns)."""
    return {f"r{p.parent.name}_c{p.name}.json": p.stat().st_mtime_ns
            for p in (store / "labels" / "c").glob("*/*")}


def test_fingerprint_sees_the_halo(mosaics):
    """A change just outside a tile but inside its halo changes its fingerprint; one beyond the
    halo does not."""
    _, stores, _ = mosaics
    group = zarr.open_group(stores["grown"], mode="r")
    cube, valid = group["reflectance"][:], group["valid"][:]
    tile = Tile(1, 1, 32, 64, 32, 64)
    base = tile_fingerprint(cube, valid, tile, HALO)
    assert base == tile_fingerprint(group["reflectance"], group["valid"], tile, HALO)  # zarr == numpy
    inside, beyond = cube.copy(), cube.copy()
    inside[7, 64 + HALO - 1, 40] += 1
    beyond[7, 64 + HALO, 40] += 1
    assert tile_fingerprint(inside, valid, tile, HALO) != base
    assert tile_fingerprint(beyond, valid, tile, HALO) == base
    hole = valid.copy()
    hole[31, 40] = False  # halo pixel of the tile above the tile's first row
    assert tile_fingerprint(cube, hole, tile, HALO) != base


@pytest.mark.slow
def test_rerun_is_idempotent_and_labels_only_new_or_changed_tiles(ray_session, mosaics):
    root, stores, ckpt = mosaics
    out_root = root / "labels"
    version = load_checkpoint(ckpt).model_version
    first = run_reprocess(ckpt, stores["early"], out_root)
    out = versioned_store(out_root, version)
    assert first["out"] == str(out) and first["tiles_labelled"] == first["tiles"] == 6
    np.testing.assert_array_equal(stored(out)[0], reference(ckpt, stores["early"])[0])
    assert read_current(out_root)["model_version"] == version and current_store(out_root) == out

    # same mosaic again: every tile is checked, none relabelled, nothing rewritten
    chunks, markers = chunk_bytes(out / "labels"), marker_times(out)
    again = run_reprocess(ckpt, stores["early"], out_root)
    assert again["tiles_labelled"] == 0 and again["tiles_unchanged"] == 6
    assert chunk_bytes(out / "labels") == chunks and marker_times(out) == markers
    assert open_label_store(out).complete

    # grown mosaic: the new tiles, the tiles whose halo now sees new data, the re-flown tile
    expected = changed_tiles(stores["early"], stores["grown"])
    assert (2, 0) in expected and (0, 0) not in expected and len(expected) < 9
    grown = run_reprocess(ckpt, stores["grown"], out_root)
    assert grown["tiles_labelled"] == len(expected) and grown["tiles_unchanged"] == 9 - len(expected)
    relabelled = {name for name, t in marker_times(out).items() if markers.get(name) != t}
    assert relabelled == {f"r{r}_c{c}.json" for r, c in expected}
    np.testing.assert_array_equal(stored(out)[0], reference(ckpt, stores["grown"])[0])
    assert open_label_store(out).complete and read_current(out_root)["tiles"] == 9

    # the mosaic loses data again (a line withdrawn): tiles now empty go back to nodata
    shrunk = run_reprocess(ckpt, stores["early"], out_root)
    assert shrunk["tiles"] == 6
    np.testing.assert_array_equal(stored(out)[0], reference(ckpt, stores["early"])[0])
    assert {(r["row"], r["col"]) for r in open_label_store(out).tile_records()} == {
        (r, c) for r in range(3) for c in range(2)}


@pytest.mark.slow
def test_larger_grid_grows_the_store_keeping_unchanged_tiles(ray_session, mosaics):
    root, stores, ckpt = mosaics
    out_root = root / "labels_grid"
    run_reprocess(ckpt, stores["small"], out_root)
    out = versioned_store(out_root, load_checkpoint(ckpt).model_version)
    assert open_label_store(out).height == 64
    # a larger grid whose bands are not the model's is refused before the store grows
    fewer = write_cube(read_benchmark("salinasA").isel(band=slice(0, 200)), root / "fewer.zarr", chunk=TILE)
    small_attrs = (out / "zarr.json").read_bytes()
    assert cli.main(["reprocess", "--checkpoint", str(ckpt), "--store", str(fewer),
                     "--out-root", str(out_root), "--tile-size", str(TILE)]) == 2
    assert (out / "zarr.json").read_bytes() == small_attrs and open_label_store(out).height == 64
    before = marker_times(out)
    expected = changed_tiles(stores["small"], stores["grown"])
    assert (0, 0) not in expected and len(expected) == 8
    summary = run_reprocess(ckpt, stores["grown"], out_root)
    assert summary["tiles_labelled"] == 8 and summary["tiles_unchanged"] == 1
    assert marker_times(out)["r0_c0.json"] == before["r0_c0.json"]
    labels = open_label_store(out).labels()
    assert labels.shape == (83, 86)
    np.testing.assert_array_equal(labels["y"].values, np.arange(83))
    np.testing.assert_array_equal(labels["x"].values, np.arange(86))
    np.testing.assert_array_equal(stored(out)[0], reference(ckpt, stores["grown"])[0])

    # a grid that does not extend the old one at the bottom/right is refused, store untouched
    shifted = write_cube(read_benchmark("salinasA").isel(y=slice(1, None)), root / "shift.zarr",
                         chunk=TILE)
    shifted_big = root / "shift_big.zarr"
    ds = read_benchmark("salinasA")
    ds = ds.assign_coords(y=ds["y"] + 1)  # the origin moved by one row
    write_cube(ds, shifted_big, chunk=TILE)
    attrs = (out / "zarr.json").read_bytes()
    assert cli.main(["reprocess", "--checkpoint", str(ckpt), "--store", str(shifted_big),
                     "--out-root", str(out_root), "--tile-size", str(TILE)]) == 2
    assert cli.main(["reprocess", "--checkpoint", str(ckpt), "--store", str(shifted),
                     "--out-root", str(out_root), "--tile-size", str(TILE)]) == 2
    assert (out / "zarr.json").read_bytes() == attrs


@pytest.mark.slow
def test_new_model_version_gets_a_new_store_and_pointer_switches_when_complete(
    ray_session, mosaics, capsys
):
    root, stores, ckpt = mosaics
    out_root = root / "labels_versions"
    run_reprocess(ckpt, stores["grown"], out_root)
    v1 = load_checkpoint(ckpt).model_version
    old = versioned_store(out_root, v1)
    old_files = chunk_bytes(old) | {"zarr.json": (old / "zarr.json").read_bytes()}

    ckpt2 = make_checkpoint(root, stores["grown"], "fcn", seed=7)
    v2 = load_checkpoint(ckpt2).model_version
    assert v2 != v1
    new = versioned_store(out_root, v2)
    # the new version's run fails mid-way (its row-1 chunk directory cannot be created): the
    # store stays incomplete and the pointer stays on v1
    create_label_store(new, open_cube(stores["grown"]), LabelStoreSpec(
        model_version=v2, n_clusters=16, tile_size=TILE))
    (new / "labels" / "c").mkdir(parents=True)
    (new / "labels" / "c" / "1").write_text("not a directory")
    assert cli.main(["reprocess", "--checkpoint", str(ckpt2), "--store", str(stores["grown"]),
                     "--out-root", str(out_root), "--tile-size", str(TILE), "--actors", "1"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("sscc reprocess: error: ") and "tiles failed" in last
    assert "writing tile r1_c0 (rows 32:64, cols 0:32) failed" in last
    assert not open_label_store(new).complete
    assert read_current(out_root)["model_version"] == v1
    (new / "labels" / "c" / "1").unlink()
    summary = run_reprocess(ckpt2, stores["grown"], out_root)
    assert summary["out"] == str(new) and summary["tiles_labelled"] == 3  # rows 0 and 2 kept
    pointer = json.loads((out_root / "current").read_text())
    assert pointer["model_version"] == v2 and pointer["previous"] == v1
    assert pointer["store"] == f"{v2}.zarr" and pointer["tiles"] == 9
    np.testing.assert_array_equal(stored(new)[0], reference(ckpt2, stores["grown"])[0])
    assert chunk_bytes(old) | {"zarr.json": (old / "zarr.json").read_bytes()} == old_files
    assert not list(out_root.glob(".current.tmp-*"))


def test_switch_current_refuses_a_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing store"):
        switch_current(tmp_path, "abc123")
    with pytest.raises(ValueError, match="not usable as a file name"):
        versioned_store(tmp_path, "../evil")
    (tmp_path / "current").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON pointer"):
        read_current(tmp_path)


def test_resolve_labels_follows_the_current_pointer(tmp_path: Path) -> None:
    from sscc_core.versioning import resolve_labels, switch_current, versioned_store

    store = versioned_store(tmp_path, "abc123")
    store.mkdir(parents=True)
    assert resolve_labels(store) == store
    switch_current(tmp_path, "abc123")
    assert resolve_labels(tmp_path) == store
