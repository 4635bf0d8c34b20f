"""Label-free health signals of an epoch: loss parts, clusters used by argmax, assignment
entropy, and the warning of a run that ends with fewer than K clusters."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sscc_core.config import LossConfig, load_config
from sscc_core.model.checkpoint import Checkpoint
from sscc_core.model.loss import LOSS_PARTS, sscc_loss
from sscc_core.model.network import TwinForward
from sscc_core.training.reference import patch_views, train_reference
from sscc_core.training.trainer import EpochStats, build_training, clusters_warning, progress_line

K = 5


def batch_probs(seed: int, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views' (n, K) probabilities in which cluster K-1 never wins the argmax."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, n, K, generator=gen, dtype=torch.float64)
    logits[..., K - 1] -= 20.0
    ya, yb = torch.softmax(logits, dim=-1)
    return ya, yb


def test_epoch_stats_equal_a_direct_computation() -> None:
    batches = [batch_probs(seed) for seed in range(3)]
    stats = EpochStats(K)
    parts = [sscc_loss(ya, yb, LossConfig()) for ya, yb in batches]
    for p in parts:
        stats.add(p)
    got = stats.summary()
    rows = np.concatenate([torch.cat(b).numpy() for b in batches])  # every row of both views
    entropy = -(rows * np.log(rows)).sum(axis=1).mean()
    assert got["clusters_used"] == len(np.unique(rows.argmax(axis=1))) == K - 1
    assert got["assign_entropy"] == pytest.approx(entropy, rel=1e-9)
    for name in LOSS_PARTS:
        assert got[name] == pytest.approx(np.mean([p.as_floats()[name] for p in parts]), rel=1e-12)
    summary = {**got, "epoch": 3, "lr": 2e-4, "seconds": 1.5}
    line = progress_line(summary, K, epochs=10, elapsed=4.0, done=2)
    assert line.startswith("epoch 3/10  loss ") and line.endswith("1.5s  elapsed 0:04  ETA 0:14")
    assert f"clusters {K - 1}/{K}" in line
    assert clusters_warning(summary, K) == (
        f"training ended with {K - 1} of model.n_clusters={K} clusters used by the argmax "
        "(epoch 3): the assignments collapsed onto fewer clusters")
    assert clusters_warning({**summary, "clusters_used": K}, K) is None


def test_reference_trainer_reports_health_and_warns_on_unused_clusters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """40 clusters cannot all win the argmax of the 32 rows an epoch holds (2 batches x 8 pairs
    x 2 views): the history carries the signals and the run ends with a warning naming both."""
    cfg = load_config(overrides={
        "model.widths": [4, 4, 4], "model.stem_channels": 4, "model.head_hidden": 8,
        "model.n_clusters": 40, "preprocess.patch_size": 7, "train.batch_size": 8, "train.epochs": 1,
    })
    patches = torch.randn(16, 8, 7, 7, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="sscc_core.training.reference"):
        training = train_reference(patch_views(patches, cfg), 8, cfg)
    last = training.history[-1]
    assert 1 <= last["clusters_used"] <= 32
    assert 0 <= last["assign_entropy"] <= np.log(40)
    assert [r.getMessage() for r in caplog.records] == [clusters_warning(last, 40)]


TINY_NET = {"model.widths": [4, 4, 4], "model.stem_channels": 4, "model.head_hidden": 8,
            "model.n_clusters": 3, "preprocess.patch_size": 7, "train.batch_size": 8}


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter:UserWarning")
def test_a_resumed_training_keeps_weights_and_adam_moments_on_its_device() -> None:
    """``sscc train --use-gpu`` built the model on the CPU, loaded the resumed Adam state there
    and let ``prepare_model`` move only the weights to the GPU, so the first step of a resumed
    GPU run would mix devices. The model now moves before the optimiser loads its state; the
    ``meta`` device stands in for a GPU here (no data, but real device placement)."""
    cfg = load_config(overrides=TINY_NET)
    first = build_training(cfg, 4)
    x = torch.randn(8, 4, 7, 7)
    loss = sscc_loss(*TwinForward(first.model)(x, x.flip(-1)), cfg.loss).total
    loss.backward()
    first.optimizer.step()
    resume = Checkpoint(cfg, 4, 10, first.model.state_dict(), {}, epoch=1,
                        optimizer_state=first.optimizer.state_dict(),
                        scheduler_state=first.scheduler.state_dict())
    moved = build_training(cfg, 4, resume, device="meta")
    assert {p.device.type for p in moved.model.parameters()} == {"meta"}
    moments = [v for state in moved.optimizer.state.values() for k, v in state.items() if k != "step"]
    assert moments and {m.device.type for m in moments} == {"meta"}
    assert moved.epoch == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_reference_trainer_trains_on_a_gpu() -> None:
    cfg = load_config(overrides={**TINY_NET, "train.epochs": 1})
    views = patch_views(torch.randn(32, 4, 7, 7), cfg)
    training = train_reference(views, 4, cfg, device="cuda")
    assert next(training.model.parameters()).is_cuda and len(training.history) == 1
