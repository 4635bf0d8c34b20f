"""The training step and epoch of SSCC, the seeded training state, and the health signals.

Both trainers (the single-process reference loop of :mod:`sscc_core.training.reference`, run by
the accuracy suite, and the Ray Train loop of :mod:`pipelines.train`) call
:func:`build_training` and :func:`train_epoch`; they differ only in how the batches reach the
epoch (views drawn in memory, or streamed by Ray Data) and in the loss gathering the global
batch across data-parallel ranks.

Every epoch summary carries label-free health signals next to the loss parts: how many clusters
the argmax uses and the mean entropy of the assignment rows (:class:`EpochStats`); a run that
ends with fewer than K clusters used is warned about (:func:`clusters_warning`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sscc_core.model.checkpoint import Checkpoint, non_finite_tensors
from sscc_core.config import SSCCConfig
from sscc_core.model.loss import LOSS_PARTS, SSCCLoss, SSCCLossParts
from sscc_core.model.network import SSCCNet, convert_sync_batchnorm
from sscc_core.io.tiling import tile_valid

def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A torch generator for one epoch of one data stream (worker rank, tile, ...).

    Mixing the epoch into the seed gives new augmentations every epoch, and the same ones for a
    rerun with the same seed (a resumed run reproduces an uninterrupted one).
    """
    mixed = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


