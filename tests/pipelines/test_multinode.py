"""A real multi-node Ray cluster on this machine that loses a worker node while labelling.

A head with no CPUs (it runs the job drivers only) and two worker nodes of 3 CPUs, each started
with `ray start` on its own ports, token authentication on (tests/helpers.py ``ray_cluster``).
Training is submitted with `ray job submit`: Ray Train's 2 workers ask for 2 CPUs each, so no
node holds both and they land on the two worker nodes (checked in Ray's state). Then a labelling
job is submitted; once its first tiles are recorded, the raylet of a node holding a label actor
is SIGKILLed. The job finishes by itself: Ray restarts the lost actor on the surviving node and
retries its task and the read tasks whose outputs were lost (Ray Data's actor pool keeps
``max_restarts=-1`` and ``max_task_retries=-1``). Its labels equal a single-node run's byte for
byte. The surviving node has room for both label actors and a read task (3 CPUs), so losing a
node costs time, not progress.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from pipelines import predict
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import write_cube
from tests.helpers import kill_process_tree, ray_cluster, wait_while_running
from tests.pipelines.test_faults import n_recorded, payload

TILE = 8  # Salinas-A (83 x 86) in 11 x 11 = 121 tiles: a run long enough to lose a node in
TILES = 121
WORKER_CPUS = 3
TRAIN_CPUS = 2  # more than half a worker node: two training workers cannot share one


def train_command(cube: Path, runs: Path) -> list[str]:
    """A tiny 1-epoch training with 2 workers (the job-submit test's configuration)."""
    return ["python", "-m", "pipelines.train", "--store", str(cube), "--run-name", "mn",
            "--storage-path", str(runs), "--num-workers", "2", "--cpus-per-worker", str(TRAIN_CPUS),
            "--set", "model.backbone=fcn", "--set", "model.widths=[8,8,8]",
            "--set", "model.stem_channels=8", "--set", "model.head_hidden=16",
            "--set", "model.n_clusters=6", "--set", "train.epochs=1",
            "--set", "train.batch_size=256", "--set", "tile.tile_size=16"]


def predict_args(checkpoint: Path, cube: Path, out: Path) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--store", str(cube), "--out", str(out),
            "--tile-size", str(TILE), "--actors", "2"]


def label_actors(cluster) -> list[dict]:
    """The labelling job's alive Ray Data actors (``MapWorker(...LabelReads...)``)."""
    return [a for a in cluster.state("actors", "state=ALIVE") if a["class_name"].startswith("MapWorker(")]


@pytest.mark.slow  # 13 min on 2 shared cores at load 6-12 (measured); `make test-slow`
@pytest.mark.timeout(1800)
def test_cluster_trains_on_two_nodes_and_labels_through_a_lost_node(tmp_path: Path, request) -> None:
    cube = write_cube(read_benchmark("salinasA"), tmp_path / "cube.zarr", chunk=TILE)
    checkpoint = tmp_path / "runs" / "mn" / "final"
    out, log = tmp_path / "labels.zarr", tmp_path / "labelling.txt"
    with ray_cluster(head_cpus=0, worker_cpus=(WORKER_CPUS, WORKER_CPUS)) as cluster:
        workers = {n["node_id"] for n in cluster.state("nodes") if not n["is_head_node"]}
        done = cluster.submit(*train_command(cube, tmp_path / "runs"))
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "epoch 1/1" in output, output[-3000:]
        trainers = cluster.state("actors", "class_name=RayTrainWorker")
        assert sorted(a["node_id"] for a in trainers) == sorted(workers), trainers

        with log.open("w") as sink:
            job = subprocess.Popen(
                cluster.submit_command("python", "-m", "pipelines.predict",
                                       *predict_args(checkpoint, cube, out)),
                env=cluster.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            actors: list[dict] = []

            def started() -> bool:
                actors[:] = label_actors(cluster)
                return bool(actors)

            wait_while_running(job, started, 300, 0.5, "no label actor started")
            lost = actors[0]["node_id"]
            raylet = cluster.raylet(lost)
            wait_while_running(job, lambda: n_recorded(out) >= 1, 300, 0.05, "no tile recorded")
            raylet.send_signal(signal.SIGKILL)
            recorded_at_kill = n_recorded(out)
            job.wait(timeout=900)
        finally:
            if job.poll() is None:
                kill_process_tree(job.pid)
        output = log.read_text()
        assert job.returncode == 0, output[-4000:]
        assert recorded_at_kill < TILES, "labelling finished before the node was lost"
        assert lost in {n["node_id"] for n in cluster.state("nodes", "state=DEAD")}
        assert f"predict: {TILES}/{TILES} tiles checked, {TILES} labelled, 0 failed" in output

    request.getfixturevalue("ray_session")  # the single-node run, once the cluster is gone
    reference = tmp_path / "single_node.zarr"
    predict.run(predict.build_parser().parse_args(predict_args(checkpoint, cube, reference)))
    assert payload(out, "labels") == payload(reference, "labels")
    assert len(payload(out, "labels")) == TILES
