"""Band standardisation + PCA, fitted once by a streaming pass and stored with the model.

The authors' pre-processing is: z-score each band, project onto the first ``n_components``
principal components of the z-scored bands, then z-score each component. All of it follows from
the band mean vector and band covariance matrix of the valid pixels, which
:class:`MomentAccumulator` gathers tile by tile in float64 (``B x B`` with ``B`` = 200..430 bands
is small), merging per-tile moments with Chan's pairwise update so the result does not depend on
the tile size beyond rounding. Nothing larger than one tile is ever held in memory.

Two fits are offered:

* ``"exact"`` (default): moments of every valid pixel of the scene.
* ``"sample"``: moments of a seeded uniform sample of at most ``sample_pixels`` valid pixels,
  drawn without replacement and read tile by tile.

Several flight lines (cubes on their own grids, one band set) are fitted together by
:func:`accumulate_lines_moments`: the same two fits over the valid pixels of all lines.

The PCA basis is the ``eigh`` of the correlation matrix (covariance of the z-scored bands), sorted
by decreasing eigenvalue and sign-fixed so the largest-magnitude loading of each component is
positive. The post-PCA standard deviations are analytic: the projected covariance is diagonal
with the eigenvalues on it, and the projected mean is zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from sscc_core.config import PreprocessConfig
from sscc_core.io.tiling import Tile, tile_grid, tile_valid

FitMethod = Literal["exact", "sample"]
STATE_FORMAT = "sscc.preprocess.v1"


def merge_moments(n_a: Any, mean_a: np.ndarray, m2_a: np.ndarray, n_b: Any, mean_b: np.ndarray,
                  m2_b: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """Count, mean and centred second moment of the union of two sets (Chan et al.'s pairwise
    update), exact in float64 for large raw values.

    Two forms: vectors (``mean`` (B,), ``m2`` (B, B) the centred scatter matrix, scalar counts),
    or element-wise (``m2`` the sum of squared deviations, shaped like ``mean``; counts broadcast
    against the last axis, e.g. per cluster). Counts of ``b`` must be positive.

    Returns:
        ``(n, mean, m2)`` of the union.
    """
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    if m2_a.ndim == mean_a.ndim + 1:  # scatter matrix; scalar (Python int) counts
        cross = np.outer(delta, delta) * (n_a * n_b / n)
    else:  # count arrays: n_a * (n_b / n) in float, no int64 product to overflow
        cross = delta * delta * (n_a * (n_b / n))
    return n, mean, m2_a + m2_b + cross


@dataclass
class MomentAccumulator:
    """Running count, mean and centred scatter matrix of pixel spectra, in float64.

    Attributes:
        n_bands: B, the spectrum length.
        n: Pixels seen.
        mean: ``(B,)`` running mean.
        scatter: ``(B, B)`` sum of outer products of the centred spectra.
    """

    n_bands: int
    n: int = 0
    mean: np.ndarray = field(init=False)
    scatter: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.n_bands)
        self.scatter = np.zeros((self.n_bands, self.n_bands))

    def update(self, pixels: np.ndarray) -> None:
        """Add a batch of spectra.

        Args:
            pixels: ``(N, B)`` spectra, any real dtype.
        """
        x = np.asarray(pixels, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_bands:
            raise ValueError(f"expected (N, {self.n_bands}) spectra, got shape {x.shape}")
        if len(x) == 0:
            return
        mean = x.mean(axis=0)
        xc = x - mean
        other = MomentAccumulator(self.n_bands)
        other.n, other.mean, other.scatter = len(x), mean, xc.T @ xc
        self.merge(other)

    def merge(self, other: MomentAccumulator) -> None:
        """Fold another accumulator's moments into this one (Chan et al. pairwise update)."""
        if other.n_bands != self.n_bands:
            raise ValueError(f"cannot merge moments of {other.n_bands} and {self.n_bands} bands")
        if other.n == 0:
            return
        self.n, self.mean, self.scatter = merge_moments(self.n, self.mean, self.scatter,
                                                        other.n, other.mean, other.scatter)

    @property
    def covariance(self) -> np.ndarray:
        """``(B, B)`` population covariance (divided by ``n``, as ``StandardScaler`` does)."""
        if self.n == 0:
            raise ValueError("no valid pixel was seen: cannot compute band statistics")
        return self.scatter / self.n


