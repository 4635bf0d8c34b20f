"""Label-free health signals of an epoch: loss parts, clusters used by argmax, assignment
entropy, and the warning of a run that ends with fewer than K clusters."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sscc_core.config import LossConfig, load_config
from sscc_core.model.loss import LOSS_PARTS, sscc_loss
from sscc_core.training.reference import patch_views, train_reference
from sscc_core.training.trainer import EpochStats, clusters_warning, progress_line

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
