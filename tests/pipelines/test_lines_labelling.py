"""Several flight lines labelled in one Ray Data job: each line into its own label store on its
own grid and CRS, equal to labelling that line alone; a failed line leaves only its own store
incomplete and a rerun labels only what is missing; bad lines are refused in one line before
anything is written; ``sscc reprocess`` keeps one labels directory (and ``current`` pointer) per
line; lines on object storage (an S3 API server) label into one store each there."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest

from pipelines import predict, reprocess
from sscc_core import storage
from sscc_core.io.cube import make_cube
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import cube_identity, open_cube, write_cube
from sscc_core.labelling.inference import Labeller
from sscc_core.labelling.labelstore import LabelStoreSpec, create_label_store, open_label_store
from sscc_core.model.checkpoint import load_checkpoint
from tests.pipelines.test_predict import TILE, make_checkpoint, reference, stored

REPO = Path(__file__).resolve().parents[2]


def line_fl02(raw: np.ndarray):
    """The ``fl02`` cube of (204, 83, 86) Salinas-A values."""
    return make_cube(raw[:, 20:, 30:], crs="EPSG:32610", name="fl02",
                     transform=(500020.0, 2.0, 0.0, 4100000.0, 0.0, -2.0))


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    """Two lines cut from Salinas-A (real spectra) on different grids: ``fl01`` 50 x 60 pixels in
    UTM 11N at 3.7 m, ``fl02`` 63 x 56 pixels (sharing scene pixels 20:50 x 30:60 with fl01) in
    UTM 10N at 2 m; ``short`` is fl02 with 100 bands; and an fcn checkpoint fitted on fl01."""
    root = tmp_path_factory.mktemp("lines")
    raw = read_benchmark("salinasA")["reflectance"].values
    fl01 = write_cube(make_cube(raw[:, :50, :60], crs="EPSG:32611", name="fl01",
                                transform=(600000.0, 3.7, 0.0, 4000000.0, 0.0, -3.7)),
                      root / "fl01.zarr", chunk=TILE)
    fl02_cube = line_fl02(raw)
    fl02 = write_cube(fl02_cube, root / "fl02.zarr", chunk=TILE)
    short = write_cube(fl02_cube.isel(band=slice(0, 100)), root / "other" / "short.zarr",
                       chunk=TILE)
    return root, fl01, fl02, short, make_checkpoint(root, fl01, "fcn", seed=11)


def run_predict(ckpt, stores, out, *extra) -> dict:
    return predict.run(predict.build_parser().parse_args(
        ["--checkpoint", str(ckpt), "--store", *map(str, stores), "--out", str(out),
         "--tile-size", str(TILE), "--actors", "1", *extra]))


def chunk_times(store) -> dict[str, int]:
    """When each labels chunk of a local store was last written (path -> mtime, ns)."""
    return {str(p.relative_to(store)): p.stat().st_mtime_ns
            for p in (store / "labels" / "c").glob("*/*")}


def test_lines_in_one_job_each_equal_their_line_alone(ray_session, lines, capsys):
    root, fl01, fl02, _, ckpt = lines
    out = root / "labels"
    summary = run_predict(ckpt, [fl01, fl02], out)
    printed = capsys.readouterr().out
    assert "predict: model " in printed and "2 lines, 8 non-empty 32px tiles" in printed
    assert (f"predict:   fl02: 4 non-empty tiles, 0 already done, 4 to label -> "
            f"{out / 'fl02.zarr'}") in printed.splitlines()
    assert "predict: 8/8 tiles checked, 8 labelled, 0 failed (2 lines)" in printed
    assert [(e["line"], e["out"], e["tiles"], e["tiles_labelled"]) for e in summary["lines"]] == [
        ("fl01", str(out / "fl01.zarr"), 4, 4), ("fl02", str(out / "fl02.zarr"), 4, 4)]
    assert summary["tiles"] == summary["tiles_labelled"] == 8
    for store in (fl01, fl02):
        path = out / f"{store.stem}.zarr"
        ref = reference(ckpt, store)[0]  # a single-line predict equals this bit for bit
        np.testing.assert_array_equal(stored(path)[0], ref)
        assert len(np.unique(ref)) > 2  # a non-degenerate map, so equality means something
        labels, cube = open_label_store(path), open_cube(store)
        assert labels.complete and labels.attrs["input_store"] == str(store)
        assert labels.attrs["input_identity"] == cube_identity(cube)
        grid = labels.dataset()
        for axis in ("y", "x"):  # the line's own grid: its size and map coordinates
            np.testing.assert_array_equal(grid[axis].values, cube[axis].values)
        assert grid["spatial_ref"].attrs["crs_wkt"] == cube["spatial_ref"].attrs["crs_wkt"]
    assert summary["pixels_labelled"] == sum(
        int((stored(out / f"{s.stem}.zarr")[0] != 255).sum()) for s in (fl01, fl02))
    assert len({open_label_store(out / f"{s.stem}.zarr").dataset()["spatial_ref"]
                .attrs["crs_wkt"] for s in (fl01, fl02)}) == 2  # two CRSs, two grids


def test_a_label_batch_spanning_lines_writes_each_tile_into_its_line(lines, tmp_path):
    """The two stages' functions without Ray: read rows carry their line, and one label batch
    mixing both lines' tiles (several tiles per batch, as on a GPU) writes each tile into its
    own line's store."""
    _, fl01, fl02, _, ckpt = lines
    stores = [str(fl01), str(fl02)]
    outs = [tmp_path / "fl01.zarr", tmp_path / "fl02.zarr"]
    spec = LabelStoreSpec(model_version=load_checkpoint(ckpt).model_version, n_clusters=16,
                          tile_size=TILE)
    grids = []
    for store, out in zip(stores, outs):
        create_label_store(out, open_cube(store), spec)
        grids.append([dataclasses.astuple(t) for t in open_label_store(out).tiles()])
    segments = {"line": np.array([0, 1]), "tiles": grids,
                "recorded": [[""] * len(g) for g in grids]}
    reader = Labeller.from_checkpoint(load_checkpoint(ckpt)).reader
    rows = list(predict.read_segment(segments, stores, reader, TILE))
    order = [0, 4, 1, 5, 2, 6, 3, 7]  # fl01 and fl02 tiles alternating in one batch
    batch = {name: np.concatenate([rows[i][name] for i in order]) for name in ("line", "read")}
    result = predict.LabelReads(str(ckpt), [str(o) for o in outs], "auto", 2048, 1, False)(batch)
    assert result["line"].tolist() == [0, 1] * 4 and result["labelled"].all()
    for store, out in zip(stores, outs):
        np.testing.assert_array_equal(stored(out)[0], reference(ckpt, store)[0])


