"""Data-parallel SSCC is one objective: 2 gloo ranks on the halves of a batch give the loss and
every gradient of one process on the whole batch; 1 and 2 Ray Train workers give one loss curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pipelines import train
from pipelines.common import setup_logging
from sscc_core.model.checkpoint import load_checkpoint
from sscc_core.config import SSCCConfig, load_config
from sscc_core.model.loss import LOSS_PARTS, SSCCLoss
from sscc_core.model.network import TwinForward
from sscc_core.training.trainer import build_training, train_step
from tests.pipelines.test_train import salinas_store, tiny_config  # noqa: F401  (fixture)

WORLD = 2
BATCH = 24  # global: 12 rows per rank
CHANNELS = 8
SMALL = {
    "model.widths": [4, 8, 8],
    "model.stem_channels": 4,
    "model.head_hidden": 16,
    "model.n_clusters": 5,
    "model.instance_dim": 6,  # the instance head's projections are gathered too
    "preprocess.patch_size": 7,
    "train.lr": 1e-3,
}
STEPS = 6


def small_config() -> SSCCConfig:
    return load_config(overrides=SMALL)


def views() -> tuple[torch.Tensor, torch.Tensor]:
    """Two (BATCH, C, 7, 7) float64 views, the same in every process (float64 throughout, so
    the comparison is exact up to round-off far below any scaling or statistics error)."""
    gen = torch.Generator().manual_seed(7)
    xa = torch.randn(BATCH, CHANNELS, 7, 7, generator=gen, dtype=torch.float64)
    return xa, xa + 0.5 * torch.randn(xa.shape, generator=gen)


def step(twin: torch.nn.Module, loss: SSCCLoss, xa: torch.Tensor, xb: torch.Tensor,
         net: torch.nn.Module) -> dict[str, object]:
    """Forward + backward; the loss parts, every parameter's gradient and the BN buffers."""
    parts = loss(*twin(xa, xb))
    parts.total.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    buffers = {name: b.clone() for name, b in net.named_buffers() if b.is_floating_point()}
    return {"parts": parts.as_floats(), "grads": grads, "buffers": buffers}


def trajectory(cfg: SSCCConfig, sync: bool, rank: int, world: int) -> list[float]:
    """Losses of STEPS Adam steps (:func:`train_step`) on fresh float64 batches, this rank
    taking its rows of each; DDP-wrapped when ``world`` > 1."""
    training = build_training(cfg, CHANNELS, sync_batchnorm=sync)
    twin = TwinForward(training.model.double().train())
    if world > 1:
        twin = DistributedDataParallel(twin)
    loss = SSCCLoss(cfg.loss, gather_distributed=True)
    gen = torch.Generator().manual_seed(11)
    losses = []
    for i in range(STEPS):
        xa = torch.randn(BATCH, CHANNELS, 7, 7, generator=gen, dtype=torch.float64)
        xb = xa + 0.5 * torch.randn(xa.shape, generator=gen, dtype=torch.float64)
        parts = train_step(twin, training.optimizer, xa.chunk(world)[rank], xb.chunk(world)[rank], loss,
                           epoch=0, step=i)
        losses.append(parts.as_floats()["total"])
    return losses


def rank_main(rank: int, init_file: str, out: str) -> None:
    """One gloo rank: the gathered objective with synced BatchNorm, then the per-rank one, then
    a short training trajectory."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    cfg = small_config()
    xa, xb = (x.chunk(WORLD)[rank] for x in views())
    results = {}
    for mode, distributed in (("gathered", True), ("per_rank", False)):
        net = build_training(cfg, CHANNELS, sync_batchnorm=distributed).model.double().train()
        ddp = DistributedDataParallel(TwinForward(net))
        results[mode] = step(ddp, SSCCLoss(cfg.loss, gather_distributed=distributed), xa, xb, net)
    results["trajectory"] = trajectory(cfg, True, rank, WORLD)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "rank0.pt"
    mp.spawn(rank_main, args=(str(tmp / "init"), str(out)), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def single() -> dict[str, object]:
    """The single-process reference: one plain network on the whole batch."""
    torch.set_num_threads(1)
    cfg = small_config()
    net = build_training(cfg, CHANNELS).model.double().train()
    return step(TwinForward(net), SSCCLoss(cfg.loss), *views(), net)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal within float64 round-off, relative to the tensor's scale (in float32 the same
    comparison agrees to about 5e-5 of each gradient's largest entry)."""
    return torch.allclose(a, b, rtol=1e-9, atol=1e-10 * float(b.abs().max()))


def test_two_gathered_ranks_equal_one_process_on_the_whole_batch(two_ranks, single) -> None:
    """Loss, every parameter gradient (after DDP's mean over ranks) and the synced BatchNorm
    running statistics equal the single-process values on the concatenated batch."""
    got = two_ranks["gathered"]
    for name, value in single["parts"].items():
        assert got["parts"][name] == pytest.approx(value, rel=1e-10), name
    assert got["grads"].keys() == single["grads"].keys()
    for name, grad in single["grads"].items():
        assert grad.abs().max() > 0, name
        assert close(got["grads"][name], grad), (name, (got["grads"][name] - grad).abs().max())
    for name, buffer in single["buffers"].items():
        assert close(got["buffers"][name], buffer), name


