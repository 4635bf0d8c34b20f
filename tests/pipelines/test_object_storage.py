"""Every store on object storage: an S3 API server (moto's ``moto_server``,
:func:`tests.helpers.s3_server`, one per test session) on 127.0.0.1, credentials and endpoint
only from the standard AWS environment variables.

The default tests cover the store layer on the server: a label store with its tile records, a
labelling killed and resumed tile by tile (bit-identical to a local one), verify and evaluate
reading it; and the bad-input errors, line for line. The slow tests run ingest, evaluate and
export on ``s3://`` stores against the same stages on local paths, and every stage (ingest ->
train -> predict killed and resumed -> evaluate -> export -> reprocess) on ``s3://``, each in its
own process with its own local Ray, labels bit-identical to a local predict (802 s on 2 loaded
cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr

from tests.helpers import kill_when
from pipelines import evaluate, export, ingest, verify
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import open_cube, write_cube
from sscc_core.labelling.labelstore import LabelStoreSpec, open_label_store, prepare_label_store

TILE = 32
BUCKET = "sscc-test"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3(s3_env):
    """The session's moto S3 server on 127.0.0.1 with this module's bucket; the AWS environment
    points at it."""
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
    return s3_env


def one_line_error(capsys, stage: str) -> str:
    """The message of the one ``sscc <stage>: error: ...`` line that ends stderr (no traceback
    before it)."""
    lines = capsys.readouterr().err.splitlines()
    prefix = f"sscc {stage}: error: "
    assert lines and lines[-1].startswith(prefix), lines[-20:]
    assert not any("Traceback" in line or line.startswith(prefix) for line in lines[:-1])
    return lines[-1].removeprefix(prefix)


def url(name: str) -> str:
    return f"s3://{BUCKET}/{name}"


def label_tiles(cube_path, out, spec: LabelStoreSpec, stop_after: int | None = None) -> None:
    """Label every missing tile with the ground-truth class mod K (a stand-in model), in order,
    stopping after ``stop_after`` tiles (a killed run)."""
    cube = open_cube(cube_path)
    group = zarr.open_group(str(cube_path), mode="r")
    store = prepare_label_store(out, cube, spec)
    for i, tile in enumerate(store.missing_tiles(group["valid"])):
        if stop_after is not None and i == stop_after:
            return
        gt = np.asarray(group["labels"][tile.y0 : tile.y1, tile.x0 : tile.x1]).astype(int)
        valid = np.asarray(group["valid"][tile.y0 : tile.y1, tile.x0 : tile.x1])
        store.write_tile(tile, np.where(valid, gt % spec.n_clusters, -1), None, seconds=0.0)
    store.mark_complete(group["valid"], spec)


def test_label_store_on_s3_resumes_to_the_local_bytes(s3, tmp_path, capsys):
    """A labelling killed after 4 of 9 tiles and rerun gives the labels of a local run; the tile
    records are one object; verify and evaluate read the store on S3."""
    cube = write_cube(read_benchmark("salinasA"), tmp_path / "sa.zarr", chunk=TILE)
    spec = LabelStoreSpec(model_version="cafe00000001", n_clusters=6, tile_size=TILE)
    local_labels, s3_labels = tmp_path / "labels.zarr", url("resumed.zarr")
    label_tiles(cube, local_labels, spec)
    label_tiles(cube, s3_labels, spec, stop_after=4)  # killed after 4 of 9 tiles
    partial = open_label_store(s3_labels)
    assert len(partial.done_tiles()) == 4 and not partial.complete
    assert verify.main(["--labels", s3_labels]) == 0
    assert evaluate.main(["--labels", s3_labels, "--store", str(cube)]) == 2
    assert one_line_error(capsys, "evaluate") == (
        f"{s3_labels}: label store is incomplete (4 tiles done); rerun `sscc predict` with the "
        "same arguments to finish it")
    label_tiles(cube, s3_labels, spec)  # the rerun labels only the other 5
    done = open_label_store(s3_labels)
    assert done.complete and len(done.done_tiles()) == 9
    np.testing.assert_array_equal(done.labels().values,
                                  open_label_store(local_labels).labels().values)
    fs = fsspec.filesystem("s3")
    records = [k for k in fs.find(f"{BUCKET}/resumed.zarr/_sscc_tiles") if "/c/" in k]
    assert records == [f"{BUCKET}/resumed.zarr/_sscc_tiles/records/c/0/0/0"]
    assert evaluate.main(["--labels", s3_labels, "--store", str(cube)]) == 0


@pytest.mark.slow
def test_ingest_evaluate_export_on_s3_equal_local(s3, tmp_path, capsys):
    local_cube, s3_cube = tmp_path / "sa.zarr", url("sa.zarr")
    for out in (local_cube, s3_cube):
        assert ingest.main(["--benchmark", "salinasA", "--out", str(out), "--chunk", str(TILE)]) == 0
    a, b = open_cube(local_cube), open_cube(s3_cube)
    assert (a["reflectance"].values == b["reflectance"].values).all()
    assert (a["valid"].values == b["valid"].values).all()
    spec = LabelStoreSpec(model_version="cafe00000001", n_clusters=6, tile_size=TILE)
    local_labels, s3_labels = tmp_path / "labels.zarr", url("labels.zarr")
    label_tiles(local_cube, local_labels, spec)
    label_tiles(s3_cube, s3_labels, spec)
    assert evaluate.main(["--labels", s3_labels, "--store", s3_cube]) == 0
    assert export.main(["--labels", s3_labels, "--store", s3_cube, "--out", url("export"),
                        "--no-report"]) == 0
    assert export.main(["--labels", str(local_labels), "--store", str(local_cube), "--out",
                        str(tmp_path / "export"), "--no-report"]) == 0
    fs = fsspec.filesystem("s3")
    uploaded = sorted(k.removeprefix(f"{BUCKET}/export/") for k in fs.find(f"{BUCKET}/export"))
    assert uploaded == sorted(p.relative_to(tmp_path / "export").as_posix()
                              for p in (tmp_path / "export").rglob("*") if p.is_file())
    assert fs.cat(f"{BUCKET}/export/spectra.csv") == (tmp_path / "export" / "spectra.csv").read_bytes()
    # an existing export is kept without --overwrite
    assert export.main(["--labels", s3_labels, "--store", s3_cube, "--out", url("export"),
                        "--no-report"]) == 2
    assert one_line_error(capsys, "export") == (
        f"{url('export')}: output already exists (pass overwrite=True / --overwrite)")


@pytest.mark.parametrize("case", ["scheme", "bucket", "credentials", "endpoint"])
def test_unusable_object_storage_is_one_line_naming_the_url(s3, monkeypatch, tmp_path, capsys,
                                                             case):
    """Before any work: a scheme without a filesystem, a missing bucket, no credentials, an
    endpoint nobody answers on."""
    target = {"scheme": "nofs://bucket/sa.zarr", "bucket": "s3://no-such-bucket/sa.zarr"}.get(
        case, url("never.zarr"))
    if case == "credentials":
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(key)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    if case == "endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries, from the environment
    assert ingest.main(["--benchmark", "salinasA", "--out", target]) == 2
    expected = {
        "scheme": f"{target}: no filesystem is installed for URL scheme nofs:// (Protocol not "
                  "known: nofs); install its fsspec package (s3fs for s3://, gcsfs for gs://, "
                  "adlfs for az://)",
        "bucket": f"{target}: bucket 'no-such-bucket' does not exist",
        "credentials": f"{target}: no credentials found (set AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY, or run with an instance or service-account role)",
    }
    line = one_line_error(capsys, "ingest")
    if case == "endpoint":
        assert line.startswith(f"{target}: cannot reach http://127.0.0.1:9 (")
    else:
        assert line == expected[case]
    server = fsspec.filesystem("s3", skip_instance_cache=True, key=s3["AWS_ACCESS_KEY_ID"],
                               secret=s3["AWS_SECRET_ACCESS_KEY"],
                               endpoint_url=s3["AWS_ENDPOINT_URL"])
    assert not server.exists(f"{BUCKET}/never.zarr")


TINY = ["--num-workers", "1", "--cpus-per-worker", "0.5", "--set", "model.backbone=fcn",
        "--set", "model.widths=[8,8,8]", "--set", "model.stem_channels=8",
        "--set", "model.head_hidden=16", "--set", "model.n_clusters=6", "--set", "train.epochs=1",
        "--set", "train.batch_size=256", "--set", "tile.tile_size=32"]


def sscc(env: dict[str, str], stage: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m pipelines.<stage>`` in its own process (its own local Ray)."""
    done = subprocess.run([sys.executable, "-m", f"pipelines.{stage}", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def chunks(fs: Any, root: str) -> dict[str, bytes]:
    """Chunk objects (``.../c/...``) under a store, local folder or bucket prefix, by key."""
    return {k.removeprefix(root).lstrip("/"): fs.cat(k) for k in sorted(fs.find(root))
            if "/c/" in k}


@pytest.mark.slow
def test_every_stage_on_s3_with_a_killed_predict_equals_local(s3, tmp_path):
    """ingest -> train (1 epoch) -> predict (SIGKILLed after its first recorded tiles, resumed)
    -> evaluate -> export -> reprocess, every store on s3://; the labels equal a local predict
    of the same checkpoint on a local cube, chunk for chunk."""
    env = {**os.environ, **s3, "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "OMP_NUM_THREADS": "1"}
    cube, local_cube = url("e2e/cube.zarr"), str(tmp_path / "cube.zarr")
    for out in (cube, local_cube):
        sscc(env, "ingest", "--benchmark", "salinasA", "--out", out, "--chunk", "16")
    sscc(env, "train", "--store", cube, "--run-name", "demo", "--storage-path", url("e2e/runs"),
         *TINY)
    ckpt = url("e2e/runs/demo/final")
    labels = url("e2e/labels.zarr")
    predict_args = ["--checkpoint", ckpt, "--store", cube, "--out", labels, "--tile-size", "16",
                    "--actors", "1", "--mode", "patch", "--confidence"]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.predict", *predict_args], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def recorded() -> bool:
        try:
            return bool(open_label_store(labels).done_tiles())
        except FileNotFoundError:
            return False

    kill_when(proc, recorded, 300, 0.2, "no tile was recorded")
    killed = open_label_store(labels)
    assert 1 <= len(killed.done_tiles()) < 36 and not killed.complete
    sscc(env, "predict", *predict_args)
    local_labels = str(tmp_path / "labels.zarr")
    sscc(env, "predict", *predict_args[:2], "--store", local_cube, "--out", local_labels,
         *predict_args[6:])
    fs = fsspec.filesystem("s3")
    local = fsspec.filesystem("file")
    for array in ("labels", "confidence"):
        remote = chunks(fs, f"{BUCKET}/e2e/labels.zarr/{array}")
        assert remote and remote == chunks(local, f"{local_labels}/{array}")
    assert open_label_store(labels).complete

    sscc(env, "evaluate", "--labels", labels, "--store", cube)
    sscc(env, "export", "--labels", labels, "--store", cube, "--out", url("e2e/export"),
         "--no-report")
    assert fs.exists(f"{BUCKET}/e2e/export/labels.tif")
    root = url("e2e/versions")
    sscc(env, "reprocess", "--checkpoint", ckpt, "--store", cube, "--out-root", root,
         "--tile-size", "16", "--actors", "1", "--mode", "patch", "--confidence", "--no-report")
    again = sscc(env, "reprocess", "--checkpoint", ckpt, "--store", cube, "--out-root", root,
                 "--tile-size", "16", "--actors", "1", "--mode", "patch", "--confidence",
                 "--no-report")
    assert "0 tiles labelled" in again.stdout
    version = json.loads(fs.cat(f"{BUCKET}/e2e/versions/current"))["store"]
    assert chunks(fs, f"{BUCKET}/e2e/versions/{version}/labels") == chunks(
        local, f"{local_labels}/labels")