@dataclass
class Training:
    """The mutable state of a training run.

    Attributes:
        model: The twin network.
        optimizer: Adam.
        scheduler: StepLR, stepped once per epoch.
        epoch: Epochs completed so far.
        history: One dict of mean loss parts (and seconds) per completed epoch.
    """

    model: SSCCNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def build_training(
    cfg: SSCCConfig, in_channels: int, resume: Checkpoint | None = None, sync_batchnorm: bool = False,
    device: torch.device | str = "cpu",
) -> Training:
    """Model, Adam and StepLR of the recipe, seeded; restored from ``resume`` when given.

    Args:
        cfg: Run configuration (model, train).
        in_channels: Input channels (PCA components).
        resume: A checkpoint to continue from (weights, optimiser, scheduler, epoch).
        sync_batchnorm: Use :class:`sscc_core.model.network.SyncBatchNorm2d` (data-parallel training:
            BatchNorm statistics over the global batch); same weights and state-dict keys.
        device: Where the model trains. The model moves there before the optimiser is built and
            a resumed optimiser state is loaded, so Adam's moments sit on the same device as
            the weights (moving the model afterwards would leave them behind).
    """
    torch.manual_seed(cfg.train.seed)
    model = SSCCNet(cfg.model, in_channels, cfg.preprocess.patch_size)  # initialised on the CPU
    if sync_batchnorm:
        convert_sync_batchnorm(model)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.train.step_size, cfg.train.gamma)
    training = Training(model, optimizer, scheduler)
    if resume is not None:
        model.load_state_dict(resume.model_state)
        if resume.optimizer_state is not None:
            optimizer.load_state_dict(resume.optimizer_state)
        if resume.scheduler_state is not None:
            scheduler.load_state_dict(resume.scheduler_state)
        training.epoch = resume.epoch
        training.history = list((resume.extra or {}).get("history", []))
    return training


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN or infinite: a user error (the settings, typically
    ``train.lr``, or extreme input values), so it is reported in one line and never retried."""


_DIVERGED_HINT = ("training stopped and no checkpoint of this epoch was written (lower "
                  "train.lr, or check the input cube for extreme values)")


def check_finite_weights(model: nn.Module, epoch: int) -> None:
    """Raise :class:`TrainingDiverged` if a parameter or buffer of ``model`` is not finite.

    Args:
        model: The network after the last step of ``epoch``.
        epoch: The epoch just completed (1-based), named in the message.
    """
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise TrainingDiverged(f"epoch {epoch}: the weights are not finite ({bad[0]}); "
                               + _DIVERGED_HINT)


def train_step(
    twin: nn.Module, optimizer: torch.optim.Optimizer, xa: Tensor, xb: Tensor, loss: SSCCLoss,
    *, epoch: int, step: int,
) -> SSCCLossParts:
    """One optimisation step on a batch of view pairs.

    Args:
        twin: A :class:`sscc_core.model.network.TwinForward` (or its DDP wrapper), in train mode.
        optimizer: Its optimiser.
        xa: View a, (n, C, P, P) (this rank's rows of the batch).
        xb: View b, (n, C, P, P).
        loss: The objective (gathering the global batch when data-parallel).
        epoch: Epochs completed before this one (0-based), for the error message.
        step: Steps completed in this epoch (0-based), for the error message.

    Returns:
        The loss parts (``total`` already back-propagated and stepped).

    Raises:
        TrainingDiverged: The loss is NaN or infinite; nothing was stepped. The loss is a
            function of the global batch, so every data-parallel rank raises at the same step.
    """
    parts = loss(*twin(xa, xb))
    if not bool(torch.isfinite(parts.total)):
        raise TrainingDiverged(f"epoch {epoch + 1}, step {step + 1}: the loss is "
                               f"{float(parts.total)}; " + _DIVERGED_HINT)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    optimizer.step()
    return parts


@dataclass
class EpochStats:
    """Loss parts and label-free cluster-assignment health of one epoch, step by step.

    The health signals are computed from the probabilities the loss saw (both views of every
    batch; the global batch when data-parallel, so every rank holds the same values).

    Attributes:
        n_clusters: K.
        batches: Steps added.
        sums: Per loss part, the sum over steps of the batch value.
        counts: (K,) int64 rows assigned to each cluster by argmax.
        entropy: Sum over rows of the assignment entropy ``-sum_k p_k log p_k`` (nats).
    """

    n_clusters: int
    batches: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_PARTS, 0.0))
    counts: Tensor = field(init=False)
    entropy: float = 0.0

    def __post_init__(self) -> None:
        self.counts = torch.zeros(self.n_clusters, dtype=torch.int64)

    def add(self, parts: SSCCLossParts) -> None:
        """Account one step's loss parts and its (2N, K) probabilities."""
        for name, value in parts.as_floats().items():
            self.sums[name] += value
        labels = parts.probs.argmax(dim=1)
        self.counts += torch.bincount(labels, minlength=self.n_clusters).cpu()
        self.entropy += float(torch.special.entr(parts.probs).sum())
        self.batches += 1

    def summary(self) -> dict[str, float]:
        """Mean loss parts over the steps, ``clusters_used`` (clusters that won the argmax of
        at least one row) and ``assign_entropy`` (mean row entropy, nats; 0 = one-hot rows,
        log K = uniform rows)."""
        if not self.batches:
            raise ValueError("EpochStats.summary: no step was added")
        rows = int(self.counts.sum())
        return {**{name: value / self.batches for name, value in self.sums.items()},
                "clusters_used": int((self.counts > 0).sum()), "assign_entropy": self.entropy / rows}


def progress_line(summary: dict[str, float], n_clusters: int, epochs: int, elapsed: float,
                  done: int) -> str:
    """One human-readable line of an epoch summary: epoch k/N, loss parts, health signals, lr,
    the epoch's time, the time elapsed and the estimated time left.

    Args:
        summary: The epoch's summary (``epoch`` is the count of epochs completed).
        n_clusters: K.
        epochs: ``train.epochs``, the epoch the run ends at.
        elapsed: Seconds since this launch started training.
        done: Epochs this launch has completed (the ETA assumes they were typical).
    """
    epoch = int(summary["epoch"])
    eta = elapsed / max(done, 1) * max(epochs - epoch, 0)
    return (f"epoch {epoch}/{epochs}  loss {summary['total']:.4f}  "
            f"diag {summary['diagonal']:.4f}  offdiag {summary['off_diagonal']:.4f}  "
            f"ntxent {summary['ntxent']:.4f}  instance {summary['instance']:.4f}  "
            f"clusters {int(summary['clusters_used'])}/{n_clusters}  "
            f"entropy {summary['assign_entropy']:.3f}  lr {summary['lr']:.2e}  {summary['seconds']:.1f}s  "
            f"elapsed {_clock(elapsed)}  ETA {_clock(eta)}")


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour)."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def clusters_warning(summary: dict[str, float], n_clusters: int) -> str | None:
    """The warning for a run whose last epoch used fewer than K clusters, else ``None``."""
    used = int(summary["clusters_used"])
    if used >= n_clusters:
        return None
    return (f"training ended with {used} of model.n_clusters={n_clusters} clusters used by the "
            f"argmax (epoch {int(summary['epoch'])}): the assignments collapsed onto fewer clusters")


