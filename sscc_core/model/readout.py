"""How per-pixel network outputs become cluster ids (``cfg.postprocess.readout``): applying a readout.

Three readouts, all applied to per-pixel vectors that may first be smoothed over valid
neighbours (:func:`sscc_core.model.postprocess.smooth`, ``smooth_sigma``):

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

Fitting the two feature readouts after training is :mod:`sscc_core.training.readout_fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from sscc_core.config import PostprocessConfig

Kind = Literal["head", "kmeans", "spectral"]
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "head": (),
    "kmeans": ("centroids",),
    "spectral": ("mean", "std", "coef", "intercept"),
}
EMPTY_CLUSTER_LOGIT = -1e30


def standardise(vectors: Tensor, state: dict[str, Tensor]) -> Tensor:
    """``(v - mean) / std * weights`` of (N, V) vectors with a readout state, (N, V) float32."""
    z = (vectors.double() - state["mean"].double()) / state["std"].double()
    if "weights" in state:
        z = z * state["weights"].double()
    return z.float()


def nearest_centroid(features: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest-centroid labels of feature vectors (Euclidean, in float64), and a confidence.

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
            ``smooth_sigma`` (:meth:`sscc_core.training.selection.Selection.record`); provenance only.
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
