"""Nothing silently wrong (issue 12): each case that once gave a wrong result with exit 0, or a
traceback, now ends in one documented line ``sscc <stage>: error: ...`` with exit 2 (or the
documented handling). One test per case; each asserts the exact message."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import torch
import xarray as xr

from pipelines import cli, evaluate, export, ingest, predict, train, verify
from pipelines.common import log_event, setup_logging, user_error
from pipelines.options import DEFAULT_CONFIG
from sscc_core import storage
from sscc_core.model.checkpoint import (
    CheckpointError, RunRecord, fallback_warning, load_checkpoint, newest_loadable,
    run_checkpoints, save_checkpoint,
)
from sscc_core.config import load_config
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import cube_identity, open_cube, write_cube
from sscc_core.labelling.labelstore import LabelStore, open_label_store
from tests.helpers import relabelled_store
from tests.pipelines.test_ingest import write_line
from tests.sscc_core.io.test_readers import write_envi
from tests.pipelines.test_predict import TILE, make_checkpoint
from tests.pipelines.test_train import TINY, salinas_store  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("integrity")


def one_line_error(capsys, stage: str) -> str:
    """The message of the one ``sscc <stage>: error: ...`` line that ends stderr (warnings and
    JSON log lines may come before it; a traceback may not)."""
    lines = capsys.readouterr().err.splitlines()
    prefix = f"sscc {stage}: error: "
    assert lines and lines[-1].startswith(prefix), lines[-20:]
    assert not any("Traceback" in line or line.startswith(prefix) for line in lines[:-1]), \
        lines[-20:]
    return lines[-1].removeprefix(prefix)


# --- inputs are checked against their own description --------------------------------------

@pytest.mark.parametrize(
    ("field", "value", "relation", "implied"),
    [("bands", 200, "longer than its header says", 240000),
     ("lines", 17, "longer than its header says", 208080),
     ("samples", 40, "truncated", 326400)],
)
def test_envi_data_size_must_match_the_header(root, salinas, capsys, field, value, relation,
                                              implied):
    """``bands = 200`` for a 204-band file (rows band-shifted) or ``lines`` too small (rows
    dropped) were read with exit 0; now both sizes and the header's terms are named."""
    hdr = write_envi(root / f"envi_{field}", np.ascontiguousarray(salinas[:, :20, :30]))
    hdr.write_text(hdr.read_text().replace(f"{field} = ", f"{field} = {value}\n# was ", 1))
    dims = {"bands": 204, "lines": 20, "samples": 30, field: value}
    assert ingest.main([str(hdr), "--out", str(root / f"{field}.zarr")]) == 2
    data = hdr.with_suffix(".img")
    assert one_line_error(capsys, "ingest") == (
        f"{data}: {relation}: the file holds 244800 bytes, the header implies {implied} (header "
        f"offset 0 + {dims['bands']} bands x {dims['lines']} lines x {dims['samples']} samples x "
        f"2 bytes of data type 2); fix bands/lines/samples/data type/header offset in "
        f"{hdr.name}"
    )
    assert not (root / f"{field}.zarr").exists()


def test_envi_header_offset_counts(root, salinas, capsys):
    """A header offset that the file does not hold is a size mismatch too."""
    hdr = write_envi(root / "envi_offset", np.ascontiguousarray(salinas[:4, :20, :30]))
    hdr.write_text(hdr.read_text().replace("header offset = 0", "header offset = 512"))
    assert ingest.main([str(hdr), "--out", str(root / "offset.zarr")]) == 2
    assert one_line_error(capsys, "ingest") == (
        f"{hdr.with_suffix('.img')}: truncated: the file holds 4800 bytes, the header implies "
        f"5312 (header offset 512 + 4 bands x 20 lines x 30 samples x 2 bytes of data type 2); "
        f"fix bands/lines/samples/data type/header offset in {hdr.name}"
    )


