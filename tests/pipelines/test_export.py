"""``sscc evaluate`` and ``sscc export`` on label stores built from real ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from tests.helpers import relabelled_store
from pipelines import evaluate, export
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube, write_cube

TILE = 32
PRODUCTS = ("labels.tif", "quicklook.png", "spectra.csv", "spectra_std.csv", "spectra.png",
            "cluster_class_counts.csv", "metrics.json")


@pytest.fixture(scope="module")
def cube_store(tmp_path_factory):
    """Salinas-A (real, 6 classes) as a cube store chunked by 32."""
    path = tmp_path_factory.mktemp("evex") / "sa.zarr"
    return write_cube(read_benchmark("salinasA"), path, chunk=TILE)


def test_perfect_labelling_scores_one(cube_store, tmp_path, capsys):
    # classes 1..6 -> clusters in a scrambled order; unlabelled pixels -> cluster 7
    lut = np.array([7, 4, 0, 6, 2, 5, 1])
    store = relabelled_store(cube_store, tmp_path / "perfect.zarr", lut)
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--labels", str(store.path), "--store", str(cube_store),
                          "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5348 labelled pixels, 6 classes, 6 clusters" in printed
    assert "ACC" in printed and "1.0000" in printed
    doc = json.loads(out.read_text())
    m = doc["metrics"]
    assert m["n_labelled"] == 5348 and m["n_gt_without_label"] == 0
    for key in ("acc", "nmi", "ari", "kappa", "purity"):
        assert m[key] == pytest.approx(1.0), key
    assert {int(k): v for k, v in m["mapping"].items()} == {int(lut[c]): c for c in range(1, 7)}
    prov = doc["provenance"]
    assert prov["model_version"] == "perfect00001" and prov["label_store"] == str(store.path)
    assert json.loads(prov["inputs"]) == [str(cube_store)] and prov["config_hash"]


def test_imperfect_labelling(cube_store, tmp_path):
    # merging classes 1 and 2 into one cluster: ACC drops by exactly class 1's (or 2's) share
    lut = np.array([7, 0, 0, 1, 2, 3, 4])
    store = relabelled_store(cube_store, tmp_path / "merged.zarr", lut)
    m = evaluate.run(evaluate.build_parser().parse_args(
        ["--labels", str(store.path), "--store", str(cube_store)]))
    gt = open_cube(cube_store)["labels"].values
    counts = np.bincount(gt[gt > 0], minlength=7)
    assert m["acc"] == pytest.approx(1 - min(counts[1], counts[2]) / counts.sum())
    assert m["purity"] < 1.0 and m["nmi"] < 1.0


def test_incomplete_store_refused(cube_store, tmp_path, capsys):
    store = relabelled_store(cube_store, tmp_path / "partial.zarr", np.arange(7), complete=False)
    for main, extra in ((evaluate.main, []), (export.main, ["--out", str(tmp_path / "p")])):
        assert main(["--labels", str(store.path), "--store", str(cube_store), *extra]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "label store is incomplete (8 tiles done)" in err
    assert not (tmp_path / "p").exists()


def test_export_products(cube_store, tmp_path, capsys):
    lut = np.array([7, 4, 0, 6, 2, 5, 1])
    store = relabelled_store(cube_store, tmp_path / "lab.zarr", lut)
    metrics = tmp_path / "metrics.json"
    assert evaluate.main(["--labels", str(store.path), "--store", str(cube_store),
                          "--out", str(metrics)]) == 0
    out = tmp_path / "products"
    assert export.main(["--labels", str(store.path), "--store", str(cube_store), "--out",
                        str(out), "--metrics", str(metrics)]) == 0
    for name in PRODUCTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    gt = open_cube(cube_store)["labels"].values
    with rasterio.open(out / "labels.tif") as src:
        np.testing.assert_array_equal(src.read(1), lut[gt])
        assert src.nodata == 255 and src.colormap(1)[7][3] == 255
        tags = src.tags()
    assert tags["model_version"] == "perfect00001" and tags["label_store"] == str(store.path)
    assert json.loads((out / "metrics.json").read_text())["metrics"]["acc"] == pytest.approx(1.0)
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text("{\"acc\": 1}")
    assert export.main(["--labels", str(store.path), "--store", str(cube_store), "--out",
                        str(out), "--metrics", str(bad)]) == 2
    assert "with a 'metrics' mapping" in capsys.readouterr().err
