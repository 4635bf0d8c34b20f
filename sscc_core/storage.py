"""Small files at a local path or an object-storage URL (``s3://``, ``gs://``, ``file://``, ...).

Checkpoints, the fitted pre-processing and run histories go through here, so a run's storage path
may be a local directory or object storage (through fsspec; install the filesystem's package,
e.g. ``s3fs``, on every node). Local writes are atomic (temp file then rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec


def is_url(path: str | Path) -> bool:
    """Whether ``path`` names object storage (has a ``scheme://``)."""
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a local path or a URL."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base).joinpath(*parts))


def exists(path: str | Path) -> bool:
    """Whether a file exists at the path or URL."""
    if not is_url(path):
        return Path(path).is_file()
    fs, inner = fsspec.core.url_to_fs(str(path))
    return fs.isfile(inner)


def read_bytes(path: str | Path) -> bytes:
    """The whole content of a file at a path or URL.

    Raises:
        FileNotFoundError: Nothing there.
    """
    if not is_url(path):
        return Path(path).read_bytes()
    with fsspec.open(str(path), "rb") as f:
        return f.read()


def write_bytes(path: str | Path, data: bytes) -> str:
    """Write a file at a path (atomically, creating parents) or URL (one PUT); returns the path."""
    if is_url(path):
        fs, inner = fsspec.core.url_to_fs(str(path))
        fs.makedirs(inner.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(inner, "wb") as f:
            f.write(data)
        return str(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return str(target)
