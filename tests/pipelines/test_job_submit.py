"""A real `ray start --head` + `ray job submit` of the pipeline stages, checked by their outputs.

The test cluster (tests/helpers.py ``ray_cluster``) runs in its own temp dir and ports beside the
session's Ray, with token auth on (Ray 2.60's default), and is torn down by killing exactly the
processes of that temp dir.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.io.store import open_cube
from tests.helpers import RayTestCluster, ray_cluster


@pytest.fixture(scope="module")
def head() -> Iterator[RayTestCluster]:
    with ray_cluster(head_cpus=2) as cluster:
        yield cluster


@pytest.mark.slow  # 1-3 min on 2 cores; `make test-slow`
def test_ray_job_submit_runs_the_stages_and_reports_user_errors(head: RayTestCluster, tmp_path: Path) -> None:
    """One job (each submission costs a job driver and a working-dir upload): ingest, then
    Ray Train in the job's cluster, then a train with a missing store, which fails the job with
    the one-line user error."""
    cube = tmp_path / "cube.zarr"
    ingest = ["python", "-m", "pipelines.ingest", "--benchmark", "salinasA", "--out", str(cube), "--chunk", "32"]
    train = ["python", "-m", "pipelines.train", "--store", str(cube), "--run-name", "job",
             "--storage-path", str(tmp_path / "runs"), "--num-workers", "1", "--cpus-per-worker", "0.5",
             "--set", "model.backbone=fcn", "--set", "model.widths=[8,8,8]", "--set", "model.stem_channels=8",
             "--set", "model.head_hidden=16", "--set", "model.n_clusters=6", "--set", "train.epochs=1",
             "--set", "train.batch_size=256", "--set", "tile.tile_size=32"]
    missing = ["python", "-m", "pipelines.train", "--store", str(tmp_path / "missing.zarr"),
               "--run-name", "x", "--storage-path", str(tmp_path)]
    done = head.submit("sh", "-c", " && ".join(shlex.join(cmd) for cmd in (ingest, train, missing)))
    output = done.stdout + done.stderr
    assert open_cube(cube)["reflectance"].shape == (204, 83, 86), output[-3000:]
    ckpt = load_checkpoint(tmp_path / "runs" / "job" / "final")
    assert ckpt.epoch == 1 and ckpt.config.model.n_clusters == 6
    assert done.returncode != 0
    assert "sscc train: error:" in output
    # A quiet terminal: the stage's own progress line, none of Ray's worker-side lines (Ray
    # Train / Ray Data INFO lines, progress bars, internal tracebacks) and no traceback at all.
    assert "epoch 1/1" in output, output[-3000:]
    for noise in ("RayTrainWorker pid=", "TrainController pid=", "Traceback"):
        assert noise not in output, output[-3000:]
