"""Ray Train pipeline: Ray Data tile reading, DDP training, checkpoints, resume, failure recovery,
several flight lines in one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from pipelines import train
from pipelines.common import setup_logging
from pipelines.train import TilePatches, run_training, tile_views
from sscc_core import storage
from sscc_core.model.augment import two_views
from sscc_core.model.checkpoint import RunMismatchError, load_checkpoint
from sscc_core.config import SSCCConfig, load_config, to_dict
from sscc_core.labelling.inference import Labeller
from sscc_core.io.matlab import read_benchmark
from sscc_core.io.store import cube_identity, open_cube, write_cube
from sscc_core.model.preprocess import fit_preprocessor
from sscc_core.io.tiling import Tile
from sscc_core.model.patches import gather_patches
from sscc_core.training.run import fit_lines_preprocessor, fit_scenes_preprocessor
from sscc_core.training import views
from sscc_core.training.tiles import descriptor_tile, lines_training_tiles, tile_stream, training_tiles
from sscc_core.training.readout_fit import fit_readout
from sscc_core.training.reference import scene_views, train_reference
from sscc_core.training.trainer import epoch_generator, training_mask

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "model.backbone": "fcn",
    "model.widths": [8, 8, 8],
    "model.stem_channels": 8,
    "model.head_hidden": 16,
    "model.n_clusters": 6,
    "train.batch_size": 256,
    "train.epochs": 2,
    "tile.tile_size": 32,
}


@pytest.fixture(scope="module")
def salinas_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("train") / "salinasA.zarr"
    write_cube(read_benchmark("salinasA"), path, chunk=32)
    return path


def tiny_config(**extra: object) -> SSCCConfig:
    return load_config(overrides={**TINY, **extra})


@pytest.fixture(scope="module")
def salinas_lines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three flight lines cut from Salinas-A on different grids: fl01 (48 x 56) and fl02
    (83 x 40) share the scene's top-left corner (their tile (0, 0) holds the same pixels), fl03
    (53 x 46) its bottom right."""
    root = tmp_path_factory.mktemp("lines")
    scene = read_benchmark("salinasA")
    crops = {"fl01": (slice(0, 48), slice(0, 56)), "fl02": (slice(0, 83), slice(0, 40)),
             "fl03": (slice(30, 83), slice(40, 86))}
    return {name: str(write_cube(scene.isel(y=y, x=x), root / f"{name}.zarr", chunk=32))
            for name, (y, x) in crops.items()}


def test_tile_views_equal_reference_augmentation_of_whole_scene_patches(salinas_store: Path) -> None:
    """The Ray Data UDF's views equal the augmentation pool applied to the in-memory reference
    patches with the (seed, epoch, tile) generator; a new epoch gives new views."""
    cfg = tiny_config()
    ds = open_cube(salinas_store)
    cube, valid, labels = (ds[v].values for v in ("reflectance", "valid", "labels"))
    pre = fit_preprocessor(cube, valid, cfg.preprocess)
    udf = TilePatches(str(salinas_store), pre.to_state(), to_dict(cfg))
    tiles = training_tiles(str(salinas_store), "labelled", 32)
    batch = {k: np.array([t[k] for t in tiles]) for k in tiles[0]}
    got = udf(batch, 0)
    mask = training_mask(valid, labels, "labelled")
    patches, coords = gather_patches(cube, valid, mask, pre, 11, tile_size=32)
    assert got["view_a"].shape == got["view_b"].shape == (int(mask.sum()), 8, 11, 11)
    start = 0
    for t in tiles:
        tile = Tile(t["row"], t["col"], t["y0"], t["y1"], t["x0"], t["x1"])
        n = t["n_pixels"]
        gen = epoch_generator(cfg.train.seed, 0, tile_stream(tile))
        order = torch.randperm(n, generator=gen)
        va, vb = two_views(torch.from_numpy(patches[start : start + n])[order], cfg.augment, gen)
        np.testing.assert_array_equal(got["view_a"][start : start + n], va.numpy())
        np.testing.assert_array_equal(got["view_b"][start : start + n], vb.numpy())
        start += n
    assert not np.array_equal(got["view_a"], got["view_b"])
    again = udf(batch, 1)
    assert not np.array_equal(again["view_a"], got["view_a"])