def test_truncated_geotiff(root, salinas, capsys):
    path = root / "cut.tif"
    with rasterio.open(path, "w", driver="GTiff", height=20, width=30, count=4, dtype="int16",
                       crs="EPSG:32610", transform=rasterio.Affine(30, 0, 6e5, 0, -30, 4e6)) as dst:
        dst.write(salinas[:4, :20, :30])
    full = path.stat().st_size
    os.truncate(path, full - 1000)
    assert ingest.main([str(path), "--out", str(root / "cut.zarr")]) == 2
    assert one_line_error(capsys, "ingest") == (
        f"{path}: truncated: the file holds {full - 1000} bytes, its image blocks end at byte "
        f"{full}"
    )


def test_truncated_hdf5(root, capsys):
    path = root / "cut.h5"
    with h5py.File(path, "w") as f:
        f["reflectance"] = np.ones((20, 30, 4), dtype="int16")
    full = path.stat().st_size
    os.truncate(path, full - 1000)
    assert ingest.main([str(path), "--out", str(root / "h5.zarr")]) == 2
    assert one_line_error(capsys, "ingest") == (
        f"{path}: truncated: the file holds {full - 1000} bytes, its HDF5 superblock records "
        f"{full}"
    )


def test_a_setting_under_a_field_is_one_line(root, capsys):
    """``--set model.n_clusters.x=3`` gave a TypeError traceback (the override walked into the
    YAML's int); now the config names the field that is not a section."""
    argv = ["--store", str(root / "unused.zarr"), "--run-name", "x",
            "--set", "model.n_clusters.x=3"]
    assert train.main(argv) == 2
    assert one_line_error(capsys, "train") == (
        "model.n_clusters.x: model.n_clusters is a field (= 16), not a section")


# --- numbers are checked ---------------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "nan", "-.inf"])
def test_config_rejects_non_finite_floats(root, value, capsys):
    """``--set train.lr=inf`` trained a NaN model with exit 0; now the config refuses it."""
    argv = ["--store", str(root / "unused.zarr"), "--run-name", "x", "--set", f"train.lr={value}"]
    assert train.main(argv) == 2
    shown = {"inf": "inf", "nan": "nan", "-.inf": "-inf"}[value]
    assert one_line_error(capsys, "train") == f"train.lr: must be a finite number, got {shown}"


@pytest.mark.slow  # 1-3 min on 2 cores; `make test-slow`
def test_non_finite_loss_stops_training_once_without_a_checkpoint(ray_session, salinas_store,
                                                                  tmp_path, capsys):
    """A diverging run stops at the first non-finite loss, naming epoch and step, in one line,
    without Ray Train's retries (``--max-failures 2``) and without writing any checkpoint; a
    relaunch with sane settings under the same run name trains from scratch (it resumed the NaN
    weights, then was refused for its other config)."""
    argv = ["--store", str(salinas_store), "--run-name", "diverged", "--storage-path",
            str(tmp_path), "--num-workers", "1", "--cpus-per-worker", "0.5", "--max-failures", "2",
            "--log-file", str(tmp_path / "log.jsonl"),
            *[f"--set={k}={v}" for k, v in {**TINY, "train.lr": 1e30}.items()]]
    assert train.main(argv) == 2
    assert one_line_error(capsys, "train") == (
        "epoch 1, step 2: the loss is nan; training stopped and no checkpoint "
        "of this epoch was written (lower train.lr, or check the input cube for extreme values)"
    )
    run = tmp_path / "diverged"
    assert not list(run.glob("checkpoint_*")) and not (run / "final").exists()
    # relaunched with sane settings under the same name: the diverged launch left no checkpoint,
    # so its run.json (and pre-processing) give way instead of refusing the new settings
    sane = [*argv[:4], "--storage-path", str(tmp_path), "--num-workers", "0",
            *[f"--set={k}={v}" for k, v in
                                      {**TINY, "train.epochs": 1, "postprocess.readout": "head"}.items()]]
    assert train.main(sane) == 0
    out = capsys.readouterr().out
    assert out.startswith("train: run diverged has no checkpoint from its earlier launch (refused, "
                          "diverged or stopped before epoch 1 ended); starting it again with these "
                          "settings\nepoch 1/1  loss "), out
    assert load_checkpoint(run / "final").epoch == 1


