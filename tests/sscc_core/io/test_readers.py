"""Readers: .mat benchmarks, ENVI, GeoTIFF, NEON HDF5, NetCDF, and format dispatch.

ENVI/GeoTIFF/NEON/NetCDF files are first written in their real layouts from a 20 x 30 crop of
Salinas-A (real int16 spectra), then read back and compared with the crop and, for ENVI, with
GDAL's own ENVI driver (rasterio).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import scipy.io
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from sscc_core.io import envi, matlab, readers, store

DATA = Path(__file__).resolve().parents[3] / "data"
UTM = "UTM, 1.000, 1.000, 600000.0, 4060000.0, 3.7, 3.7, 10, North, WGS-84, units=Meters"
ENVI_CODES = {np.dtype("uint8"): 1, np.dtype("int16"): 2, np.dtype("float32"): 4,
              np.dtype("uint16"): 12}


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """(204, 20, 30) int16 crop of Salinas-A, band-first."""
    cube = scipy.io.loadmat(DATA / "salinasA/SalinasA_corrected.mat")["salinasA_corrected"]
    return np.ascontiguousarray(cube[10:30, 20:50].transpose(2, 0, 1))


def write_envi(base: Path, cube: np.ndarray, interleave: str = "bsq", big_endian: bool = False,
               **fields: str) -> Path:
    """Write ``cube`` (B, H, W) as ENVI ``base.img`` + ``base.hdr``; returns the header path."""
    axes = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}[interleave]
    dtype = cube.dtype.newbyteorder(">" if big_endian else "<")
    base.with_suffix(".img").write_bytes(cube.transpose(axes).astype(dtype).tobytes())
    b, h, w = cube.shape
    lines = ["ENVI", "description = {real spectra,", "  Salinas-A crop}", f"samples = {w}",
             f"lines = {h}", f"bands = {b}", "header offset = 0", "file type = ENVI Standard",
             f"data type = {ENVI_CODES[cube.dtype]}", f"interleave = {interleave}",
             f"byte order = {int(big_endian)}"]
    lines += [f"{k.replace('_', ' ')} = {v}" for k, v in fields.items()]
    hdr = base.with_suffix(".hdr")
    hdr.write_text("\n".join(lines) + "\n")
    return hdr


def braces(values) -> str:
    """ENVI list syntax, wrapped over several lines like real headers."""
    items = [repr(float(v)) for v in values]
    return "{" + ",\n ".join(", ".join(items[i : i + 8]) for i in range(0, len(items), 8)) + "}"


# --- .mat benchmarks -------------------------------------------------------------------------

def test_indian_pines_wavelengths_and_labels() -> None:
    ds = matlab.read_benchmark("indian_pines")
    assert dict(ds.sizes) == {"band": 200, "y": 145, "x": 145}
    centres, _ = matlab.read_spc(DATA / "indian_pines/92AV3C.spc")
    assert centres.size == 220
    wl = ds["wavelength"].values
    removed = np.setdiff1d(centres, wl)  # the water-absorption bands near 1400 and 1900 nm
    assert removed.size == 20 and np.all((removed > 1340) & (removed < 2500))
    assert np.sum((removed > 1800) & (removed < 2000)) == 14
    # band 104 (1-based) is removed: output band 103 (0-based) is the 1-based band 109
    assert wl[102] == centres[102] and wl[103] == centres[108]
    assert int((ds["labels"] > 0).sum()) == 10249 and int(ds["labels"].max()) == 16


def test_salinas_a_labels_remapped_with_source_ids() -> None:
    ds = matlab.read_benchmark("salinasA")
    raw = scipy.io.loadmat(DATA / "salinasA/SalinasA_gt.mat")["salinasA_gt"]
    assert ds["labels"].attrs["source_class_ids"] == [1, 10, 11, 12, 13, 14]
    ids = np.array([0, 1, 10, 11, 12, 13, 14])
    np.testing.assert_array_equal(ids[ds["labels"].values], raw)
    assert int((ds["labels"] > 0).sum()) == 5348


@pytest.mark.parametrize("name, n", [("samson", 95), ("jasper_ridge", 100)])
def test_column_major_scenes_match_their_abundances(name: str, n: int) -> None:
    """Cube and abundance labels share one pixel order: the linear mixing M @ A rebuilds each
    pixel of the cube, and the argmax labels form spatially coherent regions."""
    b = matlab.BENCHMARKS[name]
    ds = matlab.read_benchmark(name)
    end = scipy.io.loadmat(DATA / b.gt_file)
    raw = scipy.io.loadmat(DATA / b.cube_file)[b.cube_var].astype(np.float64)
    # pixel (r, c) is MATLAB column r + c * nRow
    for r, c in [(0, 0), (3, 71), (n - 1, 5), (40, n - 1)]:
        np.testing.assert_array_equal(ds["reflectance"].values[:, r, c], raw[:, r + c * n])
    cube = ds["reflectance"].values.astype(np.float64)
    mixed = np.einsum("bk,khw->bhw", end["M"], matlab.columns_to_cube(end["A"], n, n))

    def median_cosine(a: np.ndarray) -> float:
        return float(np.median((a * cube).sum(0) / np.linalg.norm(a, axis=0)
                               / np.linalg.norm(cube, axis=0)))

    # the right pixel order reconstructs every spectrum's shape; a transposed one does not
    assert median_cosine(mixed) > 0.995
    assert median_cosine(mixed.transpose(0, 2, 1)) < 0.99
    lab = ds["labels"].values
    agree = ((lab[1:] == lab[:-1]).mean() + (lab[:, 1:] == lab[:, :-1]).mean()) / 2
    assert agree > 0.85


# --- ENVI -----------------------------------------------------------------------------------

@pytest.mark.parametrize("interleave, big_endian", [("bsq", False), ("bil", True), ("bip", False)])
def test_envi_matches_source_and_gdal(tmp_path: Path, crop: np.ndarray, interleave: str,
                                      big_endian: bool) -> None:
    cube = crop.copy()
    cube[:, 2, 3] = -9999
    cube[5, 7, 8] = -9999  # one band at nodata is enough to invalidate the pixel
    bbl = np.ones(cube.shape[0], dtype=int)
    bbl[[0, 100]] = 0
    wl_um = np.linspace(0.4, 2.5, cube.shape[0])
    hdr = write_envi(tmp_path / "line", cube, interleave, big_endian,
                     map_info="{" + UTM + "}", wavelength_units="Micrometers",
                     wavelength=braces(wl_um), fwhm=braces(np.full(cube.shape[0], 0.01)),
                     bbl=braces(bbl), data_ignore_value="-9999",
                     reflectance_scale_factor="10000")
    keep = bbl.astype(bool)
    for path in (hdr, hdr.with_suffix(".img")):
        ds = readers.read_any(path)
        np.testing.assert_array_equal(ds["reflectance"].values, cube[keep])
        assert ds["reflectance"].dtype == np.int16
    np.testing.assert_allclose(ds["wavelength"].values, wl_um[keep] * 1000)
    np.testing.assert_allclose(ds["fwhm"].values, 10.0)
    assert ds["reflectance"].attrs["reflectance_scale"] == pytest.approx(1e-4)
    assert ds["reflectance"].attrs["nodata"] == -9999
    expected_valid = np.ones(cube.shape[1:], bool)
    expected_valid[2, 3] = expected_valid[7, 8] = False
    np.testing.assert_array_equal(ds["valid"].values, expected_valid)
    with rasterio.open(hdr.with_suffix(".img")) as src:
        gdal = src.read()
        assert ds.rio.crs == src.crs == CRS.from_epsg(32610)
        assert ds.rio.transform().almost_equals(src.transform)
    np.testing.assert_array_equal(gdal, cube)  # GDAL keeps every band


def test_envi_georeferencing_survives_the_store(tmp_path: Path, crop: np.ndarray) -> None:
    hdr = write_envi(tmp_path / "line", crop, map_info="{" + UTM.replace("1.000, 1.000", "3.0, 5.0")
                     .replace("3.7, 3.7", "2.0, 4.0") + "}")
    ds = envi.read_envi(hdr)
    expected = Affine(2.0, 0, 600000.0 - 2 * 2.0, 0, -4.0, 4060000.0 + 4 * 4.0)
    assert ds.rio.transform().almost_equals(expected)
    with rasterio.open(hdr.with_suffix(".img")) as src:
        assert src.transform.almost_equals(expected)
    back = store.open_cube(store.write_cube(ds, tmp_path / "s.zarr", chunk=8))
    assert back.rio.crs == CRS.from_epsg(32610)
    assert back.rio.transform().almost_equals(expected)
    np.testing.assert_allclose(back["x"].values[:2], [600000.0 - 4 + 1, 600000.0 - 4 + 3])
    np.testing.assert_array_equal(back["reflectance"].values, crop)


def test_envi_rotated_grid_agrees_with_gdal(tmp_path: Path, crop: np.ndarray) -> None:
    """AVIRIS-NG style rotation (square pixels, reference pixel (1, 1))."""
    hdr = write_envi(tmp_path / "rot", crop[:5], map_info="{" + UTM + ", rotation=75.0}")
    ds = envi.read_envi(hdr)
    with rasterio.open(hdr.with_suffix(".img")) as src:
        assert ds.rio.transform(recalc=False).almost_equals(src.transform)
    np.testing.assert_array_equal(ds["x"].values, np.arange(30))  # not north-up: pixel indices


def test_envi_wkt_coordinate_system_string(tmp_path: Path, crop: np.ndarray) -> None:
    wkt = CRS.from_epsg(32611).to_wkt()
    hdr = write_envi(tmp_path / "w", crop[:3], map_info="{" + UTM + "}",
                     coordinate_system_string="{" + wkt + "}")
    assert envi.read_envi(hdr).rio.crs == CRS.from_epsg(32611)


def test_envi_errors(tmp_path: Path, crop: np.ndarray) -> None:
    hdr = write_envi(tmp_path / "t", crop[:3])
    with hdr.with_suffix(".img").open("r+b") as fh:
        fh.truncate(100)
    with pytest.raises(ValueError, match="truncated"):
        envi.read_envi(hdr)
    hdr.write_text(hdr.read_text().replace("data type = 2", "data type = 6"))
    with pytest.raises(ValueError, match="unsupported data type 6"):
        envi.read_envi(hdr)
    hdr.write_text(hdr.read_text().replace("data type = 6", "data type = 2")
                   .replace("interleave = bsq", "interleave = bsx"))
    with pytest.raises(ValueError, match="unknown interleave 'bsx'"):
        envi.read_envi(hdr)
    hdr.write_text(hdr.read_text().replace("samples = 30\n", ""))
    with pytest.raises(ValueError, match="GDAL's ENVI driver cannot read it: .*samples"):
        envi.read_envi(hdr)
    (tmp_path / "lonely.img").write_bytes(b"\0" * 16)
    with pytest.raises(FileNotFoundError, match="no ENVI header"):
        envi.read_envi(tmp_path / "lonely.img")
    (tmp_path / "lonely.hdr").write_text("hello = 1\n")
    with pytest.raises(ValueError, match="lonely.hdr: not an ENVI header"):
        envi.read_envi(tmp_path / "lonely.img")


def store_digest(path: Path) -> str:
    """SHA-256 of a cube store's content: every variable's and coordinate's name, dtype, shape,
    bytes and attributes, and the dataset attributes other than the run-specific ``created``,
    ``sscc_version`` and ``source`` (temporary paths)."""
    ds = store.open_cube(path)
    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        v = ds[name]
        h.update(json.dumps([name, str(v.dtype), v.shape, v.attrs], sort_keys=True,
                            default=str).encode())
        h.update(np.ascontiguousarray(v.values).tobytes())
    kept = {k: v for k, v in ds.attrs.items() if k not in ("created", "sscc_version", "source")}
    h.update(json.dumps(kept, sort_keys=True, default=str).encode())
    return h.hexdigest()


# Digests of the stores the hand-written ENVI reader (memory-mapped binary, header parsed in
# Python; commit f409f5f) ingested from these files; the GDAL-based reader must match them.
PREVIOUS_READER_STORES = {
    ("bsq", False): "4c7c150a0c94e7b538aa36a8c4473650a6e3ebb9ce0d66f38df34ecc8fe242a9",
    ("bil", True): "4c7c150a0c94e7b538aa36a8c4473650a6e3ebb9ce0d66f38df34ecc8fe242a9",
    ("bip", False): "7e26859930eda3c6df547198dc5a5f8a8095daff8446048578e51bbdb15312e7",
}


@pytest.mark.parametrize("interleave, big_endian", sorted(PREVIOUS_READER_STORES))
def test_envi_store_identical_to_previous_reader(tmp_path: Path, interleave: str,
                                                 big_endian: bool) -> None:
    """The whole Salinas-A scene (204 bands, real int16 spectra) as ENVI with every header field
    the reader uses: nm wavelengths, fwhm, bad-band list, nodata pixels, reflectance scale, map
    info with a (3, 5) reference pixel and non-square pixels; the bip case a rotated grid and a
    WKT coordinate system string. Ingested, the store equals the previous reader's bit for bit."""
    cube = scipy.io.loadmat(DATA / "salinasA/SalinasA_corrected.mat")["salinasA_corrected"]
    cube = np.ascontiguousarray(cube.transpose(2, 0, 1))
    cube[:, 4, 9] = -9999
    cube[17, 40:44, 2] = -9999
    bbl = np.ones(cube.shape[0], dtype=int)
    bbl[[0, 1, 107, 108, 150, 203]] = 0
    wl = np.linspace(400.123456789, 2499.987654321, cube.shape[0])
    map_info = UTM.replace("1.000, 1.000", "3.0, 5.0").replace("3.7, 3.7", "3.3, 3.9")
    extra = {}
    if interleave == "bip":
        map_info += ", rotation=12.5"
        extra["coordinate_system_string"] = "{" + CRS.from_epsg(32611).to_wkt() + "}"
    hdr = write_envi(tmp_path / "scene", cube, interleave, big_endian,
                     map_info="{" + map_info + "}", wavelength_units="Nanometers",
                     wavelength=braces(wl), fwhm=braces(np.gradient(wl) * 1.1), bbl=braces(bbl),
                     data_ignore_value="-9999", reflectance_scale_factor="10000.0", **extra)
    written = store.write_cube(readers.read_any(hdr), tmp_path / "scene.zarr", chunk=32)
    np.testing.assert_array_equal(store.open_cube(written)["reflectance"].values,
                                  cube[bbl.astype(bool)])
    digest = store_digest(written)
    assert digest == PREVIOUS_READER_STORES[interleave, big_endian], digest


