"""The accuracy suite (``sscc reproduce --suite``): the plan, the generated tables against the
rows they summarise, the document replaced only inside its markers and only when every run
succeeded, resuming from per-seed JSON and refusing another configuration's files, the whole
suite run on one's own labelled store, and the harness's one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.reproduce import main as reproduce_main
from sscc_core.accuracy import suite
from sscc_core.config import load_config, to_dict
from sscc_core.accuracy.experiment import Scene, load_scene, run_one, scene_config
from sscc_core.io import store
from sscc_core.io.cube import make_cube

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "data"


def _rows(acc: dict[tuple[str, str, str], list[float]]) -> list[dict]:
    return [{"dataset": s, "protocol": p, "method": m, "seed": i, "acc": a, "nmi": a / 2, "kappa": a / 3,
             "n_clusters_used": 4, "cpu_seconds": 10.0,
             "choice": {"kind": "kmeans", "smooth_sigma": 1.0, "spectra_scale": "whitened"} if m == "sscc" else None}
            for (s, p, m), accs in acc.items() for i, a in enumerate(accs)]


def test_render_compares_sscc_with_the_best_baseline_of_each_cell() -> None:
    acc = {}
    for protocol, base in (("labelled", 0.6), ("all", 0.5)):
        for method in suite.METHODS:
            acc[("samson", protocol, method)] = [base, base]
        acc[("samson", protocol, "kmeans_pca")] = [base + 0.1, base + 0.1]
        acc[("samson", protocol, "sscc")] = [base + 0.2, base]
    text = suite.render(_rows(acc), 120.0, 60.0, "sscc reproduce --suite")
    assert "| Samson | labelled | 0.700 ± 0.100 | 0.700 (kmeans_pca) | +0.000 | 0.600 | 0.600 | " in text
    assert "| Samson | all | 0.600 ± 0.100 | 0.600 (kmeans_pca) | +0.000 |" in text
    assert "SSCC **0.650**; best baseline per cell 0.650 (SSCC +0.000)" in text
    assert "Cells where SSCC >= the best baseline: 2 of 2." in text
    assert "kmeans/σ1/white, kmeans/σ1/white" in text
    assert "in 2.0 min wall" in text and "1.0 CPU min" in text


def test_document_is_replaced_between_the_markers_only(tmp_path: Path) -> None:
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"intro\n{suite.BEGIN}\nold\n{suite.END}\noutro\n")
    suite.update_document(doc, "new table")
    assert doc.read_text() == f"intro\n{suite.BEGIN}\nnew table\n{suite.END}\noutro\n"
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="no generated block"):
        suite.update_document(bare, "x")
    assert bare.read_text() == "no markers\n" and sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "bare.md"]


def test_plan_reuses_the_labelled_runs_where_every_pixel_is_labelled() -> None:
    scenes = {name: load_scene(name) for name in ("salinasA", "samson")}
    assert not suite.same_protocols(scenes["salinasA"]) and suite.same_protocols(scenes["samson"])
    runs = suite.plan(scenes, [0])
    assert {(r.scene, r.protocol) for r in runs} == {("salinasA", "labelled"), ("salinasA", "all"),
                                                     ("samson", "labelled")}
    assert len(runs) == 3 * len(suite.METHODS)
    assert all(r.method.startswith("sscc") for r in runs[:6])  # the slow runs start first


def test_a_missing_scene_fails_before_any_run_and_leaves_the_document(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    (data / "jasper_ridge" / "end4.mat").unlink()
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"{suite.BEGIN}\nold\n{suite.END}\n")
    assert reproduce_main(["--suite", "--data-dir", str(data), "--out", str(tmp_path / "out"),
                           "--doc", str(doc), "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sscc reproduce: error: ") and "end4.mat: no such file" in err[0]
    assert doc.read_text() == f"{suite.BEGIN}\nold\n{suite.END}\n" and not (tmp_path / "out").exists()


def test_resume_refuses_runs_of_another_configuration(tmp_path: Path) -> None:
    cfg = load_config("configs/default.yaml")
    run = suite.Run("salinasA", "labelled", "kmeans", 0)
    path = run.path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"config_fingerprint": "0" * 16}))
    with pytest.raises(ValueError, match=r"a run of another configuration \(fingerprint 0{16}, this one "):
        suite.run_suite(cfg, tmp_path, [0], jobs=1)


def test_bad_scenes_fail_in_one_line_naming_the_value() -> None:
    sa = load_scene("salinasA")
    cfg = load_config("configs/default.yaml")
    one_class = Scene("flat", sa.cube, sa.valid, (sa.labels > 0).astype(np.int64))
    with pytest.raises(ValueError, match=r"^flat: K = 1 ground-truth classes; clustering needs K >= 2$"):
        scene_config(cfg, one_class, "all", 0)
    labels = np.zeros_like(sa.labels)
    labels[0, :3], labels[1, :2] = [1, 2, 3], [4, 5]  # 5 classes on 5 labelled pixels ...
    few = Scene("few", sa.cube, sa.valid, labels)
    with pytest.raises(ValueError, match=r"^few: 5 training pixels \(protocol 'labelled'\) cannot fill one "
                                         r"batch of train.batch_size=512; lower train.batch_size or use more data$"):
        run_one(few, "sscc", "labelled", 0, cfg)
    tiny = Scene("tiny", sa.cube[:, :2, :2], sa.valid[:2, :2], np.array([[1, 2], [3, 4]]))
    small_k = Scene("tiny", tiny.cube, tiny.valid, np.array([[1, 2], [3, 3]]))
    with pytest.raises(ValueError, match=r"^tiny: 4 training pixels \(protocol 'all'\) cannot fill"):
        run_one(tiny, "sscc", "all", 0, cfg)
    assert run_one(small_k, "kmeans", "all", 0, cfg).metrics["n_clusters"] <= 3
    labels_k = np.zeros((2, 2), np.int64)
    labels_k[0] = [1, 2]
    labels_k[1] = [3, 4]
    with pytest.raises(ValueError, match=r"^tiny: 2 training pixels \(protocol 'labelled'\) are fewer than model.n_clusters=4$"):
        run_one(Scene("tiny", tiny.cube, np.array([[True, True], [False, False]]), labels_k), "kmeans", "labelled", 0, cfg)


def test_a_cell_of_the_suite_reruns_from_sscc_reproduce_with_its_settings(tmp_path: Path) -> None:
    """``sscc reproduce --dataset ... --method ...`` without ``--config`` ran the authors' recipe
    (and the spectral_pca baseline without its published smoothing) while ``--suite`` ran
    ``configs/default.yaml``: the same command line gave another cell's number. Now a single
    run takes the suite's configuration for its method, and ``--set`` still overrides it."""
    scene = load_scene("samson")
    shipped = load_config("configs/default.yaml")
    out = tmp_path / "r.json"
    argv = ["--dataset", "samson", "--method", "spectral_pca", "--protocol", "all", "--seeds", "0",
            "--threads", "1", "--json", str(out)]
    assert reproduce_main(argv) == 0
    doc = json.loads(out.read_text())
    in_suite = suite.method_config(shipped, "spectral_pca")
    assert doc["config"] == to_dict(scene_config(in_suite, scene, "all", 0))
    assert doc["config"]["postprocess"]["smooth_sigma"] == 2.0
    assert doc["runs"][0]["acc"] == run_one(scene, "spectral_pca", "all", 0, in_suite).metrics["acc"]
    assert reproduce_main([*argv, "--set", "postprocess.smooth_sigma=1.5"]) == 0
    assert json.loads(out.read_text())["config"]["postprocess"]["smooth_sigma"] == 1.5
    assert reproduce_main(["--dataset", "samson", "--method", "kmeans_pca", "--seeds", "0",
                           "--json", str(out)]) == 0
    assert json.loads(out.read_text())["config"] == to_dict(scene_config(shipped, scene, "labelled", 0))


