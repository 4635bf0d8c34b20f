"""Versioned label outputs: one label store per model version under a labels directory, and a
``current`` pointer naming the version that readers should use.

Layout of ``LABELS_DIR``::

    LABELS_DIR/<model_version>.zarr   one label store per model version (never overwritten by
                                      another version; see :mod:`sscc_core.labelling.labelstore`)
    LABELS_DIR/current                JSON: {"model_version", "store", "switched", ...}

``current`` is replaced atomically (:func:`sscc_core.storage.write_bytes`: temp file, then rename), so a
reader sees the old pointer or the new one, never a torn file; it is switched only after the
version's store is marked complete.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sscc_core import storage

CURRENT = "current"
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")


def _under(root: str | Path, name: str) -> str | Path:
    """``root/name``: a Path under a local root, a URL under an object-storage root."""
    return storage.join(root, name) if storage.is_url(root) else Path(root) / name


def versioned_store(root: str | Path, model_version: str) -> str | Path:
    """``root/<model_version>.zarr`` (``root`` a local path or a URL).

    Raises:
        ValueError: ``model_version`` is not a plain file-name token.
    """
    if not _VERSION.match(model_version):
        raise ValueError(f"model version {model_version!r} is not usable as a file name")
    return _under(root, f"{model_version}.zarr")


def read_current(root: str | Path) -> dict[str, Any] | None:
    """The ``current`` pointer of ``root`` (``None`` when there is none yet).

    Raises:
        ValueError: The pointer file exists but is not a JSON object with ``model_version``.
    """
    path = _under(root, CURRENT)
    if not storage.exists(path):
        return None
    try:
        doc = json.loads(storage.read_bytes(path).decode())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a JSON pointer ({exc})") from exc
    if not isinstance(doc, dict) or "model_version" not in doc:
        raise ValueError(f"{path}: not a label pointer (no 'model_version')")
    return doc


def current_store(root: str | Path) -> str | Path:
    """The label store ``current`` points to.

    Raises:
        FileNotFoundError: No pointer yet, or it names a store that does not exist.
    """
    doc = read_current(root)
    if doc is None:
        raise FileNotFoundError(f"{_under(root, CURRENT)}: no current label version yet")
    store = _under(root, doc["store"])
    if not storage.is_dir(store):
        raise FileNotFoundError(f"{_under(root, CURRENT)}: points to missing store {store}")
    return store


def switch_current(root: str | Path, model_version: str, **fields: Any) -> dict[str, Any]:
    """Point ``root/current`` at ``model_version`` atomically.

    Args:
        root: The labels directory.
        model_version: A version whose store ``root/<model_version>.zarr`` exists and is complete
            (the caller checks completeness).
        **fields: Extra JSON-serialisable provenance (checkpoint, input store, tiles).

    Returns:
        The pointer document written.

    Raises:
        FileNotFoundError: The version's store does not exist.
    """
    store = versioned_store(root, model_version)
    if not storage.is_dir(store):
        raise FileNotFoundError(f"{store}: cannot point {_under(root, CURRENT)} at a missing store")
    before = read_current(root) or {}
    same = before.get("model_version") == model_version
    doc = {
        "model_version": model_version,
        "store": f"{model_version}.zarr",
        "switched": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # the last other version pointed to (kept across reruns of the same version)
        "previous": before.get("previous") if same else before.get("model_version"),
        **fields,
    }
    storage.write_bytes(_under(root, CURRENT), (json.dumps(doc, indent=1) + "\n").encode())
    return doc


def resolve_labels(path: str | Path) -> str | Path:
    """A label store path, or the store a label root's ``current`` pointer names.

    Lets ``evaluate`` and ``export`` take the ``--out-root`` of ``sscc reprocess`` directly.
    """
    path = str(path) if storage.is_url(path) else Path(path)
    return current_store(path) if storage.exists(_under(path, CURRENT)) else path
