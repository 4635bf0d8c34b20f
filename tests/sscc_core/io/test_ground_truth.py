"""Ground truth of one's own scene: class maps read from rasters and ``.mat`` files, checked against
the cube's grid and attached, on Salinas-A's real cube and class map written as GeoTIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import scipy.io
from affine import Affine

from sscc_core.io import ground_truth, matlab, readers

DATA = Path(__file__).resolve().parents[3] / "data"
UTM = Affine(3.7, 0.0, 600000.0, 0.0, -3.7, 4060000.0)


def write_tif(path: Path, data: np.ndarray, transform: Affine = UTM, crs: str = "EPSG:32610",
              nodata: float | None = None) -> Path:
    """``data`` ((B, H, W) or (H, W)) as a GeoTIFF on ``transform`` / ``crs``."""
    bands = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2],
                       count=bands.shape[0], dtype=bands.dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(bands)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Salinas-A's cube as a georeferenced GeoTIFF, and its (83, 86) source class map."""
    root = tmp_path_factory.mktemp("gt")
    cube = matlab.load_mat(DATA / "salinasA/SalinasA_corrected.mat")["salinasA_corrected"]
    gt = matlab.load_mat(DATA / "salinasA/SalinasA_gt.mat")["salinasA_gt"]
    return write_tif(root / "cube.tif", np.ascontiguousarray(cube.transpose(2, 0, 1))), gt


def test_a_geotiff_class_map_is_attached_as_the_benchmark_reader_attaches_it(tmp_path, scene):
    cube_path, gt = scene
    classes = gt.astype(np.uint8)
    classes[0, :5] = 255  # the raster's nodata: unlabelled, as 0 is
    cmap = ground_truth.read_class_map(write_tif(tmp_path / "gt.tif", classes, nodata=255))
    assert cmap.crs.to_epsg() == 32610 and cmap.transform.almost_equals(UTM)
    ds = ground_truth.attach_ground_truth(readers.read_any(cube_path), cmap)
    expected = matlab.read_benchmark("salinasA")["labels"].values.copy()
    expected[0, :5] = 0
    np.testing.assert_array_equal(ds["labels"].values, expected)
    assert ds["labels"].attrs["source_class_ids"] == [1, 10, 11, 12, 13, 14]
    assert ds.attrs["source"] == [str(cube_path), str(tmp_path / "gt.tif")]


def test_a_mat_class_map_is_picked_by_rank_or_by_name(tmp_path):
    gt = matlab.load_mat(DATA / "salinasA/SalinasA_gt.mat")["salinasA_gt"]
    one = tmp_path / "one.mat"
    scipy.io.savemat(one, {"classes": gt.astype(float), "scale": np.array([[3.7]])})
    np.testing.assert_array_equal(ground_truth.read_class_map(one).labels, gt)
    two = tmp_path / "two.mat"
    scipy.io.savemat(two, {"a": gt, "b": gt * 2})
    with pytest.raises(ValueError, match=r"cannot tell which variable is the class map "
                                         r"\(candidates \['a', 'b'\]\); name it"):
        ground_truth.read_class_map(two)
    np.testing.assert_array_equal(ground_truth.read_class_map(two, "b").labels, gt * 2)


def test_class_maps_that_are_not_on_the_grid_or_not_classes_are_refused(tmp_path, scene):
    cube_path, gt = scene
    cube = readers.read_any(cube_path)
    classes = gt.astype(np.uint8)

    def refused(cmap_path: Path, message: str, var: str | None = None) -> None:
        with pytest.raises(ValueError, match=message):
            ground_truth.attach_ground_truth(cube, ground_truth.read_class_map(cmap_path, var))

    refused(write_tif(tmp_path / "small.tif", classes[:80]),
            r"small.tif: class map is 80 x 86 pixels, the cube 83 x 86; it must be on the cube's grid")
    refused(write_tif(tmp_path / "crs.tif", classes, crs="EPSG:32611"),
            r"crs.tif: class map CRS EPSG:32611 is not the cube's EPSG:32610")
    refused(write_tif(tmp_path / "shift.tif", classes, transform=UTM @ Affine.translation(1, 0)),
            r"shift.tif: class map geotransform \(3.7, 0.0, 600003.7.*is not the cube's")
    refused(write_tif(tmp_path / "bands.tif", np.stack([classes, classes])),
            r"bands.tif: a class map has one band, this raster has 2")
    refused(write_tif(tmp_path / "float.tif", classes.astype(np.float32) / 2),
            r"float.tif: class ids must be integers, found 0.5")
    refused(write_tif(tmp_path / "neg.tif", classes.astype(np.int16) - 1),
            r"neg.tif: class ids must be >= 0 \(0 = unlabelled\), found -1")
    refused(write_tif(tmp_path / "empty.tif", np.zeros_like(classes), nodata=255),
            r"empty.tif: the class map labels no pixel")
    refused(write_tif(tmp_path / "var.tif", classes), r"var.tif: a variable name \('x'\) "
            r"applies to .mat class maps only", var="x")
    with pytest.raises(ValueError, match="the cube already has ground-truth labels"):
        ground_truth.attach_ground_truth(matlab.read_benchmark("salinasA"),
                                         ground_truth.read_class_map(
                                             write_tif(tmp_path / "ok.tif", classes)))
