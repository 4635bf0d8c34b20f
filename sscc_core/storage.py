"""Small files at a local path or an object-storage URL (``s3://``, ``gs://``, ``file://``, ...).

Checkpoints, the fitted pre-processing and run histories go through here, so a run's storage path
may be a local directory or object storage (through fsspec; install the filesystem's package,
e.g. ``s3fs``, on every node). Local writes are atomic (temp file then rename).

Temporaries of a local target ``T`` (``T.tmp-*`` folders of :func:`sscc_core.io.store.atomic_output`,
``.T.tmp-*`` files of :func:`write_bytes`) that a killed run left behind are removed by the next
write of ``T`` (:func:`remove_stale_temporaries`): only those last modified before the writing
process started, so no temporary of this process is touched. Two processes writing the same
target at the same time are not supported (the later one would remove the earlier one's work).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
import psutil

PROCESS_START = psutil.Process().create_time()


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


def list_names(path: str | Path) -> list[str]:
    """Names of the entries of a directory at a path or URL (empty when it does not exist)."""
    if not is_url(path):
        return sorted(p.name for p in Path(path).iterdir()) if Path(path).is_dir() else []
    fs, inner = fsspec.core.url_to_fs(str(path))
    if not fs.isdir(inner):
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(inner, detail=False))


def remove(path: str | Path) -> None:
    """Remove a file at a path or URL if it exists."""
    if not is_url(path):
        Path(path).unlink(missing_ok=True)
        return
    fs, inner = fsspec.core.url_to_fs(str(path))
    if fs.isfile(inner):
        fs.rm(inner)


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporaries an earlier, killed process left beside a local ``target``.

    A temporary of ``target`` is a sibling named ``<name>.tmp-*`` or ``.<name>.tmp-*`` (file or
    folder). It is stale when it was last modified before this process started: it cannot be
    this process's own, and no other process is expected to write ``target`` concurrently.

    Returns:
        The temporaries removed.
    """
    parent = target.parent
    if not parent.is_dir():
        return []
    stale = [
        p for pattern in (f"{target.name}.tmp-*", f".{target.name}.tmp-*")
        for p in parent.glob(pattern) if p.lstat().st_mtime < PROCESS_START
    ]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


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
    remove_stale_temporaries(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:  # a full disk: no partial temporary is left either
        tmp.unlink(missing_ok=True)
        raise
    return str(target)


def check_writable(directory: str | Path) -> None:
    """Fail fast when files cannot be created in a local ``directory``, which need not exist yet:
    a temporary file is created and removed in it, or in its nearest existing ancestor (where the
    missing folders would be created). Nothing is left behind.

    Raises:
        OSError: The probe failed; ``filename`` is the directory probed.
    """
    probe = Path(directory).absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe))
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".sscc-write-probe-")
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(probe)) from exc
    os.close(fd)
    os.unlink(name)


def resolve(path: str | Path) -> str:
    """A URL as it is; a local path made absolute (what other processes and nodes are given)."""
    return str(path) if is_url(path) else str(Path(path).resolve())


def check_url(url: str) -> None:
    """Fail fast, in one line naming ``url``, when object storage at ``url`` cannot be used.

    Local paths pass. For a URL: its scheme needs an installed fsspec filesystem, and its bucket
    (the first path component) must be reachable and listable with the credentials of the
    standard environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
    ``AWS_ENDPOINT_URL``, or an instance / service-account role). Nothing is written.

    Raises:
        ValueError: Unknown scheme, unreachable endpoint, no credentials, no such bucket, or
            access denied; the message starts with ``url``.
    """
    if not is_url(url):
        return
    scheme = str(url).split("://", 1)[0]
    try:
        fs, inner = fsspec.core.url_to_fs(str(url), skip_instance_cache=True)
    except (ValueError, ImportError) as exc:
        raise ValueError(f"{url}: no filesystem is installed for URL scheme {scheme}:// "
                         f"({exc}); install its fsspec package (s3fs for s3://, gcsfs for "
                         "gs://, adlfs for az://)") from None
    bucket = inner.split("/", 1)[0]
    try:
        fs.ls(bucket, detail=False)
    except FileNotFoundError:
        raise ValueError(f"{url}: bucket {bucket!r} does not exist") from None
    except PermissionError as exc:
        raise ValueError(f"{url}: access to bucket {bucket!r} denied ({exc})") from None
    except Exception as exc:  # botocore/aiohttp raise many types for the causes below
        name = type(exc).__name__
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default endpoint")
        if "Credentials" in name:
            why = ("no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                   "run with an instance or service-account role)")
        elif "Connect" in name or "Endpoint" in name or isinstance(exc, OSError):
            why = f"cannot reach {endpoint} ({name})"
        else:
            why = f"{name}: {exc}"
        raise ValueError(f"{url}: {why}") from None


def upload_dir(local: Path, url: str, last: str = "zarr.json") -> None:
    """Upload a local folder's files under ``url``, the top-level file ``last`` after all others
    (for a Zarr store its root metadata, so a half-uploaded store is no store)."""
    fs, inner = fsspec.core.url_to_fs(url)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for p in sorted(files, key=lambda p: p.relative_to(local).as_posix() == last):
        fs.put_file(str(p), f"{inner.rstrip('/')}/{p.relative_to(local).as_posix()}")


def remove_tree(url: str, first: str = "zarr.json") -> None:
    """Remove everything under ``url``, its top-level file ``first`` before the rest (so a
    removal cut short leaves no store that looks whole)."""
    fs, inner = fsspec.core.url_to_fs(url)
    head = f"{inner.rstrip('/')}/{first}"
    if fs.exists(head):
        fs.rm(head)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)


def is_dir(path: str | Path) -> bool:
    """Whether a directory (a local folder, or a non-empty prefix of a URL) exists."""
    if not is_url(path):
        return Path(path).is_dir()
    fs, inner = fsspec.core.url_to_fs(str(path))
    return fs.isdir(inner)
