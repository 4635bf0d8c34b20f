"""The Ray batch-inference pipeline equals the single-process reference, resumes exactly, and
refuses bad input with clear messages."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from pipelines import evaluate, predict
from sscc_core.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sscc_core.config import ModelConfig, SSCCConfig, TrainConfig
from sscc_core.labelling.inference import Labeller, label_scene
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube, write_cube
from sscc_core.labelling.labelstore import LabelStoreSpec, create_label_store, open_label_store
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.training.trainer import build_training

TILE = 32  # Salinas-A is 83 x 86: a 3 x 3 grid with ragged edge tiles, halos cross tiles


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Salinas-A (real, 204 bands) as a cube store chunked by 32, and a 100-band cut of it."""
    root = tmp_path_factory.mktemp("predict")
    ds = read_benchmark("salinasA")
    full = write_cube(ds, root / "sa.zarr", chunk=TILE)
    cut = write_cube(ds.isel(band=slice(0, 100)), root / "sa100.zarr", chunk=TILE)
    return root, full, cut


def make_checkpoint(root, store, backbone: str, seed: int):
    """A tiny untrained model of ``backbone`` with pre-processing fitted on the store."""
    group = zarr.open_group(store, mode="r")
    pre = fit_preprocessor(group["reflectance"], group["valid"])
    cfg = SSCCConfig(model=ModelConfig(backbone=backbone, widths=(8, 8, 8), stem_channels=8,
                                       head_hidden=16, n_clusters=16), train=TrainConfig(seed=seed))
    model = build_training(cfg, 8).model
    ckpt = Checkpoint(config=cfg, in_channels=8, n_bands=group["reflectance"].shape[0],
                      model_state=model.state_dict(), preprocess_state=pre.to_state())
    return save_checkpoint(ckpt, root / f"{backbone}_{seed}")


def reference(ckpt_path, store, tile_size: int = TILE):
    """Single-process labels (encoded like the store: -1 -> 255) and confidence."""
    group = zarr.open_group(store, mode="r")
    labeller = Labeller.from_checkpoint(load_checkpoint(ckpt_path))
    labels, conf = label_scene(labeller, group["reflectance"], group["valid"], tile_size)
    return np.where(labels < 0, 255, labels).astype(np.uint8), conf


def assert_whole_scene_agrees(ckpt_path, store, labels, conf=None):
    """The tiled labels also equal one whole-scene pass (no tile edges at all): halos are right.
    Labels must match exactly; confidence only to float rounding (other conv sizes)."""
    whole, whole_conf = reference(ckpt_path, store, tile_size=128)
    np.testing.assert_array_equal(labels, whole)
    if conf is not None:
        np.testing.assert_allclose(conf, whole_conf, atol=1e-6)


def predict_args(ckpt, store, out, *extra):
    return predict.build_parser().parse_args(
        ["--checkpoint", str(ckpt), "--store", str(store), "--out", str(out),
         "--tile-size", str(TILE), *extra])


def stored(out):
    group = zarr.open_group(out, mode="r")
    conf = group["confidence"][:] if "confidence" in group else None
    return group["labels"][:], conf


def test_dense_pipeline_equals_reference(ray_session, scene, capfd):
    root, store, _ = scene
    ckpt = make_checkpoint(root, store, "fcn", seed=0)
    out = root / "fcn_labels.zarr"
    summary = predict.run(predict_args(ckpt, store, out, "--actors", "2", "--confidence",
                                       "--mode", "dense"))
    ref_labels, ref_conf = reference(ckpt, store)
    labels, conf = stored(out)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(conf, ref_conf)
    assert len(np.unique(ref_labels)) > 2  # a non-degenerate map, so equality means something
    assert_whole_scene_agrees(ckpt, store, labels, conf)
    assert summary["tiles"] == summary["tiles_labelled"] == 9
    assert summary["pixels_labelled"] == int((ref_labels != 255).sum())
    assert open_label_store(out).complete
    # a quiet terminal: Ray core's error-level line for each Ray Data map actor is dropped
    out_text, err_text = capfd.readouterr()
    assert "predict: 9/9 tiles checked, 9 labelled, 0 failed" in out_text
    assert "has constructor arguments in the object store" not in err_text, err_text[-2000:]