@pytest.mark.slow  # 1-3 min on 2 cores; `make test-slow`
def test_ray_train_two_workers_recover_from_a_killed_worker_and_resume(
        ray_session, salinas_store: Path, tmp_path: Path) -> None:
    """Two DDP workers train; worker rank 0, killed mid-way through the second epoch, is
    restarted by Ray Train from the first epoch's checkpoint and the run finishes; a relaunch with
    more epochs resumes from the saved epoch. (One test for the three: each Ray Train launch
    costs most of a minute on 2 cores.)"""
    cfg = tiny_config()
    final = run_training(str(salinas_store), cfg, "ddp", str(tmp_path), num_workers=2, cpus_per_worker=0.5,
                         max_failures=1, fail_at_epoch=1)
    assert (tmp_path / "ddp" / "injected_failure").is_file()
    ckpt = load_checkpoint(final)
    assert ckpt.epoch == 2 and [h["epoch"] for h in ckpt.extra["history"]] == [1, 2]
    assert ckpt.n_bands == 204 and ckpt.in_channels == 8
    longer = tiny_config(**{"train.epochs": 3})
    resumed = load_checkpoint(run_training(str(salinas_store), longer, "ddp", str(tmp_path), num_workers=2,
                                           cpus_per_worker=0.5))
    assert resumed.epoch == 3
    assert [h["epoch"] for h in resumed.extra["history"]] == [1, 2, 3]
    assert resumed.extra["history"][:2] == ckpt.extra["history"]
    assert all(torch.isfinite(v).all() for v in resumed.model_state.values() if v.is_floating_point())


def test_run_storage_may_be_a_url_and_sscc_train_trains_the_reference_trainers_network(
        ray_session, salinas_store: Path, tmp_path: Path) -> None:
    """Checkpoints and history go through fsspec: a file:// storage URL works like a local path
    (s3:// and gs:// work the same with their fsspec package installed). The final checkpoint
    carries the fitted spectral readout the config asks for, and the pre-processing fitted on the
    store, which is nowhere else in the run (Ray Train's reported checkpoint is the product).

    ``sscc train`` (Ray Data streaming the tiles' views to a Ray Train worker, one thread) and
    the accuracy suite's reference trainer (the same views drawn in memory) end with the same
    weights, bit for bit, on this 3 x 3-tile scene: the same pre-processing, tile order, views,
    shuffle buffer and steps, with the instance head of configs/default.yaml. With the readout
    pinned in test_selection, the suite's figures are those of the production path."""
    cfg = tiny_config(**{"train.epochs": 1, "postprocess.readout": "spectral",
                         "postprocess.smooth_sigma": 1.0, "postprocess.readout_spectra": 2.0,
                         "model.instance_dim": 8})  # the shipped config's instance head, too
    url = f"file://{tmp_path}/store"
    setup_logging("train", str(tmp_path / "log.jsonl"))
    final = run_training(str(salinas_store), cfg, "urlrun", url, num_workers=0)
    setup_logging("train")
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] in ("fit preprocessing", "epoch", "readout", "final checkpoint")]
    assert [e["event"] for e in steps] == ["fit preprocessing", "epoch", "readout", "final checkpoint"]
    assert steps[2]["readout"] == "spectral" and steps[2]["fitted"] and steps[2]["smooth_sigma"] == 1.0
    assert steps[3]["path"] == final and steps[3]["epoch"] == 1
    assert final == f"{url}/urlrun/final/model.pt"
    ckpt = load_checkpoint(final)
    assert ckpt.epoch == 1
    assert sorted(ckpt.readout_state) == ["coef", "intercept", "mean", "std", "weights"]
    assert Labeller.from_checkpoint(ckpt).readout.fitted  # sscc predict can use it as is
    run = tmp_path / "store" / "urlrun"  # local mode: Ray Train keeps no per-epoch checkpoint
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "final", "history.json", "run.json"]
    fitted = fit_lines_preprocessor([str(salinas_store)], cfg).preprocessor.to_state()
    assert sorted(ckpt.preprocess_state) == sorted(fitted)
    assert all(torch.equal(ckpt.preprocess_state[k], v) for k, v in fitted.items()
               if isinstance(v, torch.Tensor))
    assert (tmp_path / "store" / "urlrun" / "history.json").is_file()
    assert load_config(tmp_path / "store" / "urlrun" / "config.yaml") == cfg

    ds = open_cube(salinas_store)
    cube, valid, labels = (ds[v].values for v in ("reflectance", "valid", "labels"))
    pre = fit_scenes_preprocessor([(cube, valid)], cfg).preprocessor  # the suite's fit, in memory
    assert all(torch.equal(ckpt.preprocess_state[k], v) for k, v in pre.to_state().items()
               if isinstance(v, torch.Tensor))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train_reference(scene_views(cube, valid, labels, pre, cfg), pre.n_components, cfg)
        with threadpool_limits(1):  # as a suite run fits its readout
            readout = fit_readout(reference.model, pre, cube, valid,
                                  training_mask(valid, labels, cfg.train.protocol), cfg, cfg.tile.tile_size)
    finally:
        torch.set_num_threads(threads)
    assert ckpt.epoch == reference.epoch == 1
    assert sorted(ckpt.model_state) == sorted(reference.model.state_dict())
    assert any(name.startswith("instance.") for name in ckpt.model_state)
    for name, value in reference.model.state_dict().items():
        assert torch.equal(ckpt.model_state[name], value), name
    assert [h["total"] for h in ckpt.extra["history"]] == [h["total"] for h in reference.history]
    # the driver fitted the readout with the run's one thread (driver_threads), so bit for bit too
    assert sorted(ckpt.readout_state) == sorted(readout.state)
    for name, value in readout.state.items():
        assert torch.equal(ckpt.readout_state[name], value), name


