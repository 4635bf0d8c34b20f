"""The SSCC twin network (one backbone + one cluster head, shared by both views) and inference.

Two backbones, chosen by :attr:`ModelConfig.backbone`:

* ``"resnet"`` -- the authors' shallow ResNet: a 1x1 stem conv (C -> ``stem_channels``) + BN +
  ReLU, no max-pool; ``len(widths)`` stages of ``blocks_per_stage`` BasicBlocks, all stride 1,
  3x3 convs with zero padding 1 and a projection shortcut (1x1 conv + BN) where the channel
  count changes; global average pooling over the patch. Its zero padding sees the *patch*
  border, so a pixel's output depends on where the patch ends: evaluating it densely over a tile
  can never equal per-patch evaluation, and inference must run patch by patch.
* ``"fcn"`` -- the same layout with no padding anywhere, so its receptive field is exactly
  P x P: ``P // 2`` of the block convs are 'valid' 3x3 convs (the first conv of the first
  ``P // 2`` blocks, then the second conv of the first blocks if more are needed), every other
  block conv is 1x1, and each shortcut is center-cropped by what its block's valid convs remove.
  A P x P patch maps to a 1 x 1 feature map, and a tile with a halo of ``P // 2`` maps to one
  feature vector per pixel that equals the per-patch one (in eval mode, where BatchNorm is a
  fixed per-channel affine map). The head is applied per pixel, so
  :meth:`SSCCNet.dense_probs` gives the per-patch probabilities of every pixel at once.

Cluster head: ``Linear(D, head_hidden) -> ReLU -> Linear(head_hidden, K) -> Softmax``;
label = argmax.

Data-parallel training replaces every ``BatchNorm2d`` by :class:`SyncBatchNorm2d`
(:func:`convert_sync_batchnorm`), whose training-mode statistics are those of the global batch
over all ranks. ``torch.nn.SyncBatchNorm`` refuses CPU tensors (torch 2.13: "SyncBatchNorm
expected input tensor to be on GPU"), and gloo/CPU workers are a supported way to train, so the
synchronisation here is a small subclass that works on every device and keeps the state-dict
keys of ``BatchNorm2d`` (a checkpoint loads into the plain network).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from sscc_core.config import ModelConfig
from sscc_core.model.distributed import gather_rows, world_size

ConvSpec = tuple[int, int]  # (kernel size, padding)


def _conv_bn(c_in: int, c_out: int, spec: ConvSpec) -> nn.Sequential:
    kernel, padding = spec
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False), nn.BatchNorm2d(c_out)
    )


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are computed over every rank's batch.

    In training mode under an initialised process group of more than one rank, the per-channel
    mean and biased variance are those of the concatenation of all ranks' (N, C, H, W) inputs:
    each rank's count, mean and sum of squared deviations are gathered with gradients in one
    collective and combined (Chan et al.'s parallel variance), and the running statistics are
    updated with them exactly as ``BatchNorm2d`` does (unbiased variance, ``momentum`` or the
    cumulative average). Otherwise it is ``BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W), normalised with the global batch's statistics."""
        if not (self.training and world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        mean = x.mean(dim=(0, 2, 3))
        m2 = (x - mean.view(1, c, 1, 1)).pow(2).sum(dim=(0, 2, 3))
        stats = gather_rows(torch.cat([mean, m2, x.new_tensor([x.numel() // c])])[None])  # (W, 2C+1)
        counts = stats[:, 2 * c :].detach()  # (W, 1)
        count = counts.sum()
        mean = (stats[:, :c] * counts).sum(dim=0) / count
        var = (stats[:, c : 2 * c] + counts * (stats[:, :c] - mean).pow(2)).sum(dim=0) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * count / (count - 1), factor)
        out = (x - mean.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        return out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1) if self.affine else out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a :class:`SyncBatchNorm2d` sharing its
    parameters and buffers (an optimiser built before keeps working); returns ``module``."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            sync.weight, sync.bias = child.weight, child.bias
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, buffer, getattr(child, buffer))
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module


class ResidualBlock(nn.Module):
    """BasicBlock ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``, stride 1.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        specs: ``(kernel, padding)`` of the two convs; ``(3, 1)`` keeps the size, ``(3, 0)``
            shrinks each side by 1 pixel, ``(1, 0)`` keeps it.

    The shortcut is center-cropped by the pixels the convs remove per side, then projected by a
    1x1 conv + BN when ``c_in != c_out``.
    """

    def __init__(self, c_in: int, c_out: int, specs: tuple[ConvSpec, ConvSpec]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(c_in, c_out, specs[0]), nn.ReLU(inplace=True), _conv_bn(c_out, c_out, specs[1])
        )
        self.shortcut = _conv_bn(c_in, c_out, (1, 0)) if c_in != c_out else nn.Identity()
        self.crop = sum((k - 1 - 2 * p) // 2 for k, p in specs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(N, c_in, H, W) -> (N, c_out, H - 2 crop, W - 2 crop)."""
        c = self.crop
        skip = x[..., c : x.shape[-2] - c, c : x.shape[-1] - c] if c else x
        return self.act(self.body(x) + self.shortcut(skip))


def _block_specs(cfg: ModelConfig, patch_size: int) -> list[tuple[ConvSpec, ConvSpec]]:
    """``(kernel, padding)`` of both convs of every residual block, in order."""
    n_blocks = len(cfg.widths) * cfg.blocks_per_stage
    if cfg.backbone == "resnet":
        return [((3, 1), (3, 1))] * n_blocks
    n_valid = patch_size // 2
    if n_valid > 2 * n_blocks:
        raise ValueError(
            f"ModelConfig: the fcn backbone has {2 * n_blocks} block convs but patch_size "
            f"{patch_size} needs {n_valid} valid 3x3 convs; add widths or blocks_per_stage"
        )
    valid, one = (3, 0), (1, 0)
    return [
        (valid if b < n_valid else one, valid if b < n_valid - n_blocks else one)
        for b in range(n_blocks)
    ]


class Backbone(nn.Module):
    """Stem + residual stages; maps (N, C, H, W) to a feature map (N, D, H', W').

    ``"resnet"`` keeps H' = H; ``"fcn"`` gives H' = H - (patch_size - 1). D = ``widths[-1]``.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int, patch_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, cfg.stem_channels, 1, bias=False),
            nn.BatchNorm2d(cfg.stem_channels),
            nn.ReLU(inplace=True),
        ]
        specs = iter(_block_specs(cfg, patch_size))
        c_in = cfg.stem_channels
        for width in cfg.widths:
            for _ in range(cfg.blocks_per_stage):
                layers.append(ResidualBlock(c_in, width, next(specs)))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, D, H', W')."""
        return self.layers(x)


def two_layer_mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """``Linear(in_features, hidden) -> ReLU -> Linear(hidden, out_features)``, the body of both
    heads."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))


class ClusterHead(nn.Module):
    """``Linear(D, hidden) -> ReLU -> Linear(hidden, K) -> Softmax`` over the last axis."""

    def __init__(self, in_features: int, hidden: int, n_clusters: int) -> None:
        super().__init__()
        self.mlp = two_layer_mlp(in_features, hidden, n_clusters)

    def forward(self, h: Tensor) -> Tensor:
        """(..., D) features -> (..., K) probabilities (each row sums to 1)."""
        return torch.softmax(self.mlp(h), dim=-1)


class InstanceHead(nn.Module):
    """``Linear(D, hidden) -> ReLU -> Linear(hidden, dim)``: the instance projection of
    Contrastive Clustering (its rows go to NT-Xent, which normalises them)."""

    def __init__(self, in_features: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.mlp = two_layer_mlp(in_features, hidden, dim)

    def forward(self, h: Tensor) -> Tensor:
        """(N, D) features -> (N, dim) projections."""
        return self.mlp(h)


class SSCCNet(nn.Module):
    """The twin network: one backbone and one cluster head, applied to each view in turn, and
    optionally an instance head (``cfg.instance_dim > 0``) that only training uses.

    Args:
        cfg: Backbone kind, widths, depth, head width and K.
        in_channels: C, bands of the input patches (PCA components).
        patch_size: P, side of the input patches in pixels (odd).

    Raises:
        ValueError: ``patch_size`` is not a positive odd number, ``in_channels`` < 1, or the
            fcn backbone has too few convs to reach a P x P receptive field.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int, patch_size: int) -> None:
        super().__init__()
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"SSCCNet: patch_size must be a positive odd number, got {patch_size}")
        if in_channels < 1:
            raise ValueError(f"SSCCNet: in_channels must be >= 1, got {in_channels}")
        self.cfg = cfg
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.backbone = Backbone(cfg, in_channels, patch_size)
        self.head = ClusterHead(self.backbone.out_channels, cfg.head_hidden, cfg.n_clusters)
        self.instance = (InstanceHead(self.backbone.out_channels, cfg.head_hidden, cfg.instance_dim)
                         if cfg.instance_dim > 0 else None)

    @property
    def halo(self) -> int:
        """Pixels of context needed on each side of a pixel: ``patch_size // 2``."""
        return self.patch_size // 2

    @property
    def feature_dim(self) -> int:
        """D, the length of a feature vector."""
        return self.backbone.out_channels

    def _check(self, x: Tensor, what: str, exact: bool) -> None:
        """Raise unless ``x`` is (N, C, P, P) (``exact``) or (B, C, >= P, >= P)."""
        c, p = self.in_channels, self.patch_size
        ok = x.ndim == 4 and x.shape[1] == c and min(x.shape[-2:]) >= p
        if exact:
            ok = ok and tuple(x.shape[-2:]) == (p, p)
        if not ok:
            h2 = 2 * self.halo
            shape = f"(N, {c}, {p}, {p})" if exact else f"(B, {c}, H + {h2}, W + {h2})"
            raise ValueError(f"SSCCNet.{what}: expected {shape}, got {tuple(x.shape)}")

    def features(self, x: Tensor) -> Tensor:
        """Backbone features of patches: (N, C, P, P) -> (N, D)."""
        self._check(x, "features", exact=True)
        return self.backbone(x).mean(dim=(-2, -1))

    def forward(self, x: Tensor) -> Tensor:
        """Cluster probabilities of patches: (N, C, P, P) -> (N, K), rows sum to 1."""
        return self.head(self.features(x))

    def dense_probs(self, tile: Tensor) -> Tensor:
        """Per-pixel cluster probabilities of a tile read with a halo of ``patch_size // 2``.

        Equals :meth:`forward` on every pixel's P x P patch when the model is in eval mode.

        Args:
            tile: (B, C, H + 2 halo, W + 2 halo).

        Returns:
            (B, K, H, W) probabilities.

        Raises:
            ValueError: The backbone is not ``"fcn"`` (the zero-padded ``"resnet"`` cannot be
                evaluated densely), or the tile has the wrong shape or is smaller than a patch.
        """
        fmap = self.dense_features(tile)  # (B, D, H, W)
        return self.head(fmap.movedim(1, -1)).movedim(-1, 1)

    def dense_features(self, tile: Tensor) -> Tensor:
        """Per-pixel backbone features of a tile read with a halo of ``patch_size // 2``.

        Equals :meth:`features` on every pixel's P x P patch when the model is in eval mode.

        Args:
            tile: (B, C, H + 2 halo, W + 2 halo).

        Returns:
            (B, D, H, W) features.

        Raises:
            ValueError: The backbone is not ``"fcn"``, or the tile has the wrong shape.
        """
        if self.cfg.backbone != "fcn":
            raise ValueError(
                f"SSCCNet.dense_features: needs backbone 'fcn', got {self.cfg.backbone!r} (its "
                "zero padding makes dense output differ from per-patch output)"
            )
        self._check(tile, "dense_features", exact=False)
        return self.backbone(tile)


class TwinForward(nn.Module):
    """Both views through the one shared network in a single call.

    Wrapping the pair in one module lets DistributedDataParallel see one forward per step (two
    separate calls before ``backward`` would mark parameters ready twice), while each view keeps
    its own BatchNorm batch statistics, as in the authors' code.
    """

    def __init__(self, net: SSCCNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, xa: Tensor, xb: Tensor) -> tuple[Tensor, ...]:
        """(N, C, P, P) x 2 -> cluster probabilities (N, K) x 2, then, with an instance head,
        its projections (N, instance_dim) x 2 (the arguments of
        :class:`sscc_core.model.loss.SSCCLoss`)."""
        fa, fb = self.net.features(xa), self.net.features(xb)
        outputs = (self.net.head(fa), self.net.head(fb))
        if self.net.instance is None:
            return outputs
        return (*outputs, self.net.instance(fa), self.net.instance(fb))


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd inside; the previous training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def predict_patches(
    model: SSCCNet, patches: Tensor, batch_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Cluster labels and probabilities of patches, in eval mode, batch by batch.

    Args:
        model: The network (any backbone).
        patches: (N, C, P, P) on the model's device.
        batch_size: Patches per forward pass (bounds peak memory).

    Returns:
        ``(labels, probs)``: int64 (N,) argmax labels in [0, K) and (N, K) probabilities.
    """
    if batch_size < 1:
        raise ValueError(f"predict_patches: batch_size must be >= 1, got {batch_size}")
    with _inference(model):
        chunks = [model(b) for b in patches.split(batch_size)]
    probs = torch.cat(chunks) if chunks else patches.new_zeros((0, model.cfg.n_clusters))
    return probs.argmax(dim=1), probs


def predict_dense(model: SSCCNet, tile: Tensor) -> tuple[Tensor, Tensor]:
    """Cluster labels and probabilities of every pixel of one tile, fully convolutionally.

    Args:
        model: An ``"fcn"`` network.
        tile: (C, H + 2 halo, W + 2 halo) with ``halo = model.halo``.

    Returns:
        ``(labels, probs)``: int64 (H, W) labels and (K, H, W) probabilities.
    """
    if tile.ndim != 3:
        raise ValueError(f"predict_dense: expected a (C, H + 2 halo, W + 2 halo) tile, got "
                         f"{tuple(tile.shape)}")
    probs = dense_batch(model, tile[None])[0]
    return probs.argmax(dim=0), probs


def backbone_features(model: SSCCNet, patches: Tensor, batch_size: int = 2048) -> Tensor:
    """Eval-mode backbone features of patches, batch by batch.

    Args:
        model: The network (any backbone).
        patches: (N, C, P, P) on the model's device.
        batch_size: Patches per forward pass.

    Returns:
        (N, D) features.
    """
    if batch_size < 1:
        raise ValueError(f"backbone_features: batch_size must be >= 1, got {batch_size}")
    with _inference(model):
        chunks = [model.features(b) for b in patches.split(batch_size)]
    return torch.cat(chunks) if chunks else patches.new_zeros((0, model.feature_dim))


def dense_batch(model: SSCCNet, tiles: Tensor, features: bool = False) -> Tensor:
    """Eval-mode dense output of a batch of equally shaped tiles in one forward pass.

    Args:
        model: An ``"fcn"`` network.
        tiles: (N, C, H + 2 halo, W + 2 halo) on the model's device, ``halo = model.halo``.
        features: Backbone features (:meth:`SSCCNet.dense_features`) instead of cluster
            probabilities (:meth:`SSCCNet.dense_probs`).

    Returns:
        (N, D, H, W) features or (N, K, H, W) probabilities.
    """
    with _inference(model):
        return model.dense_features(tiles) if features else model.dense_probs(tiles)


def recalibrate_batchnorm(model: SSCCNet, patches: Tensor, batch_size: int = 2048) -> None:
    """Re-estimate every BatchNorm's running mean and variance on clean (unaugmented) patches.

    Training only ever shows the network augmented views (crops, blur, zeroed pixels and bands),
    so the running statistics it accumulates describe those, not the clean patches that are
    labelled at inference. This replaces them by the exact average of the batch statistics of
    ``patches`` (cumulative moving average, ``momentum=None``); weights are not touched. Running
    it twice gives the same statistics (train-mode BatchNorm never reads its running stats).

    Args:
        model: The trained network (left in eval mode).
        patches: (N, C, P, P) clean patches, e.g. the training pixels' patches (moved to the
            model's device batch by batch).
        batch_size: Patches per forward pass.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in patches.split(batch_size):
            model.features(batch.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
