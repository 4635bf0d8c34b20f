"""``sscc ingest``: benchmark round trips, user errors, and parallel/mosaic ingest on Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import scipy.io
from affine import Affine
from rasterio.crs import CRS

from pipelines import ingest
from pipelines.reproduce import main as reproduce_main
from sscc_core.accuracy.experiment import load_scene, load_store_scene
from sscc_core.io import matlab, store

DATA = Path(__file__).resolve().parents[2] / "data"
T = Affine(3.7, 0.0, 600000.0, 0.0, -3.7, 4060000.0)




def reference(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W) cube and (H, W) class map straight from the .mat files, for comparison."""
    b = matlab.BENCHMARKS[name]
    mat = scipy.io.loadmat(DATA / b.cube_file)
    gt = scipy.io.loadmat(DATA / b.gt_file)[b.gt_var]
    raw = mat[b.cube_var]
    if b.layout == "hwb":
        return raw.transpose(2, 0, 1), gt
    h, w = int(mat["nRow"][0, 0]), int(mat["nCol"][0, 0])
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    columns = rows + cols * h  # MATLAB column-major pixel index
    return raw[:, columns], gt[:, columns].argmax(axis=0) + 1


@pytest.mark.parametrize("name", sorted(matlab.BENCHMARKS))
def test_benchmark_round_trip_is_exact(tmp_path: Path, name: str, capsys) -> None:
    out = tmp_path / f"{name}.zarr"
    assert ingest.main(["--benchmark", name, "--out", str(out), "--chunk", "64"]) == 0
    ds = store.open_cube(out)
    cube, classes = reference(name)
    assert ds["reflectance"].dtype == cube.dtype
    np.testing.assert_array_equal(ds["reflectance"].values, cube)
    ids = np.array([0] + ds["labels"].attrs["source_class_ids"])
    np.testing.assert_array_equal(ids[ds["labels"].values], classes)
    assert ds["valid"].values.all()
    assert f"shape {cube.shape}" in capsys.readouterr().out