def train_epoch(training: Training, twin: nn.Module, loss: SSCCLoss, batches: Iterable[tuple[Tensor, Tensor]],
                cfg: SSCCConfig, after_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """One epoch: a step on every batch, then the scheduler, the weights check and the summary.

    Both trainers run their epochs here (the reference loop of
    :mod:`sscc_core.training.reference` and the Ray Train loop of ``pipelines.train``); they
    differ in where the batches come from.

    Args:
        training: State to advance (``epoch`` is incremented, the scheduler stepped, the summary
            appended to ``history``).
        twin: The :class:`sscc_core.model.network.TwinForward` of ``training.model`` (or its
            data-parallel wrapper).
        loss: The objective.
        batches: This rank's ``(view_a, view_b)`` of each batch, each (n, C, P, P), on any
            device (each is moved to the model's).
        cfg: Run configuration (``model.n_clusters``, ``train.batch_size``).
        after_step: Called with the steps done so far after every step (fault drills).

    Returns:
        :meth:`EpochStats.summary` of the epoch plus ``epoch``, ``lr``, ``seconds`` and
        ``samples_per_s`` (global batch pairs per second).

    Raises:
        ValueError: ``batches`` was empty.
        TrainingDiverged: The loss or the weights are not finite.
    """
    start = time.perf_counter()
    training.model.train()
    device = next(training.model.parameters()).device
    stats = EpochStats(cfg.model.n_clusters)
    for xa, xb in batches:
        stats.add(train_step(twin, training.optimizer, xa.to(device), xb.to(device), loss,
                             epoch=training.epoch, step=stats.batches))
        if after_step is not None:
            after_step(stats.batches)
    if not stats.batches:
        raise ValueError(f"epoch {training.epoch + 1}: no training batch (fewer training pixels than "
                         f"train.batch_size={cfg.train.batch_size})")
    lr = training.optimizer.param_groups[0]["lr"]
    training.scheduler.step()
    training.epoch += 1
    check_finite_weights(training.model, training.epoch)  # on every rank, before any report
    seconds = time.perf_counter() - start
    summary = {"epoch": training.epoch, **stats.summary(), "lr": lr, "seconds": seconds,
               "samples_per_s": stats.batches * cfg.train.batch_size / seconds}
    training.history.append(summary)
    return summary


def training_mask(
    valid: np.ndarray, labels: np.ndarray | None, protocol: str, allow_empty: bool = False
) -> np.ndarray:
    """Pixels that become training samples: labelled ones (authors) or every valid one.

    Nodata pixels never become samples.

    Args:
        valid: (H, W) bool, True where the pixel has data.
        labels: (H, W) int ground truth (0 = unlabelled), needed for ``protocol="labelled"``.
        protocol: ``"labelled"`` or ``"all"``.
        allow_empty: Return an all-False mask instead of raising (one tile of many).

    Raises:
        ValueError: ``"labelled"`` without ground truth, or no training pixel at all.
    """
    valid = np.asarray(valid, dtype=bool)
    if protocol == "labelled":
        if labels is None:
            raise ValueError("protocol 'labelled' needs ground-truth labels; use protocol 'all'")
        mask = valid & (np.asarray(labels) > 0)
    elif protocol == "all":
        mask = valid
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected 'labelled' or 'all'")
    if not allow_empty and not mask.any():
        raise ValueError(f"no training pixel under protocol {protocol!r}")
    return mask


def tile_training_mask(valid: Any, labels: Any | None, tile: Any, protocol: str) -> np.ndarray:
    """:func:`training_mask` of one tile, read from (H, W) array-likes (numpy or zarr).

    Args:
        valid: (H, W) bool array-like.
        labels: (H, W) int array-like ground truth, or ``None``.
        tile: A :class:`sscc_core.io.tiling.Tile`.
        protocol: ``"labelled"`` or ``"all"``.

    Returns:
        (h, w) bool, possibly all False.
    """
    lab = None if labels is None else labels[tile.y0 : tile.y1, tile.x0 : tile.x1]
    return training_mask(tile_valid(valid, tile), lab, protocol, allow_empty=True)