def test_envi_field_names_are_not_case_sensitive(tmp_path: Path, crop: np.ndarray) -> None:
    """``Map Info``, ``Reflectance  Scale Factor`` (two blanks), ``BBL``... read as their
    lower-case names, as ENVI reads them."""
    fields = {"map_info": "{" + UTM + "}", "wavelength_units": "Nanometers",
              "wavelength": braces(np.linspace(400, 900, 6)), "bbl": "{1, 0, 1, 1, 1, 1}",
              "data_ignore_value": "-9999", "reflectance_scale_factor": "10000"}
    stores = []
    for folder, rename in (("lower", str), ("mixed", str.title)):
        (tmp_path / folder).mkdir()
        hdr = write_envi(tmp_path / folder / "line", crop[:6], "bil", True, **fields)
        text = hdr.read_text().replace("reflectance scale", "reflectance  scale")
        lines = [rename(k) + " =" + v for k, v in (line.split(" =", 1) if " =" in line else
                                                   (line, "") for line in text.splitlines())]
        hdr.write_text("ENVI\n" + "\n".join(lines[1:]) + "\n")
        stores.append(store.write_cube(envi.read_envi(hdr), tmp_path / folder / "s.zarr"))
    assert "Map Info =" in hdr.read_text() and "Reflectance  Scale Factor =" in hdr.read_text()
    assert store_digest(stores[0]) == store_digest(stores[1])
    cube = store.open_cube(stores[1])
    assert cube.sizes["band"] == 5 and cube.rio.crs == CRS.from_epsg(32610)
    assert cube["reflectance"].attrs == {"reflectance_scale": 1e-4, "nodata": -9999}


