"""Whether a training run's sizes fit together, checked before anything starts: the global batch
over the data-parallel workers, and the training pixels over one batch and the clusters."""

from __future__ import annotations

from sscc_core.config import SSCCConfig


def check_scaling(cfg: SSCCConfig, num_workers: int) -> None:
    """Refuse a worker count the global batch cannot be split over.

    Args:
        cfg: Run configuration (``train.batch_size``, the global batch).
        num_workers: Data-parallel workers (0 = Ray Train local mode, one process).

    Raises:
        ValueError: ``num_workers`` < 0, ``train.batch_size`` not divisible by the workers, or
            fewer than 2 rows per worker (the loss needs 2 rows; BatchNorm needs more than 1).
    """
    batch = cfg.train.batch_size
    if num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0 (0 = Ray Train local mode), got {num_workers}")
    world = max(1, num_workers)
    if batch % world:
        raise ValueError(f"train.batch_size={batch} is the global batch and must split evenly over "
                         f"--num-workers={num_workers}; choose a batch divisible by the workers")
    if batch // world < 2:
        raise ValueError(f"train.batch_size={batch} over --num-workers={num_workers} leaves "
                         f"{batch // world} row per worker; each worker needs at least 2")


def check_training_size(n_pixels: int, cfg: SSCCConfig, where: str, needs_batch: bool = True) -> None:
    """Refuse a run whose training pixels number fewer than the clusters (K clusters cannot be
    formed from fewer than K samples) or, when the method trains a network, cannot fill one
    global batch.

    Args:
        n_pixels: Training pixels under ``train.protocol``.
        cfg: Run configuration (``model.n_clusters``, ``train.batch_size``, ``train.protocol``).
        where: The store's path or the scene's name, for the message.
        needs_batch: Whether the method trains on batches (SSCC; not the k-means baselines).

    Raises:
        ValueError: The message gives the counts and the fields to change.
    """
    protocol = cfg.train.protocol
    if n_pixels < cfg.model.n_clusters:
        raise ValueError(f"{where}: {n_pixels} training pixels (protocol {protocol!r}) are fewer "
                         f"than model.n_clusters={cfg.model.n_clusters}")
    if needs_batch and n_pixels < cfg.train.batch_size:
        raise ValueError(f"{where}: {n_pixels} training pixels (protocol {protocol!r}) cannot fill "
                         f"one batch of train.batch_size={cfg.train.batch_size}; lower "
                         "train.batch_size or use more data")