def test_checkpoints_with_non_finite_weights_are_neither_written_nor_used(root, capsys):
    """A NaN checkpoint labelled every pixel cluster 0 with exit 0; now saving one fails and
    predict refuses one written elsewhere."""
    store = write_cube(read_benchmark("salinasA"), root / "sa_nan.zarr", chunk=TILE)
    good = Path(make_checkpoint(root, store, "fcn", seed=0))
    ckpt = load_checkpoint(good)
    weight = ckpt.model_state["head.mlp.0.weight"]
    state = {**ckpt.model_state, "head.mlp.0.weight": torch.full_like(weight, float("nan"))}
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(dataclasses.replace(ckpt, model_state=state), root / "nan")
    assert str(info.value) == (
        f"{root / 'nan' / 'model.pt'}: not written: the state after epoch 0 is not finite "
        f"(head.mlp.0.weight)"
    )
    payload = torch.load(good, weights_only=True)
    payload["model_state"] = state
    bad = root / "nan.pt"
    torch.save(payload, bad)
    assert predict.main(["--checkpoint", str(bad), "--store", str(store), "--out",
                         str(root / "nan_labels.zarr")]) == 2
    assert one_line_error(capsys, "predict") == (
        f"{bad}: the checkpoint holds non-finite values (head.mlp.0.weight): the run that wrote it "
        f"diverged; train again with a lower train.lr"
    )
    assert not (root / "nan_labels.zarr").exists()


# --- every stage knows what it is continuing -------------------------------------------------

@pytest.fixture(scope="module")
def two_cubes(root):
    """Salinas-A ingested twice: two stores of the same grid with different identities."""
    ds = read_benchmark("salinasA")
    first = write_cube(ds, root / "first.zarr", chunk=TILE)
    second = write_cube(ds.assign_attrs(created="2030-01-01T00:00:00+00:00"),
                        root / "second.zarr", chunk=TILE)
    return first, second


def test_predict_refuses_a_label_store_made_from_another_cube(root, two_cubes, capsys):
    """Another cube of the same grid gave '0 to label' and 78% stale labels with exit 0."""
    first, second = two_cubes
    ckpt = make_checkpoint(root, first, "fcn", seed=0)
    labels = relabelled_store(first, root / "first_labels.zarr", np.arange(7),
                              model_version=load_checkpoint(ckpt).model_version)
    argv = ["--checkpoint", str(ckpt), "--out", str(labels.path), "--tile-size", str(TILE)]
    assert predict.main([*argv, "--store", str(second)]) == 2
    assert one_line_error(capsys, "predict") == (
        f"{labels.path}: holds labels of input {first} (identity "
        f"{cube_identity(open_cube(first))}), not of {second} (identity "
        f"{cube_identity(open_cube(second))}); relabel its changed tiles with --recheck, or "
        f"write to a new path"
    )
    assert labels.complete and labels.attrs["input_store"] == str(first)


