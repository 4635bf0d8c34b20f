"""Frozen configuration dataclasses, loaded from YAML and saved beside every checkpoint.

Every knob of the method lives here, with the authors' recipe as the default. A config is a tree
of frozen dataclasses; :func:`load_config` builds one from a YAML mapping and rejects unknown or
mistyped fields with one message that names the dotted field (``train.lr: expected float, got
'fast'``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or mapping is malformed; the message names the offending field."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Spectral pre-processing fitted once on the training scene and stored with the model.

    Attributes:
        n_components: PCA components kept (the paper uses 8).
        patch_size: Side of the square spatial patch around each pixel, in pixels (odd).
        sample_pixels: Upper bound on valid pixels sampled to fit band statistics and PCA; a
            mosaic larger than this is sampled uniformly, never loaded whole.
        seed: Seed of the pixel sample.
    """

    n_components: int = 8
    patch_size: int = 11
    sample_pixels: int = 200_000
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Twin network: backbone + cluster head.

    Attributes:
        n_clusters: K, the number of clusters (softmax dimension).
        backbone: ``"resnet"`` is the authors' shallow ResNet (3x3 convs, zero padding, global
            average pooling over the patch); ``"fcn"`` is the fully convolutional variant whose
            receptive field is exactly one patch, so dense inference over a tile equals per-patch
            inference.
        stem_channels: Output channels of the 1x1 stem conv.
        widths: Channels of the three residual stages.
        blocks_per_stage: Residual blocks per stage.
        head_hidden: Hidden width of the cluster head MLP.
        instance_dim: Output width of an instance head beside the cluster head (Contrastive
            Clustering, Li et al. 2021): ``Linear(D, head_hidden) -> ReLU -> Linear(head_hidden,
            instance_dim)`` of the backbone features, trained by NT-Xent between the two views
            (``loss.instance_weight``) and not used for labelling; 0 = none (the authors' recipe).
    """

    n_clusters: int = 16
    backbone: Literal["resnet", "fcn"] = "resnet"
    stem_channels: int = 32
    widths: tuple[int, ...] = (64, 128, 256)
    blocks_per_stage: int = 2
    head_hidden: int = 512
    instance_dim: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation pool; each view is drawn independently.

    Attributes:
        crop_scale: Area fraction range of RandomResizedCrop.
        crop_ratio: Aspect ratio range of RandomResizedCrop.
        flip_p: Probability of a horizontal flip.
        blur_p: Probability that the Gaussian blur (if chosen) is applied.
        blur_sigma: Sigma range of the 3x3 Gaussian blur, in pixels.
        pixel_mask_p: Probability that each spatial position is zeroed (pixel masking).
        band_mask_p: Probability that each band is zeroed (band masking).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    pixel_mask_p: float = 0.5
    band_mask_p: float = 0.5


@dataclass(frozen=True)
class LossConfig:
    """SSCC objective weights.

    Attributes:
        offdiag_weight: lambda on the squared off-diagonal cross-correlations.
        ntxent_weight: Weight of the NT-Xent term on the rows.
        temperature: NT-Xent temperature (of both NT-Xent terms).
        instance_weight: Weight of the NT-Xent term on the instance head's rows (with
            ``model.instance_dim > 0``).
    """

    offdiag_weight: float = 0.005
    ntxent_weight: float = 5e-5
    temperature: float = 0.5
    instance_weight: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and sampling protocol.

    Attributes:
        protocol: ``"labelled"`` trains on labelled pixels only (the authors' protocol);
            ``"all"`` trains on every valid pixel (no labels needed).
        epochs: Training epochs.
        batch_size: Pairs per batch (drop_last).
        shuffle_buffer: Rows of the seeded shuffle buffer the batches are drawn from
            (:func:`sscc_core.training.batches.shuffled_batches`), over the views streamed
            tile by tile.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        step_size: StepLR period, in epochs.
        gamma: StepLR decay factor.
        seed: Global seed (weights, sampling, augmentation).
    """

    protocol: Literal["labelled", "all"] = "labelled"
    epochs: int = 200
    batch_size: int = 512
    shuffle_buffer: int = 4096
    lr: float = 2e-4
    weight_decay: float = 5e-3
    step_size: int = 20
    gamma: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class TileConfig:
    """Tiling of a scene for streaming stages.

    Attributes:
        tile_size: Side of a square tile, in pixels; a multiple of the store's chunk size.
        halo: Extra pixels read on each side (patch_size // 2 for patch extraction).
    """

    tile_size: int = 256
    halo: int = 5