@pytest.mark.slow
def test_lines_in_one_job_are_byte_equal_to_single_line_runs(ray_session, lines):
    """The stored labels of each line (every chunk file) equal a single-line ``sscc predict``."""
    root, fl01, fl02, _, ckpt = lines
    out = root / "labels_bytes"
    run_predict(ckpt, [fl01, fl02], out, "--confidence")
    for store in (fl01, fl02):
        alone = root / f"alone_{store.stem}.zarr"
        run_predict(ckpt, [store], alone, "--confidence")
        together = out / f"{store.stem}.zarr"
        for array in ("labels", "confidence"):
            files = sorted(p.relative_to(alone) for p in (alone / array / "c").rglob("*"))
            assert files and files == sorted(
                p.relative_to(together) for p in (together / array / "c").rglob("*"))
            assert all((alone / f).read_bytes() == (together / f).read_bytes()
                       for f in files if (alone / f).is_file())


@pytest.mark.slow
def test_a_failing_line_leaves_only_its_store_incomplete(ray_session, lines, capsys):
    """fl02 lost two tiles (records and chunks) and its row-1 chunk folder cannot be created:
    its store stays incomplete, named in the one-line error, while fl01's is completed; the
    rerun (a resume) labels only fl02's missing tiles and leaves fl01's chunks alone."""
    root, fl01, fl02, _, ckpt = lines
    out = root / "labels_failing"
    run_predict(ckpt, [fl02], out / "fl02.zarr")  # a complete fl02 store to break
    broken = out / "fl02.zarr"
    open_label_store(broken).forget_tiles([(1, 0), (1, 1)])
    (broken / "labels" / "c" / "1").rename(root / "fl02_row1")
    (broken / "labels" / "c" / "1").write_text("not a directory")
    argv = ["--checkpoint", str(ckpt), "--store", str(fl01), str(fl02), "--out", str(out),
            "--tile-size", str(TILE), "--actors", "1"]
    assert predict.main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"sscc predict: error: 2 of 6 tiles failed, label store {broken} left "
                           "incomplete (rerun the same command after fixing the cause); first: ")
    assert open_label_store(out / "fl01.zarr").complete and not open_label_store(broken).complete
    (broken / "labels" / "c" / "1").unlink()
    kept = chunk_times(out / "fl01.zarr")
    summary = run_predict(ckpt, [fl01, fl02], out)
    assert [e["tiles_labelled"] for e in summary["lines"]] == [0, 2]
    assert chunk_times(out / "fl01.zarr") == kept
    np.testing.assert_array_equal(stored(broken)[0], reference(ckpt, fl02)[0])
    assert open_label_store(broken).complete