def test_export_checks_its_input_and_output_folder(root, two_cubes, capsys):
    """Spectra from the wrong cube, and two runs' products side by side, were written with
    exit 0; now the cube must be the labels' input and --out empty, or --overwrite given."""
    first, second = two_cubes
    labels = relabelled_store(first, root / "export_labels.zarr", np.arange(7))
    out = root / "products"

    def export_to(store: Path, *extra: str) -> int:
        return export.main(["--labels", str(labels.path), "--store", str(store), "--out",
                            str(out), *extra])

    assert export_to(second) == 2
    assert one_line_error(capsys, "export") == (
        f"{second}: not the cube the labels {labels.path} were made from (they record {first}, "
        f"identity {cube_identity(open_cube(first))}; this store's identity is "
        f"{cube_identity(open_cube(second))}); pass that store as --store"
    )
    assert not out.exists()
    assert export_to(first) == 0
    capsys.readouterr()
    before = (out / "labels.tif").stat().st_mtime_ns
    assert export_to(first) == 2
    assert one_line_error(capsys, "export") == (
        f"{out}: output already exists (pass overwrite=True / --overwrite)")
    assert (out / "labels.tif").stat().st_mtime_ns == before
    assert export_to(first, "--overwrite") == 0
    assert (out / "labels.tif").stat().st_mtime_ns != before
    assert not list(root.glob("products.tmp-*"))
    (root / "notes").mkdir()
    (root / "notes" / "mine.txt").write_text("not an export")
    assert export.main(["--labels", str(labels.path), "--store", str(first), "--out",
                        str(root / "notes"), "--overwrite"]) == 2
    assert one_line_error(capsys, "export") == (
        f"{root / 'notes'}: exists and is not an sscc export; refusing to replace it")


def test_training_relaunch_continues_only_the_same_work(root, two_cubes, tmp_path, capsys):
    """A relaunch under an existing run name on another store or protocol trained 0 epochs,
    kept the old weights and overwrote final/ with exit 0; now it is refused in one line, and
    an identical relaunch of a finished run keeps final/ as it is."""
    first, second = two_cubes
    settings = {**TINY, "train.epochs": 1, "postprocess.readout": "head"}
    base = ["--run-name", "same", "--storage-path", str(tmp_path), "--num-workers", "0",
            "--log-file", str(tmp_path / "log.jsonl")]

    def launch(store: Path, **extra: object) -> int:
        sets = [f"--set={k}={v}" for k, v in {**settings, **extra}.items()]
        return train.main(["--store", str(store), *base, *sets])

    assert launch(first) == 0
    final = tmp_path / "same" / "final" / "model.pt"
    written = final.stat().st_mtime_ns
    capsys.readouterr()
    record = json.loads((tmp_path / "same" / "run.json").read_text())
    assert launch(second, **{"train.protocol": "labelled"}) == 2
    other = load_config(DEFAULT_CONFIG, {**settings, "train.protocol": "labelled"})
    assert one_line_error(capsys, "train") == (
        f"{tmp_path / 'same'}: this run was started with other settings (input ({first} -> "
        f"{second}) identity {record['input_identity']} -> {cube_identity(open_cube(second))}; "
        f"config hash {record['config_hash']} -> "
        f"{RunRecord.of('', '', other).config_hash}; protocol all -> labelled); relaunching resumes only the same input, config and "
        f"protocol (train.epochs may grow): use a new --run-name"
    )
    assert launch(first) == 0
    assert capsys.readouterr().out == (
        f"train: run same already finished (train.epochs=1 reached); kept {final} (raise "
        f"train.epochs to continue it)\ncheckpoint: {final}\n"
    )
    assert final.stat().st_mtime_ns == written


# --- outputs are whole or absent ----------------------------------------------------------------