def test_the_driver_fits_the_readout_with_the_runs_thread_count() -> None:
    """``sscc train --threads 1`` fitted the readout in the driver with every core's BLAS threads
    while the suite fits it with one: on Indian Pines the spectral candidates' stabilities then
    differed in the fourth digit and the production run labelled one pixel differently
    (docs/RESULTS.md). Inside :func:`pipelines.train.driver_threads` torch and every BLAS/OpenMP
    pool run with the run's count; after it, what they had before."""
    from threadpoolctl import threadpool_info

    before_torch, before_pools = torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()]
    with train.driver_threads(1):
        assert torch.get_num_threads() == 1
        assert {p["num_threads"] for p in threadpool_info()} == {1}
    assert torch.get_num_threads() == before_torch
    assert [p["num_threads"] for p in threadpool_info()] == before_pools


@pytest.mark.timeout(120)  # the bug was a wait for ever
def test_tile_slots_run_beside_workers_holding_all_but_a_quarter_cpu(ray_session) -> None:
    """With 1.75 of the 2 CPUs held (2 training workers at 0.75, the driver's 0.25 left for data
    tasks), the training dataset's slots still stream through a 0.25-CPU map, every slot once:
    ``ray.data.range``'s 1-CPU read tasks never started there and training waited for ever."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    held = placement_group([{"CPU": 1.75}])  # what the workers' placement group reserves
    try:
        ray.get(held.ready(), timeout=30)
        slots = train.tile_slots(3).map_batches(lambda b: b, batch_size=1, num_cpus=train.DATA_TASK_CPUS)
        assert sorted(int(row["slot"]) for row in slots.iter_rows()) == [0, 1, 2]
    finally:
        remove_placement_group(held)
    # a cluster that cannot hold the workers and one data task at all is named before training
    assert train.cpu_shortfall(2.0, 2, 0.75) is None and train.cpu_shortfall(0.25, 0, 1.0) is None
    assert train.cpu_shortfall(2.0, 2, 1.0) == (
        "the Ray cluster has 2 CPUs but 2 training worker(s) at --cpus-per-worker=1 and one 0.25-CPU "
        "data task need 2.25: training waits until the cluster grows (lower --cpus-per-worker or "
        "--num-workers)")


def test_tile_views_of_several_lines_read_each_line_with_its_own_streams(salinas_lines) -> None:
    """The Ray Data task reads each tile from its line's store; the same tile position on two
    lines draws other views (line 1's stream), line 0 those of a one-line run."""
    cfg = tiny_config()
    stores = [salinas_lines["fl01"], salinas_lines["fl02"]]
    pre = fit_preprocessor(open_cube(stores[0])["reflectance"].values, None, cfg.preprocess)
    tiles = lines_training_tiles(stores, "labelled", 16)
    picked = [tiles[0], tiles[1], next(t for t in tiles if t["line"] == 1), tiles[-1]]
    assert [(t["line"], t["row"], t["col"]) for t in picked] == [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 5, 2)]
    batch = {k: np.array([t[k] for t in picked]) for k in picked[0]}
    got = tile_views(batch, stores, pre.to_state(), to_dict(cfg), 0)
    groups = [open_cube(s) for s in stores]
    expect = [views.tile_views(groups[t["line"]]["reflectance"].values, groups[t["line"]]["valid"].values,
                               groups[t["line"]]["labels"].values, pre, cfg, descriptor_tile(t), 0, t["line"])
              for t in picked]
    np.testing.assert_array_equal(got["view_a"], np.concatenate([a.numpy() for a, _ in expect]))
    np.testing.assert_array_equal(got["view_b"], np.concatenate([b.numpy() for _, b in expect]))
    one_line = TilePatches(stores[0], pre.to_state(), to_dict(cfg))({k: v[:1] for k, v in batch.items()}, 0)
    n0, n1 = picked[0]["n_pixels"] + picked[1]["n_pixels"], picked[2]["n_pixels"]
    np.testing.assert_array_equal(got["view_a"][: picked[0]["n_pixels"]], one_line["view_a"])
    same = [views.tile_patches(g["reflectance"].values, g["valid"].values, g["labels"].values, pre, cfg,
                               descriptor_tile(picked[0])) for g in groups]
    np.testing.assert_array_equal(same[0], same[1])  # one tile of pixels on both lines...
    assert n1 == picked[0]["n_pixels"]
    assert not np.array_equal(got["view_a"][n0:], got["view_a"][: picked[0]["n_pixels"]])  # ...other views


