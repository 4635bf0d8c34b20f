"""The scale benchmarks of ``make bench-cluster``: tile reads through a real S3 API server
against local disk, and labelling on one vs two co-located Ray worker nodes, on tiny mosaics of
real Salinas-A spectra."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import nodes, object_store


@pytest.mark.slow  # about 25 s quiet: a Ray job generates the mosaic, then a moto server
def test_object_store_bench_reads_equal_tiles_from_s3_and_disk(tmp_path: Path) -> None:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    result = object_store.run(object_store.build_parser().parse_args(
        ["--size-gb", "0.01", "--tiles", "2", "--tile-size", "64", "--repeats", "2",
         "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]))
    saved = json.loads((tmp_path / "out" / "object_store.json").read_text())
    assert saved["tiles"] == 2 and len(saved["seconds"]["s3"]) == 2
    pixels = saved["pixels_per_pass"]
    for kind in ("local", "s3"):
        assert saved["pixels_per_s"][kind] == pytest.approx(pixels / min(saved["seconds"][kind]))
    assert saved["ratio_s3_to_local"] == pytest.approx(
        saved["pixels_per_s"]["s3"] / saved["pixels_per_s"]["local"])
    assert result["url"] == "s3://bench/mosaic.zarr"
    assert os.environ.get("AWS_ENDPOINT_URL") == endpoint  # the environment was restored


@pytest.mark.slow
def test_nodes_bench_labels_on_one_and_two_worker_nodes(tmp_path: Path) -> None:
    """Two clusters of real `ray start` nodes; the actors of the two-node run land on both."""
    result = nodes.run(nodes.build_parser().parse_args(
        ["--size-gb", "0.01", "--rounds", "1", "--tile-size", "64",
         "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]))
    one, two = result["runs"]
    assert (one["worker_nodes"], two["worker_nodes"]) == (1, 2)
    assert one["pixels"] == two["pixels"] > 0
    assert two["actor_nodes"] == 2
    assert result["ratio_end_to_end"] == pytest.approx(two["pixels_per_s"] / one["pixels_per_s"])
    assert json.loads((tmp_path / "out" / "nodes.json").read_text())["order"] == [1, 2]
