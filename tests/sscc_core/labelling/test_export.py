"""Label-map export: COG read back with rasterio, quicklook pixels, streamed spectra vs numpy."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from matplotlib.image import imread
from rasterio.transform import from_origin

from sscc_core.config import SSCCConfig, config_hash
from sscc_core.labelling.export import (
    NODATA_RGBA,
    build_provenance,
    cluster_class_counts,
    cluster_mean_spectra,
    export_all,
    label_colormap,
    plot_spectra,
    write_cog,
    write_metrics_json,
    write_quicklook,
    write_spectra_csv,
)

SALINAS_CLASSES = (1, 10, 11, 12, 13, 14)


@pytest.fixture(scope="module")
def salinas_gt(mat) -> np.ndarray:
    """Salinas-A ground truth (83, 86), source class ids {1, 10..14}, 0 = unlabelled."""
    return mat("salinasA/SalinasA_gt.mat", "salinasA_gt")


@pytest.fixture(scope="module")
def salinas_labelled(salinas: np.ndarray, salinas_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Salinas-A cube (204, 83, 86) int16 and its classes remapped to 0..5 (255 = unlabelled)."""
    labels = np.full(salinas_gt.shape, 255, np.uint8)
    for i, c in enumerate(SALINAS_CLASSES):
        labels[salinas_gt == c] = i
    return salinas, labels


def _label_map(values: np.ndarray, nodata: int, crs: str | None = None) -> xr.DataArray:
    """A label DataArray on a 30 m UTM grid (north-up) or on pixel indices."""
    h, w = values.shape
    if crs is None:
        coords = {"y": np.arange(h, dtype=float), "x": np.arange(w, dtype=float)}
    else:
        coords = {"y": 4_000_000 - 30 * (np.arange(h) + 0.5),
                  "x": 500_000 + 30 * (np.arange(w) + 0.5)}
    da = xr.DataArray(values, dims=("y", "x"), coords=coords, attrs={"nodata": nodata})
    return da.rio.write_crs(crs) if crs is not None else da


