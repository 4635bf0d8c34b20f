"""docs/OPERATIONS.md is tested as written: its ```bash blocks whose first line is `# doc-test`
run in order, in one empty directory, with a local Ray per command, and must all exit 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "OPERATIONS.md"
FENCE = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_test_blocks(text: str) -> list[str]:
    """The bodies of the fenced bash blocks whose first line is ``# doc-test``."""
    return [body for body in FENCE.findall(text) if body.lstrip().startswith("# doc-test")]


def test_doc_has_doc_test_blocks_for_every_section():
    blocks = doc_test_blocks(DOC.read_text())
    assert len(blocks) == 4
    joined = "\n".join(blocks)
    for command in ("sscc ingest", "sscc train", "sscc predict", "sscc reprocess", "sscc verify"):
        assert command in joined


@pytest.mark.slow
def test_operations_doc_blocks_run_as_written(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for i, block in enumerate(doc_test_blocks(DOC.read_text())):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            f"doc-test block {i} failed ({done.returncode}):\n{block}\n--- stdout\n"
            f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    pointer = (tmp_path / "labels" / "current").read_text()
    assert '"model_version"' in pointer
