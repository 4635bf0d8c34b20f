"""Command-line options shared by the stages that take a run configuration."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from sscc_core.config import ConfigError, SSCCConfig, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and repeatable ``--set section.field=value`` overrides."""
    parser.add_argument("--config", default=None, help="run configuration YAML (default: the authors' recipe)")
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