@dataclass(frozen=True)
class PostprocessConfig:
    """How a trained network's outputs become the final label map (defaults: the authors').

    Attributes:
        readout: ``"head"`` labels each pixel by the argmax of the cluster head (the recipe);
            ``"kmeans"`` runs k-means (K = ``model.n_clusters``) on the backbone features of the
            training pixels and labels every pixel by its nearest centroid; ``"spectral"`` runs
            spectral clustering (a k-nearest-neighbour graph of ``spectral_neighbors``) on the
            standardised backbone features of a sample of the training pixels and labels every
            pixel by a logistic regression fitted to the sample's clusters.
        smooth_sigma: Standard deviation, in pixels, of a Gaussian average over valid
            neighbouring pixels of the readout's input (probabilities for ``"head"``, features
            otherwise) before it is read out; 0 = off (the recipe).
        spectral_neighbors: Neighbours of the spectral readout's k-nearest-neighbour graph.
        readout_spectra: Weight of the pixel's own pre-processed spectrum (its standardised PCA
            scores) appended to the backbone features read by ``"kmeans"`` and ``"spectral"``:
            the features carry the patch's spatial context, the scores the pixel's spectrum.
            The spectral readout standardises every dimension and then multiplies the appended
            ones by this weight. 0 = features only (the default).
        readout_sample: Largest number of training pixels the readout is fitted on (k-means,
            spectral clustering).
        mode_window: Side, in pixels, of the square majority (mode) filter applied to the label
            map over valid pixels; 1 = off (the recipe).
        mode_iterations: Passes of the mode filter.
        bn_recalibrate: Before labelling, re-estimate the BatchNorm running statistics on the
            clean (unaugmented) training patches; training only saw augmented views, whose
            statistics differ. Off in the recipe.
        spectra_scale: How the appended PCA scores are weighted (with ``readout_spectra > 0``):
            ``"whitened"`` gives every standardised score the weight ``readout_spectra``;
            ``"unwhitened"`` keeps the components' relative spread, the first one weighing as
            much as all D standardised features together; ``"balanced"`` keeps the first K - 1
            scores and weighs them, together, as much as the D features together (see
            :mod:`sscc_core.training.selection`).
        select_kinds: ``readout: auto`` chooses among these readouts ...
        select_sigmas: ... these smoothing scales (pixels) ...
        select_scales: ... and these ``spectra_scale`` values, by the label-free stability
            criterion of :mod:`sscc_core.training.selection`; the choice is written into the
            checkpoint's config and its criterion values into the checkpoint's provenance.
        select_resamples: Half-size resamples of the selection sample clustered per candidate
            to measure its stability (>= 1).
        select_sample: Largest number of training pixels ``readout: auto`` compares the
            candidates on (a seeded sample drawn like the readout's); the chosen readout is then
            fitted on the ``readout_sample``. ``None``: the readout sample itself (one sample
            for both).
        select_graph_gain: With ``readout: auto``, a spectral candidate competes only when the
            k-means partition at its smoothing and scale cuts its k-nearest-neighbour graph at
            least this many times worse (normalised cut) than its own partition does
            (:mod:`sscc_core.training.selection`); ``None``: every candidate competes. Needs
            ``"kmeans"`` in ``select_kinds``.
    """

    readout: Literal["head", "kmeans", "spectral", "auto"] = "head"
    smooth_sigma: float = 0.0
    spectral_neighbors: int = 10
    readout_spectra: float = 0.0
    readout_sample: int = 20_000
    mode_window: int = 1
    mode_iterations: int = 1
    bn_recalibrate: bool = False
    spectra_scale: Literal["whitened", "unwhitened", "balanced"] = "whitened"
    select_kinds: tuple[str, ...] = ("kmeans", "spectral")
    select_sigmas: tuple[float, ...] = (0.0, 1.0, 2.0)
    select_scales: tuple[str, ...] = ("whitened", "unwhitened")
    select_resamples: int = 2
    select_sample: int | None = None
    select_graph_gain: float | None = None


