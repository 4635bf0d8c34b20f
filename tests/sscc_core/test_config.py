"""The configuration's canonical hash (:func:`sscc_core.config.config_hash`), which a run's
record (resuming) and an export's provenance compare."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from sscc_core.config import config_hash, load_config, to_dict
from sscc_core.model.checkpoint import RunMismatchError, RunRecord, check_run_record


def test_a_run_started_before_an_optional_field_existed_still_resumes(tmp_path: Path) -> None:
    """``postprocess.select_sample`` and ``select_graph_gain`` (default null: the behaviour from
    before them) were added after runs had been started; their records hashed a config without
    the fields. Such a run resumes with the new code, and setting a field makes another run."""
    cfg = load_config("configs/default.yaml")
    assert cfg.postprocess.select_sample is None
    then = to_dict(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=0)))
    for field in ("select_sample", "select_graph_gain"):  # the config as the code before them wrote it
        del then["postprocess"][field]
    then_hash = hashlib.sha256(json.dumps(then, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    old = {"store": "cube.zarr", "input_identity": "abc", "config_hash": then_hash, "protocol": "all"}
    (tmp_path / "run.json").write_text(json.dumps(old))

    assert check_run_record(str(tmp_path), RunRecord.of("cube.zarr", "abc", cfg), progress=True) is False
    other = dataclasses.replace(cfg, postprocess=dataclasses.replace(cfg.postprocess, select_sample=6000))
    with pytest.raises(RunMismatchError, match=r"config hash "):
        check_run_record(str(tmp_path), RunRecord.of("cube.zarr", "abc", other), progress=True)
    assert config_hash(other) != config_hash(cfg)
    gated = dataclasses.replace(cfg, postprocess=dataclasses.replace(cfg.postprocess, select_graph_gain=2.5))
    assert config_hash(gated) != config_hash(cfg)
