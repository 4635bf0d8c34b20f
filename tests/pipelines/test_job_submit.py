"""A real `ray start --head` + `ray job submit` of the pipeline stages, checked by their outputs.

The test cluster runs in its own temp dir and ports beside the session's Ray, with token auth on
(Ray 2.60's default), and is torn down by killing exactly the processes of that temp dir.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.io.store import open_cube

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(marker: str) -> None:
    """SIGKILL every process whose command line mentions ``marker`` (the cluster's temp dir)."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []):
                proc.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@pytest.fixture(scope="module")
def head() -> Iterator[dict[str, str]]:
    temp = tempfile.mkdtemp(prefix="/tmp/rj")  # short: Ray's unix sockets live under it
    port, dash = free_port(), free_port()
    # Every fixed default port gets a free one: the session's Ray already holds the defaults.
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "ray-client-server-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port")]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
         *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while subprocess.run([str(BIN / "ray"), "job", "list"], env=env, capture_output=True).returncode:
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("the test Ray head did not come up")
            time.sleep(2)
        yield env
    finally:
        proc.terminate()
        kill_tree(temp)
        shutil.rmtree(temp, ignore_errors=True)


def submit(env: dict[str, str], *entrypoint: str) -> subprocess.CompletedProcess:
    """``ray job submit``, retried while the head's job agent is still starting (HTTP 500)."""
    deadline = time.time() + 120
    while True:
        done = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--working-dir", str(REPO), "--", *entrypoint],
            env=env, capture_output=True, text=True, timeout=400,
        )
        if "No available agent to submit job" not in done.stderr + done.stdout or time.time() > deadline:
            return done
        time.sleep(3)


@pytest.mark.slow  # 1-3 min on 2 cores; `make test-slow`
def test_ray_job_submit_runs_the_stages_and_reports_user_errors(head: dict[str, str], tmp_path: Path) -> None:
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
    done = submit(head, "sh", "-c", " && ".join(shlex.join(cmd) for cmd in (ingest, train, missing)))
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
