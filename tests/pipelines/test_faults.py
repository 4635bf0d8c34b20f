"""Fault injection for labelling: a killed job resumes to a bit-identical result, a corrupt input
chunk and a failed or impossible write give clear errors naming the tile or path, and no partial
store is ever marked complete.

(Training: a worker killed mid-run is covered by
tests/pipelines/test_train.py::test_injected_worker_failure_finishes_from_checkpoint.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.helpers import kill_when
from pipelines import evaluate, predict
from sscc_core.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sscc_core.config import ModelConfig, SSCCConfig
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube, write_cube
from sscc_core.labelling.labelstore import LabelStoreSpec, create_label_store, open_label_store
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.training.trainer import build_training
from tests.pipelines.test_predict import TILE, make_checkpoint, reference, stored

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    store = write_cube(read_benchmark("salinasA"), root / "sa.zarr", chunk=TILE)
    return root, store, make_checkpoint(root, store, "fcn", seed=0)


def args_for(ckpt, store, out, tile=TILE, *extra):
    return ["--checkpoint", str(ckpt), "--store", str(store), "--out", str(out),
            "--tile-size", str(tile), "--actors", "1", *extra]


def last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "sscc predict: error: " in err, err[-2000:]
    return err[err.rindex("sscc predict: error: "):]


def payload(store: Path, sub: str) -> dict[str, bytes]:
    """Chunk files of one array of a store, by relative path."""
    base = store / sub / "c"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.mark.slow  # fault injection, 5-20 s on 2 cores; `make test-slow`
def test_corrupt_input_chunk_fails_the_tiles_that_read_it(ray_session, scene, capsys):
    root, clean, ckpt = scene
    store = write_cube(read_benchmark("salinasA"), root / "corrupt.zarr", chunk=TILE)
    chunk = store / "reflectance" / "c" / "0" / "0" / "0"  # bands, rows 0:32, cols 0:32
    good = chunk.read_bytes()
    chunk.write_bytes(np.random.default_rng(0).bytes(len(good)))
    out = root / "corrupt_labels.zarr"
    assert predict.main(args_for(ckpt, store, out)) == 2
    err = last_error(capsys)
    assert "4 of 9 tiles failed" in err and "left incomplete" in err
    assert "cannot read the input of tile r" in err and "RuntimeError" in err
    lab = open_label_store(out)
    # the tiles whose halo reaches rows/cols < 32 failed; the other five are done and kept
    assert lab.done_tiles() == {(0, 2), (1, 2), (2, 0), (2, 1), (2, 2)}
    assert not lab.complete
    assert evaluate.main(["--labels", str(out), "--store", str(store)]) == 2
    assert "label store is incomplete" in capsys.readouterr().err

    chunk.write_bytes(good)  # the operator restores the chunk and reruns the same command
    summary = predict.run(predict.build_parser().parse_args(args_for(ckpt, store, out)))
    assert summary["tiles_labelled"] == 4 and open_label_store(out).complete
    np.testing.assert_array_equal(stored(out)[0], reference(ckpt, clean)[0])


def test_unwritable_output_gives_a_clear_error(scene, capsys):
    root, store, ckpt = scene
    blocker = root / "a_file"
    blocker.write_text("a file where the output directory should be")
    assert predict.main(args_for(ckpt, store, blocker / "labels.zarr")) == 2
    # the first thing written beside the output is its log file (OUT.log.jsonl)
    assert last_error(capsys).strip() == (f"sscc predict: error: {blocker}/labels.zarr.log.jsonl: "
                                          f"cannot write the log file (File exists: {blocker})")
    assert blocker.read_text().startswith("a file")
    assert predict.main([*args_for(ckpt, store, blocker / "labels.zarr"), "--log-file", "-"]) == 2
    err = last_error(capsys)
    assert "labels.zarr: cannot create the label store (File exists" in err and "a_file" in err
    assert predict.main(args_for(ckpt, store, "/proc/sscc-no-such/labels.zarr")) == 2
    assert "/proc/sscc-no-such/labels.zarr.log.jsonl: cannot write the log file" in last_error(capsys)
    assert predict.main([*args_for(ckpt, store, "/proc/sscc-no-such/labels.zarr"), "--log-file", "-"]) == 2
    assert "/proc/sscc-no-such/labels.zarr: cannot create the label store" in last_error(capsys)
    assert not list(root.glob("*.tmp-*"))


@pytest.mark.slow  # 20 s; the default suite keeps the corrupt-input fault of the same run
def test_write_failure_mid_run_leaves_the_store_incomplete(ray_session, scene, capsys):
    """Writes of one tile row fail (its chunk directory cannot be created, as on a full or
    read-only volume): those tiles are named and get no marker, the others are kept; after the
    fix the same command finishes only the failed tiles."""
    root, store, ckpt = scene
    out = root / "blocked.zarr"
    create_label_store(out, open_cube(store), LabelStoreSpec(
        model_version=load_checkpoint(ckpt).model_version, n_clusters=16, tile_size=TILE))
    (out / "labels" / "c").mkdir(parents=True)
    obstacle = out / "labels" / "c" / "1"
    obstacle.write_text("not a directory")
    assert predict.main(args_for(ckpt, store, out)) == 2
    err = last_error(capsys)
    assert "3 of 9 tiles failed" in err and "writing tile r1_c" in err and "File exists" in err
    lab = open_label_store(out)
    assert lab.done_tiles() == {(r, c) for r in (0, 2) for c in range(3)} and not lab.complete
    obstacle.unlink()
    summary = predict.run(predict.build_parser().parse_args(args_for(ckpt, store, out)))
    assert summary["tiles_labelled"] == 3 and open_label_store(out).complete
    np.testing.assert_array_equal(stored(out)[0], reference(ckpt, store)[0])


def n_recorded(out: Path) -> int:
    """Tiles recorded done in the label store at ``out`` (0 before the store exists)."""
    try:
        return len(open_label_store(out).done_tiles())
    except FileNotFoundError:
        return 0


def slower_checkpoint(root: Path, store: Path) -> Path:
    """A patch-mode ResNet wide enough that labelling 36 tiles takes several seconds."""
    group = zarr.open_group(store, mode="r")
    pre = fit_preprocessor(group["reflectance"], group["valid"])
    cfg = SSCCConfig(model=ModelConfig(backbone="resnet", widths=(32, 32, 32), stem_channels=16,
                                       head_hidden=32, n_clusters=16))
    model = build_training(cfg, 8).model
    ckpt = Checkpoint(config=cfg, in_channels=8, n_bands=group["reflectance"].shape[0],
                      model_state=model.state_dict(), preprocess_state=pre.to_state())
    return save_checkpoint(ckpt, root / "resnet32")


@pytest.mark.slow
def test_killed_labelling_job_resumes_bit_identical(ray_session, tmp_path):
    """SIGKILL a real `python -m pipelines.predict` process (its own local Ray) once some tiles
    have markers; rerunning the same command finishes, and the label and confidence chunks are
    byte-identical to an uninterrupted run."""
    tile = 16
    store = write_cube(read_benchmark("salinasA"), tmp_path / "sa16.zarr", chunk=tile)
    ckpt = slower_checkpoint(tmp_path, store)
    out, ref = tmp_path / "killed.zarr", tmp_path / "uninterrupted.zarr"
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.predict", *args_for(ckpt, store, out, tile, "--confidence")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kill_when(proc, lambda: n_recorded(out) >= 3, 240, 0.05, "no tile finished")
    done_at_kill = n_recorded(out)
    assert 3 <= done_at_kill < 36 and not open_label_store(out).complete

    resumed = predict.run(predict.build_parser().parse_args(
        args_for(ckpt, store, out, tile, "--confidence")))
    assert resumed["tiles_labelled"] <= 36 - 3 and open_label_store(out).complete
    predict.run(predict.build_parser().parse_args(args_for(ckpt, store, ref, tile, "--confidence")))
    for array in ("labels", "confidence"):
        assert payload(out, array) == payload(ref, array)
    assert len(payload(out, "labels")) == 36