# --- GeoTIFF --------------------------------------------------------------------------------

def test_geotiff_values_nodata_crs_and_wavelengths(tmp_path: Path, crop: np.ndarray) -> None:
    cube = crop[:12].copy()
    cube[:, 0, 0] = -32768
    transform = Affine(30.0, 0, 610000.0, 0, -30.0, 4050000.0)
    wl = np.linspace(420.0, 980.0, 12)
    path = tmp_path / "enmap.tif"
    with rasterio.open(path, "w", driver="GTiff", height=20, width=30, count=12, dtype="int16",
                       crs="EPSG:32633", transform=transform, nodata=-32768) as dst:
        dst.write(cube)
        for i, w in enumerate(wl, start=1):
            dst.set_band_description(i, f"band {i} ({w:.2f} nm)")
    ds = readers.read_any(path)
    np.testing.assert_array_equal(ds["reflectance"].values, cube)
    np.testing.assert_allclose(ds["wavelength"].values, wl, atol=0.005)
    assert ds["reflectance"].attrs["nodata"] == -32768
    assert not ds["valid"].values[0, 0] and int(ds["valid"].sum()) == 599
    back = store.open_cube(store.write_cube(ds, tmp_path / "g.zarr", chunk=16))
    assert back.rio.crs == CRS.from_epsg(32633)
    assert back.rio.transform().almost_equals(transform)
    np.testing.assert_array_equal(back["reflectance"].values, cube)


