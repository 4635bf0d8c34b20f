"""How per-pixel network outputs become cluster ids (``cfg.postprocess.readout``), and fitting it.

Three readouts, all applied to per-pixel vectors that may first be smoothed over valid
neighbours (:func:`sscc_core.postprocess.smooth`, ``smooth_sigma``):

* ``"head"`` (the recipe): argmax of the cluster head's probabilities; confidence = the maximum
  probability. Nothing to fit.
* ``"kmeans"``: k-means (K = ``model.n_clusters``) on the backbone features of a seeded sample of
  the training pixels; every pixel gets its nearest centroid, confidence
  ``1 - d_nearest / d_second``. State: ``{"centroids": (K, D)}``.
* ``"spectral"``: spectral clustering (scikit-learn, a symmetric k-nearest-neighbour graph of
  ``spectral_neighbors``, QR cluster assignment) of the standardised backbone features of a
  seeded sample of the training pixels. A graph follows the shape of the data where k-means
  draws straight boundaries between centroids: a field whose pixels drift gradually in feature
  space stays one cluster. Spectral clustering labels only the sample; to label every pixel a
  multinomial logistic regression is fitted to the sample's clusters and stored, so a pixel
  costs K x D multiply-adds (a k-nearest-neighbour vote among the sample gave the same accuracy
  to within 0.003 but was ~100x slower than the network on a 20,000-pixel sample).
  Confidence = the regression's largest class probability. State: ``{"mean": (D,), "std": (D,),
  "coef": (K, D), "intercept": (K,)}`` (a cluster the clustering left empty gets an intercept of
  -1e30, so it is never chosen).

With ``readout_spectra > 0`` the two feature readouts read ``[features; PCA scores]`` of each
pixel, (D + C) values: the backbone features summarise the patch's spatial context, the
pre-processed spectrum of the pixel itself is appended, and the readout multiplies those C
dimensions by ``readout_spectra`` (after standardising, for the spectral readout; the weights
are stored as ``state["weights"]``).

The readout is fitted after training on the *same* vectors the labeller computes (the tile
path of :class:`sscc_core.inference.Labeller`, smoothing included), collected in scene row-major
order whatever the tile size, so every trainer fits the same readout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from sscc_core.baselines import fit_kmeans
from sscc_core.config import PostprocessConfig, SSCCConfig
from sscc_core.model import SSCCNet, recalibrate_batchnorm
from sscc_core.preprocess import Preprocessor
from sscc_core.selection import Selection, select, spectral_clusters, standardise, standardiser
from sscc_core.tiling import tile_grid, tile_valid
from sscc_core.trainer import gather_patches

if TYPE_CHECKING:
    from sscc_core.inference import Labeller

Kind = Literal["head", "kmeans", "spectral"]
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "head": (),
    "kmeans": ("centroids",),
    "spectral": ("mean", "std", "coef", "intercept"),
}
EMPTY_CLUSTER_LOGIT = -1e30


def nearest_centroid(features: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest-centroid labels of feature vectors (Euclidean), and a confidence.

    Args:
        features: (N, D) feature vectors.
        centroids: (K, D) k-means centroids, K >= 2.

    Returns:
        ``(labels, confidence)``: (N,) int64 in ``[0, K)`` and (N,) float32
        ``1 - d_nearest / d_second`` in ``[0, 1]`` (0 = equidistant from two centroids).

    Raises:
        ValueError: Shapes do not match.
    """
    if features.ndim != 2 or centroids.ndim != 2 or features.shape[1] != centroids.shape[1]:
        raise ValueError(f"nearest_centroid: expected (N, D) features and (K, D) centroids, got "
                         f"{tuple(features.shape)} and {tuple(centroids.shape)}")
    if centroids.shape[0] < 2:
        raise ValueError(f"nearest_centroid: need at least 2 centroids, got {centroids.shape[0]}")
    f, c = features.double(), centroids.double()
    dist2 = (f * f).sum(1, keepdim=True) - 2.0 * f @ c.T + (c * c).sum(1)  # (N, K)
    two = dist2.clamp(min=0.0).topk(2, dim=1, largest=False)
    d = two.values.sqrt()
    conf = torch.where(d[:, 1] > 0, 1.0 - d[:, 0] / d[:, 1].clamp(min=1e-300), 0.0)
    return two.indices[:, 0].long(), conf.float()


