"""The CPU split benchmark's roles: each process of a labelling run is counted where it belongs."""

from __future__ import annotations

import pytest

from benchmarks.cpu_split import role_of


@pytest.mark.parametrize(("cmdline", "role"), [
    ("ray::MapWorker(MapBatches(LabelReads))", "label actors"),
    ("ray::MapBatches(read_segment)", "read tasks"),
    ("ray::IDLE", "read tasks"),
    ("/venv/bin/python -m pipelines.predict --checkpoint m.pt --store s.zarr", "driver (sscc predict)"),
    ("/venv/bin/python /venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py --host=127.0.0.1",
     "Ray dashboard"),
    ("ray::_StatsActor", "Ray services"),
    ("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --node_id=1", "Ray services"),
    ("/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --port=1", "Ray services"),
    ("/usr/bin/sshd -D", "other"),
])
def test_processes_are_counted_in_their_role(cmdline: str, role: str) -> None:
    assert role_of(cmdline) == role
