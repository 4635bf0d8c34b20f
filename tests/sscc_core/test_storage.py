"""Local write probes of :mod:`sscc_core.storage`."""

from __future__ import annotations

from pathlib import Path

import pytest

from sscc_core import storage


def test_check_writable_probes_the_nearest_existing_folder_and_leaves_nothing(tmp_path: Path) -> None:
    storage.check_writable(tmp_path / "not" / "yet")  # would be created under tmp_path
    storage.check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        storage.check_writable(tmp_path / "file" / "below")
    assert info.value.filename == str(tmp_path / "file")
    with pytest.raises(OSError) as info:  # /proc takes no new files, whoever asks
        storage.check_writable("/proc/sscc-probe")
    assert info.value.filename == "/proc"