def test_bad_lines_are_refused_before_anything_is_written(lines, capsys):
    root, fl01, fl02, short, ckpt = lines
    out = root / "refused"
    base = ["--checkpoint", str(ckpt), "--out", str(out), "--tile-size", str(TILE),
            "--log-file", "-"]

    def refused(*stores) -> str:
        assert predict.main([*base, "--store", *map(str, stores)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert not out.exists()
        return err[-1]

    manifest = root / "lines.txt"
    manifest.write_text("fl01.zarr\nfl03.zarr\n")
    assert refused(fl02, manifest) == (f"sscc predict: error: {root / 'fl03.zarr'}: no Zarr cube "
                                       f"store here (from manifest {manifest})")
    assert refused(fl01, short) == (
        f"sscc predict: error: band counts differ between lines: {fl01} has 204 bands, {short} "
        f"has 100")
    other = make_checkpoint(root, short, "fcn", seed=12)  # a 100-band model
    base[1] = str(other)
    assert refused(fl01, fl02) == (
        f"sscc predict: error: {fl01} vs checkpoint {other}: cube has 204 bands but the model "
        "was fitted on 100 bands")
    base[1] = str(ckpt)
    assert predict.main([*base[:2], "--out", str(root / "labels.zarr"), "--store", str(fl01),
                         str(fl02)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"sscc predict: error: --out {root / 'labels.zarr'}: with 2 lines --out is a folder that "
        "holds one <line>.zarr label store per line, not a store")
    assert not (root / "labels.zarr").exists()


def reprocess_lines(ckpt, stores, out_root, *extra) -> dict:
    return reprocess.run(reprocess.build_parser().parse_args(
        ["--checkpoint", str(ckpt), "--store", *map(str, stores), "--out-root", str(out_root),
         "--tile-size", str(TILE), "--actors", "1", *extra]))


@pytest.mark.slow  # 11 s; the default suite keeps the one-job predict of two lines
def test_reprocess_keeps_one_labels_directory_per_line(ray_session, lines):
    root, fl01, fl02, _, ckpt = lines
    out_root = root / "versions"
    version = load_checkpoint(ckpt).model_version
    summary = reprocess_lines(ckpt, [fl01, fl02], out_root, "--no-report")
    for store, entry in zip((fl01, fl02), summary["lines"]):
        pointer = json.loads((out_root / store.stem / "current").read_text())
        assert pointer == entry["current"]
        assert (pointer["model_version"], pointer["store"], pointer["input_store"]) == (
            version, f"{version}.zarr", str(store))
        np.testing.assert_array_equal(stored(out_root / store.stem / f"{version}.zarr")[0],
                                      reference(ckpt, store)[0])
    assert "current" not in summary and summary["tiles_labelled"] == 8
    assert sorted(p.name for p in out_root.iterdir()) == ["fl01", "fl02"]  # no top-level pointer
    assert not list(out_root.rglob("*.report"))  # --no-report


@pytest.mark.slow
def test_reprocess_of_lines_relabels_only_the_line_that_changed(ray_session, lines, tmp_path):
    """One report per line; then one line re-flown in part: only its changed tiles are
    relabelled, the other line's store is left as it was, and both pointers stay on the
    version."""
    root, fl01, fl02, _, ckpt = lines
    changed = tmp_path / "fl02.zarr"
    raw = read_benchmark("salinasA")["reflectance"].values.copy()
    raw[:, 60:64, 35:39] = raw[:, 20:24, 70:74]  # fl02 rows 40:44, cols 5:9: its tile r1_c0
    write_cube(line_fl02(raw), changed, chunk=TILE)
    out_root = tmp_path / "versions"
    version = load_checkpoint(ckpt).model_version
    reprocess_lines(ckpt, [fl01, fl02], out_root)
    for name in ("fl01", "fl02"):
        assert (out_root / name / f"{version}.report" / "index.html").is_file()
    kept = chunk_times(out_root / "fl01" / f"{version}.zarr")
    again = reprocess_lines(ckpt, [fl01, changed], out_root, "--no-report")
    assert [e["tiles_labelled"] for e in again["lines"]] == [0, 1]  # tile r1_c0 alone
    assert chunk_times(out_root / "fl01" / f"{version}.zarr") == kept
    np.testing.assert_array_equal(stored(out_root / "fl02" / f"{version}.zarr")[0],
                                  reference(ckpt, changed)[0])
    assert [json.loads((out_root / n / "current").read_text())["input_store"]
            for n in ("fl01", "fl02")] == [str(fl01), str(changed)]


def test_reprocess_checks_every_line_grid_before_growing_any(lines, tmp_path, capsys):
    """fl01 grew at the bottom (growable) but fl02's origin moved (refused): the run is refused in
    one line naming fl02's store, and fl01's store is not grown by the refused run."""
    root, fl01, _, _, ckpt = lines
    ckpt_obj = load_checkpoint(ckpt)
    version = ckpt_obj.model_version
    raw = read_benchmark("salinasA")["reflectance"].values
    grown = write_cube(make_cube(raw[:, :60, :60], crs="EPSG:32611", name="fl01",
                                 transform=(600000.0, 3.7, 0.0, 4000000.0, 0.0, -3.7)),
                       tmp_path / "new" / "fl01.zarr", chunk=TILE)
    moved = write_cube(make_cube(raw[:, 20:, 30:], crs="EPSG:32610", name="fl02",
                                 transform=(500022.0, 2.0, 0.0, 4100000.0, 0.0, -2.0)),
                       tmp_path / "new" / "fl02.zarr", chunk=TILE)
    old_fl02 = open_cube(root / "fl02.zarr")
    out_root = tmp_path / "versions"
    for name, cube in (("fl01", open_cube(fl01)), ("fl02", old_fl02)):
        create_label_store(out_root / name / f"{version}.zarr", cube, LabelStoreSpec(
            version, ckpt_obj.config.model.n_clusters, tile_size=TILE))
    assert reprocess.main(["--checkpoint", str(ckpt), "--store", str(grown), str(moved),
                           "--out-root", str(out_root), "--tile-size", str(TILE)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"sscc reprocess: error: {out_root / 'fl02' / f'{version}.zarr'}: "
                            "input grid 63 x 56 does not extend the label grid 63 x 56")
    assert open_label_store(out_root / "fl01" / f"{version}.zarr").height == 50  # not grown


@pytest.mark.slow  # about 1 min: a predict process with its own local Ray
def test_lines_on_object_storage_label_into_one_store_each(s3_env, lines):
    """Both lines on a real S3 API server, named by an s3:// glob, labelled in one `sscc predict`
    process into s3://.../labels/<line>.zarr: each store complete and equal to the line labelled
    alone from local disk."""
    root, fl01, fl02, _, ckpt = lines
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("lines-s3")
    for store in (fl01, fl02):
        storage.upload_dir(store, f"s3://lines-s3/run/{store.name}")
    env = {**os.environ, **s3_env, "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.predict", "--checkpoint", str(ckpt), "--store",
         "s3://lines-s3/run/fl*.zarr", "--out", "s3://lines-s3/labels", "--tile-size", str(TILE),
         "--actors", "1"], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predict: 8/8 tiles checked, 8 labelled, 0 failed (2 lines)" in done.stdout
    for store in (fl01, fl02):
        url = f"s3://lines-s3/labels/{store.stem}.zarr"
        labels = open_label_store(url)
        assert labels.complete and labels.attrs["input_store"] == f"s3://lines-s3/run/{store.name}"
        np.testing.assert_array_equal(stored(url)[0], reference(ckpt, store)[0])
