"""``sscc report``: numbers against direct computations, the tile pyramid, bad input, the export
and reprocess hooks, and the page in a real (headless Chromium) browser."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from scipy.optimize import linear_sum_assignment

from tests.helpers import relabelled_store
from pipelines import export
from pipelines import report as report_stage
from sscc_core.model.checkpoint import Checkpoint, save_checkpoint
from sscc_core.config import SSCCConfig, from_dict
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import cube_identity, open_cube, write_cube
from sscc_core.labelling.labelstore import LabelStoreSpec, create_label_store
from sscc_core.metrics import evaluate
from sscc_core.labelling.report.pyramid import n_levels, write_pyramid
from sscc_core.versioning import switch_current, versioned_store

TILE = 32
K = 8
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# classes 0..6 of Salinas-A -> clusters; the previous version swaps two clusters' ids (not a
# move) and had classes 3 and 4 in one cluster, so the smaller of the two moved
LUT = np.array([7, 4, 0, 6, 2, 5, 1])
LUT_BEFORE = np.array([7, 0, 4, 2, 2, 5, 1])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Salinas-A cube store, a checkpoint with a training history and a label-free selection
    record, its label store (a relabelled ground truth) and a previous version's store."""
    root = tmp_path_factory.mktemp("report")
    cube_path = write_cube(read_benchmark("salinasA"), root / "sa.zarr", chunk=TILE)
    cfg = from_dict(SSCCConfig, {"model": {"n_clusters": K}})
    history = [{"epoch": e, "total": 2.0 / e, "diagonal": 1.5 / e, "off_diagonal": 0.4 / e,
                "ntxent": 0.1, "clusters_used": min(K, 3 + 2 * e), "assign_entropy": 2.0 - 0.3 * e,
                "lr": 1e-3, "seconds": 1.5} for e in (1, 2, 3)]
    selection = {"criterion": "stability", "choice": {"kind": "spectral", "smooth_sigma": 1.0},
                 "candidates": [{"kind": "kmeans", "stability": 0.8},
                                {"kind": "spectral", "stability": 0.9}]}
    ckpt = Checkpoint(config=cfg, in_channels=8, n_bands=204, model_state={"w": torch.ones(3)},
                      preprocess_state={"mean": torch.zeros(204)}, epoch=3,
                      extra={"history": history, "selection": selection, "store": str(cube_path)})
    run_dir = root / "train" / "run"
    save_checkpoint(ckpt, run_dir / "final")
    labels = label_store(cube_path, root / "labels.zarr", LUT, ckpt.model_version)
    before = label_store(cube_path, root / "before.zarr", LUT_BEFORE, "older0000001")
    return dict(root=root, cube=cube_path, run=run_dir, labels=labels, before=before,
                version=ckpt.model_version)


def label_store(cube_path, out, lut, model_version, n_clusters=K):
    """A complete label store whose clusters are ``lut[ground truth]``; its path."""
    return relabelled_store(cube_path, out, lut, model_version, n_clusters, tile_size=TILE).path


def read_labels(path) -> np.ndarray:
    return zarr.open_group(path, mode="r")["labels"][:]