def _blocks(shape: tuple[int, int], k: int, dtype: str, nodata: int) -> np.ndarray:
    """Labels in 50x50 blocks cycling through 0..k-1, with a nodata square at the top-left."""
    yy, xx = np.indices(shape)
    lab = ((yy // 50) * 7 + (xx // 50)) % k
    lab[:50, :50] = nodata
    return lab.astype(dtype)


def test_label_colormap_is_distinct_deterministic_and_reserves_nodata():
    cmap = label_colormap(256 - 1, nodata=255)
    assert cmap == label_colormap(255, nodata=255)
    assert cmap[255] == NODATA_RGBA
    colours = [cmap[i] for i in range(255)]
    assert len(set(colours)) == 255 and all(c[3] == 255 for c in colours)
    rgb = np.array([c[:3] for c in colours], float)
    dmin = min(np.abs(rgb[i] - rgb[j]).max() for i in range(20) for j in range(i))
    assert dmin >= 30  # the first 20 colours are far apart
    assert label_colormap(3) == {i: label_colormap(255)[i] for i in range(3)}
    with pytest.raises(ValueError, match="collides"):
        label_colormap(6, nodata=3)
    with pytest.raises(ValueError, match="k must be"):
        label_colormap(0)


@pytest.mark.parametrize("dtype,nodata,k", [("uint8", 255, 12), ("uint16", 65535, 300)])
def test_write_cog_round_trip(tmp_path, dtype, nodata, k):
    values = _blocks((600, 600), k, dtype, nodata)
    labels = _label_map(values, nodata, crs="EPSG:32611")
    cmap = label_colormap(k, nodata=nodata)
    prov = build_provenance(model_version="ckpt-7", inputs=["/data/a.zarr"], cfg=SSCCConfig())
    path = write_cog(labels, tmp_path / "sub" / "labels.tif", cmap, prov)
    with rasterio.open(path) as ds:
        assert ds.dtypes[0] == dtype and ds.nodata == nodata
        np.testing.assert_array_equal(ds.read(1), values)
        back = ds.colormap(1)
        assert all(back[i] == cmap[i] for i in range(k)) and back[nodata] == NODATA_RGBA
        tags = ds.tags()
        assert {key: tags[key] for key in prov} == prov
        assert tags["config_hash"] == config_hash(SSCCConfig())
        assert ds.crs == labels.rio.crs
        assert ds.transform == from_origin(500_000, 4_000_000, 30, 30)
        assert ds.block_shapes == [(256, 256)]
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1) == [2, 4]
        # nearest-resampled overviews hold real labels only
        ov = ds.read(1, out_shape=(150, 150))
        assert set(np.unique(ov)) <= set(np.unique(values))


def test_write_cog_without_crs_and_bad_input(tmp_path):
    values = _blocks((120, 90), 5, "uint8", 255)
    lazy = _label_map(values, 255).chunk({"y": 50, "x": 40})  # dask-backed, written in strips
    path = write_cog(lazy, tmp_path / "plain.tif", label_colormap(5, 255), {})
    with rasterio.open(path) as ds:
        assert ds.crs is None
        np.testing.assert_array_equal(ds.read(1), values)
    with pytest.raises(ValueError, match="attr 'nodata'"):
        write_cog(xr.DataArray(values, dims=("y", "x")), tmp_path / "x.tif", {}, {})
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_cog(_label_map(values.astype(np.int32), 255), tmp_path / "x.tif", {}, {})
    with pytest.raises(ValueError, match="invalid tag names"):
        write_cog(_label_map(values, 255), tmp_path / "x.tif", {}, {"bad key": "v"})


def test_quicklook_pixels_match_colormap(tmp_path):
    values = _blocks((600, 600), 9, "uint8", 255)
    cmap = label_colormap(9, nodata=255)
    path = write_quicklook(_label_map(values, 255), tmp_path / "q.png", cmap,
                           class_names={0: "water"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = np.round(imread(path) * 255).astype(int)  # (H, W, 4), map pixel-exact at top-left
    assert img.shape[0] == 600 and 600 < img.shape[1] < 1200
    for r, c in [(25, 25), (75, 75), (125, 560), (575, 10), (599, 599), (300, 310)]:
        want = (255, 255, 255) if values[r, c] == 255 else cmap[int(values[r, c])][:3]
        assert tuple(img[r, c, :3]) == want, (r, c, values[r, c])


def test_quicklook_small_map_is_enlarged_with_title(tmp_path, salinas_labelled):
    _, labels = salinas_labelled
    cmap = label_colormap(6, nodata=255)
    path = write_quicklook(_label_map(labels, 255), tmp_path / "q.png", cmap, title="Salinas-A")
    img = np.round(imread(path) * 255).astype(int)
    assert img.shape[0] >= 3 * 83 and img.shape[1] > 3 * 86
    colours = {tuple(p) for p in img[..., :3].reshape(-1, 3)[::7]}
    assert all(cmap[i][:3] in colours for i in range(6))


def _reference(cube: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Direct numpy per-class count, mean and std over all pixels of each label."""
    x = cube.reshape(cube.shape[0], -1).astype(np.float64)
    lab = labels.ravel()
    count = np.array([(lab == c).sum() for c in range(k)])
    mean = np.stack([x[:, lab == c].mean(1) for c in range(k)])
    std = np.stack([x[:, lab == c].std(1) for c in range(k)])
    return count, mean, std


def test_cluster_spectra_match_numpy_on_salinas(tmp_path, salinas_labelled):
    cube, labels = salinas_labelled
    count, mean, std = _reference(cube, labels, 6)
    assert count.sum() == 5348
    stats = cluster_mean_spectra(cube, labels, None, 6, nodata=255, tile_size=1024)
    np.testing.assert_array_equal(stats.count, count)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(stats.std, std, rtol=1e-9)

    # chunked zarr input, streamed in 32x32 windows (9 tiles), with a scale and an invalid stripe
    z = zarr.create_array(tmp_path / "c.zarr", shape=cube.shape, chunks=(204, 32, 32),
                          dtype=cube.dtype)
    z[:] = cube
    valid = np.ones(labels.shape, bool)
    valid[40:45, :] = False
    lab_da = xr.DataArray(labels, dims=("y", "x"), attrs={"nodata": 255})
    streamed = cluster_mean_spectra(z, lab_da, valid, 6, scale=1e-4, tile_size=32)
    masked = np.where(valid, labels, 255)
    count_v, mean_v, std_v = _reference(cube, masked, 6)
    np.testing.assert_array_equal(streamed.count, count_v)
    np.testing.assert_allclose(streamed.mean, mean_v * 1e-4, rtol=1e-12)
    np.testing.assert_allclose(streamed.std, std_v * 1e-4, rtol=1e-9)


def test_cluster_spectra_empty_cluster_and_bad_labels(salinas_labelled):
    cube, labels = salinas_labelled
    stats = cluster_mean_spectra(cube, labels, None, 8, nodata=255)
    assert list(stats.count[6:]) == [0, 0] and np.isnan(stats.mean[6:]).all()
    with pytest.raises(ValueError, match="label 5 outside 0..4"):
        cluster_mean_spectra(cube, labels, None, 5, nodata=255)
    with pytest.raises(ValueError, match="is not"):
        cluster_mean_spectra(cube[:, :80], labels, None, 6, nodata=255)


def test_spectra_csv_and_plot(tmp_path, salinas_labelled):
    cube, labels = salinas_labelled
    stats = cluster_mean_spectra(cube, labels, None, 7, nodata=255)
    wl = np.linspace(400.0, 2500.0, 204)
    path = write_spectra_csv(stats, wl, tmp_path / "s.csv")
    with path.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:3] == ["cluster", "count", "400nm"] and len(rows[0]) == 2 + 204
    assert len(rows) == 1 + 7 and rows[7][1] == "0" and rows[7][2] == ""
    np.testing.assert_array_equal(np.array(rows[3][2:], float), stats.mean[2])
    std_rows = list(csv.reader(write_spectra_csv(stats, None, tmp_path / "d.csv", "std").open()))
    assert std_rows[0][2] == "band_0"
    np.testing.assert_array_equal(np.array(std_rows[1][2:], float), stats.std[0])
    png = plot_spectra(stats, wl, tmp_path / "s.png", label_colormap(7))
    assert imread(png).shape[:2] == (500, 900)


def test_metrics_json_round_trip(tmp_path):
    metrics = {"acc": np.float64(0.91), "nmi": 0.8, "per_class": np.array([1, 2]), "k": np.int64(6)}
    prov = build_provenance(model_version="m1", inputs="scene.zarr", tiles=12)
    doc = json.loads(write_metrics_json(metrics, tmp_path / "m.json", prov).read_text())
    assert doc == {"metrics": {"acc": 0.91, "nmi": 0.8, "per_class": [1, 2], "k": 6},
                   "provenance": prov}
    assert json.loads(prov["inputs"]) == ["scene.zarr"] and prov["tiles"] == "12"


def test_export_all_bundle(tmp_path, salinas_labelled, salinas_gt):
    cube, labels = salinas_labelled
    gt = salinas_gt.astype(np.int16)
    lab_da = _label_map(labels, 255)
    ds = xr.Dataset(
        {"reflectance": (("band", "y", "x"), cube, {"reflectance_scale": 1e-4}),
         "valid": (("y", "x"), np.ones(labels.shape, bool))},
        coords={"band": np.arange(204), "wavelength": ("band", np.linspace(400.0, 2500.0, 204)),
                "y": lab_da.y, "x": lab_da.x},
    ).chunk({"y": 32, "x": 32})
    prov = build_provenance(model_version="m1", inputs="salinasA.zarr")
    paths = export_all(lab_da, tmp_path / "out", cube=ds, ground_truth=gt,
                       metrics={"acc": 1.0}, provenance=prov)
    assert set(paths) == {"cog", "quicklook", "spectra_csv", "spectra_std_csv", "spectra_png",
                          "class_counts", "metrics"}
    assert all(p.is_file() and p.parent == tmp_path / "out" for p in paths.values())
    with rasterio.open(paths["cog"]) as r:
        np.testing.assert_array_equal(r.read(1), labels)
        assert len(r.colormap(1)) == 256 and r.tags()["model_version"] == "m1"
    rows = list(csv.reader(paths["spectra_csv"].open()))
    _, mean, _ = _reference(cube, labels, 6)
    np.testing.assert_allclose(np.array([r[2:] for r in rows[1:]], float), mean * 1e-4, rtol=1e-12)
    table = list(csv.reader(paths["class_counts"].open()))
    counts = np.array([r[1:] for r in table[1:]], int)
    assert counts.shape == (6, 14)  # classes 1..14 of the original ground truth
    for i, c in enumerate(SALINAS_CLASSES):  # the labels are the ground truth: one cell each
        assert counts[i, c - 1] == (gt == c).sum() == counts[i].sum()


def test_cluster_class_counts_tiles_agree(salinas_labelled, salinas_gt):
    _, labels = salinas_labelled
    gt = salinas_gt
    lab_da = _label_map(labels, 255)
    np.testing.assert_array_equal(cluster_class_counts(lab_da, gt, 6, tile_size=16),
                                  cluster_class_counts(lab_da, gt, 6, tile_size=1000))
