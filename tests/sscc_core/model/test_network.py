"""The twin network: shapes, weight sharing, and dense == per-patch for the fcn backbone.

Default tests use tiny widths; the slow test times both backbones at the authors' widths.
"""

from __future__ import annotations

import time

import pytest
import torch

from sscc_core.config import ModelConfig, replace
from sscc_core.model.network import SSCCNet, TwinForward, predict_dense, predict_patches

C = 8
K = 6
TINY = ModelConfig(n_clusters=K, stem_channels=8, widths=(8, 16, 16), head_hidden=32)


@pytest.fixture(scope="module")
def scene(salinas_features: torch.Tensor) -> torch.Tensor:
    """Salinas-A (8, 83, 86): band z-scores, PCA to 8 components, each z-scored; float32."""
    return salinas_features


def all_patches(tile: torch.Tensor, p: int) -> torch.Tensor:
    """Every P x P patch of a (C, H + P - 1, W + P - 1) tile, row-major: (H * W, C, P, P)."""
    return tile.unfold(1, p, 1).unfold(2, p, 1).permute(1, 2, 0, 3, 4).reshape(-1, C, p, p)


def build(backbone: str, patch_size: int = 11, scene: torch.Tensor | None = None) -> SSCCNet:
    """A tiny net with random BatchNorm affines; running stats fitted to ``scene``'s patches."""
    torch.manual_seed(0)
    model = SSCCNet(replace(TINY, backbone=backbone), C, patch_size)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.3)
            m.momentum = None  # cumulative average over the calibration batches
        if scene is not None:
            for batch in all_patches(scene[:, :40, :40], patch_size).split(256):
                model(batch)
    return model


@pytest.mark.parametrize("backbone", ["resnet", "fcn"])
def test_shapes_and_softmax_rows(scene: torch.Tensor, backbone: str) -> None:
    model = build(backbone)
    x = all_patches(scene[:, :14, :15], 11)  # 20 patches
    probs = model(x)
    assert model.features(x).shape == (20, 16) and model.feature_dim == 16
    assert probs.shape == (20, K) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(20))
    labels, p = predict_patches(model, x, batch_size=7)
    assert labels.dtype == torch.int64 and labels.shape == (20,) and model.training
    torch.testing.assert_close(labels, p.argmax(dim=1))