@dataclass(frozen=True)
class SSCCConfig:
    """Complete configuration of a run."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists), ready for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(asdict(cfg))


def _finite(value: float, where: str) -> float:
    """``value`` unless it is NaN or infinite (a NaN learning rate trains a NaN model)."""
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples; raise naming ``where``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if is_dataclass(hint):
        return from_dict(hint, value, prefix=where + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {args}")
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected float, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {value!r}")
        return _finite(float(value), where)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating every field.

    Args:
        cls: A (frozen) config dataclass type.
        data: Mapping of field name to value; missing fields take their defaults.
        prefix: Dotted path of ``data`` inside the whole config, used in error messages.

    Raises:
        ConfigError: Unknown field, wrong type or invalid value; the message names the field.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (known: {sorted(names)})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


MAX_SEED = 2**31 - 1  # seeds feed numpy, torch and scikit-learn (random_state < 2**32) alike


def _validate(obj: Any, prefix: str) -> None:
    """Range checks that types alone cannot express."""
    def fail(name: str, msg: str) -> None:
        raise ConfigError(f"{prefix}{name}: {msg}")

    if isinstance(obj, PreprocessConfig):
        if obj.n_components < 1:
            fail("n_components", f"must be >= 1, got {obj.n_components}")
        if obj.patch_size < 1 or obj.patch_size % 2 == 0:
            fail("patch_size", f"must be a positive odd number, got {obj.patch_size}")
        if obj.sample_pixels < 1:
            fail("sample_pixels", f"must be >= 1, got {obj.sample_pixels}")
        if not 0 <= obj.seed <= MAX_SEED:
            fail("seed", f"must be in [0, {MAX_SEED}], got {obj.seed}")
    elif isinstance(obj, ModelConfig):
        if obj.n_clusters < 2:
            fail("n_clusters", f"must be >= 2, got {obj.n_clusters}")
        if not obj.widths or any(w < 1 for w in obj.widths):
            fail("widths", f"must be positive channel counts, got {obj.widths}")
        if obj.instance_dim < 0:
            fail("instance_dim", f"must be >= 0 (0 = no instance head), got {obj.instance_dim}")
    elif isinstance(obj, LossConfig):
        if obj.instance_weight < 0:
            fail("instance_weight", f"must be >= 0, got {obj.instance_weight}")
    elif isinstance(obj, TrainConfig):
        for name in ("epochs", "batch_size", "shuffle_buffer", "step_size"):
            if getattr(obj, name) < 1:
                fail(name, f"must be >= 1, got {getattr(obj, name)}")
        if obj.lr <= 0:
            fail("lr", f"must be > 0, got {obj.lr}")
        if not 0 <= obj.seed <= MAX_SEED:
            fail("seed", f"must be in [0, {MAX_SEED}], got {obj.seed}")
    elif isinstance(obj, TileConfig):
        if obj.tile_size < 1:
            fail("tile_size", f"must be >= 1, got {obj.tile_size}")
        if obj.halo < 0:
            fail("halo", f"must be >= 0, got {obj.halo}")
    elif isinstance(obj, PostprocessConfig):
        if obj.mode_window < 1 or obj.mode_window % 2 == 0:
            fail("mode_window", f"must be a positive odd number, got {obj.mode_window}")
        if obj.mode_iterations < 1:
            fail("mode_iterations", f"must be >= 1, got {obj.mode_iterations}")
        if obj.smooth_sigma < 0:
            fail("smooth_sigma", f"must be >= 0 pixels, got {obj.smooth_sigma}")
        if obj.spectral_neighbors < 2:
            fail("spectral_neighbors", f"must be >= 2, got {obj.spectral_neighbors}")
        if obj.readout_spectra < 0:
            fail("readout_spectra", f"must be >= 0, got {obj.readout_spectra}")
        if obj.readout_sample < 2:
            fail("readout_sample", f"must be >= 2, got {obj.readout_sample}")
        if not obj.select_kinds or not set(obj.select_kinds) <= {"kmeans", "spectral"}:
            fail("select_kinds", f"must be a non-empty list of 'kmeans'/'spectral', got {list(obj.select_kinds)}")
        if not obj.select_sigmas or any(s < 0 for s in obj.select_sigmas):
            fail("select_sigmas", f"must be a non-empty list of sigmas >= 0, got {list(obj.select_sigmas)}")
        if not obj.select_scales or not set(obj.select_scales) <= {"whitened", "unwhitened", "balanced"}:
            fail("select_scales", "must be a non-empty list of 'whitened'/'unwhitened'/'balanced', "
                                  f"got {list(obj.select_scales)}")
        if obj.select_resamples < 1:
            fail("select_resamples", f"must be >= 1, got {obj.select_resamples}")
        if obj.select_sample is not None and obj.select_sample < 2:
            fail("select_sample", f"must be >= 2 or null, got {obj.select_sample}")
        if obj.select_graph_gain is not None:
            if not obj.select_graph_gain > 0:
                fail("select_graph_gain", f"must be > 0 or null, got {obj.select_graph_gain}")
            if "kmeans" not in obj.select_kinds:
                fail("select_graph_gain", "compares each spectral candidate with the k-means one; "
                                          f"select_kinds {list(obj.select_kinds)} has no 'kmeans'")
    elif isinstance(obj, AugmentConfig):
        for name in ("flip_p", "blur_p", "pixel_mask_p", "band_mask_p"):
            p = getattr(obj, name)
            if not 0.0 <= p <= 1.0:
                fail(name, f"must be a probability in [0, 1], got {p}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SSCCConfig:
    """Load an :class:`SSCCConfig` from YAML, then apply dotted overrides.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: ``{"train.epochs": 5, "model.n_clusters": 6}``-style overrides.

    Raises:
        ConfigError: Malformed YAML or any invalid field (the message names it).
        FileNotFoundError: ``path`` does not exist.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents, 1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parents[:depth])
                raise ConfigError(f"{dotted}: {section} is a field (= {node!r}), not a section")
        node[leaf] = value
    return from_dict(SSCCConfig, data)


def dump_config(cfg: SSCCConfig) -> str:
    """``cfg`` as YAML text, the exact form :func:`load_config` reads back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported so callers need not import dataclasses."""
    return dataclasses.replace(cfg, **changes)


def config_hash(cfg: Any) -> str:
    """SHA-256 (first 16 hex digits) of a config dataclass's canonical JSON form.

    Fields left at null are left out, so an optional field added later (default null, meaning
    the behaviour from before it) keeps the hash of every config that leaves it unset: a run
    started before the field existed still resumes, and exports keep their provenance hash.
    """

    def set_fields(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: set_fields(v) for k, v in value.items() if v is not None}
        return value

    text = json.dumps(set_fields(to_dict(cfg)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