@pytest.mark.slow  # fault injection, 5-20 s on 2 cores; `make test-slow`
def test_damaged_label_chunks_are_named_and_relabelled(ray_session, root, two_cubes, tmp_path,
                                                        capsys):
    """A label chunk deleted from a complete store left it 'complete: true', predict found
    nothing to do and export wrote a hole; now verify, export and evaluate name the tile and
    chunk, and predict relabels exactly that tile."""
    first, _ = two_cubes
    ckpt = make_checkpoint(root, first, "fcn", seed=0)
    labels = relabelled_store(first, root / "damaged.zarr", np.arange(7),
                              model_version=load_checkpoint(ckpt).model_version, n_clusters=16)
    (labels.path / "labels" / "c" / "1" / "2").unlink()
    damaged = (f"{labels.path}: 1 of 9 labelled tiles are damaged, first tile r1_c2: chunk "
               f"labels/c/1/2 is missing; the store is marked incomplete: rerun `sscc predict` "
               f"with the same arguments to relabel them")
    assert export.main(["--labels", str(labels.path), "--store", str(first), "--out",
                        str(tmp_path / "products")]) == 2
    assert one_line_error(capsys, "export") == damaged
    assert not (tmp_path / "products").exists() and not labels.complete
    assert verify.main(["--labels", str(labels.path)]) == 0
    assert capsys.readouterr().out == (
        f"verify: {labels.path}: all 8 labelled tiles intact (store not complete yet)\n")
    assert predict.main(["--checkpoint", str(ckpt), "--store", str(first), "--out",
                         str(labels.path), "--tile-size", str(TILE), "--actors", "2",
                         "--log-file", str(tmp_path / "log.jsonl")]) == 0
    assert "1 to label" in capsys.readouterr().out
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["event"] == "actors_started")
    assert (started["actors"], started["tiles"]) == (1, 1)  # never more actors than tiles
    assert labels.complete and verify.main(["--labels", str(labels.path)]) == 0
    chunk = labels.path / "labels" / "c" / "0" / "1"
    chunk.write_bytes(b"garbage")
    assert evaluate.main(["--labels", str(labels.path), "--store", str(first)]) == 2
    assert one_line_error(capsys, "evaluate").startswith(
        f"{labels.path}: 1 of 9 labelled tiles are damaged, first tile r0_c1: chunk "
        f"labels/c/0/1 is unreadable (")


# --- one line, not a traceback -----------------------------------------------------------------

@pytest.mark.parametrize("inputs", [["a.tif", "b.tif"], ["a.tif", "--mosaic"]])
def test_object_storage_url_is_refused_not_written_as_a_local_folder(tmp_path, monkeypatch,
                                                                      capsys, inputs):
    """``--out s3://bucket/lines`` with several flight lines (or --mosaic) wrote the line stores
    to a local folder named ``s3:``; those are still refused in one line (single stores on object
    storage: tests/pipelines/test_object_storage.py)."""
    monkeypatch.chdir(tmp_path)
    assert ingest.main([*inputs, "--out", "s3://bucket/lines"]) == 2
    assert one_line_error(capsys, "ingest") == (
        "s3://bucket/lines: object-storage URLs are not supported here yet (several flight lines "
        "or --mosaic: Ray tasks write the line stores in place); write to a local path or a "
        "filesystem every Ray node mounts")
    assert not list(tmp_path.iterdir())


def test_train_worker_errors_are_unwrapped():
    """A user error inside a Ray Train worker reached the user as a ``WorkerGroupError``
    traceback; it is now found behind the worker group's failures."""
    from ray.train import WorkerGroupError

    cause = CheckpointError("runs/x/checkpoint_000001/model.pt: not a loadable SSCC checkpoint")
    assert user_error(WorkerGroupError("rank 0 failed", {0: cause})) is cause
    assert user_error(WorkerGroupError("rank 0 failed", {0: RuntimeError("bug")})) is None


@pytest.mark.slow  # fault injection, 5-20 s on 2 cores; `make test-slow`
@pytest.mark.parametrize("stage", ["ingest", "export", "report", "evaluate"])
def test_full_disk_while_writing_an_output_is_one_line_and_leaves_nothing(root, two_cubes,
                                                                         tmp_path, stage):
    """A file-size limit (EFBIG, like a full disk) mid-ingest, -export, -report or -evaluate
    gave a traceback (and 4 of 7 export products), or a line without the output, or a partial
    metrics file; now one line names the output, the error and what is left, and --out is
    absent."""
    first, _ = two_cubes
    out = tmp_path / "products"
    if stage == "ingest":
        argv = ["ingest", "--benchmark", "salinasA", "--out", str(out)]
    else:
        labels = relabelled_store(first, root / f"efbig_{stage}_labels.zarr", np.arange(7))
        argv = [stage, "--labels", str(labels.path), "--store", str(first), "--out", str(out)]
    limit = 1000 if stage == "evaluate" else 20000  # bytes: its metrics JSON is about 2 KB
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from pipelines import cli\n"
        f"sys.exit(cli.main({argv!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"sscc {stage}: error: {out}: {stage} failed (File too large, EFBIG); nothing was written")
    assert "Traceback" not in done.stderr
    # only the stage's log is left beside the output (ingest keeps none)
    logs = [] if stage == "ingest" else ["products.log.jsonl"]
    assert [p.name for p in tmp_path.iterdir()] == logs