def test_report_numbers_match_direct_computations(scene, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["--labels", str(scene["labels"]), "--store", str(scene["cube"]), "--out", str(out),
            "--run", str(scene["run"]), "--previous", str(scene["before"])]
    assert report_stage.main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(f"report: {out / 'index.html'}")
    doc = json.loads((out / "report.json").read_text())
    now, before = read_labels(scene["labels"]), read_labels(scene["before"])
    nodata = 255
    # legend counts: a bincount of the labels
    assert doc["counts"] == np.bincount(now[now != nodata], minlength=K).tolist()
    # ground truth: the same numbers as metrics.evaluate on the pixels
    gt = open_cube(scene["cube"])["labels"].values
    direct = evaluate(gt[(gt > 0) & (now != nodata)], now[(gt > 0) & (now != nodata)])
    for key in ("acc", "nmi", "ari", "kappa", "aa", "purity", "n_labelled"):
        assert doc["metrics"][key] == pytest.approx(direct[key], abs=1e-12), key
    assert doc["metrics"]["confusion_matched"] == direct["confusion_matched"]
    # change table: the joint counts and their Hungarian matching
    both = (now != nodata) & (before != nodata)
    joint = np.bincount(before[both] * K + now[both], minlength=K * K).reshape(K, K)
    assert doc["change"]["joint"] == joint.tolist()
    rows, cols = linear_sum_assignment(joint, maximize=True)
    assert doc["change"]["kept"] == joint[rows, cols].sum()
    assert doc["change"]["moved"] == both.sum() - joint[rows, cols].sum()
    assert doc["change"]["moved"] == min((gt == 3).sum(), (gt == 4).sum()) > 0
    assert doc["change"]["match"][0] == 4 and doc["change"]["match"][4] == 0
    # spectra: the exact per-cluster mean of the cube's pixels (no sampling at this size)
    refl = open_cube(scene["cube"])["reflectance"].values.astype(np.float64)
    c = int(np.argmax(doc["counts"]))
    assert doc["spectra"]["count"][c] == doc["counts"][c]
    np.testing.assert_allclose(doc["spectra"]["mean"][c], refl[:, now == c].mean(1))
    # training: the checkpoint's history; every asset the page links to exists
    assert [h["epoch"] for h in doc["training"]["history"]] == [1, 2, 3]
    page = (out / "index.html").read_text()
    for src in ("spectra.png", "spectra_grid.png", "training.png", "tiles/0/0_0.png",
                "change_tiles/0/0_0.png"):
        assert (out / src).is_file(), src
    assert "http://" not in page and "https://" not in page
    assert doc["notes"]["map"].startswith("not georeferenced")


def test_pyramid_levels_are_the_decimated_map(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (1000, 700)).astype(np.int32)
    lut = np.array([[i * 40, 255 - i * 40, i * 10, 255] for i in range(5)], np.uint8)
    tile = 16  # 7 levels: the three coarsest are cut from the in-memory overview
    pyr = write_pyramid(lambda r, c: labels[r, c], *labels.shape, lut, tmp_path, "t", tile=tile)
    assert pyr.levels == n_levels(1000, 700, tile) == 7
    for z in range(pyr.levels):
        f = 2 ** (pyr.levels - 1 - z)
        want = labels[::f, ::f]
        got = np.zeros((*want.shape, 4), np.uint8)
        files = list((tmp_path / "t" / str(z)).glob("*.png"))
        assert len(files) == -(-want.shape[0] // tile) * -(-want.shape[1] // tile)
        for path in files:
            r, c = (int(v) for v in path.stem.split("_"))
            img = np.asarray(Image.open(path))
            got[r * tile:r * tile + img.shape[0], c * tile:c * tile + img.shape[1]] = img
        np.testing.assert_array_equal(got, lut[want], err_msg=f"level {z}")


def test_bad_input_is_one_line_and_leaves_nothing(scene, tmp_path, capsys):
    small = write_cube(read_benchmark("salinasA").isel(y=slice(0, 64)), tmp_path / "small.zarr",
                       chunk=TILE)
    out = tmp_path / "rep"
    base = ["--labels", str(scene["labels"]), "--out", str(out)]
    assert report_stage.main([*base, "--store", str(small)]) == 2
    assert capsys.readouterr().err == (f"sscc report: error: {small}: cube grid 64 x 86 is not the "
                                       f"grid of the labels {scene['labels']} (83 x 86)\n")
    missing = tmp_path / "no_run"
    assert report_stage.main([*base, "--store", str(scene["cube"]), "--run", str(missing)]) == 2
    assert capsys.readouterr().err == (f"sscc report: error: {missing}: no training run here "
                                       "(expected a run directory holding final/ or a "
                                       "checkpoint)\n")
    other = label_store(scene["cube"], tmp_path / "other.zarr", LUT, "another00001")
    assert report_stage.main(["--labels", str(other), "--out", str(out), "--store",
                              str(scene["cube"]), "--run", str(scene["run"])]) == 2
    assert capsys.readouterr().err == (
        f"sscc report: error: {scene['run'] / 'final' / 'model.pt'}: checkpoint of model "
        f"{scene['version']}, but the labels {other} were made by model another00001\n")
    assert not out.exists() and not list(tmp_path.glob("rep.tmp-*"))
    # a previous version with another K: the change section is left out with a note
    six = label_store(scene["cube"], tmp_path / "six.zarr", np.array([5, 0, 1, 2, 3, 4, 5]),
                      "sixclusters1", n_clusters=6)
    assert report_stage.main([*base, "--store", str(scene["cube"]), "--previous", str(six)]) == 0
    printed = capsys.readouterr().out
    assert (f"report: note: change: previous version {six} has K = 6, these labels K = 8: "
            "clusters cannot be matched one-to-one; not compared") in printed
    assert "report: note: training: no training run given (--run" in printed
    page = (out / "index.html").read_text()
    assert '<section id="change" class="omitted">' in page
    assert not (out / "change_tiles").exists()
    # an existing report is kept unless --overwrite
    assert report_stage.main([*base, "--store", str(scene["cube"])]) == 2
    assert "exists" in capsys.readouterr().err
    assert report_stage.main([*base, "--store", str(scene["cube"]), "--overwrite"]) == 0


def test_export_and_reprocess_write_reports(scene, tmp_path, capsys):
    out = tmp_path / "products"
    assert export.main(["--labels", str(scene["labels"]), "--store", str(scene["cube"]),
                        "--out", str(out), "--run", str(scene["run"])]) == 0
    assert f"export: report           {out / 'report' / 'index.html'}" in capsys.readouterr().out
    doc = json.loads((out / "report" / "report.json").read_text())
    assert doc["training"]["epochs"] == 3 and "training" not in doc["notes"]
    # a reprocess root: the report of a version compares with the version current pointed to
    root = tmp_path / "labels"
    root.mkdir()
    old, new = "older0000001", scene["version"]
    shutil.copytree(scene["before"], versioned_store(root, old))
    shutil.copytree(scene["labels"], versioned_store(root, new))
    switch_current(root, old)
    switch_current(root, new, checkpoint=str(scene["run"] / "final"))
    written = report_stage.version_report(root, new, str(scene["cube"]), str(scene["run"]))
    assert written.index == root / f"{new}.report" / "index.html"
    doc = json.loads((root / f"{new}.report" / "report.json").read_text())
    assert doc["change"]["previous_model_version"] == old and doc["change"]["moved"] > 0
    # `sscc report` on the root finds the checkpoint the pointer names
    rep = tmp_path / "from_root"
    assert report_stage.main(["--labels", str(root), "--store", str(scene["cube"]),
                              "--out", str(rep)]) == 0
    assert json.loads((rep / "report.json").read_text())["training"]["epochs"] == 3


def _browser(width: int = 1300, height: int = 1800):
    """Headless Chromium driven through chromedriver (Debian's chromium and chromium-driver)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("SSCC_REQUIRE_BROWSER"):
            pytest.fail("headless browser test needs /usr/bin/chromium and /usr/bin/chromedriver "
                        "(apt-get install chromium chromium-driver)")
        pytest.skip("no /usr/bin/chromium + chromedriver (CI installs them: .ci/run)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--window-size={width},{height}",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='sscc-chromium-')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def check_page(index: Path, screenshot: Path) -> dict:
    """Open a report from disk; fail on console errors, missing or unloaded parts, or a blank
    page. Returns the DOM facts checked."""
    driver = _browser()
    try:
        driver.get(index.as_uri())
        loaded = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const imgs = Array.from(document.images);
            Promise.all(imgs.map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })))
              .then(() => done(imgs.map(i => [i.getAttribute('src'), i.naturalWidth])));
        """)
        facts = driver.execute_script("""
            const q = s => document.querySelectorAll(s).length;
            return {map_tiles: q('#map .view img'), legend_rows: q('#legend tbody tr'),
                    spectra: q('#spectra img'), curves: q('#curves'), truth: q('#truth table'),
                    change_tiles: q('#change-map .view img'), title: document.title};
        """)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    assert errors == [], errors
    assert [src for src, width in loaded if width == 0] == [], "images that did not load"
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "blank or broken page"
    return facts


def test_report_in_headless_chromium(scene, tmp_path):
    out = tmp_path / "rep"
    assert report_stage.main(["--labels", str(scene["labels"]), "--store", str(scene["cube"]),
                              "--out", str(out), "--run", str(scene["run"]),
                              "--previous", str(scene["before"])]) == 0
    facts = check_page(out / "index.html", tmp_path / "report.png")
    assert facts["map_tiles"] >= 1 and facts["change_tiles"] >= 1
    assert facts["legend_rows"] == K and facts["spectra"] == 2 and facts["curves"] == 1
    assert facts["truth"] >= 3 and facts["title"] == "SSCC run report: salinasA"


def tiled_mosaic(root: Path, side: int, bands: int = 20) -> dict[str, Path]:
    """A georeferenced ``side x side`` mosaic tiled from Indian Pines (8-bit; every
    ``200 // bands``-th band, 30 m pixels, UTM 16N) with its ground truth, a label store whose
    clusters are the ground-truth classes (K = 17, 0 = unlabelled) and a previous version that
    had classes 5 and 6 in one cluster. Built chunk by chunk (dask), so memory stays small."""
    import dask.array as da
    import xarray as xr

    ip = read_benchmark("indian_pines")
    step = ip.sizes["band"] // bands
    refl = np.ascontiguousarray(ip["reflectance"].values[::step][:bands])
    gt = ip["labels"].values.astype(np.int16)
    h, w = gt.shape
    chunk = 512

    def tiled(source: np.ndarray, shape: tuple[int, ...]) -> da.Array:
        def block(block_info=None):
            loc = block_info[None]["array-location"]
            rows, cols = np.arange(*loc[-2]) % h, np.arange(*loc[-1]) % w
            return source[..., rows[:, None], cols[None, :]]
        chunks = da.core.normalize_chunks((*shape[:-2], chunk, chunk), shape)
        return da.map_blocks(block, chunks=chunks, dtype=source.dtype,
                             meta=np.empty((0,) * len(shape), source.dtype))

    dims = ("band", "y", "x")
    ds = xr.Dataset(
        {"reflectance": (dims, tiled(refl, (bands, side, side)), ip["reflectance"].attrs),
         "valid": (("y", "x"), da.ones((side, side), bool, chunks=chunk)),
         "labels": (("y", "x"), tiled(gt, (side, side)))},
        coords={"band": np.arange(bands),
                "wavelength": ("band", ip["wavelength"].values[::step][:bands]),
                "y": 4_000_000.0 - 30.0 * (np.arange(side) + 0.5),
                "x": 500_000.0 + 30.0 * (np.arange(side) + 0.5)},
        attrs={"name": "tiled_indian_pines", "created": "2026-01-01T00:00:00+00:00", "source": []},
    ).rio.write_crs("EPSG:32616")
    cube_path = write_cube(ds, root / "mosaic.zarr", chunk=chunk)
    classes = np.arange(17)
    before_lut = np.where(classes == 6, 5, classes)
    paths = {"cube": cube_path}
    for name, lut, version in (("labels", classes, "tiledip00001"),
                               ("before", before_lut, "tiledip00000")):
        cube = open_cube(cube_path)
        store = create_label_store(root / f"{name}.zarr", cube, LabelStoreSpec(
            model_version=version, n_clusters=17, tile_size=1024, input_store=str(cube_path),
            input_identity=cube_identity(cube)))
        valid = zarr.open_group(cube_path, mode="r")["valid"]
        for tile in store.missing_tiles(valid):
            rows, cols = np.arange(tile.y0, tile.y1) % h, np.arange(tile.x0, tile.x1) % w
            store.write_tile(tile, lut[gt[rows[:, None], cols[None, :]]].astype(np.uint8), None,
                             seconds=0.0)
        store.mark_complete(valid)
        paths[name] = store.path
    return paths


def test_georeferenced_mosaic_areas_and_levels(tmp_path, capsys):
    m = tiled_mosaic(tmp_path, 600, bands=4)
    out = tmp_path / "rep"
    assert report_stage.main(["--labels", str(m["labels"]), "--store", str(m["cube"]),
                              "--out", str(out), "--previous", str(m["before"]),
                              "--spectra-pixels", "300000"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["pixel_area"] == {"value": 900.0, "unit": "metre"}
    assert doc["pyramid"]["levels"] == 3 and (out / "tiles/2/2_2.png").is_file()
    page = (out / "index.html").read_text()
    assert "area (km²)" in page
    n0 = doc["counts"][0]
    assert f"<td>{n0 * 900 / 1e6:,.4g}</td>" in page
    # spectra from a seeded sample of chunks, said so
    assert doc["spectra"]["windows_read"] == 1 and doc["spectra"]["windows"] == 4
    assert "random sample of 1 of 4 chunks" in doc["notes"]["spectra"]
    gt = open_cube(m["cube"])["labels"].values
    assert doc["change"]["moved"] == min((gt == 5).sum(), (gt == 6).sum())


@pytest.mark.slow
def test_report_of_a_1e8_pixel_mosaic_in_bounded_memory(tmp_path):
    """docs/BENCHMARKS.md, "Run report": `pytest -m slow tests/sscc_core/labelling/test_report.py -k 1e8 -s`."""
    import resource
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    m = tiled_mosaic(tmp_path, 10240)
    built = time.perf_counter() - start
    out = tmp_path / "rep"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.report", "--labels", str(m["labels"]),
                    "--store", str(m["cube"]), "--previous", str(m["before"]), "--out", str(out)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    doc = json.loads((out / "report.json").read_text())
    n_tiles = sum(1 for _ in out.rglob("*.png"))
    size_mib = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"\nreport of 10240 x 10240 = {10240**2:,} pixels: {seconds:.1f} s, peak RSS "
          f"{peak_mib:.0f} MiB, {n_tiles} PNG files, {size_mib:.1f} MiB (stores built in "
          f"{built:.1f} s)")
    assert sum(doc["counts"]) == 10240**2 and doc["pyramid"]["levels"] == 7
    assert peak_mib < 2048
