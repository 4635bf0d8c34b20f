"""The benchmark harness: process-tree memory sampling and a smoke run of
``python -m benchmarks.bench`` on a tiny synthetic mosaic of real Salinas-A spectra."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
import sys

import numpy as np
import psutil
import pytest
import zarr

from benchmarks import bench
from benchmarks.measure import OBJECT_STORE_METRIC
from benchmarks.render import KEPT, load_results
from sscc_core.profiling import TreeMemorySampler, machine_info, tree_rss

ALLOC_MB = 200
REPO = Path(__file__).resolve().parents[2]


def test_tree_rss_counts_a_child_process():
    """A child that touches 200 MB raises the tree's summed RSS by about that much."""
    me = psutil.Process()
    before, n_before = tree_rss(me)
    code = (f"import sys; b = bytearray({ALLOC_MB} * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            "print('ready', flush=True); sys.stdin.readline()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        after, n_after = tree_rss(me)
    finally:
        child.communicate("\n", timeout=30)
    assert n_after == n_before + 1
    assert after - before >= 0.9 * ALLOC_MB * 2**20


def test_sampler_keeps_peak_and_probe_values():
    values = iter(range(1000))

    def failing() -> float:
        raise RuntimeError("probe down")

    with TreeMemorySampler(interval_s=0.02, probes={"count": lambda: next(values),
                                                    "down": failing}) as sampler:
        block = np.ones(50 * 2**20 // 8)  # touched 50 MB while sampling
        while len(sampler.series.t) < 5:
            pass
        del block
    s = sampler.series
    assert len(s.t) == len(s.rss) == len(s.processes) == len(s.probes["count"]) >= 6
    assert s.peak_rss == max(s.rss) > 50 * 2**20
    assert s.peak("count") == len(s.t) - 1  # 0, 1, 2, ... one per sample
    assert np.isnan(s.peak("down"))
    assert json.loads(json.dumps(s.to_dict()))["peak_rss"] == s.peak_rss
    with pytest.raises(ValueError, match="interval_s"):
        TreeMemorySampler(interval_s=0)


def test_machine_info_fields():
    info = machine_info()
    assert info["cpus"] >= 1 and info["ram_gib"] > 0 and info["cpu_model"]


@pytest.mark.slow  # 1-3 min on 2 cores; `make test-slow`
def test_bench_smoke(ray_session, tmp_path):
    """Throughput and dense sections end to end on a tiny mosaic: the figures are consistent
    with each other and with the store, and the report quotes them with their commands."""
    out, doc, work = tmp_path / "out", tmp_path / "BENCH.md", tmp_path / "work"
    code = bench.main([
        "--out", str(out), "--doc", str(doc), "--work", str(work), "--sizes-gb", "0.002",
        "--sections", "throughput,dense", "--actors", "1", "--tile-size", "32",
        "--limit-tiles", "2", "--train-samples", "600", "--train-epochs", "1",
    ])
    assert code == 0
    results = load_results(out)
    assert {"machine", "throughput", "dense"} <= set(results)
    t = results["throughput"]
    valid = zarr.open_group(work / "mosaic_0.002gb.zarr", mode="r")["valid"][:]
    assert t["pixels"] == int(valid.sum())
    rates = {k: v["pixels_per_s"] for k, v in t["limits"].items()}
    assert set(rates) == {"read", "preprocess", "model", "kmeans"} and min(rates.values()) > 0
    assert t["ratio_end_to_end"] == pytest.approx(
        t["pipeline_pixels_per_s"] / min(rates["read"], rates["model"]))
    assert t["serial_chain_pixels_per_s"] < min(rates["read"], rates["preprocess"], rates["model"])
    order = t["read_order"]
    assert order["striped_decodes_per_tile"] <= order["row_major_decodes_per_tile"]
    assert order["speed_up"] == pytest.approx(
        order["striped_pixels_per_s"] / order["row_major_pixels_per_s"])
    assert results["dense"]["dense_equals_patch"] is True
    d = results["dense"]
    assert d["spectral_over_head_time"] == pytest.approx(
        d["pixels_per_s"]["label_head"] / d["pixels_per_s"]["label_spectral"])
    text = doc.read_text()
    assert "with the spectral-spatial readout" in text
    assert "sscc predict --checkpoint" in text and "Pipeline / min(read, model)" in text
    assert f"{results['machine']['cpus']} logical CPUs" in text
    assert (out / "throughput.png").stat().st_size > 0


def test_object_store_metric_reads_the_shared_memory_and_disk_lines():
    text = "\n".join([
        '# TYPE ray_object_store_memory gauge',
        'ray_object_store_memory{Component="raylet",Location="MMAP_SHM",ObjectState="SEALED"} 2048.0',
        'ray_object_store_memory{Component="raylet",Location="MMAP_DISK",ObjectState="SEALED"} 1e3',
        'ray_object_store_memory{Component="raylet",Location="SPILLED",ObjectState=""} 7.0',
        'ray_object_store_available_memory{Component="raylet"} 5.0',
    ])
    assert sum(float(m.group(1)) for m in OBJECT_STORE_METRIC.finditer(text)) == 3048.0


def test_render_only_rewrites_the_report_from_the_committed_results(tmp_path):
    """Every section of docs/BENCHMARKS.md renders from the raw results in docs/bench (no
    measuring), plots included, and a hand-written part after the KEPT line survives."""
    out, doc = tmp_path / "bench", tmp_path / "BENCH.md"
    shutil.copytree(REPO / "docs" / "bench", out, ignore=shutil.ignore_patterns("*.png"))
    doc.write_text("old text\n" + KEPT + "\nhand-written\n")
    assert bench.main(["--out", str(out), "--doc", str(doc), "--render-only"]) == 0
    text = doc.read_text()
    for heading in ("## 1. Inference throughput", "## 2. Dense vs per-patch inference",
                    "## 3. Training throughput", "## 4. Peak memory vs mosaic size",
                    "### Larger than RAM", "## 5. Accuracy on the synthetic mosaic"):
        assert heading in text
    assert "old text" not in text and text.endswith(KEPT + "\nhand-written\n")
    assert "python -m benchmarks.bench --out" in text
    assert {"throughput.png", "training.png", "rss_vs_size.png"} <= {p.name for p in out.glob("*.png")}


def test_bench_rejects_unknown_section(tmp_path, capsys):
    code = bench.main(["--out", str(tmp_path), "--doc", str(tmp_path / "b.md"),
                       "--sections", "throughput,warp"])
    assert code == 2
    assert "unknown ['warp']" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_all_sections_quick(ray_session, tmp_path):
    """Every section (Ray Train 1 and 2 workers included) on tiny mosaics; memory stays flat."""
    out = tmp_path / "out"
    code = bench.main([
        "--out", str(out), "--doc", str(tmp_path / "BENCH.md"), "--work", str(tmp_path / "w"),
        "--sizes-gb", "0.002,0.008", "--actors", "2", "--tile-size", "32", "--limit-tiles", "4",
        "--train-samples", "1024", "--train-epochs", "1", "--train-side", "48",
        "--train-bench-epochs", "2",
    ])
    assert code == 0
    results = load_results(out)
    assert {"throughput", "dense", "train", "memory", "accuracy"} <= set(results)
    assert results["memory"]["flat"]
    for name in ("sscc", "kmeans"):
        assert 0 < results["accuracy"][name]["acc"] <= 1
    assert results["train"]["ray_2"]["samples_per_s"] > 0
    assert results["train"]["loss_rel_diff"] < 0.05  # the 1-worker run, up to Adam-amplified round-off
