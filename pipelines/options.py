"""Command-line options shared by the stages that take a run configuration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from sscc_core.config import ConfigError, SSCCConfig, load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def add_config_args(parser: argparse.ArgumentParser, default: Path | None = None) -> None:
    """Add ``--config FILE`` (``default`` when not given; the authors' recipe when that is
    ``None``) and repeatable ``--set section.field=value`` overrides."""
    what = f"{default.relative_to(default.parents[1])}" if default is not None else "the authors' recipe"
    parser.add_argument("--config", default=None if default is None else str(default),
                        help=f"run configuration YAML (default: {what})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override one config field, e.g. --set train.epochs=20 (repeatable; values are YAML)",
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=5", "model.widths=[8, 16]"]`` -> ``{"train.epochs": 5, ...}`` (values YAML).

    Raises:
        ConfigError: An item is not ``SECTION.FIELD=VALUE``.
    """
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def load_cli_config(args: argparse.Namespace) -> SSCCConfig:
    """The configuration named by ``--config`` with the ``--set`` overrides applied.

    Raises:
        ConfigError: A malformed override or config field (the message names it).
    """
    return load_config(args.config, parse_overrides(args.overrides))