def test_a_relaunch_on_another_set_of_lines_is_refused(salinas_lines, tmp_path: Path, capsys) -> None:
    """The run record covers the ordered lines and their identities: once the run has made
    progress, another line set or order is refused in one line before any Ray work."""
    fl01, fl02, fl03 = (salinas_lines[n] for n in ("fl01", "fl02", "fl03"))
    ids = {s: cube_identity(open_cube(s)) for s in (fl01, fl02, fl03)}
    base = ["--run-name", "lines", "--storage-path", str(tmp_path), "--num-workers", "0",
            *[f"--set={k}={v}" for k, v in {**TINY, "model.n_clusters": 100_000}.items()]]
    assert train.main(["--store", fl01, fl02, *base]) == 2  # refused after recording the run
    assert "training pixels (protocol 'all') are fewer than model.n_clusters=100000" in \
        capsys.readouterr().err
    record = json.loads((tmp_path / "lines" / "run.json").read_text())
    assert (record["store"], record["input_identity"]) == (f"{fl01} + {fl02}", f"{ids[fl01]}+{ids[fl02]}")
    (tmp_path / "lines" / "final").mkdir()
    (tmp_path / "lines" / "final" / "model.pt").write_bytes(b"progress")  # as if it had trained
    for other in ([fl01, fl03], [fl02, fl01], [fl01]):
        assert train.main(["--store", *other, *base]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"sscc train: error: {tmp_path / 'lines'}: this run was started with other settings (input "
            f"({fl01} + {fl02} -> {' + '.join(other)}) identity {ids[fl01]}+{ids[fl02]} -> "
            f"{'+'.join(ids[s] for s in other)}); relaunching resumes only the same input, config and "
            "protocol (train.epochs may grow): use a new --run-name"]