@pytest.mark.slow
def test_patch_pipeline_equals_reference_and_resumes(ray_session, scene, capsys):
    root, store, _ = scene
    ckpt = make_checkpoint(root, store, "resnet", seed=1)
    out = root / "resnet_labels.zarr"
    predict.run(predict_args(ckpt, store, out, "--actors", "1"))
    ref_labels, _ = reference(ckpt, store)
    np.testing.assert_array_equal(stored(out)[0], ref_labels)
    assert_whole_scene_agrees(ckpt, store, stored(out)[0])

    # crash simulation: three tiles lost their chunk and record, the run never completed
    lab = open_label_store(out)
    lost = [(0, 1), (1, 1), (2, 2)]
    lab.forget_tiles(lost)
    group = zarr.open_group(out, mode="r+")
    for r, c in lost:
        group["labels"][r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = 0
    kept = {p: p.stat().st_mtime_ns for p in (out / "labels" / "c").glob("*/*")
            if (int(p.parent.name), int(p.name)) not in lost}
    assert evaluate.main(["--labels", str(out), "--store", str(store)]) == 2
    assert "label store is incomplete (6 tiles done)" in capsys.readouterr().err

    summary = predict.run(predict_args(ckpt, store, out, "--actors", "1"))
    assert summary["tiles_labelled"] == len(lost)
    np.testing.assert_array_equal(stored(out)[0], ref_labels)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # done tiles were not rewritten
    assert open_label_store(out).complete

    # a rerun of a complete store has nothing to do and starts no actors
    assert predict.run(predict_args(ckpt, store, out))["tiles_labelled"] == 0


def test_user_errors(scene, capsys):
    root, store, cut = scene
    ckpt = make_checkpoint(root, store, "fcn", seed=2)
    other = make_checkpoint(root, store, "resnet", seed=3)
    base = ["--checkpoint", str(ckpt), "--tile-size", str(TILE)]

    assert predict.main([*base, "--store", str(cut), "--out", str(root / "x.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sscc predict: error: ")
    assert "cube has 100 bands but the model was fitted on 204 bands" in err

    assert predict.main(["--checkpoint", str(other), "--store", str(store), "--out",
                         str(root / "y.zarr"), "--mode", "dense"]) == 2
    assert "dense inference needs the 'fcn' backbone" in capsys.readouterr().err

    # an existing store of another model version is never overwritten (no Ray needed to refuse)
    out = root / "guarded.zarr"
    group_path = out / "zarr.json"
    create_label_store(out, open_cube(store), LabelStoreSpec(
        model_version=load_checkpoint(other).model_version, n_clusters=16, tile_size=TILE))
    before = group_path.read_bytes()
    assert predict.main([*base, "--store", str(store), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite another model's labels" in err
    assert group_path.read_bytes() == before

    assert predict.main([*base, "--store", str(root / "missing.zarr"), "--out", str(out)]) == 2
    assert "no Zarr cube store here" in capsys.readouterr().err
    assert not os.path.exists(root / "x.zarr") and not os.path.exists(root / "y.zarr")


def test_actor_cpus():
    assert predict.actor_cpus(2, 2) == 0.75
    assert predict.actor_cpus(4, 16) == 1.0
    assert predict.actor_cpus(8, 2) == 0.15
    assert predict.actor_cpus(100, 1) == 0.05
    assert predict.read_cpus(14) == 1.0 and predict.read_cpus(0.5) == 0.25
    assert predict.read_cpus(0.0) == 0.05


def test_actors_that_take_every_cpu_are_refused_instead_of_hanging(ray_session, scene, capsys):
    """Label actors holding all of the cluster's CPUs would leave the read tasks unschedulable
    (a silent hang, found by the multi-node test): one line instead."""
    root, store, _ = scene
    ckpt = make_checkpoint(root, store, "fcn", seed=6)
    out = root / "full_labels.zarr"
    assert predict.main(["--checkpoint", str(ckpt), "--store", str(store), "--out", str(out),
                         "--tile-size", str(TILE), "--log-file", "-", "--actors", "2",
                         "--cpus-per-actor", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "sscc predict: error: --actors 2 x --cpus-per-actor 1 take all 2 CPUs of the Ray cluster "
        "and leave none for the read tasks; lower --actors or --cpus-per-actor")
    assert not (out.exists() and open_label_store(out).complete)


@pytest.mark.slow
def test_tiles_sharing_a_forward_pass_keep_the_labels(ray_session, scene):
    """Several tiles per label-actor batch (the GPU layout, here on CPU): equally shaped tiles
    go through one dense forward pass; labels equal the reference, confidence to rounding."""
    root, store, _ = scene
    ckpt = make_checkpoint(root, store, "fcn", seed=4)
    out = root / "batched_labels.zarr"
    summary = predict.run(predict_args(ckpt, store, out, "--actors", "1", "--confidence",
                                       "--tiles-per-batch", "4"))
    ref_labels, ref_conf = reference(ckpt, store)
    labels, conf = stored(out)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(conf, ref_conf, atol=1e-6)
    assert summary["tiles_labelled"] == 9 and open_label_store(out).complete


def test_use_gpu_without_a_gpu_is_refused_before_any_work(ray_session, scene, capsys):
    root, store, _ = scene
    ckpt = make_checkpoint(root, store, "fcn", seed=5)
    out = root / "gpu_labels.zarr"
    assert predict.main(["--checkpoint", str(ckpt), "--store", str(store), "--out", str(out),
                         "--log-file", "-", "--use-gpu"]) == 2
    err = capsys.readouterr().err
    assert err == ("sscc predict: error: --use-gpu: the Ray cluster has 0 GPUs, a label actor "
                   "needs 1; drop --use-gpu to label on CPU\n")
    assert not out.exists()