def test_geotiff_wavelength_tags_in_micrometres(tmp_path: Path, crop: np.ndarray) -> None:
    path = tmp_path / "tags.tif"
    with rasterio.open(path, "w", driver="GTiff", height=20, width=30, count=4,
                       dtype="int16") as dst:
        dst.write(crop[:4])
        for i in range(1, 5):
            dst.update_tags(i, wavelength=str(0.4 + 0.1 * i), wavelength_units="Micrometers")
    ds = readers.read_any(path)
    np.testing.assert_allclose(ds["wavelength"].values, [500, 600, 700, 800])
    assert ds.rio.crs is None


# --- NEON HDF5 and NetCDF -------------------------------------------------------------------

def write_neon(path: Path, cube: np.ndarray, site: str = "SJER") -> None:
    """NEON AOP reflectance layout: (y, x, band) int16 with NEON's attribute names."""
    with h5py.File(path, "w") as f:
        refl = f.create_group(f"{site}/Reflectance")
        d = refl.create_dataset("Reflectance_Data", data=cube.transpose(1, 2, 0),
                                chunks=(8, 8, cube.shape[0]))
        d.attrs["Scale_Factor"] = 10000.0
        d.attrs["Data_Ignore_Value"] = -9999.0
        spec = refl.create_group("Metadata/Spectral_Data")
        spec["Wavelength"] = np.linspace(383.5, 2512.0, cube.shape[0])
        spec["FWHM"] = np.full(cube.shape[0], 5.0)
        cs = refl.create_group("Metadata/Coordinate_System")
        cs["EPSG Code"] = np.bytes_("32611")
        cs["Map_Info"] = np.bytes_("UTM,  1.000,  1.000,       257000.00,       4112000.00,       "
                                   "1.000000e+00,       1.000000e+00,  11,  North,  WGS-84,  "
                                   "units=Meters, 0, 0")


