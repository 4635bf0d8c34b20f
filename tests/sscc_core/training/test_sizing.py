"""The size checks every run passes before anything starts, with their exact messages."""

from __future__ import annotations

import pytest

from sscc_core.config import load_config
from sscc_core.training.sizing import check_scaling, check_training_size


@pytest.mark.parametrize("workers, batch, message", [
    (-1, 256, "--num-workers must be >= 0 (0 = Ray Train local mode), got -1"),
    (3, 256, "train.batch_size=256 is the global batch and must split evenly over --num-workers=3; "
             "choose a batch divisible by the workers"),
    (4, 4, "train.batch_size=4 over --num-workers=4 leaves 1 row per worker; each worker needs "
           "at least 2"),
])
def test_worker_counts_the_global_batch_cannot_be_split_over(workers: int, batch: int,
                                                             message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_scaling(load_config(overrides={"train.batch_size": batch}), workers)
    assert str(err.value) == message


@pytest.mark.parametrize("workers", [0, 1, 2, 4, 128])
def test_worker_counts_that_split_the_batch_pass(workers: int) -> None:
    check_scaling(load_config(overrides={"train.batch_size": 256}), workers)


def test_training_pixels_must_fill_one_batch_and_outnumber_the_clusters() -> None:
    cfg = load_config(overrides={"model.n_clusters": 16, "train.batch_size": 64, "train.protocol": "all"})
    with pytest.raises(ValueError) as err:
        check_training_size(15, cfg, "s.zarr")
    assert str(err.value) == "s.zarr: 15 training pixels (protocol 'all') are fewer than model.n_clusters=16"
    with pytest.raises(ValueError) as err:
        check_training_size(63, cfg, "s.zarr")
    assert str(err.value) == ("s.zarr: 63 training pixels (protocol 'all') cannot fill one batch of "
                              "train.batch_size=64; lower train.batch_size or use more data")
    check_training_size(64, cfg, "s.zarr")