def test_one_backbone_and_head_shared_by_both_views(scene: torch.Tensor) -> None:
    model = build("resnet").eval()
    assert [name for name, _ in model.named_children()] == ["backbone", "head"]
    xa = all_patches(scene[:, :13, :13], 11)
    xb = all_patches(scene[:, 20:33, 30:43], 11)
    with torch.no_grad():
        joint = model(torch.cat([xa, xb]))
        torch.testing.assert_close(joint, torch.cat([model(xa), model(xb)]))
    model.train()
    (model(xa).sum() + model(xb)[:, 0].sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_instance_head_projects_the_features_each_view_and_leaves_labelling_alone(scene: torch.Tensor) -> None:
    """``instance_dim > 0`` adds a head on the same backbone features; the twin returns each
    view's probabilities, then each view's projections; the probabilities and the backbone are
    those of the network without it (same seed), so labelling does not change."""
    torch.manual_seed(0)
    plain = SSCCNet(replace(TINY, backbone="fcn"), C, 11).eval()
    torch.manual_seed(0)
    model = SSCCNet(replace(TINY, backbone="fcn", instance_dim=6), C, 11).eval()
    assert [name for name, _ in model.named_children()] == ["backbone", "head", "instance"]
    xa = all_patches(scene[:, :13, :13], 11)
    xb = all_patches(scene[:, 20:33, 30:43], 11)
    with torch.no_grad():
        ya, yb, ha, hb = TwinForward(model)(xa, xb)
        torch.testing.assert_close(ya, plain(xa), rtol=0, atol=0)
        torch.testing.assert_close(ha, model.instance(model.features(xa)), rtol=0, atol=0)
        torch.testing.assert_close(hb, model.instance(model.features(xb)), rtol=0, atol=0)
        assert len(TwinForward(plain)(xa, xb)) == 2
    assert ha.shape == (len(xa), 6) and yb.shape == (len(xb), K)


@pytest.mark.parametrize("patch_size", [7, 11, 15])
def test_fcn_dense_equals_per_patch(scene: torch.Tensor, patch_size: int) -> None:
    model = build("fcn", patch_size, scene)
    h = patch_size // 2
    tile = scene[:, 10 : 10 + 30 + 2 * h, 20 : 20 + 40 + 2 * h]
    dense_labels, dense_probs = predict_dense(model, tile)
    patch_labels, patch_probs = predict_patches(model, all_patches(tile, patch_size))
    assert dense_labels.shape == (30, 40) and dense_probs.shape == (K, 30, 40)
    torch.testing.assert_close(dense_probs.reshape(K, -1).T, patch_probs, atol=1e-5, rtol=0)
    assert torch.equal(dense_labels.reshape(-1), patch_labels)
    assert patch_labels.unique().numel() > 1  # a non-degenerate check


def test_fcn_receptive_field_is_exactly_the_patch(scene: torch.Tensor) -> None:
    model = build("fcn").eval()
    x = all_patches(scene[:, :20, :20], 11).requires_grad_(True)  # 100 patches
    model(x)[:, 0].sum().backward()
    reach = x.grad.abs().sum(dim=(0, 1))  # (11, 11): influence of each patch position
    assert (reach > 0).all()  # every pixel of the patch, corners included, reaches the output


def test_resnet_cannot_be_evaluated_densely(scene: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="needs backbone 'fcn'"):
        predict_dense(build("resnet"), scene[:, :20, :20])


def test_bad_construction_and_inputs_raise() -> None:
    with pytest.raises(ValueError, match="patch_size must be a positive odd"):
        SSCCNet(TINY, C, 10)
    fcn = replace(TINY, backbone="fcn")
    with pytest.raises(ValueError, match="needs 13 valid 3x3 convs"):
        SSCCNet(fcn, C, 27)  # 6 blocks = 12 convs < 13
    model = SSCCNet(fcn, C, 11)
    with pytest.raises(ValueError, match=r"expected \(N, 8, 11, 11\), got \(2, 8, 13, 13\)"):
        model(torch.zeros(2, C, 13, 13))
    with pytest.raises(ValueError, match=r"expected \(B, 8, H \+ 10, W \+ 10\)"):
        model.dense_probs(torch.zeros(1, 3, 20, 20))


def _seconds(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.slow
def test_benchmark_dense_vs_per_patch() -> None:
    """Times inference of one 128 x 128 tile at the authors' widths on one CPU thread.

    Per-patch timings use a sample of patches and are scaled to the whole tile. Run with
    ``.venv/bin/python -m pytest tests/sscc_core/model/test_network.py -m slow -s``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        side, p, sample = 128, 11, 1024
        g = torch.Generator().manual_seed(0)
        tile = torch.randn(C, side + p - 1, side + p - 1, generator=g)
        patches = all_patches(tile, p)
        fcn = SSCCNet(ModelConfig(n_clusters=16, backbone="fcn"), C, p)
        resnet = SSCCNet(ModelConfig(n_clusters=16, backbone="resnet"), C, p)
        scale = side * side / sample
        t_dense = _seconds(lambda: predict_dense(fcn, tile))
        t_fcn = scale * _seconds(lambda: predict_patches(fcn, patches[:sample], 256))
        t_resnet = scale * _seconds(lambda: predict_patches(resnet, patches[:sample], 256), 1)
        print(
            f"\n128x128 tile, 1 thread: fcn dense {t_dense:.2f} s | fcn per-patch {t_fcn:.1f} s "
            f"(x{t_fcn / t_dense:.1f}) | resnet per-patch {t_resnet:.1f} s "
            f"(x{t_resnet / t_dense:.1f} of fcn dense)"
        )
        assert t_dense < t_fcn
    finally:
        torch.set_num_threads(threads)