@dataclass(frozen=True, eq=False)
class Preprocessor:
    """A fitted band z-score -> PCA -> component z-score map (float64 parameters).

    Attributes:
        band_mean: ``(B,)`` mean of each band over the fitted pixels, in raw units.
        band_std: ``(B,)`` population std of each band; 1 where a band is constant.
        components: ``(n, B)`` PCA basis of the z-scored bands, rows orthonormal.
        explained_variance: ``(n,)`` variance of each component (population, in z-score units).
        total_variance: Total variance of the z-scored bands (number of non-constant bands).
        n_pixels: Pixels the statistics were computed from.
    """

    band_mean: np.ndarray
    band_std: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    total_variance: float
    n_pixels: int

    @property
    def n_bands(self) -> int:
        """B, the band count the preprocessor expects."""
        return int(self.band_mean.shape[0])

    @property
    def n_components(self) -> int:
        """n, the output feature count."""
        return int(self.components.shape[0])

    @property
    def comp_std(self) -> np.ndarray:
        """``(n,)`` std of each PCA component; 1 where a component has zero variance."""
        std = np.sqrt(np.clip(self.explained_variance, 0.0, None))
        return np.where(std > 0, std, 1.0)

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        """``(n,)`` fraction of the total z-scored variance carried by each component."""
        return self.explained_variance / self.total_variance

    def _affine(self, whiten: bool) -> tuple[np.ndarray, np.ndarray]:
        """The whole map as ``W @ x + b``: ``W`` is ``(n, B)``, ``b`` is ``(n,)``, float64."""
        weight = self.components / self.band_std[None, :]
        if whiten:
            weight = weight / self.comp_std[:, None]
        return weight, -weight @ self.band_mean

    def check_bands(self, n_bands: int) -> None:
        """Raise a clear ``ValueError`` when a cube's band count is not the fitted one."""
        if n_bands != self.n_bands:
            raise ValueError(f"cube has {n_bands} bands but the model was fitted on {self.n_bands} bands")

    def transform_pixels(self, pixels: np.ndarray, whiten: bool = True) -> np.ndarray:
        """Map spectra to standardised PCA features.

        Args:
            pixels: ``(N, B)`` raw spectra.
            whiten: Z-score each component (the recipe); ``False`` stops at the PCA scores of
                the z-scored bands (variance = ``explained_variance``).

        Returns:
            ``(N, n)`` float32 features (zero mean, unit variance over the fitted pixels).
        """
        pixels = np.asarray(pixels)
        if pixels.ndim != 2:
            raise ValueError(f"expected (N, bands) spectra, got shape {pixels.shape}")
        self.check_bands(pixels.shape[1])
        weight, bias = self._affine(whiten)
        return (pixels.astype(np.float64) @ weight.T + bias).astype(np.float32)

    def transform(
        self, block: np.ndarray, valid: np.ndarray | None = None, whiten: bool = True
    ) -> np.ndarray:
        """Map a cube block to standardised PCA features.

        Args:
            block: ``(B, h, w)`` raw cube block.
            valid: Optional ``(h, w)`` bool mask; invalid pixels become 0 (the feature mean), so
                nodata values never leak into the patches of their neighbours.
            whiten: Z-score each component (the recipe); see :meth:`transform_pixels`.

        Returns:
            ``(n, h, w)`` float32 features.
        """
        block = np.asarray(block)
        if block.ndim != 3:
            raise ValueError(f"expected a (band, y, x) block, got shape {block.shape}")
        self.check_bands(block.shape[0])
        _, h, w = block.shape
        pixels = block.reshape(block.shape[0], h * w).astype(np.float64)
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != (h, w):
                raise ValueError(f"valid mask shape {valid.shape} != block shape {(h, w)}")
            pixels[:, ~valid.reshape(-1)] = 0.0  # nodata (NaN, inf, fill values) never enters the sums
        weight, bias = self._affine(whiten)
        out = (weight @ pixels + bias[:, None]).astype(np.float32).reshape(self.n_components, h, w)
        if valid is not None:
            out[:, ~valid] = 0.0
        return out

    def to_state(self) -> dict[str, Any]:
        """Plain dict of float64 tensors and primitives (``torch.load(weights_only=True)``-safe)."""
        return {
            "format": STATE_FORMAT,
            "band_mean": torch.from_numpy(self.band_mean.copy()),
            "band_std": torch.from_numpy(self.band_std.copy()),
            "components": torch.from_numpy(self.components.copy()),
            "explained_variance": torch.from_numpy(self.explained_variance.copy()),
            "total_variance": float(self.total_variance),
            "n_pixels": int(self.n_pixels),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Preprocessor:
        """Rebuild from :meth:`to_state` output.

        Raises:
            ValueError: The dict is not a preprocessor state (wrong format tag or missing key).
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not a preprocessor state: format {state.get('format')!r}, "
                f"expected {STATE_FORMAT!r}"
            )
        arrays = ("band_mean", "band_std", "components", "explained_variance")
        missing = [k for k in (*arrays, "total_variance", "n_pixels") if k not in state]
        if missing:
            raise ValueError(f"preprocessor state lacks {missing}")
        return cls(
            **{k: np.asarray(state[k], dtype=np.float64) for k in arrays},
            total_variance=float(state["total_variance"]),
            n_pixels=int(state["n_pixels"]),
        )


def preprocessor_from_moments(moments: MomentAccumulator, n_components: int) -> Preprocessor:
    """Solve band z-score + PCA + component z-score from accumulated moments.

    Args:
        moments: Moments of the fitted pixels.
        n_components: Components kept, ``<= B``.

    Returns:
        The fitted :class:`Preprocessor`.
    """
    if not 1 <= n_components <= moments.n_bands:
        raise ValueError(f"n_components must be in [1, {moments.n_bands}], got {n_components}")
    cov = moments.covariance
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    std = np.where(std > 0, std, 1.0)
    corr = cov / np.outer(std, std)
    eigval, eigvec = np.linalg.eigh(corr)
    order = np.argsort(eigval)[::-1][:n_components]
    comps = eigvec[:, order].T
    signs = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(axis=1)])
    return Preprocessor(
        band_mean=moments.mean.copy(),
        band_std=std,
        components=comps * signs[:, None],
        explained_variance=eigval[order],
        total_variance=float(np.trace(corr)),
        n_pixels=moments.n,
    )


def _tile_mask(valid: Any | None, tile: Tile) -> np.ndarray:
    """``(h, w)`` valid mask of a tile; all True when there is no mask."""
    if valid is None:
        return np.ones((tile.height, tile.width), dtype=bool)
    return tile_valid(valid, tile)


def _tile_pixels(cube: Any, mask: np.ndarray, tile: Tile) -> np.ndarray:
    """``(N, B)`` spectra of the masked pixels of one tile (reads only that tile)."""
    return np.asarray(cube[:, tile.y0 : tile.y1, tile.x0 : tile.x1])[:, mask].T


def _sample_selection(counts: np.ndarray, n_sample: int, seed: int) -> list[np.ndarray]:
    """Per tile, sorted ranks among its valid pixels of a uniform sample without replacement."""
    total = int(counts.sum())
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=min(n_sample, total), replace=False))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    cuts = np.searchsorted(picks, bounds)
    return [picks[a:b] - lo for a, b, lo in zip(cuts[:-1], cuts[1:], bounds[:-1])]


def _check_cube(cube: Any, valid: Any | None) -> None:
    """Refuse a cube that is not ``(B, H, W)`` or a mask of another spatial shape."""
    if len(cube.shape) != 3:
        raise ValueError(f"expected a (band, y, x) cube, got shape {tuple(cube.shape)}")
    if valid is not None and tuple(valid.shape) != tuple(cube.shape[1:]):
        raise ValueError(
            f"valid mask shape {tuple(valid.shape)} != cube spatial shape {tuple(cube.shape[1:])}"
        )


def accumulate_moments(
    cube: Any,
    valid: Any | None,
    tile_size: int = 256,
    method: FitMethod = "exact",
    sample_pixels: int = 200_000,
    seed: int = 0,
) -> MomentAccumulator:
    """Gather band moments of the valid pixels, reading the cube tile by tile.

    Args:
        cube: ``(B, H, W)`` array-like supporting numpy slicing (numpy, ``zarr.Array``).
        valid: ``(H, W)`` bool array-like, True where a pixel has data; ``None`` = all valid.
        tile_size: Side of the tiles read, in pixels (align it with the store chunks).
        method: ``"exact"`` uses every valid pixel; ``"sample"`` a seeded uniform sample of at
            most ``sample_pixels`` of them (a first pass over ``valid`` counts them per tile).
        sample_pixels: Sample size bound for ``method="sample"``.
        seed: Seed of the sample.

    Returns:
        The accumulated moments.
    """
    return accumulate_lines_moments([(cube, valid)], tile_size, method, sample_pixels, seed)


def accumulate_lines_moments(
    lines: Sequence[tuple[Any, Any | None]],
    tile_size: int = 256,
    method: FitMethod = "exact",
    sample_pixels: int = 200_000,
    seed: int = 0,
) -> MomentAccumulator:
    """Gather band moments of the valid pixels of several cubes (flight lines on their own
    grids) together, reading each tile by tile.

    ``"exact"`` folds every tile of every line into one accumulator (Chan merge), so the
    moments are those of the concatenated valid pixels up to rounding. ``"sample"`` draws one
    seeded uniform sample without replacement from the valid pixels of all lines together
    (each line gets its share of its valid pixels, in expectation), then reads it tile by tile.
    With one line both are :func:`accumulate_moments` of that cube, bit for bit.

    Args:
        lines: ``(cube, valid)`` of each line, in order: cube ``(B, H_i, W_i)``, valid
            ``(H_i, W_i)`` bool array-like or ``None`` (all valid); every B is the same.
        tile_size: Side of the tiles read, in pixels.
        method: ``"exact"`` or ``"sample"``.
        sample_pixels: Sample size bound for ``method="sample"``, over all lines.
        seed: Seed of the sample.

    Returns:
        The accumulated moments.

    Raises:
        ValueError: No line, a cube not ``(B, H, W)``, a mask of another shape, lines with
            different band counts, or an unknown method.
    """
    if not lines:
        raise ValueError("no cube to fit the pre-processing on")
    for cube, valid in lines:
        _check_cube(cube, valid)
    if method not in ("exact", "sample"):
        raise ValueError(f"method must be 'exact' or 'sample', got {method!r}")
    moments = MomentAccumulator(int(lines[0][0].shape[0]))
    grids = [(cube, valid, tile_grid(cube.shape[1], cube.shape[2], tile_size)) for cube, valid in lines]
    if method == "exact":
        for cube, valid, tiles in grids:
            for tile in tiles:
                mask = _tile_mask(valid, tile)
                if mask.any():
                    moments.update(_tile_pixels(cube, mask, tile))
        return moments
    reads = [(cube, valid, tile) for cube, valid, tiles in grids for tile in tiles]
    counts = np.array([int(_tile_mask(valid, tile).sum()) for _, valid, tile in reads])
    for (cube, valid, tile), ranks in zip(reads, _sample_selection(counts, sample_pixels, seed)):
        if len(ranks):
            moments.update(_tile_pixels(cube, _tile_mask(valid, tile), tile)[ranks])
    return moments


def fit_preprocessor(
    cube: Any,
    valid: Any | None,
    config: PreprocessConfig = PreprocessConfig(),
    tile_size: int = 256,
    method: FitMethod = "exact",
) -> Preprocessor:
    """Fit band z-score + PCA + component z-score on the valid pixels of a cube, out of core.

    Args:
        cube: ``(B, H, W)`` array-like supporting numpy slicing (numpy, ``zarr.Array``).
        valid: ``(H, W)`` bool array-like; ``None`` means every pixel is valid.
        config: ``n_components``, ``sample_pixels`` and ``seed`` are used.
        tile_size: Side of the tiles read, in pixels.
        method: ``"exact"`` streaming moments of all valid pixels, or ``"sample"``.

    Returns:
        The fitted :class:`Preprocessor`.
    """
    moments = accumulate_moments(
        cube, valid, tile_size, method, sample_pixels=config.sample_pixels, seed=config.seed
    )
    return preprocessor_from_moments(moments, config.n_components)
