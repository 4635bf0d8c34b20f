"""Helpers shared by test modules (imported as ``from tests.helpers import ...``)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import psutil
import zarr

from sscc_core.io.store import cube_identity, open_cube
from sscc_core.labelling.labelstore import LabelStore, LabelStoreSpec, create_label_store

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
# Every port `ray start` would otherwise take at its fixed default (the session's Ray, and the
# other nodes of a test cluster on this machine, hold those).
RAY_NODE_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                  "ray-client-server-port", "runtime-env-agent-port", "node-manager-port",
                  "object-manager-port")


def relabelled_store(cube_path: Path, out: Path, lut: np.ndarray, model_version: str = "perfect00001",
                     n_clusters: int = 8, complete: bool = True, tile_size: int = 32) -> LabelStore:
    """A label store whose clusters are ``lut[ground truth]`` (a relabelled ground truth: with a
    one-to-one ``lut``, a perfect clustering), written tile by tile as the pipeline does; with
    ``complete=False`` the last tile is left unlabelled and the store is not marked complete."""
    cube = open_cube(cube_path)
    store = create_label_store(out, cube, LabelStoreSpec(
        model_version=model_version, n_clusters=n_clusters, tile_size=tile_size,
        config={"model": {"n_clusters": n_clusters}}, input_store=str(cube_path),
        input_identity=cube_identity(cube)))
    gt = cube["labels"].values
    valid = zarr.open_group(cube_path, mode="r")["valid"]
    tiles = store.missing_tiles(valid)
    for tile in tiles if complete else tiles[:-1]:
        store.write_tile(tile, lut[gt[tile.y0 : tile.y1, tile.x0 : tile.x1]], None, seconds=0.0)
    if complete:
        store.mark_complete(valid)
    return store


def wait_while_running(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float,
                       poll: float, waiting_for: str) -> None:
    """Wait until ``ready()`` (polled every ``poll`` seconds) while ``proc`` still runs; fails
    naming ``waiting_for`` after ``timeout`` seconds, or when the process ends first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the labelling job ended before it could be killed"
        assert time.time() < deadline, f"{waiting_for} in time"
        time.sleep(poll)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, poll: float,
              waiting_for: str) -> None:
    """Wait until ``ready()`` (polled every ``poll`` seconds) while ``proc`` still runs, then
    SIGKILL its process tree (also when the wait fails); fails naming ``waiting_for`` after
    ``timeout`` seconds, or when the process ends before it could be killed."""
    try:
        wait_while_running(proc, ready, timeout, poll, waiting_for)
    finally:
        kill_process_tree(proc.pid)


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (a stage's driver, the local Ray it started and
    its actors: all started by the test) and wait for them to go."""
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in family:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL",
          "AWS_EC2_METADATA_DISABLED")


@contextmanager
def s3_server(timeout: float = 30) -> Iterator[dict[str, str]]:
    """A real S3 API server (moto's ``moto_server``, from ``moto[server]``) in its own process on
    127.0.0.1, with the standard AWS environment of this process pointing at it (test
    credentials, ``us-east-1``, no instance metadata); yields that environment (for child
    processes). Afterwards, also on failure, the server is stopped and the environment restored.
    fsspec's cached S3 filesystems are dropped at both ends: they keep the endpoint they were made
    with, so one cached for an earlier server would call a port nobody answers on.
    """
    cached = fsspec.get_filesystem_class("s3")
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(env)
    cached.clear_instance_cache()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.1)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        cached.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def kill_marked(marker: str) -> None:
    """SIGKILL every process whose command line mentions ``marker`` (a test cluster's temp dir:
    every process of its nodes has it in its arguments; `ray stop` would stop every Ray on the
    machine, other users' included)."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []):
                proc.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@dataclass(frozen=True)
class RayTestCluster:
    """A Ray cluster of real ``ray start`` nodes on this machine (see :func:`ray_cluster`).

    Attributes:
        temp: The cluster's temp dir (every node's sessions, sockets and logs).
        env: Client environment: ``RAY_ADDRESS`` (the head's job API), token auth and the token.
        nodes: The ``ray start --block`` processes, head first.
    """

    temp: str
    env: dict[str, str]
    nodes: tuple[subprocess.Popen, ...]

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``ray ARGS`` as a client of this cluster."""
        return subprocess.run([str(RAY), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def submit_command(self, *entrypoint: str) -> list[str]:
        """The ``ray job submit`` command line of ``entrypoint``, with the repository as working dir."""
        return [str(RAY), "job", "submit", "--working-dir", str(REPO), "--", *entrypoint]

    def submit(self, *entrypoint: str) -> subprocess.CompletedProcess:
        """``ray job submit``, retried while the head's job agent is still starting (HTTP 500)."""
        deadline = time.time() + 120
        while True:
            done = subprocess.run(self.submit_command(*entrypoint), env=self.env,
                                  capture_output=True, text=True, timeout=400)
            if ("No available agent to submit job" not in done.stderr + done.stdout
                    or time.time() > deadline):
                return done
            time.sleep(3)

    def state(self, resource: str, *filters: str) -> list[dict]:
        """``ray list RESOURCE --detail`` (dead actors and nodes included) as dicts."""
        args = ["list", resource, "--detail", "--format", "json", "--limit", "10000"]
        done = self.ray(*args, *(f"--filter={f}" for f in filters))
        assert done.returncode == 0, done.stderr[-2000:]
        # Ray prints this line instead of `[]`, also (briefly) while a node is joining.
        return [] if done.stdout.startswith("No resource in the cluster") else json.loads(done.stdout)

    def raylet(self, node_id: str) -> psutil.Process:
        """The raylet process of node ``node_id`` (hex)."""
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if f"--node_id={node_id}" in cmdline and self.temp in " ".join(cmdline):
                return proc
        raise LookupError(f"no raylet of node {node_id} under {self.temp}")


def start_ray_node(temp: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    """``ray start --block ARGS`` in ``temp``, every fixed default port replaced by a free one,
    its output discarded."""
    ports = [f"--{name}={free_port()}" for name in RAY_NODE_PORTS]
    return subprocess.Popen(
        [str(RAY), "start", "--block", f"--temp-dir={temp}", "--node-ip-address=127.0.0.1",
         "--disable-usage-stats", *ports, *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _alive_nodes(client: dict[str, str]) -> int:
    """Alive nodes of the cluster whose job API ``client`` names (0 while it does not answer)."""
    done = subprocess.run([str(RAY), "list", "nodes", "--format", "json", "--filter", "state=ALIVE"],
                          env=client, capture_output=True, text=True)
    return len(json.loads(done.stdout)) if done.stdout.startswith("[") else 0


def _join(temp: str, env: dict[str, str], client: dict[str, str], alive: int, timeout: float,
          *args: str) -> subprocess.Popen:
    """Start a node with ``args`` until it is the ``alive``-th alive node of the cluster (and the
    job API answers); 3 attempts of ``timeout`` seconds. A raylet gives its node's dashboard
    agent 15 s to report its ports and aborts otherwise, which the agent's start-up (imports)
    misses on a loaded 2-core machine; the failed node's processes are killed before the next
    attempt."""
    for _ in range(3):
        node = start_ray_node(temp, env, *args)
        deadline = time.time() + timeout
        while node.poll() is None and time.time() < deadline:
            if (_alive_nodes(client) == alive
                    and not subprocess.run([str(RAY), "job", "list"], env=client,
                                           capture_output=True).returncode):
                return node
            time.sleep(2)
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()
    crashes = sorted(Path(temp).glob("session_*/logs/raylet*.err"), key=lambda f: f.stat().st_mtime)
    last = next((line for line in reversed(crashes[-1].read_text().splitlines()) if "Check failed" in line),
                "") if crashes else ""
    raise AssertionError(f"test Ray node {alive - 1} ({' '.join(args)}) did not come up in 3 tries; "
                         f"last raylet error: {last[-400:] or 'none'}")


@contextmanager
def ray_cluster(head_cpus: float, worker_cpus: Sequence[float] = (),
                timeout: float = 120) -> Iterator[RayTestCluster]:
    """A real Ray cluster on this machine, beside the session's Ray: ``ray start --head`` and one
    ``ray start --address`` per entry of ``worker_cpus`` (its ``--num-cpus``), in their own temp
    dir and ports (clients reach them on 127.0.0.1), with token authentication on (a fresh
    token, given to every node and client as ``RAY_AUTH_TOKEN``). Nodes start one after the other (each gets
    ``timeout`` seconds, and is started again if it failed); yields once every node is alive
    and the job API answers. Afterwards, also on failure, every process of the cluster is killed
    and its temp dir removed.
    """
    temp = tempfile.mkdtemp(prefix="/tmp/rj")  # short: Ray's unix sockets live under it
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "PATH": f"{RAY.parent}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    client = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(_join(temp, env, client, 1, timeout, "--head", f"--port={gcs}",
                           f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                           f"--num-cpus={head_cpus}"))
        for cpus in worker_cpus:
            nodes.append(_join(temp, env, client, len(nodes) + 1, timeout,
                               f"--address=127.0.0.1:{gcs}", f"--num-cpus={cpus}"))
        yield RayTestCluster(temp, client, tuple(nodes))
    finally:
        for node in nodes:
            node.terminate()
        kill_marked(temp)
        shutil.rmtree(temp, ignore_errors=True)