@pytest.mark.slow  # about a minute on 2 cores; `make test-slow`
def test_training_on_two_lines_records_them_and_samples_both(ray_session, salinas_lines,
                                                             tmp_path: Path) -> None:
    """Two lines on different grids train in one run: the tiles of both are read, the
    pre-processing is fitted on both, the readout sampled across both, the checkpoint and the
    log name the lines; a relaunch on another line set is refused in one line."""
    fl01, fl02, fl03 = (salinas_lines[n] for n in ("fl01", "fl02", "fl03"))
    cfg = tiny_config(**{"train.epochs": 1, "postprocess.readout": "kmeans",
                         "postprocess.readout_sample": 500})
    setup_logging("train", str(tmp_path / "log.jsonl"))
    final = run_training([fl01, fl02], cfg, "two", str(tmp_path), num_workers=0)
    setup_logging("train")
    ckpt = load_checkpoint(final)
    ids = [cube_identity(open_cube(s)) for s in (fl01, fl02)]
    assert ckpt.epoch == 1 and ckpt.extra["store"] == f"{fl01} + {fl02}"
    assert ckpt.extra["lines"] == [{"name": "fl01", "store": fl01, "identity": ids[0]},
                                   {"name": "fl02", "store": fl02, "identity": ids[1]}]
    assert ckpt.extra["readout"]["n_pixels"] == 500 and "centroids" in ckpt.readout_state
    fitted = fit_lines_preprocessor([fl01, fl02], cfg).preprocessor.to_state()
    assert all(torch.equal(ckpt.preprocess_state[k], v) for k, v in fitted.items()
               if isinstance(v, torch.Tensor))
    assert fitted["n_pixels"] == 48 * 56 + 83 * 40
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    tiles = lines_training_tiles([fl01, fl02], "labelled", 32)
    per_line = [(e["line"], e["n_tiles"], e["n_pixels"]) for e in events if e["event"] == "training line"]
    assert per_line == [(name, sum(t["line"] == i for t in tiles),
                         sum(t["n_pixels"] for t in tiles if t["line"] == i))
                        for i, name in enumerate(("fl01", "fl02"))]
    assert all(n for _, n, _ in per_line)
    with pytest.raises(RunMismatchError) as refused:
        run_training([fl01, fl03], cfg, "two", str(tmp_path), num_workers=0)
    assert str(refused.value) == (
        f"{tmp_path / 'two'}: this run was started with other settings (input "
        f"({fl01} + {fl02} -> {fl01} + {fl03}) identity {ids[0]}+{ids[1]} -> "
        f"{ids[0]}+{cube_identity(open_cube(fl03))}); relaunching resumes only the same input, "
        "config and protocol (train.epochs may grow): use a new --run-name")


@pytest.mark.slow  # about 1.5 min: a train process with its own local Ray
def test_lines_on_object_storage_train_from_a_manifest_object(s3_env, salinas_lines) -> None:
    """Two lines and the run's storage on a real S3 API server, the lines named by a manifest
    object: `sscc train` in its own process finishes, its final checkpoint (on S3) records both
    lines, and its pre-processing equals the fit on the same two lines read from local disk."""
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("train-lines")
    for name in ("fl01", "fl02"):
        storage.upload_dir(Path(salinas_lines[name]), f"s3://train-lines/in/{name}.zarr")
    storage.write_bytes("s3://train-lines/in/lines.txt", b"# two lines\nfl01.zarr\nfl02.zarr\n")
    env = {**os.environ, **s3_env, "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.train", "--store", "s3://train-lines/in/lines.txt",
         "--run-name", "two", "--storage-path", "s3://train-lines/runs", "--num-workers", "1",
         "--cpus-per-worker", "0.5",
         *(a for k, v in {**TINY, "train.epochs": 1, "postprocess.readout": "kmeans"}.items()
           for a in ("--set", f"{k}={json.dumps(v)}"))],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint("s3://train-lines/runs/two/final/model.pt")
    stores = [f"s3://train-lines/in/{name}.zarr" for name in ("fl01", "fl02")]
    assert [(line["name"], line["store"]) for line in ckpt.extra["lines"]] == [
        ("fl01", stores[0]), ("fl02", stores[1])]
    fitted = fit_lines_preprocessor([salinas_lines["fl01"], salinas_lines["fl02"]],
                                    ckpt.config).preprocessor.to_state()
    assert all(torch.equal(ckpt.preprocess_state[k], v) for k, v in fitted.items()
               if isinstance(v, torch.Tensor))