def test_user_errors_exit_2_without_traceback(tmp_path: Path, capsys) -> None:
    cases = [
        ([str(tmp_path / "missing.hdr"), "--out", str(tmp_path / "o.zarr")],
         "missing.hdr: no such file"),
        ([str(DATA / "README.md"), "--out", str(tmp_path / "o.zarr")], "README.md: unknown format"),
        (["--out", str(tmp_path / "o.zarr")], "give INPUT files or --benchmark"),
        (["--benchmark", "salinasA", "--out", str(tmp_path / "o.zarr"), "--chunk", "32",
          "--shard", "48"], "multiple of chunk"),
    ]
    for argv, message in cases:
        assert ingest.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("sscc ingest: error: ") and message in err and "Traceback" not in err
    out = str(tmp_path / "s.zarr")
    assert ingest.main(["--benchmark", "salinasA", "--out", out]) == 0
    assert ingest.main(["--benchmark", "salinasA", "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err
    assert ingest.main(["--benchmark", "salinasA", "--out", out, "--overwrite"]) == 0


def write_line(path: Path, data: np.ndarray, y0: int, x0: int) -> Path:
    """A GeoTIFF flight line placed at pixel (y0, x0) of the common UTM grid ``T``."""
    b, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=b, dtype=data.dtype,
                       crs="EPSG:32610", transform=T @ Affine.translation(x0, y0),
                       nodata=-9999) as dst:
        dst.write(data)
    return path


def test_parallel_lines_and_mosaic_on_ray(ray_session, tmp_path: Path, salinas: np.ndarray,
                                          capsys) -> None:
    bands = salinas[:24]
    a = bands[:, :50, :60].copy()
    a[:, 45, 55] = -9999  # hole in line a inside the overlap, filled by line b
    b = bands[:, 30:, 40:] + 1  # differs from a in the overlap, so the winner is visible
    inputs = [str(write_line(tmp_path / "line_a.tif", a, 0, 0)),
              str(write_line(tmp_path / "line_b.tif", b, 30, 40))]
    out = tmp_path / "mosaic.zarr"
    argv = [*inputs, "--out", str(out), "--mosaic", "--chunk", "16", "--shard", "32"]
    assert ingest.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("ingested ") == 2 and "line_a.tif" in printed and "line_b.tif" in printed
    assert "valid pixels 5038" in printed  # 83 x 86 grid minus the two corners no line covers
    ds = store.open_cube(out)
    expected = np.full_like(bands, -9999)
    expected[:, 30:, 40:] = b
    expected[:, :50, :60] = np.where(a != -9999, a, expected[:, :50, :60])
    np.testing.assert_array_equal(ds["reflectance"].values, expected)
    np.testing.assert_array_equal(ds["valid"].values, (expected != -9999).all(axis=0))
    assert ds.rio.crs == CRS.from_epsg(32610) and ds.rio.transform().almost_equals(T)
    assert ds.attrs["mosaic_rule"] == "first-valid-wins"
    for name in ("line_a", "line_b"):  # the per-line stores are kept beside the mosaic
        assert store.open_cube(tmp_path / "mosaic.zarr.lines" / f"{name}.zarr")["valid"].any()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # without --mosaic: one store per line in the output directory
    assert ingest.main([*inputs, "--out", str(tmp_path / "lines")]) == 0
    line_b = store.open_cube(tmp_path / "lines" / "line_b.zarr")
    np.testing.assert_array_equal(line_b["reflectance"].values, b)


def test_mismatched_band_counts_name_both_files(ray_session, tmp_path: Path,
                                                salinas: np.ndarray, capsys) -> None:
    first = write_line(tmp_path / "first.tif", salinas[:10, :20, :20], 0, 0)
    second = write_line(tmp_path / "second.tif", salinas[:12, :20, :20], 0, 20)
    argv = [str(first), str(second), "--out", str(tmp_path / "m.zarr"), "--mosaic"]
    assert ingest.main(argv) == 2
    err = capsys.readouterr().err
    assert "band counts differ" in err and "first.tif has 10" in err and "second.tif has 12" in err
    assert not (tmp_path / "m.zarr").exists()
    # an error raised inside a Ray task reaches the user as the same one-line message
    bogus = tmp_path / "bogus.dat"
    bogus.write_text("not a raster")
    assert ingest.main([str(first), str(bogus), "--out", str(tmp_path / "lines")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sscc ingest: error: ") and "bogus.dat: unknown format" in err
    assert "Traceback" not in err


def test_ones_own_labelled_scene_is_ingested_and_scored_as_the_bundled_one(tmp_path: Path, capsys) -> None:
    """Salinas-A written as a user would have it (a GeoTIFF cube and a GeoTIFF class map on its
    grid) ingests into the store the benchmark reader makes, and `sscc reproduce --store` scores
    it exactly as `--dataset salinasA`."""
    cube, classes = reference("salinasA")
    tif, gt = tmp_path / "cube.tif", tmp_path / "classes.tif"
    for path, data in ((tif, cube), (gt, classes[None].astype(np.uint8))):
        with rasterio.open(path, "w", driver="GTiff", height=83, width=86, count=data.shape[0],
                           dtype=data.dtype, crs="EPSG:32610", transform=T) as dst:
            dst.write(data)
    out = tmp_path / "mine.zarr"
    assert ingest.main([str(tif), "--labels", str(gt), "--out", str(out), "--chunk", "32"]) == 0
    assert "labelled pixels 5348 in 6 classes" in capsys.readouterr().out
    mine, bundled = load_store_scene(str(out)), load_scene("salinasA")
    for field in ("cube", "valid", "labels"):
        np.testing.assert_array_equal(getattr(mine, field), getattr(bundled, field))
    assert store.open_cube(out).attrs["source"] == [str(tif), str(gt)]
    for method in ("kmeans_pca", "readout_pca"):
        rows = []
        for scene in (["--store", str(out)], ["--dataset", "salinasA"]):
            path = tmp_path / f"{method}{len(rows)}.json"
            assert reproduce_main([*scene, "--method", method, "--protocol", "all", "--seeds", "0",
                                   "--threads", "1", "--json", str(path)]) == 0
            rows.append(json.loads(path.read_text())["runs"][0])
        assert {k: rows[0][k] for k in ("acc", "nmi", "choice")} == {
            k: rows[1][k] for k in ("acc", "nmi", "choice")}


def test_labels_option_errors(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o.zarr")
    tif = tmp_path / "cube.tif"
    with rasterio.open(tif, "w", driver="GTiff", height=4, width=5, count=2, dtype="int16",
                       crs="EPSG:32610", transform=T) as dst:
        dst.write(np.ones((2, 4, 5), np.int16))
    cases = [
        (["--benchmark", "salinasA", "--labels", str(tif), "--out", out],
         "--labels is the ground truth of one INPUT: give exactly one input file, without --mosaic"),
        ([str(tif), "--labels-var", "gt", "--out", out],
         "--labels-var names a variable of the --labels file; give --labels too"),
        ([str(tif), "--labels", str(tmp_path / "gt.tif"), "--out", out], "gt.tif: no such file"),
        ([str(tif), "--labels", str(DATA / "salinasA/SalinasA_gt.mat"), "--out", out],
         "SalinasA_gt.mat: class map is 83 x 86 pixels, the cube 4 x 5"),
    ]
    for argv, message in cases:
        assert ingest.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("sscc ingest: error: ") and message in err, err
    assert not Path(out).exists()
    assert reproduce_main(["--store", str(tmp_path / "none.zarr"), "--dataset", "samson"]) == 2
    assert "give --dataset NAME or --store CUBE (exactly one of them), or --suite" in capsys.readouterr().err
    assert ingest.main([str(tif), "--out", out]) == 0
    capsys.readouterr()
    assert reproduce_main(["--store", out, "--method", "kmeans_pca"]) == 2
    assert capsys.readouterr().err == (f"sscc reproduce: error: {out}: cube store has no ground-truth "
                                       "`labels` to score against; ingest the scene with `sscc "
                                       "ingest INPUT --labels GT`\n")