def fit_spectral(vectors: Tensor, n_clusters: int, neighbors: int, seed: int,
                 weights: Tensor | None = None) -> dict[str, Tensor]:
    """The spectral readout's state: standardise (N, V) sample vectors per dimension, weight the
    dimensions, cluster them (:func:`spectral_clusters`), and fit the linear map that extends
    the clusters to any vector (:func:`fit_extension`).

    Args:
        vectors: (N, V) sample vectors.
        n_clusters: K.
        neighbors: Neighbours of the graph.
        seed: Seed of the clustering.
        weights: Optional (V,) per-dimension weights applied after standardising.

    Returns:
        ``{"mean": (V,), "std": (V,), "coef": (K, V), "intercept": (K,)}``, plus ``"weights"``
        when given.

    Raises:
        ValueError: The clustering put every sample vector in one cluster.
    """
    state = standardiser(vectors, weights)
    z = standardise(vectors, state).numpy()
    return {**state, **fit_extension(z, spectral_clusters(z, n_clusters, neighbors, seed), n_clusters, seed)}


def fit_extension(z: np.ndarray, labels: np.ndarray, n_clusters: int, seed: int) -> dict[str, Tensor]:
    """Multinomial logistic regression of (N, V) standardised sample vectors onto their (N,)
    cluster ids, as ``logits = z @ coef.T + intercept`` over all K clusters.

    Returns:
        ``{"coef": (K, V) float32, "intercept": (K,) float32}``; clusters absent from ``labels``
        get a zero row and an intercept of ``EMPTY_CLUSTER_LOGIT``.

    Raises:
        ValueError: Fewer than two clusters present.
    """
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(f"spectral readout: the clustering found {len(present)} cluster(s) in "
                         f"the sample; need at least 2")
    model = LogisticRegression(max_iter=2000, random_state=seed).fit(z, labels)
    coef = np.zeros((n_clusters, z.shape[1]))
    intercept = np.full(n_clusters, EMPTY_CLUSTER_LOGIT)
    if len(present) == 2:  # scikit-learn's binary form: one logit for classes_[1] against [0]
        coef[present[1]], intercept[present[1]] = model.coef_[0], model.intercept_[0]
        intercept[present[0]] = 0.0
    else:
        coef[present], intercept[present] = model.coef_, model.intercept_
    return {"coef": torch.from_numpy(coef).float(), "intercept": torch.from_numpy(intercept).float()}