def test_neon_hdf5(tmp_path: Path, crop: np.ndarray) -> None:
    cube = crop.copy()
    cube[:, 4, 4] = -9999
    write_neon(tmp_path / "NEON_D17_SJER_DP3_257000_4112000_reflectance.h5", cube)
    ds = readers.read_any(tmp_path / "NEON_D17_SJER_DP3_257000_4112000_reflectance.h5")
    np.testing.assert_array_equal(ds["reflectance"].values, cube)
    assert ds["reflectance"].attrs["reflectance_scale"] == pytest.approx(1e-4)
    assert not ds["valid"].values[4, 4] and int(ds["valid"].sum()) == 599
    assert ds.attrs["name"] == "SJER"
    back = store.open_cube(store.write_cube(ds, tmp_path / "n.zarr", chunk=8, shard=16))
    assert back.rio.crs == CRS.from_epsg(32611)
    assert back.rio.transform().almost_equals(Affine(1.0, 0, 257000.0, 0, -1.0, 4112000.0))
    np.testing.assert_array_equal(back["reflectance"].values, cube)
    np.testing.assert_allclose(back["fwhm"].values, 5.0)


def test_generic_netcdf_y_x_band(tmp_path: Path, crop: np.ndarray) -> None:
    wl = np.linspace(400.0, 2500.0, crop.shape[0])
    var = xr.DataArray(crop.transpose(1, 2, 0), dims=("y", "x", "bands"),
                       attrs={"_FillValue": np.int16(-9999), "scale_factor": 1e-4})
    xr.Dataset({"reflectance": var}, coords={"wavelength": ("bands", wl)}).to_netcdf(
        tmp_path / "r.nc", engine="h5netcdf")
    ds = readers.read_any(tmp_path / "r.nc")
    np.testing.assert_array_equal(ds["reflectance"].values, crop)
    np.testing.assert_allclose(ds["wavelength"].values, wl)
    assert ds["reflectance"].attrs["nodata"] == -9999
    assert ds["reflectance"].attrs["reflectance_scale"] == pytest.approx(1e-4)


