"""The SSCC checkpoint: model weights, optimiser, epoch, pre-processing stats and config in one file,
and the run record that says what a training run continues.

A checkpoint holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``: no pickled code is ever executed, and a foreign or corrupt file
fails with a clear :class:`CheckpointError` instead of running someone else's objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from sscc_core import __version__, storage
from sscc_core.config import PostprocessConfig, SSCCConfig, config_hash, from_dict, to_dict

FORMAT = "sscc-checkpoint/1"
FILENAME = "model.pt"
RUN_RECORD = "run.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, foreign, or incompatible with the input."""


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to resume training or to label new data.

    Attributes:
        config: The run's configuration.
        in_channels: Network input channels (PCA components).
        n_bands: Bands of the cube the pre-processing was fitted on.
        model_state: ``state_dict`` of :class:`sscc_core.model.network.SSCCNet`.
        preprocess_state: Tensors of the fitted pre-processing (band stats, PCA basis).
        epoch: Epochs completed.
        optimizer_state: Optimiser ``state_dict`` (``None`` for an inference-only export).
        scheduler_state: LR scheduler ``state_dict`` (or ``None``).
        wavelength: Band centres in nm the model was fitted on (empty when unknown).
        extra: Free-form JSON-serialisable provenance (input store, metrics, timings).
        readout_state: Tensors of the fitted readout (:class:`sscc_core.model.readout.Readout`:
            ``{"centroids": (K, V)}`` for ``"kmeans"``; ``{"mean", "std", "coef",
            "intercept"}`` for ``"spectral"``; plus ``"weights"`` with PCA scores appended), or
            ``None`` (head readout; files written before this field existed).
    """

    config: SSCCConfig
    in_channels: int
    n_bands: int
    model_state: dict[str, torch.Tensor]
    preprocess_state: dict[str, torch.Tensor]
    epoch: int = 0
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    wavelength: tuple[float, ...] = ()
    extra: dict[str, Any] | None = None
    readout_state: dict[str, torch.Tensor] | None = None

    @property
    def model_version(self) -> str:
        """Content hash of everything that determines the labels: weights, pre-processing, and,
        when present, the readout state and a non-default ``postprocess`` config (so files
        without them keep the version they always had)."""
        h = hashlib.sha256()
        states = [self.model_state, self.preprocess_state]
        if self.readout_state is not None:
            h.update(b"readout_state")
            states.append(self.readout_state)
        if self.config.postprocess != PostprocessConfig():
            h.update(json.dumps(to_dict(self.config.postprocess), sort_keys=True).encode())
        for state in states:
            for name in sorted(state):
                h.update(name.encode())
                value = state[name]
                if isinstance(value, torch.Tensor):
                    h.update(value.detach().cpu().contiguous().numpy().tobytes())
                else:
                    h.update(repr(value).encode())
        return h.hexdigest()[:12]


def non_finite_tensors(*states: dict[str, Any] | None) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity, over ``states``."""
    return [
        name for state in states for name, value in (state or {}).items()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def _non_finite_message(names: list[str]) -> str:
    """``'a, b and 3 more tensors'`` for :func:`non_finite_tensors`' result."""
    more = f" and {len(names) - 2} more" if len(names) > 2 else ""
    return ", ".join(names[:2]) + more


def checkpoint_file(path: str | Path) -> str:
    """The file a checkpoint path names: an existing file, or ``path/model.pt`` for a directory
    (an existing one, a local path without suffix, or a URL not ending in ``.pt``)."""
    if storage.is_url(path):
        return str(path) if str(path).endswith(".pt") else storage.join(path, FILENAME)
    p = Path(path)
    return str(p / FILENAME) if p.is_dir() or (p.suffix == "" and not p.is_file()) else str(p)


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> str:
    """Write ``ckpt`` to ``path`` (a ``.pt`` file, or a directory; local or object storage);
    locally atomic (temp file then rename).

    Returns:
        The file written (``path/model.pt`` for a directory).

    Raises:
        CheckpointError: A weight, pre-processing or readout tensor is NaN or infinite (a
            diverged run); nothing is written.
    """
    path = checkpoint_file(path)
    bad = non_finite_tensors(ckpt.model_state, ckpt.preprocess_state, ckpt.readout_state)
    if bad:
        raise CheckpointError(
            f"{path}: not written: the state after epoch {ckpt.epoch} is not finite "
            f"({_non_finite_message(bad)})"
        )
    payload = {
        "format": FORMAT,
        "sscc_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(),
        "model_version": ckpt.model_version,
        "config_json": json.dumps(to_dict(ckpt.config)),
        "in_channels": ckpt.in_channels,
        "n_bands": ckpt.n_bands,
        "epoch": ckpt.epoch,
        "model_state": ckpt.model_state,
        "preprocess_state": ckpt.preprocess_state,
        "optimizer_state": ckpt.optimizer_state,
        "scheduler_state": ckpt.scheduler_state,
        "wavelength": list(ckpt.wavelength),
        "extra_json": json.dumps(ckpt.extra or {}),
        "readout_state": ckpt.readout_state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return storage.write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint safely (``weights_only=True``).

    Args:
        path: The ``model.pt`` file or the directory holding it (local or object storage).

    Raises:
        CheckpointError: Missing, unreadable, not an SSCC checkpoint, with a malformed config,
            or holding NaN or infinite tensors (written by a diverged run).
    """
    path = checkpoint_file(path)
    if not storage.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/unsafe files
        raise CheckpointError(
            f"{path}: not a loadable SSCC checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not an SSCC checkpoint (format {found!r}, expected {FORMAT!r})")
    try:
        config = from_dict(SSCCConfig, json.loads(payload["config_json"]))
        ckpt = Checkpoint(
            config=config,
            in_channels=int(payload["in_channels"]),
            n_bands=int(payload["n_bands"]),
            model_state=payload["model_state"],
            preprocess_state=payload["preprocess_state"],
            epoch=int(payload["epoch"]),
            optimizer_state=payload["optimizer_state"],
            scheduler_state=payload["scheduler_state"],
            wavelength=tuple(float(w) for w in payload["wavelength"]),
            extra=json.loads(payload["extra_json"]),
            readout_state=payload.get("readout_state"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed SSCC checkpoint ({exc})") from exc
    bad = non_finite_tensors(ckpt.model_state, ckpt.preprocess_state, ckpt.readout_state)
    if bad:
        raise CheckpointError(
            f"{path}: the checkpoint holds non-finite values ({_non_finite_message(bad)}): the "
            f"run that wrote it diverged; train again with a lower train.lr"
        )
    return ckpt


RUN_CHECKPOINT = re.compile(r"checkpoint_\d{4}-\d\d-\d\d_")  # Ray Train's per-epoch folders


def run_checkpoints(run_dir: str, newest: str | None = None) -> list[str]:
    """The per-epoch checkpoint files of a training run, newest first.

    Args:
        run_dir: The run's directory (local or object storage).
        newest: Name of the newest checkpoint folder to include (the one Ray Train resumes
            from); newer folders are left out. ``None``: all of them.

    Returns:
        ``run_dir/checkpoint_<time>/model.pt`` paths; Ray Train names the folders by their
        creation time, so name order is epoch order.
    """
    names = [n for n in storage.list_names(run_dir)
             if RUN_CHECKPOINT.match(n) and (newest is None or n <= newest)]
    return [storage.join(run_dir, n, FILENAME) for n in sorted(names, reverse=True)]


def newest_loadable(paths: list[str]) -> tuple[Checkpoint | None, list[CheckpointError]]:
    """The first checkpoint of ``paths`` (newest first) that loads, and why the newer ones did
    not (a run killed while its storage filled up, a truncated copy).

    Returns:
        ``(checkpoint, errors)``; the checkpoint is ``None`` when none loads (training then
        starts again from epoch 0, as the first launch did).
    """
    errors: list[CheckpointError] = []
    for path in paths:
        try:
            return load_checkpoint(path), errors
        except CheckpointError as exc:
            errors.append(exc)
    return None, errors


def fallback_warning(errors: list[CheckpointError], resumed: str | None, epoch: int) -> str:
    """The warning of a resume that skipped unloadable checkpoints (:func:`newest_loadable`)."""
    start = (f"resuming from {resumed} (epoch {epoch})" if resumed is not None
             else "no loadable checkpoint left, training again from epoch 0")
    return f"{start}; skipped {len(errors)} newer checkpoint(s): " + "; ".join(map(str, errors))


@dataclass(frozen=True)
class RunRecord:
    """What a training run continues, kept as ``run.json`` in the run's directory.

    Attributes:
        store: Path of the input cube store, or the paths of the run's flight lines joined by
            `` + `` (shown in messages; a moved store with the same identity continues the run).
        input_identity: :func:`sscc_core.io.store.cube_identity` of the input (of each line,
            in order, joined by ``+``).
        config_hash: :func:`sscc_core.config.config_hash` of the config with ``train.epochs``
            set to 0: raising the epoch count continues the same run, any other change does not.
        protocol: ``train.protocol`` (also inside the hash; named on its own in messages).
    """

    store: str
    input_identity: str
    config_hash: str
    protocol: str

    @classmethod
    def of(cls, store: str, input_identity: str, cfg: SSCCConfig) -> "RunRecord":
        """The record of a launch on ``store`` with ``cfg``."""
        resumable = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=0))
        return cls(store=store, input_identity=input_identity,
                   config_hash=config_hash(resumable), protocol=cfg.train.protocol)

    @classmethod
    def of_lines(cls, stores: Sequence[str], identities: Sequence[str], cfg: SSCCConfig) -> "RunRecord":
        """The record of a launch on one or more flight lines, in order: ``store`` joins their
        paths with `` + ``, ``input_identity`` their identities with ``+`` (one line: :meth:`of`
        of it), so another set or order of lines is another input."""
        return cls.of(" + ".join(stores), "+".join(identities), cfg)


class RunMismatchError(ValueError):
    """A relaunch under an existing run name differs in input, config or protocol."""


def check_run_record(run_dir: str, record: RunRecord, progress: bool) -> bool:
    """Record a new run's :class:`RunRecord`; require an existing run's to be the same once it
    has made progress.

    Args:
        run_dir: The run's directory (local or object storage).
        record: This launch's record.
        progress: Whether the run has a checkpoint (per-epoch or final). A run without one
            (its first launch was refused, diverged or killed before epoch 1 ended) holds
            nothing to continue: a differing record replaces the old one.

    Returns:
        Whether a differing record was replaced (the earlier launch, with other settings, left
        no checkpoint to continue: this launch starts the run again).

    Raises:
        RunMismatchError: The run has progress and was started with another input, config or
            protocol (the message names each difference); nothing in ``run_dir`` is changed.
    """
    path = storage.join(run_dir, RUN_RECORD)
    new = json.dumps(asdict(record), indent=1).encode()
    if not storage.exists(path):
        storage.write_bytes(path, new)
        return False
    old = json.loads(storage.read_bytes(path))
    differences = [
        f"{label} {old.get(name)} -> {getattr(record, name)}"
        for name, label in (("input_identity", f"input ({old.get('store')} -> {record.store}) "
                             "identity"), ("config_hash", "config hash"), ("protocol", "protocol"))
        if old.get(name) != getattr(record, name)
    ]
    if differences and not progress:
        storage.write_bytes(path, new)
        return True
    if differences:
        raise RunMismatchError(
            f"{run_dir}: this run was started with other settings ({'; '.join(differences)}); "
            "relaunching resumes only the same input, config and protocol (train.epochs may "
            "grow): use a new --run-name"
        )
    return False