@dataclass(frozen=True)
class Readout:
    """A readout of per-pixel vectors, fitted or not (see the module docstring).

    Attributes:
        kind: ``"head"``, ``"kmeans"`` or ``"spectral"``.
        smooth_sigma: Gaussian smoothing of the vectors before the readout, in pixels (0 = off).
        spectra_weight: Weight of the pixel's PCA scores appended to the features (0 = none).
        state: The fitted tensors (the checkpoint's ``readout_state``); ``None`` before fitting
            (and always for ``"head"``).
        selection: With ``readout: auto``, the label-free choice that fixed ``kind`` and
            ``smooth_sigma`` (:meth:`sscc_core.selection.Selection.record`); provenance only.
    """

    kind: Kind = "head"
    smooth_sigma: float = 0.0
    spectra_weight: float = 0.0
    state: dict[str, Tensor] | None = None
    selection: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, post: PostprocessConfig, state: dict[str, Tensor] | None = None) -> "Readout":
        """The readout a ``postprocess`` config describes, with a checkpoint's fitted state."""
        return cls(post.readout, post.smooth_sigma, post.readout_spectra,
                   state if post.readout != "head" else None)

    @property
    def uses_features(self) -> bool:
        """Whether the readout reads backbone features (else cluster-head probabilities)."""
        return self.kind != "head"

    @property
    def appends_spectra(self) -> bool:
        """Whether the vectors are ``[features; PCA scores]`` (a feature readout with
        ``spectra_weight > 0``)."""
        return self.uses_features and self.spectra_weight > 0

    def spectra_weights(self, feature_dim: int, n_dims: int) -> Tensor | None:
        """(n_dims,) per-dimension weights of ``[features; PCA scores]`` vectors: 1 on the
        ``feature_dim`` features, ``spectra_weight`` on the scores; ``None`` without scores."""
        if not self.appends_spectra:
            return None
        weights = torch.ones(n_dims)
        weights[feature_dim:] = self.spectra_weight
        return weights

    @property
    def fitted(self) -> bool:
        """Whether :meth:`assign` can run (``"head"`` needs no fitting)."""
        return self.kind == "head" or (
            self.state is not None and all(key in self.state for key in STATE_KEYS[self.kind]))

    def check(self, vector_dim: int) -> None:
        """Raise a clear ``ValueError`` when the fitted state does not fit ``vector_dim``-d
        vectors (D features, or D + C with the PCA scores appended)."""
        if self.kind not in STATE_KEYS:
            raise ValueError(f"Readout: unknown kind {self.kind!r}; choose from {list(STATE_KEYS)}")
        if self.kind == "head" or self.state is None:
            return
        what = "centroids" if self.kind == "kmeans" else "coef"
        vectors = self.state.get(what)
        if vectors is None or vectors.ndim != 2 or vectors.shape[1] != vector_dim or len(vectors) < 2:
            shape = None if vectors is None else tuple(vectors.shape)
            raise ValueError(f"Readout: {what} must be (>= 2, {vector_dim}) for this model's "
                             f"{vector_dim}-d features, got {shape}")

    def assign(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """Cluster ids and confidence of (N, V) vectors (probabilities or features).

        Returns:
            ``(labels, confidence)``: (N,) int64 and (N,) float32.

        Raises:
            ValueError: The readout is not fitted.
        """
        if not self.fitted:
            raise ValueError(f"Readout {self.kind!r} is not fitted (no {STATE_KEYS[self.kind]} state)")
        if self.kind == "head":
            best = vectors.max(dim=1)
            return best.indices.long(), best.values.float()
        if self.kind == "kmeans":
            if "mean" in self.state:  # centroids of standardised vectors (readout: auto)
                return nearest_centroid(standardise(vectors, self.state), self.state["centroids"])
            weights = self.state.get("weights")
            return nearest_centroid(vectors if weights is None else vectors * weights,
                                    self.state["centroids"])
        logits = standardise(vectors, self.state).double() @ self.state["coef"].double().T
        probs = torch.softmax(logits + self.state["intercept"].double(), dim=1)
        best = probs.max(dim=1)
        return best.indices.long(), best.values.float()


def readout_patches(
    cube: Any, valid: Any, train_mask: np.ndarray, pre: Preprocessor, patch_size: int, seed: int,
    max_pixels: int, tile_size: int = 256,
) -> Tensor:
    """Clean patches of a seeded sample of at most ``max_pixels`` training pixels, in scene
    row-major order whatever the tile size (BatchNorm recalibration).

    Args:
        cube: (B, H, W) array-like (numpy or zarr).
        valid: (H, W) bool array-like.
        train_mask: (H, W) bool, the training pixels (:func:`sscc_core.trainer.training_mask`).
        pre: Fitted pre-processing.
        patch_size: Odd patch side P.
        seed: Seed of the sample (the run's ``train.seed``).
        max_pixels: Largest number of patches returned.
        tile_size: Tile side used to read the cube.

    Returns:
        (N, C, P, P) float32 patches, N = min(#training pixels, ``max_pixels``).
    """
    mask = sample_mask(train_mask, max_pixels, seed)
    return row_major(*gather_patches(cube, valid, mask, pre, patch_size, tile_size))


def row_major(values: np.ndarray, coords: np.ndarray) -> Tensor:
    """(N, ...) values gathered tile by tile, reordered by their (N, 2) scene (row, col)
    coordinates into scene row-major order, so the order does not depend on the tile size."""
    order = np.lexsort((coords[:, 1], coords[:, 0]))
    return torch.from_numpy(np.ascontiguousarray(values[order]))


def sample_mask(train_mask: np.ndarray, max_pixels: int, seed: int) -> np.ndarray:
    """(H, W) bool: ``train_mask`` thinned to a seeded uniform sample of at most ``max_pixels``."""
    train_mask = np.asarray(train_mask, dtype=bool)
    flat = np.flatnonzero(train_mask)
    if len(flat) <= max_pixels:
        return train_mask
    keep = np.zeros(train_mask.shape, dtype=bool)
    keep.flat[np.random.default_rng(seed).choice(flat, max_pixels, replace=False)] = True
    return keep


def sample_vectors(labeller: "Labeller", cube: Any, valid: Any, mask: np.ndarray,
                   tile_size: int = 256) -> Tensor:
    """The labeller's readout vectors (smoothed when configured) at the ``mask`` pixels.

    Returns:
        (N, V) float32 in scene row-major order, whatever ``tile_size``.
    """
    vectors, coords = [], []
    for tile in tile_grid(mask.shape[0], mask.shape[1], tile_size):
        local = tile_valid(mask, tile)
        if not local.any():
            continue
        vectors.append(labeller.readout_vectors(cube, valid, tile)[:, local].T)
        coords.append(np.argwhere(local) + [tile.y0, tile.x0])
    if not vectors:
        raise ValueError("readout: no training pixels to fit on")
    return row_major(np.concatenate(vectors), np.concatenate(coords))


def fit_readout(model: SSCCNet, pre: Preprocessor, cube: Any, valid: Any, train_mask: np.ndarray,
                cfg: SSCCConfig, tile_size: int = 256,
                log: Callable[[dict[str, Any]], None] | None = None) -> Readout:
    """Fit what ``cfg.postprocess`` needs after training, on the clean training pixels.

    With ``bn_recalibrate`` the model's BatchNorm statistics are re-estimated first (in place)
    on clean patches of a sample of the training pixels. The ``"kmeans"`` and ``"spectral"``
    readouts are then fitted on the labeller's vectors of a seeded sample of at most
    ``readout_sample`` training pixels (K = ``model.n_clusters``, seed ``train.seed``).

    Args:
        model: The trained network (left in eval mode).
        pre: The run's pre-processing.
        cube: (B, H, W) array-like.
        valid: (H, W) bool array-like.
        train_mask: (H, W) bool training pixels.
        cfg: The run configuration.
        tile_size: Tile side used to read the cube.
        log: With ``readout: auto``, called with each candidate's criterion row (progress).

    Returns:
        The fitted :class:`Readout`; its ``state`` is the checkpoint's ``readout_state``. With
        ``readout: auto`` its ``kind`` and ``smooth_sigma`` are the chosen ones and
        ``selection`` records the choice.

    Raises:
        ValueError: Fewer sample pixels than clusters (or than the spectral neighbours).
    """
    from sscc_core.inference import Labeller  # inference imports this module

    post, seed = cfg.postprocess, cfg.train.seed
    if post.bn_recalibrate:
        recalibrate_batchnorm(model, readout_patches(cube, valid, train_mask, pre, model.patch_size,
                                                     seed, post.readout_sample, tile_size))
    model.eval()
    if post.readout == "auto":
        return fit_auto(model, pre, cube, valid, train_mask, post, seed, tile_size, log)
    readout = Readout.from_config(post)
    if not readout.uses_features:
        return readout
    mask = sample_mask(train_mask, post.readout_sample, seed)
    vectors = sample_vectors(Labeller(model, pre, readout=readout), cube, valid, mask, tile_size)
    k = model.cfg.n_clusters
    if len(vectors) <= max(k, post.spectral_neighbors if readout.kind == "spectral" else 0):
        raise ValueError(f"readout {readout.kind!r}: {len(vectors)} training pixels are too few "
                         f"for {k} clusters")
    weights = readout.spectra_weights(model.feature_dim, vectors.shape[1])
    if readout.kind == "spectral":
        return replace(readout, state=fit_spectral(vectors, k, post.spectral_neighbors, seed, weights))
    km = fit_kmeans((vectors if weights is None else vectors * weights).numpy(), k, seed)
    state = {"centroids": torch.from_numpy(km.cluster_centers_.astype(np.float32))}
    return replace(readout, state=state if weights is None else {**state, "weights": weights})


def extension(z_fit: np.ndarray, labels: np.ndarray, n_clusters: int, seed: int):
    """The readout's extension of a clustering of (M, V) standardised vectors to any others:
    a predictor ``(N, V) -> (N,)`` from the fitted logistic regression (:func:`fit_extension`)."""
    fitted = fit_extension(z_fit, labels, n_clusters, seed)
    coef, intercept = fitted["coef"].double().numpy(), fitted["intercept"].double().numpy()
    return lambda z: np.argmax(z @ coef.T + intercept, axis=1).astype(np.int64)


def fit_auto(model: SSCCNet, pre: Preprocessor, cube: Any, valid: Any, train_mask: np.ndarray,
             post: PostprocessConfig, seed: int, tile_size: int = 256,
             log: Callable[[dict[str, Any]], None] | None = None) -> Readout:
    """``readout: auto``: choose the readout by :func:`sscc_core.selection.select` on the
    labeller's vectors of a seeded sample of at most ``readout_sample`` training pixels, and fit
    the chosen one (k-means: centroids of the standardised sample; spectral: the extension).

    Returns:
        The fitted :class:`Readout` with ``selection`` set.
    """
    from sscc_core.inference import Labeller  # inference imports this module

    mask = sample_mask(train_mask, post.readout_sample, seed)
    k = model.cfg.n_clusters

    def vectors_at(sigma: float) -> Tensor:
        labeller = Labeller(model, pre, readout=Readout("kmeans", sigma, post.readout_spectra))
        vectors = sample_vectors(labeller, cube, valid, mask, tile_size)
        if len(vectors) <= max(k, post.spectral_neighbors):
            raise ValueError(f"readout 'auto': {len(vectors)} training pixels are too few for "
                             f"{k} clusters")
        return vectors

    chosen: Selection = select(vectors_at, model.feature_dim, pre.comp_std, k, post, seed,
                               lambda zf, lf: extension(zf, lf, k, seed), log)
    return readout_of(chosen, k, seed, post.readout_spectra)


def readout_of(chosen: Selection, n_clusters: int, seed: int, spectra_weight: float) -> Readout:
    """The fitted :class:`Readout` of a selection: the chosen kind and smoothing, its
    standardiser, and k-means centroids of the standardised sample (an empty cluster's centroid
    is placed out of reach) or the spectral readout's extension."""
    z, labels = chosen.z, chosen.labels
    if chosen.choice.kind == "kmeans":
        centroids = np.stack([z[labels == c].mean(0) if (labels == c).any() else np.full(z.shape[1], 1e15)
                              for c in range(n_clusters)])
        state = {**chosen.state, "centroids": torch.from_numpy(centroids).float()}
    else:
        state = {**chosen.state, **fit_extension(z, labels, n_clusters, seed)}
    return Readout(chosen.choice.kind, chosen.choice.smooth_sigma, spectra_weight, state, chosen.record())