def test_outputs_that_cannot_be_written_are_refused_before_any_run(tmp_path: Path, capsys) -> None:
    """``--suite --out /proc/...`` ran its first SSCC run before failing to write it, ``--doc``
    without the generated block failed after the whole suite, and ``--json`` under /proc (or a
    negative seed) after every seed of a single run. Each is now one line before any run."""
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"{suite.BEGIN}\nold\n{suite.END}\n")
    cases = [
        (["--suite", "--doc", str(doc), "--out", "/proc/sscc-suite"],
         "--out /proc/sscc-suite: cannot write in /proc (No such file or directory)"),
        (["--suite", "--doc", str(bare), "--out", str(tmp_path / "out")],
         f"{bare}: no generated block (lines {suite.BEGIN!r} ... {suite.END!r})"),
        (["--dataset", "samson", "--method", "kmeans", "--json", "/proc/sscc.json"],
         "--json /proc/sscc.json: cannot write in /proc (No such file or directory)"),
        (["--dataset", "samson", "--method", "kmeans", "--seeds", "0", "-1"],
         "--seeds: a seed is an integer in [0, 2147483647], got -1"),
    ]
    for argv, message in cases:
        assert reproduce_main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err == f"sscc reproduce: error: {message}\n"
        assert "seed 0" not in captured.out and "[1/" not in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "bare.md"]