def test_two_ranks_follow_the_single_process_training_trajectory(two_ranks) -> None:
    """Six Adam steps through the real train_step (DDP, gathered loss, synced BatchNorm): each
    step's loss equals the single-process run's on the whole batches. In float32 the same runs
    drift apart (Adam amplifies round-off); in float64 they stay equal."""
    torch.set_num_threads(1)
    single = trajectory(small_config(), False, 0, 1)
    assert two_ranks["trajectory"] == pytest.approx(single, rel=1e-9)
    assert len(set(single)) == STEPS  # the network does learn along the way


def test_per_rank_objective_is_a_different_objective(two_ranks, single) -> None:
    """Without the gather and the BatchNorm sync, each rank standardises and correlates its own
    half: the loss and the gradients are not the whole batch's."""
    got = two_ranks["per_rank"]
    assert abs(got["parts"]["total"] - single["parts"]["total"]) > 1e-3 * abs(single["parts"]["total"])
    differing = [name for name, grad in single["grads"].items() if not close(got["grads"][name], grad)]
    assert len(differing) == len(single["grads"])


@pytest.mark.slow  # two full Ray Train runs: ~1-4 min on 2 cores; `make test-slow`
def test_one_and_two_ray_workers_train_the_same_run(
    ray_session, salinas_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sscc train` with 1 and 2 workers, same seed: the same global batches and views, one
    objective, so one loss curve (and the same health signals); every epoch is logged as a JSON
    event and a progress line, and a run ending with fewer than K clusters warns.

    A small learning rate keeps Adam from amplifying float32 round-off (at lr 2e-4 the curves
    drift apart by ~1e-3 over 2 epochs; with lr ~0 they agree to 1e-7), so the tolerance can
    catch a per-rank objective, per-rank BatchNorm or a different batch composition."""
    cfg = tiny_config(**{"train.batch_size": 512, "train.lr": 1e-5,  # 256 rows per worker with 2
                         "model.instance_dim": 8})  # the shipped instance head, gathered too
    runs = {}
    for workers in (1, 2):
        log_file = tmp_path / f"w{workers}.jsonl"
        setup_logging("train", str(log_file))
        final = train.run_training(str(salinas_store), cfg, f"w{workers}", str(tmp_path),
                                   num_workers=workers, cpus_per_worker=0.5)
        events = [json.loads(line) for line in log_file.read_text().splitlines()]
        runs[workers] = (load_checkpoint(final).extra["history"], events, capsys.readouterr().out)
    setup_logging("train")
    one, two = runs[1][0], runs[2][0]
    assert [h["epoch"] for h in one] == [h["epoch"] for h in two] == [1, 2]
    for key in (*LOSS_PARTS, "assign_entropy"):
        drift = max(abs(b[key] - a[key]) / abs(a[key]) for a, b in zip(one, two))
        assert drift < 2e-4, (key, drift)
    assert [h["clusters_used"] for h in one] == [h["clusters_used"] for h in two]
    assert one[1]["total"] != one[0]["total"]
    k = cfg.model.n_clusters
    for history, events, out in runs.values():
        logged = [e for e in events if e["event"] == "epoch"]
        assert [e["total"] for e in logged] == [h["total"] for h in history]
        assert all(0 < e["clusters_used"] <= k and e["assign_entropy"] >= 0 for e in logged)
        assert sum(line.startswith("epoch ") and f"clusters {history[-1]['clusters_used']}/{k}" in line
                   for line in out.splitlines()) >= 1
        warned = [e for e in events if e["level"] == "warning"]
        assert len(warned) == (history[-1]["clusters_used"] < k)


@pytest.mark.parametrize("workers, batch, message", [
    (3, 256, "train.batch_size=256 is the global batch and must split evenly over --num-workers=3"),
    (4, 4, "train.batch_size=4 over --num-workers=4 leaves 1 row per worker"),
])
def test_bad_worker_counts_fail_before_training(salinas_store: Path, tmp_path: Path, workers: int,
                                                batch: int, message: str) -> None:
    cfg = tiny_config(**{"train.batch_size": batch})
    with pytest.raises(ValueError, match=message):
        train.run_training(str(salinas_store), cfg, "bad", str(tmp_path), num_workers=workers)
    assert not (tmp_path / "bad").exists()  # nothing written, no worker started


def test_use_gpu_without_a_gpu_is_a_one_line_error(ray_session, salinas_store: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = train.main(["--store", str(salinas_store), "--run-name", "gpu", "--storage-path",
                       str(tmp_path), "--num-workers", "2", "--use-gpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["sscc train: error: --use-gpu: the Ray cluster has 0 GPUs (autoscaling included) "
                   "but --num-workers=2 needs 2; drop --use-gpu to train on CPUs"]
