"""Shared fixtures: repository paths, real scenes, and one local Ray for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The bundled real scenes (see data/README.md)."""
    return DATA


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
