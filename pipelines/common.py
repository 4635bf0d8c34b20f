"""Helpers shared by the stage entry points: Ray start-up, JSON-lines logs, user-error exits.

Conventions of every stage:

- ``ray.init()`` only when Ray is not initialised yet, with no resource arguments, so the same
  module runs on a laptop (local Ray), under ``ray job submit`` (joins the job's cluster) and in
  tests (the session's Ray).
- Human-readable progress goes to stdout; structured events go to a JSON-lines log, one object
  per line with ``time``, ``level``, ``stage``, ``event`` and fields: ``--log-file``, by default
  ``OUTPUT.log.jsonl`` beside the stage's local output (:func:`default_log_file`), else stderr
  (also ``--log-file -``).
- A user error (bad path, bad argument, incompatible input, and an OS error of the
  environment: a full disk, a file-size limit, a read-only or unwritable path) prints
  ``sscc <stage>: error: ...`` to stderr and exits with status 2, like argparse, also when it was
  raised inside a Ray task, actor or Train worker; anything else is a bug and raises.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sscc_core.labelling.labelstore import LabelStore

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES})


WORKER_LOGS_ENV = "SSCC_RAY_WORKER_LOGS"


def ensure_ray(**options: Any) -> None:
    """Connect to Ray unless this process already did (the project's one ``ray.init``).

    With ``RAY_ADDRESS`` set (``ray job submit`` sets it for the job's driver) this joins that
    cluster; without it, it starts an embedded local Ray, never a stale cluster found on disk.

    Ray workers' own output (Ray Train's and Ray Data's INFO lines and progress bars inside
    the training workers, internal warnings of Ray's helper actors) is not forwarded to this
    terminal: the stages print their own progress lines, and every user error raised in a
    worker reaches the driver as one line. The workers' logs stay in Ray's session log folder
    (``/tmp/ray/session_latest/logs`` on each node, and the dashboard); ``SSCC_RAY_WORKER_LOGS=1``
    forwards them to the terminal again (docs/OPERATIONS.md, Monitor).

    Args:
        **options: Further ``ray.init`` arguments that change no resource (e.g.
            ``include_dashboard=False`` for the benchmarks).
    """
    import ray

    if not ray.is_initialized():
        options.setdefault("log_to_driver", os.environ.get(WORKER_LOGS_ENV, "") == "1")
        ray.init(address=None if os.environ.get("RAY_ADDRESS") else "local", **options)


def gather_tasks(refs: list[Any], on_done: Callable[[int, Any], None]) -> None:
    """Wait for Ray tasks, calling ``on_done(index, result)`` as each finishes (progress).

    When one task fails, the others still run to their end (their results are reported the
    same way, their errors dropped) before the first error is raised, so every output they
    finish is whole and Ray prints no "Unhandled error" traceback for a task nobody awaited.
    """
    import ray

    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            on_done(index[done[0]], ray.get(done[0]))
    except Exception:
        for ref in pending:
            with contextlib.suppress(Exception):
                on_done(index[ref], ray.get(ref))
        raise


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``stage``, ``event`` plus the fields
    passed as ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "stage": record.name.removeprefix("sscc."),
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        return json.dumps(doc, default=str)


def add_logging_args(parser: argparse.ArgumentParser, beside: str | None = None) -> None:
    """Add ``--log-file`` (JSON-lines structured log); ``beside`` names the output whose
    ``.log.jsonl`` sibling is the default (stderr when ``None``)."""
    default = f"{beside}.log.jsonl beside the output" if beside else "stderr"
    parser.add_argument("--log-file", default=None,
                        help=f"append JSON-lines structured logs to this file ('-': stderr; "
                             f"default: {default})")


def default_log_file(output: str | Path) -> str | None:
    """``OUTPUT.log.jsonl`` beside a local output; ``None`` (stderr) for an object-storage URL."""
    return None if "://" in str(output) else f"{Path(output)}.log.jsonl"


def setup_logging(stage: str, log_file: str | None = None,
                  output: str | Path | None = None) -> logging.Logger:
    """The stage's logger ``sscc.<stage>``, writing JSON lines to ``log_file`` (``-``: stderr),
    by default to :func:`default_log_file` of ``output`` (stderr without one).

    Calling it again replaces the handler (tests run several stages in one process).

    Raises:
        ValueError: The log file cannot be created (its folder is a file, or not writable);
            the message names the log file and the path that failed.
    """
    logger = logging.getLogger(f"sscc.{stage}")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if log_file is None and output is not None:
        log_file = default_log_file(output)
    handler: logging.Handler
    if log_file and log_file != "-":
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_file)
        except OSError as err:
            raise ValueError(f"{log_file}: cannot write the log file "
                             f"({err.strerror}: {err.filename})") from err
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def log_event(logger: logging.Logger, event: str, **fields: Any) -> None:
    """Log one structured event at INFO level."""
    logger.info(event, extra={"fields": fields})


def label_provenance(store: "LabelStore", cube_path: str | Path) -> dict[str, str]:
    """Provenance of products derived from a label store: model version, config hash, input
    cube, label store and its creation time, tiles done (see
    :func:`sscc_core.labelling.export.build_provenance`)."""
    from sscc_core.config import SSCCConfig, from_dict
    from sscc_core.labelling.export import build_provenance

    attrs = store.attrs
    return build_provenance(
        model_version=attrs["model_version"], inputs=[str(cube_path)],
        cfg=from_dict(SSCCConfig, attrs.get("config") or {}), label_store=str(store.path),
        labels_created=attrs.get("created", ""), tiles_done=len(store.done_tiles()),
    )


def _wrapped(exc: BaseException) -> BaseException | None:
    """The exception Ray wrapped in ``exc``: a task's cause (``RayTaskError`` also subclasses
    its cause's type), a Train controller's failure, or the first failed Train worker's error."""
    workers = getattr(exc, "worker_failures", None)  # ray.train.WorkerGroupError
    candidates = [getattr(exc, "cause", None), getattr(exc, "controller_failure", None),
                  *(workers.values() if isinstance(workers, dict) else ())]
    return next((c for c in candidates if isinstance(c, BaseException)), None)


def is_environment_error(error: BaseException | None) -> bool:
    """Whether ``error`` is an OS error of the environment (:data:`ENVIRONMENT_ERRNOS`)."""
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS


def environment_error(exc: BaseException) -> OSError | None:
    """The OS error of the environment behind ``exc`` (:func:`user_error`), else ``None``."""
    error = user_error(exc)
    return error if is_environment_error(error) else None  # type: ignore[return-value]


def user_error(exc: BaseException) -> BaseException | None:
    """The user-facing error behind ``exc`` (following Ray's wrapping and ``__cause__``), or
    ``None`` when it is neither one of :data:`USER_ERRORS` nor an OS error of the environment
    (:data:`ENVIRONMENT_ERRNOS`: full disk, file-size limit, read-only or unwritable path)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        wrapped = _wrapped(exc)
        if wrapped is not None:
            exc = wrapped
            continue
        if isinstance(exc, USER_ERRORS) or is_environment_error(exc):
            return exc
        exc = exc.__cause__
    return None


def output_failed(out: object, action: str, error: OSError, left: str) -> ValueError:
    """The user error for an OS error (full disk, file-size limit, ...) while writing ``out``:
    ``OUT: <action> failed ([FILE: ]File too large, EFBIG); <left>``, where ``left`` says what
    stays behind (for example ``nothing was written``)."""
    where = f"{error.filename}: " if error.filename else ""
    return ValueError(f"{out}: {action} failed ({where}{error.strerror}, "
                      f"{errno.errorcode[error.errno]}); {left}")


@contextlib.contextmanager
def failing_output(out: object, action: str, left: Callable[[], str]) -> Iterator[None]:
    """Turn an OS error of the environment (:data:`ENVIRONMENT_ERRNOS`; also from a Ray task or
    worker) raised in the block into :func:`output_failed` for ``out``; ``left()`` says what
    stays behind, asked after the failure."""
    try:
        yield
    except Exception as exc:
        error = environment_error(exc)
        if error is None:
            raise
        raise output_failed(out, action, error, left()) from exc


def error_line(error: BaseException) -> str:
    """One line for a user error; an OS error reads ``[PATH: ]<strerror> (ENOSPC)``."""
    if is_environment_error(error):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror} ({errno.errorcode[error.errno]})"
    return " ".join(str(error).split("\n"))


def run_stage(
    stage: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Any],
    argv: list[str] | None,
) -> int:
    """Parse ``argv``, call ``run(args)`` and turn user errors into ``sscc <stage>: error``.

    Returns:
        0 on success, 2 on a usage or user error (argparse's own status otherwise).
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and its message
        return int(exc.code or 0)
    try:
        run(args)
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        print(f"sscc {stage}: error: {error_line(error)}", file=sys.stderr)
        return 2
    return 0