@pytest.mark.slow  # fault injection, 5-20 s on 2 cores; `make test-slow`
def test_full_disk_while_labelling_is_one_line_and_the_rerun_finishes(ray_session, root,
                                                                      two_cubes, tmp_path,
                                                                      monkeypatch, capsys):
    """A full disk when the driver records finished tiles ended in 'No space left on device
    (ENOSPC)' without the store or what was left; now the line names both, the store is left
    incomplete, and the same command finishes it once there is room."""
    first, _ = two_cubes
    ckpt = make_checkpoint(root, first, "fcn", seed=0)
    out = tmp_path / "labels.zarr"
    argv = ["--checkpoint", str(ckpt), "--store", str(first), "--out", str(out),
            "--tile-size", str(TILE), "--actors", "1"]

    def full_disk(self, records):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(LabelStore, "record_tiles", full_disk)
        assert predict.main(argv) == 2
    assert one_line_error(capsys, "predict") == (
        f"{out}: labelling failed (No space left on device, ENOSPC); the label store is left "
        "incomplete with the tiles recorded so far; free space and rerun the same command (it "
        "labels the rest)")
    assert not open_label_store(out).complete
    assert predict.main(argv) == 0
    assert open_label_store(out).complete


@pytest.mark.slow  # fault injection, 5-20 s on 2 cores; `make test-slow`
def test_full_disk_while_checkpointing_is_one_line_naming_the_run(root, two_cubes, tmp_path,
                                                                  monkeypatch, capsys):
    """A full disk while an epoch's checkpoint was written ended, after Ray Train had retried
    the epoch into the same disk twice, in a line naming neither the run nor what was kept; now
    the first failure is recorded, a retried worker group ends at once, and the line says so."""
    first, _ = two_cubes
    argv = ["--store", str(first), "--run-name", "full", "--storage-path", str(tmp_path),
            "--num-workers", "0", "--log-file", str(tmp_path / "log.jsonl"),
            *[f"--set={k}={v}" for k, v in {**TINY, "train.epochs": 1}.items()]]

    def full_disk(checkpoint, folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    monkeypatch.setattr(train, "save_checkpoint", full_disk)
    assert train.main(argv) == 2
    message = one_line_error(capsys, "train")
    assert message.startswith(f"{tmp_path / 'full'}: training failed (")
    assert message.endswith(": No space left on device, ENOSPC); the run keeps its last whole "
                            "checkpoint; free space and relaunch the same command to resume "
                            "from it")


# --- crash recovery without hand work ----------------------------------------------------------

def test_resume_falls_back_to_the_newest_loadable_checkpoint(root, two_cubes):
    """A truncated newest per-epoch checkpoint gave 3 Ray retries and a ``WorkerGroupError``;
    resume now takes the newest one that loads, up to the one Ray Train reports, and says which
    it skipped."""
    first, _ = two_cubes
    ckpt = load_checkpoint(make_checkpoint(root, first, "fcn", seed=0))
    run = root / "fallback_run"
    names = [f"checkpoint_2030-01-01_00-00-0{i}.000000" for i in (1, 2, 3)]
    for epoch, name in enumerate(names, start=1):
        save_checkpoint(dataclasses.replace(ckpt, epoch=epoch), run / name / "model.pt")
    newest = run / names[1] / "model.pt"
    os.truncate(newest, 1000)
    paths = run_checkpoints(str(run), newest=names[1])
    assert paths == [str(run / n / "model.pt") for n in names[1::-1]]
    resumed, errors = newest_loadable(paths)
    assert resumed.epoch == 1 and len(errors) == 1
    assert str(errors[0]).startswith(f"{newest}: not a loadable SSCC checkpoint (")
    assert fallback_warning(errors, paths[1], 1) == (
        f"resuming from {paths[1]} (epoch 1); skipped 1 newer checkpoint(s): {errors[0]}")
    os.truncate(paths[1], 10)
    resumed, errors = newest_loadable(paths)
    assert resumed is None and len(errors) == 2
    assert fallback_warning(errors, None, 0).startswith(
        "no loadable checkpoint left, training again from epoch 0; skipped 2 newer checkpoint(s): "
        f"{newest}: not a loadable SSCC checkpoint (")


@pytest.mark.slow
def test_truncated_epoch_checkpoint_resumes_through_ray_train(ray_session, salinas_store,
                                                              tmp_path, capsys):
    """Killed after its last per-epoch checkpoint, whose file is truncated: the relaunch
    resumes from the epoch before, with a warning, and ends with the uninterrupted weights."""
    argv = ["--store", str(salinas_store), "--run-name", "cut", "--storage-path", str(tmp_path),
            "--num-workers", "1", "--cpus-per-worker", "0.5", "--log-file",
            str(tmp_path / "log.jsonl"),
            *[f"--set={k}={v}" for k, v in {**TINY, "postprocess.readout": "head"}.items()]]
    assert train.main(argv) == 0
    run = tmp_path / "cut"
    final = run / "final" / "model.pt"
    uninterrupted = load_checkpoint(final)
    final.unlink()  # the crash: after the epoch-2 checkpoint, before final/ and history.json
    (run / "history.json").unlink()
    newest = Path(run_checkpoints(str(run))[0])
    os.truncate(newest, newest.stat().st_size // 2)
    capsys.readouterr()
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    previous = run_checkpoints(str(run))  # the epoch-1 checkpoint is one of the two kept
    assert f"warning: resuming from " in out and "(epoch 1); skipped 1 newer checkpoint(s): " \
        f"{newest}: not a loadable SSCC checkpoint (" in out, out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["2/2"]
    resumed = load_checkpoint(final)
    assert resumed.epoch == 2 and len(previous) == 2
    for name, value in uninterrupted.model_state.items():
        torch.testing.assert_close(resumed.model_state[name], value, rtol=0, atol=0)


def test_stale_temporaries_are_removed_by_the_next_write(tmp_path):
    """``*.tmp-*`` left by a killed run were never cleaned; the next write of the same target
    removes those older than the writing process, never a newer one (it may be in use)."""
    target = tmp_path / "cube.zarr"
    stale = [tmp_path / "cube.zarr.tmp-0123456789ab", tmp_path / ".cube.zarr.tmp-4242"]
    stale[0].mkdir()
    (stale[0] / "zarr.json").write_text("{}")
    stale[1].write_text("partial")
    fresh = tmp_path / "cube.zarr.tmp-fresh"
    fresh.mkdir()
    other = tmp_path / "other.zarr.tmp-0123456789ab"
    other.mkdir()
    old = storage.PROCESS_START - 60
    for path in [*stale, other]:
        os.utime(path, (old, old))
    assert sorted(storage.remove_stale_temporaries(target)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, other.name]


@pytest.mark.slow  # fault injection, 5-20 s on 2 cores; `make test-slow`
def test_killed_multi_line_ingest_resumes(ray_session, tmp_path, salinas, capsys):
    """A rerun of a killed multi-line ingest stopped at "output already exists"; now a line
    already ingested from its unchanged source is kept, the rest ingested, the killed run's
    temporaries removed, and a line whose source changed is refused in one line."""
    inputs = [str(write_line(tmp_path / f"line_{n}.tif", salinas[:8, :20, :20], 0, 20 * i))
              for i, n in enumerate("ab")]
    out = tmp_path / "lines"
    argv = [*inputs, "--out", str(out), "--chunk", "16"]
    assert ingest.main(argv) == 0
    kept = (out / "line_a.zarr" / "zarr.json").stat().st_mtime_ns
    # the kill: line b was being written into its temporary folder
    (out / "line_b.zarr").rename(out / "line_b.zarr.tmp-0123456789ab")
    old = storage.PROCESS_START - 60
    os.utime(out / "line_b.zarr.tmp-0123456789ab", (old, old))
    capsys.readouterr()
    assert ingest.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"kept {out / 'line_a.zarr'}: ingested from {inputs[0]} as it is now"
    assert printed[1].startswith(f"ingested {inputs[1]} -> {out / 'line_b.zarr'}: 8 bands")
    assert (out / "line_a.zarr" / "zarr.json").stat().st_mtime_ns == kept
    assert sorted(p.name for p in out.iterdir()) == ["line_a.zarr", "line_b.zarr"]
    np.testing.assert_array_equal(open_cube(out / "line_b.zarr")["reflectance"].values,
                                  salinas[:8, :20, :20])
    write_line(tmp_path / "line_a.tif", salinas[8:16, :20, :20], 0, 0)
    assert ingest.main(argv) == 2
    assert one_line_error(capsys, "ingest") == (
        f"{out / 'line_a.zarr'}: output already exists and was not ingested from {inputs[0]} as "
        f"it is now (the file changed, or --chunk/--shard differ); pass --overwrite to ingest it "
        f"again")


# --- a quiet, informative terminal ----------------------------------------------------------------

def test_stores_open_with_plain_xarray_without_warnings(root, two_cubes):
    """``xarray.open_zarr(path)`` warned that the stores had no consolidated metadata (and fell
    back to slow listing); cube stores and label stores now carry it, kept current."""
    first, _ = two_cubes
    labels = relabelled_store(first, root / "plain_labels.zarr", np.arange(7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cube = xr.open_zarr(first)
        opened = xr.open_zarr(labels.path)
    assert sorted(cube.data_vars) == ["labels", "reflectance", "valid"]
    assert cube["reflectance"].shape == (204, 83, 86)
    assert opened["labels"].shape == (83, 86) and opened.attrs["complete"] is True
    np.testing.assert_array_equal(opened["labels"].values, labels.labels().values)


def test_json_logs_go_beside_the_output_by_default(tmp_path, capsys):
    """JSON log lines were interleaved with the progress lines on the terminal; by default they
    go to ``OUTPUT.log.jsonl``, and ``--log-file -`` still sends them to stderr."""
    out = tmp_path / "labels.zarr"
    log_event(setup_logging("predict", None, output=out), "plan", tiles=3)
    assert capsys.readouterr().err == ""
    record = json.loads((tmp_path / "labels.zarr.log.jsonl").read_text())
    assert (record["stage"], record["event"], record["tiles"]) == ("predict", "plan", 3)
    log_event(setup_logging("predict", "-", output=out), "plan", tiles=4)
    assert json.loads(capsys.readouterr().err)["tiles"] == 4


def test_reproduce_records_k_and_its_command_and_refuses_another_k(tmp_path, capsys):
    """``sscc reproduce --json`` recorded ``n_clusters: 16`` for a 3- or 4-class scene, a
    doubled ``sscc reproduce reproduce`` command, and ignored ``--set model.n_clusters``."""
    out = tmp_path / "r.json"
    argv = ["--dataset", "salinas_a", "--method", "kmeans_pca", "--seeds", "0", "--json", str(out)]
    assert cli.main(["reproduce", *argv]) == 0
    doc = json.loads(out.read_text())
    assert doc["command"] == "sscc reproduce " + " ".join(argv)
    assert doc["config"]["model"]["n_clusters"] == 6 == doc["runs"][0]["n_clusters_used"]
    assert cli.main(["reproduce", *argv, "--set", "model.n_clusters=3"]) == 2
    assert one_line_error(capsys, "reproduce") == (
        "--set model.n_clusters=3: sscc reproduce clusters salinasA into its K = 6 classes; drop "
        "the override (sscc train takes any K)")
    assert cli.main(["reproduce", *argv, "--set", "model.n_clusters=6"]) == 0