def test_the_suite_runs_on_ones_own_labelled_stores_and_leaves_the_document(tmp_path: Path, capsys) -> None:
    """``--suite --store``: every method and both protocols on a store with ground truth (a 40 x 40
    crop of Salinas-A, 1 training epoch), in spawned worker processes; the tables go to
    OUT/tables.md, docs/RESULTS.md is not touched, and a cell equals its single run."""
    sa = load_scene("salinasA")
    crop = (slice(20, 60), slice(20, 60))
    ds = make_cube(sa.cube[:, crop[0], crop[1]], labels=sa.labels[crop], name="sa_crop")
    cube = str(store.write_cube(ds, tmp_path / "crop.zarr", chunk=32))
    results = (REPO / "docs" / "RESULTS.md").read_text()
    sets = ["--set", "train.epochs=1", "--set", "train.batch_size=256"]
    out = tmp_path / "suite"
    assert reproduce_main(["--suite", "--store", cube, "--out", str(out), "--seeds", "0", "--jobs", "1",
                           *sets]) == 0
    assert (REPO / "docs" / "RESULTS.md").read_text() == results
    tables = (out / "tables.md").read_text()
    assert tables in capsys.readouterr().out
    for protocol in suite.PROTOCOLS:
        for method in suite.METHODS:
            assert f"| sa_crop | {protocol} | {suite.METHOD_TITLES[method]} | " in tables
            assert (out / "sa_crop" / protocol / method / "seed0.json").is_file()
    single = tmp_path / "single.json"
    assert reproduce_main(["--store", cube, "--method", "kmeans_pca", "--protocol", "all", "--seeds", "0",
                           "--threads", "1", "--json", str(single), *sets]) == 0
    in_suite = json.loads((out / "sa_crop" / "all" / "kmeans_pca" / "seed0.json").read_text())
    assert json.loads(single.read_text())["runs"][0]["acc"] == in_suite["acc"]
    twice = ["--suite", "--store", cube, cube, "--out", str(tmp_path / "twice")]
    assert reproduce_main(twice) == 2
    assert "its scene is named 'sa_crop', as another store's is" in capsys.readouterr().err
    assert reproduce_main(["--store", cube, cube, "--method", "kmeans"]) == 2
    assert "--store: a single setting runs on one store, got 2 (--suite runs several)" in capsys.readouterr().err
    assert reproduce_main(["--store", cube, "--doc", "x.md"]) == 2
    assert "--doc is regenerated by --suite only" in capsys.readouterr().err