# --- dispatch -------------------------------------------------------------------------------

def test_detect_format_by_content_and_errors(tmp_path: Path, crop: np.ndarray) -> None:
    assert readers.detect_format(DATA / "salinasA/SalinasA_gt.mat") == "mat"
    write_neon(tmp_path / "tile.bin", crop[:3])  # HDF5 content, misleading extension
    assert readers.detect_format(tmp_path / "tile.bin") == "neon"
    unknown = tmp_path / "notes.xyz"
    unknown.write_text("just text")
    with pytest.raises(ValueError, match=r"notes\.xyz: unknown format"):
        readers.read_any(unknown)
    with pytest.raises(FileNotFoundError, match="missing.hdr"):
        readers.read_any(tmp_path / "missing.hdr")


def test_emit_like_netcdf_with_band_group(tmp_path: Path, crop: np.ndarray) -> None:
    """EMIT L2A layout: (downtrack, crosstrack, bands) float32, wavelengths in a group."""
    refl = (crop.transpose(1, 2, 0) / 10000.0).astype(np.float32)
    refl[3, 4] = -9999.0
    path = tmp_path / "EMIT_L2A_RFL.nc"
    xr.Dataset({"reflectance": (("downtrack", "crosstrack", "bands"), refl,
                                {"_FillValue": np.float32(-9999.0)})}).to_netcdf(
        path, engine="h5netcdf")
    wl = np.linspace(381.0, 2493.0, crop.shape[0])
    xr.Dataset({"wavelengths": ("bands", wl)}).to_netcdf(
        path, engine="h5netcdf", group="sensor_band_parameters", mode="a")
    ds = readers.read_any(path)
    np.testing.assert_array_equal(ds["reflectance"].values, refl.transpose(2, 0, 1))
    np.testing.assert_allclose(ds["wavelength"].values, wl)
    assert not ds["valid"].values[3, 4] and int(ds["valid"].sum()) == 599


def test_netcdf_grid_mapping_gives_crs_and_transform(tmp_path: Path, crop: np.ndarray) -> None:
    t = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4100000.0)
    y = t.f + t.e * (np.arange(20) + 0.5)
    x = t.c + t.a * (np.arange(30) + 0.5)
    src = xr.Dataset({"Reflectance": (("band", "y", "x"), crop[:5])},
                     coords={"band": np.arange(5), "y": y, "x": x})
    src.rio.write_crs("EPSG:32612", inplace=True).to_netcdf(tmp_path / "g.nc", engine="h5netcdf")
    ds = readers.read_any(tmp_path / "g.nc")
    np.testing.assert_array_equal(ds["reflectance"].values, crop[:5])
    assert ds.rio.crs == CRS.from_epsg(32612)
    assert ds.rio.transform().almost_equals(t)
