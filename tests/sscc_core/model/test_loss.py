"""The SSCC loss against an independent numpy computation, and its known fixed points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sscc_core.config import LossConfig
from sscc_core.model.loss import SSCCLossParts, cross_correlation, sscc_loss


def numpy_ntxent(a: np.ndarray, b: np.ndarray, t: float) -> float:
    """Reference NT-Xent of the 2N rows of ``[a; b]``: a loop over rows, float64."""
    n = len(a)
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        logits = np.array([z[i] @ z[j] / t for j in range(2 * n) if j != i])
        losses.append(-(z[i] @ z[pos] / t) + np.log(np.exp(logits).sum()))
    return float(np.mean(losses))


def numpy_sscc(ya: np.ndarray, yb: np.ndarray, lam: float, w: float, t: float) -> dict[str, float]:
    """Reference: loops over clusters and rows, float64, written from the formula."""
    n, k = ya.shape

    def bn(y: np.ndarray) -> np.ndarray:
        return (y - y.mean(0)) / np.sqrt(y.var(0) + 1e-5)  # numpy var is the biased one

    c = bn(ya).T @ bn(yb) / n
    diagonal = sum((1 - c[i, i]) ** 2 for i in range(k))
    off = sum(c[i, j] ** 2 for i in range(k) for j in range(k) if i != j)
    nt = numpy_ntxent(ya, yb, t)
    cc = diagonal + lam * off
    return {"total": cc + w * nt, "cc": cc, "diagonal": diagonal, "off_diagonal": off, "ntxent": nt}


def softmax_rows(n: int, k: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    logits = torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2
    return torch.softmax(logits, dim=1)


@pytest.mark.parametrize(
    "cfg", [LossConfig(), LossConfig(offdiag_weight=0.3, ntxent_weight=0.7, temperature=0.2)]
)
def test_matches_numpy_reference(cfg: LossConfig) -> None:
    ya, yb = softmax_rows(37, 5, 0), softmax_rows(37, 5, 1)
    got = sscc_loss(ya, yb, cfg).as_floats()
    ref = numpy_sscc(ya.numpy(), yb.numpy(), cfg.offdiag_weight, cfg.ntxent_weight,
                     cfg.temperature)
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name


def test_instance_term_is_nt_xent_of_the_projections_added_at_its_weight() -> None:
    """With instance projections, the loss gains ``instance_weight`` x NT-Xent of their rows
    (the numpy reference); without them the term is 0 and the cluster parts do not change."""
    cfg = LossConfig(instance_weight=0.6, temperature=0.3)
    ya, yb = softmax_rows(29, 4, 4), softmax_rows(29, 4, 5)
    gen = torch.Generator().manual_seed(6)
    ha = torch.randn(29, 9, generator=gen, dtype=torch.float64)
    hb = ha + 0.3 * torch.randn(29, 9, generator=gen, dtype=torch.float64)
    plain = sscc_loss(ya, yb, cfg).as_floats()
    got = sscc_loss(ya, yb, cfg, ha, hb).as_floats()
    assert plain["instance"] == 0.0
    assert got["instance"] == pytest.approx(numpy_ntxent(ha.numpy(), hb.numpy(), 0.3), rel=1e-9)
    assert got["total"] == pytest.approx(plain["total"] + 0.6 * got["instance"], rel=1e-12)
    for name in ("cc", "diagonal", "off_diagonal", "ntxent"):
        assert got[name] == plain[name], name
    with pytest.raises(ValueError, match=r"^SSCC loss: give the instance projections of both views or of neither$"):
        sscc_loss(ya, yb, cfg, ha, None)


def test_float32_agrees_with_float64() -> None:
    ya, yb = softmax_rows(64, 6, 2), softmax_rows(64, 6, 3)
    low = sscc_loss(ya.float(), yb.float(), LossConfig()).as_floats()
    high = sscc_loss(ya, yb, LossConfig()).as_floats()
    for name in high:
        assert low[name] == pytest.approx(high[name], rel=1e-4), name


def test_balanced_one_hot_reaches_the_cc_optimum() -> None:
    k, per = 4, 25
    y = torch.eye(k, dtype=torch.float64).repeat_interleave(per, dim=0)  # balanced, one-hot
    parts = sscc_loss(y, y.clone(), LossConfig())
    # Rows summing to 1 tie the columns: C_kk -> 1, C_kl = -1/(K-1) (the least possible).
    var = (1 / k) * (1 - 1 / k)
    c = cross_correlation(y, y)
    expected = torch.full((k, k), -1 / (k - 1)) * var / (var + 1e-5)
    expected.fill_diagonal_(var / (var + 1e-5))
    torch.testing.assert_close(c, expected.double())
    assert parts.diagonal.item() < 1e-6
    assert parts.off_diagonal.item() == pytest.approx(k / (k - 1), rel=1e-3)
    random_parts = sscc_loss(softmax_rows(100, k, 4), softmax_rows(100, k, 5), LossConfig())
    assert parts.cc < random_parts.cc


def test_collapsed_assignments_cost_k() -> None:
    y = torch.full((50, 6), 1 / 6, dtype=torch.float64)  # every row identical: zero variance
    parts = sscc_loss(y, y, LossConfig())
    assert parts.diagonal.item() == pytest.approx(6.0) and parts.off_diagonal.item() < 1e-12


def test_gradients_reach_both_views() -> None:
    la = torch.randn(32, 5, requires_grad=True)
    lb = torch.randn(32, 5, requires_grad=True)
    parts = sscc_loss(torch.softmax(la, 1), torch.softmax(lb, 1), LossConfig())
    parts.total.backward()
    for g in (la.grad, lb.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert isinstance(parts, SSCCLossParts)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [((8, 4), (8, 5), "same shape"), ((8,), (8,), r"\(N, K\)"), ((1, 4), (1, 4), "at least 2")],
)
def test_bad_shapes_raise(a: tuple, b: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sscc_loss(torch.rand(a), torch.rand(b), LossConfig())
