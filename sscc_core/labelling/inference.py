"""Labelling a scene tile by tile: the single-process reference of the Ray inference pipeline.

A tile is read with a halo of ``patch_size // 2``, mapped to standardised PCA features, and
labelled either densely (``"fcn"`` backbone: one fully convolutional pass) or patch by patch
(any backbone), by the readout of the checkpoint's ``postprocess`` config
(:class:`sscc_core.model.readout.Readout`: the cluster head's argmax, the nearest k-means centroid of
the backbone features, or the spectral clusters' linear extension). Each spatial
post-processing step works on the tile grown by its reach (clipped to the scene) and crops back,
so tiled labels equal the whole-scene computation: the readout's input is smoothed over the
tile grown by :func:`sscc_core.model.postprocess.smooth_reach`, and the mode filter runs over the tile
grown by :func:`sscc_core.model.postprocess.mode_reach`. Nodata pixels get the ``nodata`` label and zero
confidence.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from sscc_core.model.checkpoint import Checkpoint, CheckpointError
from sscc_core.labelling.tile_input import TileInput, TileReader
from sscc_core.model.network import SSCCNet, backbone_features, dense_batch, predict_patches
from sscc_core.model.postprocess import mode_filter, mode_reach, smooth, smooth_reach
from sscc_core.model.preprocess import Preprocessor
from sscc_core.model.readout import Readout
from sscc_core.io.tiling import Tile, extract_patches_at, tile_grid

Mode = Literal["auto", "dense", "patch"]
WAVELENGTH_TOLERANCE_NM = 1.0


def check_wavelengths(
    model: Sequence[float], cube: Sequence[float], tolerance_nm: float = WAVELENGTH_TOLERANCE_NM
) -> bool:
    """Check that a cube's band centres match those the model was fitted on.

    Equal band counts are checked first (:meth:`Labeller.check_cube`); this catches a cube
    of another sensor, or bands in another order, with the same count.

    Args:
        model: (B,) band centres in nm stored in the checkpoint (empty when unknown).
        cube: (B,) band centres in nm of the cube (empty when unknown).
        tolerance_nm: Largest accepted absolute difference of any band centre, in nm.

    Returns:
        ``True`` when checked; ``False`` (with a :class:`UserWarning`) when either side has no
        wavelengths, so the check could not be made.

    Raises:
        ValueError: Different band counts, or a band centre differs by more than the tolerance
            (the message gives the largest difference and its band).
    """
    if len(model) == 0 or len(cube) == 0:
        missing = "the checkpoint" if len(model) == 0 else "the cube"
        warnings.warn(f"{missing} has no band wavelengths; cannot check that the cube's bands "
                      "match the model's (proceeding)", UserWarning, stacklevel=2)
        return False
    a, b = np.asarray(model, dtype=np.float64), np.asarray(cube, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"model has {a.size} band wavelengths, cube has {b.size}")
    diff = np.abs(a - b)
    worst = int(np.argmax(diff))
    if diff[worst] > tolerance_nm:
        raise ValueError(
            f"cube wavelengths differ from the model's by up to {diff[worst]:.2f} nm (band "
            f"{worst}: model {a[worst]:.2f} nm, cube {b[worst]:.2f} nm; tolerance {tolerance_nm} nm)"
        )
    return True


@dataclass
class Labeller:
    """A loaded model plus its pre-processing, ready to label tiles.

    Attributes:
        model: The network, in eval mode.
        pre: The pre-processing fitted at training time.
        mode: ``"dense"`` (fcn backbone only), ``"patch"``, or ``"auto"`` (dense when possible).
        batch_size: Patches per forward pass in patch mode.
        readout: How the (optionally smoothed) per-pixel probabilities or features become
            cluster ids; the default is the cluster head's argmax (confidence = max probability).
        mode_window: Odd side of the majority filter window, in pixels (1 = off).
        mode_iterations: Passes of the majority filter.
        wavelength: Band centres (nm) the model was fitted on; empty when unknown.
    """

    model: SSCCNet
    pre: Preprocessor
    mode: Mode = "auto"
    batch_size: int = 2048
    readout: Readout = Readout()
    mode_window: int = 1
    mode_iterations: int = 1
    wavelength: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.mode_window < 1 or self.mode_window % 2 == 0:
            raise ValueError(f"Labeller: mode_window must be a positive odd number, got {self.mode_window}")
        if self.mode_iterations < 1:
            raise ValueError(f"Labeller: mode_iterations must be >= 1, got {self.mode_iterations}")
        self.readout.check(self.vector_dim)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, mode: Mode = "auto", batch_size: int = 2048) -> "Labeller":
        """Rebuild the network, pre-processing and ``postprocess`` readout of a checkpoint.

        Raises:
            CheckpointError: ``postprocess.readout`` needs a fitted state (``"kmeans"``,
                ``"spectral"``) but the checkpoint holds none.
        """
        model = SSCCNet(ckpt.config.model, ckpt.in_channels, ckpt.config.preprocess.patch_size)
        model.load_state_dict(ckpt.model_state)
        model.eval()
        post = ckpt.config.postprocess
        readout = Readout.from_config(post, ckpt.readout_state)
        if not readout.fitted:
            raise CheckpointError(
                f"checkpoint config has postprocess.readout {post.readout!r} but the checkpoint "
                f"holds no fitted readout (readout_state); it was not written by the end of `sscc "
                f"train` (a per-epoch checkpoint, or an older version): finish training with this "
                f"version, or use a config with postprocess.readout 'head'"
            )
        return cls(model, Preprocessor.from_state(ckpt.preprocess_state), mode, batch_size,
                   readout, post.mode_window, post.mode_iterations, tuple(ckpt.wavelength))

    @property
    def vector_dim(self) -> int:
        """V, the length of a pixel's readout vector: K probabilities, D features, or D + C
        with the pixel's C PCA scores appended (``readout.appends_spectra``)."""
        if not self.readout.uses_features:
            return self.model.cfg.n_clusters
        return self.model.feature_dim + (self.pre.n_components if self.readout.appends_spectra else 0)

    @property
    def context(self) -> int:
        """Pixels around a tile its labels depend on: the patch halo plus the smoothing's and the
        mode filter's reach (the input window a tile's fingerprint must cover)."""
        return self.reader.context

    @property
    def dense(self) -> bool:
        """Whether tiles are evaluated fully convolutionally."""
        if self.mode == "dense" and self.model.cfg.backbone != "fcn":
            raise ValueError("dense inference needs the 'fcn' backbone; use mode 'patch' or 'auto'")
        return self.mode == "dense" or (self.mode == "auto" and self.model.cfg.backbone == "fcn")

    def check_cube(self, n_bands: int, wavelength: Sequence[float] | None = None) -> bool:
        """Check that a cube's bands are the model's: the same count and, when ``wavelength``
        is given, the same band centres (:func:`check_wavelengths`).

        Returns:
            Whether the band centres were checked (``False``, with a :class:`UserWarning`, when
            either side has none; ``False`` without a warning when ``wavelength`` is ``None``).

        Raises:
            ValueError: Another band count, or band centres beyond the tolerance.
        """
        self.pre.check_bands(n_bands)
        return wavelength is not None and check_wavelengths(self.wavelength, wavelength)

    @property
    def reader(self) -> TileReader:
        """The CPU half of labelling: what a tile's labels need read and pre-processed."""
        return TileReader(self.pre, self.model.halo, smooth_reach(self.readout.smooth_sigma),
                          mode_reach(self.mode_window, self.mode_iterations))

    def label_tile(self, cube: Any, valid: Any, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """Labels and confidence of one tile, mode-filtered when the filter is on.

        The filtered labels of the tile equal :func:`sscc_core.model.postprocess.mode_filter` of the
        whole scene's unfiltered label map, cropped to the tile. Equals
        :meth:`label_inputs` of :meth:`TileReader.read` (the two halves a pipeline may run in
        separate processes).

        Args:
            cube: (B, H, W) array-like (numpy or zarr).
            valid: (H, W) bool array-like.
            tile: The tile to label.

        Returns:
            ``(labels, confidence)``: (h, w) int64 cluster ids (-1 at nodata) and (h, w) float32
            confidence of the readout before filtering (0 at nodata).
        """
        return self.label_inputs([self.reader.read(cube, valid, tile)])[0]

    def label_inputs(self, inputs: Sequence[TileInput]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Labels and confidence of tiles already read (:meth:`TileReader.read`), on the model's
        device; in dense mode, inputs of one shape go through the network in one batch.

        Returns:
            One ``(labels, confidence)`` per input, as :meth:`label_tile`.
        """
        masks = [inp.mask[inp.window.within(inp.grown)] for inp in inputs]
        live = [i for i, mask in enumerate(masks) if mask.any()]
        raw = dict(zip(live, self._raw_vectors([inputs[i] for i in live])))
        reach = mode_reach(self.mode_window, self.mode_iterations)
        results = []
        for i, (inp, mask) in enumerate(zip(inputs, masks)):
            labels = np.full(mask.shape, -1, dtype=np.int64)
            conf = np.zeros(mask.shape, dtype=np.float32)
            if i in raw:
                vectors = torch.from_numpy(self._window_vectors(inp, raw[i])[:, mask].T)
                lab, c = self.readout.assign(vectors)
                labels[mask], conf[mask] = lab.numpy(), c.numpy()
            if reach:
                labels = mode_filter(labels, self.mode_window, self.mode_iterations)
                crop = inp.tile.within(inp.window)
                labels, conf = labels[crop], conf[crop]
            results.append((labels, conf))
        return results

    def readout_vectors(self, cube: Any, valid: Any, tile: Tile) -> np.ndarray:
        """The readout's per-pixel input over one window: cluster-head probabilities or backbone
        features, smoothed when ``readout.smooth_sigma > 0`` (equal to the whole-scene
        smoothing, cropped).

        Returns:
            (V, h, w) float32, V = K (probabilities) or D (features); 0 at nodata pixels.
        """
        inp = self.reader.read_window(cube, valid, tile)
        return self._window_vectors(inp, self._raw_vectors([inp])[0])

    def _window_vectors(self, inp: TileInput, raw: np.ndarray) -> np.ndarray:
        """(V, h, w) readout input over ``inp.window``: the raw vectors over ``inp.grown``,
        smoothed when configured, cropped."""
        if smooth_reach(self.readout.smooth_sigma):
            raw = smooth(raw, inp.mask, self.readout.smooth_sigma)
        return raw[(slice(None), *inp.window.within(inp.grown))]

    def _raw_vectors(self, inputs: Sequence[TileInput]) -> list[np.ndarray]:
        """(V, gh, gw) float32 unsmoothed probabilities, features, or features and PCA scores of
        each input's ``grown`` window (0 at nodata)."""
        out = [np.zeros((self.vector_dim, *inp.mask.shape), dtype=np.float32) for inp in inputs]
        width = self.model.feature_dim if self.readout.uses_features else self.vector_dim
        live = [i for i, inp in enumerate(inputs) if inp.feats is not None]
        device = next(self.model.parameters()).device
        if self.dense:
            shapes: dict[tuple[int, ...], list[int]] = {}
            for i in live:
                shapes.setdefault(inputs[i].feats.shape, []).append(i)
            for group in shapes.values():
                batch = torch.from_numpy(np.stack([inputs[i].feats for i in group])).to(device)
                maps = dense_batch(self.model, batch, self.readout.uses_features).cpu().numpy()
                for i, fmap in zip(group, maps):
                    out[i][:width, inputs[i].mask] = fmap[:, inputs[i].mask]
        for i in live:
            inp = inputs[i]
            if not self.dense:
                patches = self._patches(inp.feats, inp.mask).to(device)
                if self.readout.uses_features:
                    net = backbone_features(self.model, patches, self.batch_size)
                else:
                    net = predict_patches(self.model, patches, self.batch_size)[1]
                out[i][:width, inp.mask] = net.cpu().numpy().T
            if self.readout.appends_spectra:  # the pixels' own PCA scores, after the D features
                halo = self.model.halo
                centre = inp.feats[:, halo : inp.feats.shape[1] - halo, halo : inp.feats.shape[2] - halo]
                out[i][self.model.feature_dim :, inp.mask] = centre[:, inp.mask]
        return out

    def _patches(self, feats: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        """(N, C, P, P) patches of the ``mask`` pixels (row-major) of a tile's (C, h + 2 halo,
        w + 2 halo) features."""
        coords = np.argwhere(mask)
        return torch.from_numpy(extract_patches_at(feats, coords, self.model.patch_size))


def label_scene(
    labeller: Labeller, cube: Any, valid: Any, tile_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Label a whole scene tile by tile (in one process).

    Returns:
        ``(labels, confidence)``: (H, W) int64 (-1 at nodata) and (H, W) float32.
    """
    _, height, width = cube.shape
    labels = np.full((height, width), -1, dtype=np.int64)
    conf = np.zeros((height, width), dtype=np.float32)
    for tile in tile_grid(height, width, tile_size):
        lab, c = labeller.label_tile(cube, valid, tile)
        labels[tile.y0 : tile.y1, tile.x0 : tile.x1] = lab
        conf[tile.y0 : tile.y1, tile.x0 : tile.x1] = c
    return labels, conf
