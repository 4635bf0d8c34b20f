"""Canonical cube and Zarr store: masks, counts, layout, atomicity, overwrite rules, mosaics."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from affine import Affine
from rasterio.crs import CRS

from sscc_core.io import mosaic, store
from sscc_core.io.cube import make_cube

T = Affine(3.7, 0.0, 600000.0, 0.0, -3.7, 4060000.0)




def test_nonfinite_and_nodata_are_masked_and_counted(salinas: np.ndarray) -> None:
    data = salinas[:, :20, :30].astype(np.float32)
    data[3, 1, 1] = np.nan
    data[:, 2, 2] = np.inf
    data[7, 4, 5] = -np.inf
    data[0, 6, 6] = -9999.0
    ds = make_cube(data, nodata=-9999.0, name="crop")
    expected = np.ones((20, 30), bool)
    expected[1, 1] = expected[2, 2] = expected[4, 5] = expected[6, 6] = False
    np.testing.assert_array_equal(ds["valid"].values, expected)
    assert ds.attrs["n_nonfinite"] == 3
    # the raw values, NaN included, are kept as they were
    np.testing.assert_array_equal(ds["reflectance"].values, data)


def test_all_nodata_input_is_rejected(salinas: np.ndarray) -> None:
    data = np.full((4, 5, 6), -9999, dtype=np.int16)
    with pytest.raises(ValueError, match="all-nodata input"):
        make_cube(data, nodata=-9999, name="empty")
    with pytest.raises(ValueError, match="all-nodata input"):
        make_cube(np.full((2, 3, 3), np.nan, dtype=np.float32))


def test_bad_shapes_are_rejected(salinas: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"expected a \(band, y, x\) array"):
        make_cube(salinas[0])
    with pytest.raises(ValueError, match="wavelength has 3 values for 204 bands"):
        make_cube(salinas, wavelength=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="labels have shape"):
        make_cube(salinas, labels=np.zeros((2, 2), np.int16))


def test_store_round_trip_layout_and_streaming_reads(tmp_path: Path, salinas: np.ndarray) -> None:
    labels = (salinas[0] % 7).astype(np.int16)
    wl = np.linspace(400.0, 2500.0, 204)
    ds = make_cube(salinas, wavelength=wl, labels=labels, crs="EPSG:32610", transform=T,
                   scale=1e-4, name="salinasA", source="SalinasA_corrected.mat")
    path = store.write_cube(ds, tmp_path / "c.zarr", chunk=32, shard=64)
    back = store.open_cube(path)
    np.testing.assert_array_equal(back["reflectance"].values, salinas)
    np.testing.assert_array_equal(back["labels"].values, labels)
    assert back["labels"].dtype == np.int16 and back["valid"].dtype == bool
    np.testing.assert_array_equal(back["wavelength"].values, wl)
    assert back["reflectance"].attrs["reflectance_scale"] == 1e-4
    assert back.rio.crs == CRS.from_epsg(32610) and back.rio.transform().almost_equals(T)
    np.testing.assert_allclose(back["y"].values[[0, -1]],
                               [4060000.0 - 1.85, 4060000.0 - 82.5 * 3.7])
    assert back.attrs["name"] == "salinasA" and back.attrs["source"] == ["SalinasA_corrected.mat"]
    assert {"sscc_version", "created"} <= set(back.attrs)
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    group = zarr.open_group(path, mode="r")
    assert group["reflectance"].chunks == (204, 32, 32)
    assert group["reflectance"].shards == (204, 64, 64)
    assert group["valid"].chunks == (32, 32)
    np.testing.assert_array_equal(group["reflectance"][:, 30:50, 60:86], salinas[:, 30:50, 60:86])


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path, salinas: np.ndarray) -> None:
    first = make_cube(salinas[:, :10, :10])
    second = make_cube(salinas[:, 10:20, :10])
    path = store.write_cube(first, tmp_path / "c.zarr", chunk=8)
    with pytest.raises(FileExistsError, match="already exists"):
        store.write_cube(second, path)
    np.testing.assert_array_equal(store.open_cube(path)["reflectance"].values, salinas[:, :10, :10])
    store.write_cube(second, path, chunk=8, overwrite=True)
    np.testing.assert_array_equal(store.open_cube(path)["reflectance"].values,
                                  salinas[:, 10:20, :10])
    (tmp_path / "precious").mkdir()
    with pytest.raises(FileExistsError, match="not a Zarr store"):
        store.write_cube(second, tmp_path / "precious", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr", "precious"]


def _failing_cube(salinas: np.ndarray) -> xr.Dataset:
    """A cube whose data fails to compute in its last block, as a dying reader would."""
    good = make_cube(salinas[:, :40, :40])

    def block(x: np.ndarray, block_info=None) -> np.ndarray:
        if block_info[0]["chunk-location"][1:] == (1, 1):
            raise OSError("disk read failed")
        return x

    lazy = da.from_array(salinas[:, :40, :40], chunks=(204, 20, 20))
    lazy = lazy.map_blocks(block, dtype=np.int16)
    return good.assign(reflectance=good["reflectance"].copy(data=lazy))


def test_failed_write_leaves_no_store(tmp_path: Path, salinas: np.ndarray) -> None:
    bad = _failing_cube(salinas)
    with pytest.raises(OSError, match="disk read failed"):
        store.write_cube(bad, tmp_path / "c.zarr", chunk=20)
    assert list(tmp_path.iterdir()) == []
    # an existing store survives a failed overwrite untouched
    store.write_cube(make_cube(salinas[:, :5, :5]), tmp_path / "c.zarr", chunk=8)
    with pytest.raises(OSError, match="disk read failed"):
        store.write_cube(bad, tmp_path / "c.zarr", chunk=20, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["c.zarr"]
    np.testing.assert_array_equal(store.open_cube(tmp_path / "c.zarr")["reflectance"].values,
                                  salinas[:, :5, :5])


def test_open_cube_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Zarr cube store"):
        store.open_cube(tmp_path / "missing.zarr")
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(tmp_path / "other.zarr", zarr_format=3,
                                                   consolidated=False)
    with pytest.raises(ValueError, match="not a cube store"):
        store.open_cube(tmp_path / "other.zarr")
    with pytest.raises(ValueError, match="multiple of chunk"):
        store.encoding_for(xr.Dataset(), 32, 48)


def _line(salinas: np.ndarray, y0: int, x0: int, h: int, w: int) -> xr.Dataset:
    """A georeferenced 'flight line': a window of Salinas-A on the common grid T."""
    t = T @ Affine.translation(x0, y0)
    return make_cube(salinas[:, y0 : y0 + h, x0 : x0 + w], crs="EPSG:32610", transform=t,
                     source=f"line_{y0}_{x0}")


def test_mosaic_union_grid_first_valid_wins(salinas: np.ndarray) -> None:
    b_data = salinas[:, 20:83, 30:86].copy() + 1  # differs from a where they overlap
    b_data[:, 5, 5] = -9999  # invalid in b
    b = make_cube(b_data, nodata=-9999, crs="EPSG:32610", transform=T @ Affine.translation(30, 20),
                  source="line_b")
    a_data = salinas[:, :40, :50].copy()
    a_data[:, 30, 40] = -9999  # invalid in a, inside the overlap: b fills it
    a = make_cube(a_data, nodata=-9999, crs="EPSG:32610", transform=T, source="line_a")
    plan = mosaic.plan_mosaic([a, b])
    assert (plan.height, plan.width) == (83, 86) and plan.offsets == ((0, 0), (20, 30))
    out = mosaic.mosaic_cubes([a, b])
    expected = np.full_like(salinas, -9999)
    expected[:, 20:, 30:] = b_data
    expected[:, :40, :50] = np.where(a_data != -9999, a_data, expected[:, :40, :50])
    np.testing.assert_array_equal(out["reflectance"].values, expected)
    np.testing.assert_array_equal(out["valid"].values, (expected != -9999).all(axis=0))
    assert out["reflectance"].values[0, 30, 40] == salinas[0, 30, 40] + 1  # from b
    assert out["reflectance"].values[0, 25, 35] == salinas[0, 25, 35]  # a wins the overlap
    assert out.rio.transform().almost_equals(T)
    # windows assemble the same mosaic
    win = mosaic.mosaic_window([a, b], plan, 16, 48, 32, 64)
    np.testing.assert_array_equal(win["reflectance"].values, expected[:, 16:48, 32:64])


def test_mosaic_rejects_incompatible_lines(salinas: np.ndarray) -> None:
    a = _line(salinas, 0, 0, 10, 10)
    fewer = make_cube(salinas[:200, :10, :10], crs="EPSG:32610", transform=T, source="short.hdr")
    with pytest.raises(ValueError, match="line_0_0 has 204 bands, short.hdr has 200"):
        mosaic.plan_mosaic([a, fewer])
    other_crs = make_cube(salinas[:, :10, :10], crs="EPSG:32611", transform=T, source="z11")
    with pytest.raises(ValueError, match="CRS differ"):
        mosaic.plan_mosaic([a, other_crs])
    off = make_cube(salinas[:, :10, :10], crs="EPSG:32610",
                    transform=T @ Affine.translation(0.5, 0), source="half")
    with pytest.raises(ValueError, match="not on the pixel lattice"):
        mosaic.plan_mosaic([a, off])
    with pytest.raises(ValueError, match="no CRS"):
        mosaic.plan_mosaic([make_cube(salinas[:, :4, :4], source="plain")])
