"""Labelling a scene tile by tile: the single-process reference of the Ray inference pipeline.

A tile is read with a halo of ``patch_size // 2``, mapped to standardised PCA features, and
labelled either densely (``"fcn"`` backbone: one fully convolutional pass) or patch by patch
(any backbone). Nodata pixels get the ``nodata`` label and zero confidence.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from sscc_core.checkpoint import Checkpoint
from sscc_core.model import SSCCNet, predict_dense, predict_patches
from sscc_core.preprocess import Preprocessor
from sscc_core.tiling import Tile, extract_patches_at, tile_grid, tile_valid
from sscc_core.trainer import tile_features

Mode = Literal["auto", "dense", "patch"]
WAVELENGTH_TOLERANCE_NM = 1.0


def check_wavelengths(
    model: Sequence[float], cube: Sequence[float], tolerance_nm: float = WAVELENGTH_TOLERANCE_NM
) -> bool:
    """Check that a cube's band centres match those the model was fitted on.

    Equal band counts are checked elsewhere (:meth:`Labeller.check_cube`); this catches a cube
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


def label_dtype(n_clusters: int) -> tuple[np.dtype, int]:
    """Smallest unsigned label dtype for K clusters and its nodata value (the dtype's max).

    Raises:
        ValueError: K does not fit a uint16 label map.
    """
    if n_clusters < 255:
        return np.dtype(np.uint8), 255
    if n_clusters < 65535:
        return np.dtype(np.uint16), 65535
    raise ValueError(f"n_clusters={n_clusters} does not fit a uint16 label map")


@dataclass
class Labeller:
    """A loaded model plus its pre-processing, ready to label tiles.

    Attributes:
        model: The network, in eval mode.
        pre: The pre-processing fitted at training time.
        mode: ``"dense"`` (fcn backbone only), ``"patch"``, or ``"auto"`` (dense when possible).
        batch_size: Patches per forward pass in patch mode.
    """

    model: SSCCNet
    pre: Preprocessor
    mode: Mode = "auto"
    batch_size: int = 2048

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, mode: Mode = "auto", batch_size: int = 2048) -> "Labeller":
        """Rebuild the network and pre-processing stored in a checkpoint."""
        model = SSCCNet(ckpt.config.model, ckpt.in_channels, ckpt.config.preprocess.patch_size)
        model.load_state_dict(ckpt.model_state)
        model.eval()
        return cls(model, Preprocessor.from_state(ckpt.preprocess_state), mode, batch_size)

    @property
    def dense(self) -> bool:
        """Whether tiles are evaluated fully convolutionally."""
        if self.mode == "dense" and self.model.cfg.backbone != "fcn":
            raise ValueError("dense inference needs the 'fcn' backbone; use mode 'patch' or 'auto'")
        return self.mode == "dense" or (self.mode == "auto" and self.model.cfg.backbone == "fcn")

    def check_cube(self, n_bands: int) -> None:
        """Raise a clear error when a cube's band count differs from the model's."""
        if n_bands != self.pre.n_bands:
            raise ValueError(f"model expects {self.pre.n_bands} bands, cube has {n_bands}")

    def label_tile(self, cube: Any, valid: Any, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """Labels and confidence of one tile.

        Args:
            cube: (B, H, W) array-like (numpy or zarr).
            valid: (H, W) bool array-like.
            tile: The tile to label.

        Returns:
            ``(labels, confidence)``: (h, w) int64 cluster ids (-1 at nodata) and (h, w) float32
            max softmax probability (0 at nodata).
        """
        self.check_cube(int(cube.shape[0]))
        halo = self.model.halo
        mask = tile_valid(valid, tile)
        labels = np.full(mask.shape, -1, dtype=np.int64)
        conf = np.zeros(mask.shape, dtype=np.float32)
        if not mask.any():
            return labels, conf
        feats = torch.from_numpy(tile_features(cube, valid, tile, self.pre, halo))
        if self.dense:
            lab, probs = predict_dense(self.model, feats)
            labels[mask] = lab.numpy()[mask]
            conf[mask] = probs.max(dim=0).values.numpy()[mask]
        else:
            coords = np.argwhere(mask)
            patches = torch.from_numpy(extract_patches_at(feats.numpy(), coords, self.model.patch_size))
            lab, probs = predict_patches(self.model, patches, self.batch_size)
            labels[mask] = lab.numpy()
            conf[mask] = probs.max(dim=1).values.numpy()
        return labels, conf


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
