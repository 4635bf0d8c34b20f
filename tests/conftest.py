"""Shared fixtures: repository paths, real scenes, and one local Ray for the whole session."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


@pytest.fixture(autouse=True)
def ray_data_console_on_this_tests_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Data's console log handler keeps the stream it was made with, in the first test
    that ran a dataset: that test's stderr capture, closed when it ended. A later test's
    dataset would then print a "--- Logging error ---" traceback into its own stderr (and fail
    the one-line-error assertions); each test points such a handler at its own stderr."""
    for handler in logging.getLogger("ray.data").handlers:
        if getattr(getattr(handler, "stream", None), "closed", False):
            monkeypatch.setattr(handler, "stream", sys.stderr)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The bundled real scenes (see data/README.md)."""
    return DATA


@functools.cache
def _load_mat(rel: str, var: str) -> np.ndarray:
    array = scipy.io.loadmat(DATA / rel)[var]
    array.setflags(write=False)  # shared by every test of the session
    return array


@pytest.fixture(scope="session")
def mat() -> Callable[[str, str], np.ndarray]:
    """``mat(rel, var)``: one variable of a bundled ``data/REL`` .mat file, read-only, cached."""
    return _load_mat


@pytest.fixture(scope="session")
def salinas(mat) -> np.ndarray:
    """Salinas-A, (204, 83, 86) int16, band-first, read-only."""
    return band_first(mat("salinasA/SalinasA_corrected.mat", "salinasA_corrected"))


@pytest.fixture(scope="session")
def indian_pines(mat) -> np.ndarray:
    """Indian Pines (8-bit), (200, 145, 145) uint8, band-first, read-only."""
    return band_first(mat("indian_pines/IP_200_M.mat", "data_M"))


@pytest.fixture(scope="session")
def salinas_features(salinas: np.ndarray):
    """Salinas-A after the recipe's pre-processing: (8, 83, 86) float32 tensor (band z-score,
    PCA to 8, each component z-scored)."""
    import torch

    from sscc_core.model.preprocess import fit_preprocessor

    return torch.from_numpy(fit_preprocessor(salinas, None).transform(salinas))


def band_first(cube: np.ndarray) -> np.ndarray:
    """(y, x, band) -> contiguous read-only (band, y, x)."""
    out = np.ascontiguousarray(cube.transpose(2, 0, 1))
    out.setflags(write=False)
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs it (never initialised twice)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # always a fresh local instance, never a cluster found on the machine
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=512 * 1024 * 1024,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_env():
    """One real S3 API server on 127.0.0.1 for the whole session (:func:`tests.helpers.s3_server`;
    each test module makes its own bucket); yields the AWS environment pointing at it."""
    from tests.helpers import s3_server

    with s3_server() as env:
        yield env
